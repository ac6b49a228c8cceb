// pansurv bench survival: Harrell's C (with R's variance) and the Cox loss +
// dL/deta for N = 1e4, 1e5, 1e6 on one core, optionally side by side with
// lifelines / scikit-survival run by a given Python.
// Letters: N patients.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps_cox.h"
#include "ps_metrics.h"
#include "ps_rng.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// CPU time of this thread: on a shared machine it shows the work without the
// waiting for a core.
static double cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The peer: lifelines and scikit-survival on the same arrays (float64 files).
static const char *peer_py =
    "import sys, time, json, numpy as np\n"
    "d, n = sys.argv[1], int(sys.argv[2])\n"
    "t = np.fromfile(d + '/time.f64'); e = np.fromfile(d + '/event.f64') > 0; r = np.fromfile(d + '/risk.f64')\n"
    "out = {}\n"
    "def best(f, reps):\n"
    "    ts = []\n"
    "    for _ in range(reps):\n"
    "        a = time.perf_counter(); v = f(); ts.append(time.perf_counter() - a)\n"
    "    return sorted(ts)[len(ts) // 2], v\n"
    "try:\n"
    "    if n > int(sys.argv[4]): raise RuntimeError('skipped above --peer-c-max')\n"
    "    from sksurv.metrics import concordance_index_censored\n"
    "    s, v = best(lambda: concordance_index_censored(e, t, r, tied_tol=0.0)[0], 1 if n > 200000 else 3)\n"
    "    out['sksurv_c'] = [s, float(v)]\n"
    "except Exception as x: out['sksurv_c_error'] = str(x)\n"
    "try:\n"
    "    from lifelines.utils import concordance_index\n"
    "    s, v = best(lambda: concordance_index(t, -r, e), 1 if n > 200000 else 3)\n"
    "    out['lifelines_c'] = [s, float(v)]\n"
    "except Exception as x: out['lifelines_c_error'] = str(x)\n"
    "if n <= int(sys.argv[3]):\n"
    "  try:\n"
    "    from sksurv.linear_model.coxph import CoxPHOptimizer\n"
    "    o = CoxPHOptimizer(r.reshape(-1, 1), e, t, np.zeros(1), 'efron'); w = np.ones(1)\n"
    "    def f():\n"
    "        l = o.nlog_likelihood(w); o.update(w); return l\n"
    "    s, v = best(f, 1)\n"
    "    out['sksurv_cox'] = [s, float(v) * n / max(1, int(e.sum()))]\n"
    "  except Exception as x: out['sksurv_cox_error'] = str(x)\n"
    "print(json.dumps(out))\n";

// Parses "key": [seconds, value] from the peer's one-line JSON.
static int peer_get(const char *json, const char *key, double *s, double *v) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\": [", key);
  const char *p = strstr(json, pat);
  return p && sscanf(p + strlen(pat), "%lf, %lf", s, v) == 2;
}

static void usage(FILE *f) {
  fprintf(f, "usage: pansurv bench survival [--sizes 1e4,1e5,1e6] [--reps R]\n"
             "                              [--python PATH [--peer-cox-max N] [--peer-c-max N]]\n"
             "Harrell's C (+ variance) and the Efron Cox loss + dL/deta, median of R reps after a warm-up, one\n"
             "thread. --python runs scikit-survival / lifelines on the same data (a venv where they are\n"
             "installed); scikit-survival's pure-Python Cox loss only up to --peer-cox-max patients (1e5) and its\n"
             "quadratic concordance_index_censored up to --peer-c-max (1e5); lifelines' C at every size.\n");
}

int ps_bench_survival(int argc, char **argv) {
  const char *sizes_s = "1e4,1e5,1e6", *python = NULL;
  int reps = 5;
  long peer_cox_max = 100000, peer_c_max = 100000;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) sizes_s = argv[++i];
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--python") && i + 1 < argc) python = argv[++i];
    else if (!strcmp(argv[i], "--peer-cox-max") && i + 1 < argc) peer_cox_max = (long)atof(argv[++i]);
    else if (!strcmp(argv[i], "--peer-c-max") && i + 1 < argc) peer_c_max = (long)atof(argv[++i]);
    else {
      usage(stderr);
      return 2;
    }
  }
  if (reps < 1) reps = 1;
  setvbuf(stdout, NULL, _IOLBF, 0); // rows appear as they are measured
  int wrong_total = 0;
  printf("# pansurv bench survival: one thread, median of %d reps after 1 warm-up; times in days 0..3649 "
         "(heavy ties), 40%% censored, eta ~ N(0,1)\n", reps);
  printf("# %9s %-22s %10s %-22s %10s %8s %20s %20s %6s\n", "n", "what", "time_s", "peer", "peer_s", "speedup",
         "value", "peer_value", "#wrong");
  char *sdup = strdup(sizes_s);
  for (char *tok = strtok(sdup, ","); tok; tok = strtok(NULL, ",")) {
    int64_t n = (int64_t)atof(tok);
    if (n < 2) continue;
    double *time = malloc((size_t)n * sizeof *time), *eta = malloc((size_t)n * sizeof *eta);
    double *grad = malloc((size_t)n * sizeof *grad), *ts = malloc((size_t)reps * sizeof *ts);
    double *tcpu = malloc((size_t)reps * sizeof *tcpu);
    uint8_t *event = malloc((size_t)n);
    ps_rng r = ps_rng_make(2026, ps_rng_stream(PS_RNG_SIM, (uint64_t)n, 0, 0));
    for (int64_t i = 0; i < n; i++) {
      eta[i] = ps_rng_normal(&r, 3 * (uint64_t)i);
      // Exponential hazard exp(eta), in days, rounded: many tied times.
      double u = ps_rng_uniform_open_f64(&r, 3 * (uint64_t)i + 1);
      time[i] = fmin(3649, floor(-log(u) / exp(eta[i]) * 365));
      event[i] = ps_rng_uniform(&r, 3 * (uint64_t)i + 2) >= 0.4f;
    }
    // Harrell's C.
    ps_cindex c;
    int wrong = 0;
    for (int k = -1; k < reps; k++) {
      double t0 = now_s(), c0 = cpu_s();
      if (ps_cindex_compute(PS_CINDEX_HARRELL, n, time, event, eta, NULL, 0, &c) != PS_OK) {
        fprintf(stderr, "bench survival: %s\n", ps_error_message());
        return 1;
      }
      if (k >= 0) ts[k] = now_s() - t0, tcpu[k] = cpu_s() - c0;
    }
    double tc = median(ts, reps), tc_cpu = median(tcpu, reps);
    // Check: the comparable pairs must equal a direct count (events vs later times + censorings at the same time).
    {
      double *st = malloc((size_t)n * sizeof *st);
      memcpy(st, time, (size_t)n * sizeof *st);
      qsort(st, (size_t)n, sizeof *st, cmp_d);
      double pairs = 0;
      for (int64_t i = 0; i < n; i++) {
        if (!event[i]) continue;
        int64_t lo = 0, hi = n; // first index with st > time[i]
        while (lo < hi) {
          int64_t m = (lo + hi) / 2;
          if (st[m] <= time[i]) lo = m + 1;
          else hi = m;
        }
        pairs += (double)(n - lo);
      }
      // + censored at the same time as an event
      for (int64_t i = 0; i < n;) {
        int64_t j = i;
        while (j < n && st[j] == st[i]) j++;
        i = j;
      }
      free(st);
      double cens_same = 0;
      {
        // count per time: events d_t and censorings c_t; add d_t * c_t
        double *key = malloc((size_t)n * 2 * sizeof *key);
        for (int64_t i = 0; i < n; i++) key[2 * i] = time[i], key[2 * i + 1] = event[i];
        // sort pairs by time using qsort on (time, event) records
        typedef struct {
          double t, e;
        } te;
        qsort(key, (size_t)n, sizeof(te), cmp_d); // first field is the time
        for (int64_t i = 0; i < n;) {
          int64_t j = i;
          double d = 0, cc = 0;
          while (j < n && key[2 * j] == key[2 * i]) d += key[2 * j + 1], cc += 1 - key[2 * j + 1], j++;
          cens_same += d * cc;
          i = j;
        }
        free(key);
      }
      double got = c.counts.concordant + c.counts.discordant + c.counts.tied_risk;
      if (got != pairs + cens_same) wrong++;
    }
    // Cox loss + gradient (Efron).
    ps_cox_work *w;
    if (ps_cox_work_create(&w, n) != PS_OK) {
      fprintf(stderr, "bench survival: %s\n", ps_error_message());
      return 1;
    }
    ps_cox_batch b = {n, time, event, NULL, NULL};
    ps_cox_result res;
    for (int k = -1; k < reps; k++) {
      double t0 = now_s(), c0 = cpu_s();
      if (ps_cox_loss(w, &b, eta, PS_COX_EFRON, &res, grad) != PS_OK) {
        fprintf(stderr, "bench survival: %s\n", ps_error_message());
        return 1;
      }
      if (k >= 0) ts[k] = now_s() - t0, tcpu[k] = cpu_s() - c0;
    }
    double tl = median(ts, reps), tl_cpu = median(tcpu, reps);
    // Check: the gradient of a Cox loss sums to zero (shift invariance).
    double gs = 0, ga = 0;
    for (int64_t i = 0; i < n; i++) gs += grad[i], ga += fabs(grad[i]);
    int wrong_l = !(isfinite(res.loss) && fabs(gs) <= 1e-10 * ga);
    ps_cox_work_destroy(w);
    // Peer.
    char peer[4096] = "";
    if (python) {
      char dir[] = "/tmp/pansurv_bench_XXXXXX";
      if (mkdtemp(dir)) {
        char path[600];
        double *ev = malloc((size_t)n * sizeof *ev);
        for (int64_t i = 0; i < n; i++) ev[i] = event[i];
        const char *names[3] = {"time", "event", "risk"};
        const double *arrs[3] = {time, ev, eta};
        for (int k = 0; k < 3; k++) {
          snprintf(path, sizeof path, "%s/%s.f64", dir, names[k]);
          FILE *f = fopen(path, "wb");
          if (f) fwrite(arrs[k], sizeof(double), (size_t)n, f), fclose(f);
        }
        snprintf(path, sizeof path, "%s/peer.py", dir);
        FILE *f = fopen(path, "w");
        if (f) fputs(peer_py, f), fclose(f);
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 '%s' %s/peer.py %s %lld %ld %ld",
                 python, dir, dir, (long long)n, peer_cox_max, peer_c_max);
        FILE *p = popen(cmd, "r");
        if (p) {
          if (!fgets(peer, sizeof peer, p)) peer[0] = '\0';
          pclose(p);
        }
        for (int k = 0; k < 3; k++) {
          snprintf(path, sizeof path, "%s/%s.f64", dir, names[k]);
          unlink(path);
        }
        snprintf(path, sizeof path, "%s/peer.py", dir);
        unlink(path);
        rmdir(dir);
        free(ev);
      }
    }
    double ps_, pv;
    int have = 0;
    if (peer_get(peer, "sksurv_c", &ps_, &pv)) {
      // scikit-survival (tied_tol = 0: exact risk ties, as R) counts the same pairs: 1e-9.
      int bad = fabs(pv - c.c) > 1e-9;
      printf("  %9lld %-22s %10.4f %-22s %10.4f %8.1f %20.15f %20.15f %6d\n", (long long)n, "harrell_c+var", tc,
             "sksurv concordance", ps_, ps_ / tc, c.c, pv, wrong + bad);
      wrong += bad;
      have = 1;
    }
    if (peer_get(peer, "lifelines_c", &ps_, &pv)) {
      // lifelines: shown for speed, not part of #wrong.
      printf("  %9lld %-22s %10.4f %-22s %10.4f %8.1f %20.15f %20.15f %6s\n", (long long)n, "harrell_c+var", tc,
             "lifelines concordance", ps_, ps_ / tc, c.c, pv, "-");
      have = 1;
    }
    if (!have)
      printf("  %9lld %-22s %10.4f %-22s %10s %8s %20.15f %20s %6d\n", (long long)n, "harrell_c+var", tc, "-", "-",
             "-", c.c, "-", wrong);
    if (peer_get(peer, "sksurv_cox", &ps_, &pv)) {
      int bad = fabs(pv - res.loss) > 1e-9 * fabs(res.loss);
      printf("  %9lld %-22s %10.4f %-22s %10.4f %8.1f %20.15f %20.15f %6d\n", (long long)n, "cox_efron_loss+grad", tl,
             "sksurv CoxPHOptimizer", ps_, ps_ / tl, res.loss, pv, wrong_l + bad);
      wrong_l += bad;
    } else {
      printf("  %9lld %-22s %10.4f %-22s %10s %8s %20.15f %20s %6d\n", (long long)n, "cox_efron_loss+grad", tl, "-",
             "-", "-", res.loss, "-", wrong_l);
    }
    if (python && !have) fprintf(stderr, "note: peer gave no result: %s\n", peer[0] ? peer : "(no output)");
    printf("# %9lld cpu_s (thread CPU time, median): harrell_c+var %.4f, cox_efron_loss+grad %.4f\n", (long long)n,
           tc_cpu, tl_cpu);
    wrong_total += wrong + wrong_l;
    free(time), free(eta), free(grad), free(ts), free(tcpu), free(event);
  }
  free(sdup);
  printf("# #wrong: harrell pairs != direct count or != scikit-survival's C (1e-9); cox: sum of dL/deta != 0 or loss "
         "!= scikit-survival's (1e-9 rel)\n");
  return wrong_total ? 1 : 0;
}
