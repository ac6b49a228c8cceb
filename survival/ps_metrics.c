// ps_metrics: C-indices, Kaplan-Meier, log-rank, td-AUC and Brier score
// (see ps_metrics.h for the conventions).
// Letters: N patients, K groups / distinct risks, T times, U distinct times.
#include "ps_metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_coxph.h" // ps_chisq_upper
#include "ps_rng.h"

static const char *const kind_names[] = {"harrell", "uno"};
_Static_assert(sizeof kind_names / sizeof kind_names[0] == PS_CINDEX_KIND_COUNT, "cindex kind table");
const char *ps_cindex_kind_name(ps_cindex_kind k) {
  return (k >= 0 && k < PS_CINDEX_KIND_COUNT) ? kind_names[k] : "?";
}

// ---- sorting helpers -----------------------------------------------------
typedef struct {
  double key;
  int64_t idx;
} dkey;

static int dkey_cmp(const void *a, const void *b) {
  const dkey *x = a, *y = b;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  return (x->idx > y->idx) - (x->idx < y->idx);
}

// Order records: stratum, time ascending; index as the last key (stable).
typedef struct {
  int32_t stratum;
  uint8_t event;
  double time;
  int64_t idx;
} tkey;


// Stable bottom-up merge sorts with the comparison inlined (qsort's indirect
// calls dominate at N = 1e6).
#define PS_DEFINE_MERGE_SORT(fname, T, less)                                                    \
  static int fname(T *a, int64_t n) {                                                          \
    if (n < 2) return 0;                                                                       \
    T *tmp = malloc((size_t)n * sizeof *tmp);                                                  \
    if (!tmp) return -1;                                                                       \
    T *src = a, *dst = tmp;                                                                    \
    const int64_t run = 16;                                                                    \
    for (int64_t lo = 0; lo < n; lo += run) {                                                  \
      int64_t hi = lo + run < n ? lo + run : n;                                                \
      for (int64_t i = lo + 1; i < hi; i++) {                                                  \
        T k = src[i];                                                                          \
        int64_t j = i;                                                                         \
        while (j > lo && less(&k, &src[j - 1])) src[j] = src[j - 1], j--;                      \
        src[j] = k;                                                                            \
      }                                                                                        \
    }                                                                                          \
    for (int64_t w = run; w < n; w *= 2) {                                                     \
      for (int64_t lo = 0; lo < n; lo += 2 * w) {                                              \
        int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;           \
        int64_t i = lo, j = mid, k = lo;                                                       \
        while (i < mid && j < hi) dst[k++] = less(&src[j], &src[i]) ? src[j++] : src[i++];     \
        while (i < mid) dst[k++] = src[i++];                                                   \
        while (j < hi) dst[k++] = src[j++];                                                    \
      }                                                                                        \
      T *t = src;                                                                              \
      src = dst, dst = t;                                                                      \
    }                                                                                          \
    if (src != a) memcpy(a, src, (size_t)n * sizeof *a);                                       \
    free(tmp);                                                                                 \
    return 0;                                                                                  \
  }

static inline int dkey_less(const dkey *x, const dkey *y) {
  return x->key < y->key || (x->key == y->key && x->idx < y->idx);
}
static inline int tkey_less(const tkey *x, const tkey *y) {
  if (x->stratum != y->stratum) return x->stratum < y->stratum;
  if (x->time != y->time) return x->time < y->time;
  return x->idx < y->idx;
}
PS_DEFINE_MERGE_SORT(sort_dkey, dkey, dkey_less)
PS_DEFINE_MERGE_SORT(sort_tkey, tkey, tkey_less)

// LSD radix sort of (key, idx) records by an order-preserving 64-bit image of
// the double key, 16-bit digits, stable (ties keep their input order). At
// N = 1e6 it is ~5x faster than the merge sort. tmp: (N) scratch.
static inline uint64_t dbits(double d) {
  uint64_t u;
  if (d == 0) d = 0; // -0 == +0
  memcpy(&u, &d, sizeof u);
  return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}

static int radix_dkey(dkey *a, int64_t n) {
  if (n < 256) return sort_dkey(a, n);
  dkey *tmp = malloc((size_t)n * sizeof *tmp);
  uint64_t *cnt = malloc(65536 * sizeof *cnt);
  if (!tmp || !cnt) {
    free(tmp), free(cnt);
    return -1;
  }
  dkey *src = a, *dst = tmp;
  for (int shift = 0; shift < 64; shift += 16) {
    memset(cnt, 0, 65536 * sizeof *cnt);
    for (int64_t i = 0; i < n; i++) cnt[(dbits(src[i].key) >> shift) & 0xffff]++;
    uint64_t sum = 0;
    int trivial = 0;
    for (int b = 0; b < 65536; b++) {
      if (cnt[b] == (uint64_t)n) trivial = 1;
      uint64_t c = cnt[b];
      cnt[b] = sum;
      sum += c;
    }
    if (trivial) continue; // every key shares this digit
    for (int64_t i = 0; i < n; i++) dst[cnt[(dbits(src[i].key) >> shift) & 0xffff]++] = src[i];
    dkey *t = src;
    src = dst, dst = t;
  }
  if (src != a) memcpy(a, src, (size_t)n * sizeof *a);
  free(tmp), free(cnt);
  return 0;
}

// Time order within strata: radix by time, then (when strata vary) a stable
// merge by stratum keeps the time order inside each stratum.
static int sort_time_order(tkey *a, int64_t n) {
  dkey *k = malloc((size_t)(n ? n : 1) * sizeof *k);
  tkey *c = malloc((size_t)(n ? n : 1) * sizeof *c);
  if (!k || !c) {
    free(k), free(c);
    return -1;
  }
  for (int64_t i = 0; i < n; i++) k[i] = (dkey){a[i].time, i};
  int rc = radix_dkey(k, n);
  if (rc == 0) {
    memcpy(c, a, (size_t)n * sizeof *c);
    int many = 0;
    for (int64_t i = 0; i < n; i++) a[i] = c[k[i].idx], many |= a[i].stratum != a[0].stratum;
    if (many) rc = sort_tkey(a, n); // presorted runs: cheap
  }
  free(k), free(c);
  return rc;
}

static ps_status check_inputs(int64_t n, const double *time, const uint8_t *event, const double *risk) {
  PS_REQUIRE(n >= 0 && (n == 0 || (time && event)), "metrics: missing time/event arrays");
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(time[i]) || time[i] < 0)
      PS_FAIL(PS_ERR_DATA, "metrics: patient %lld has time %g; expected a finite value >= 0", (long long)i, time[i]);
    if (event[i] > 1)
      PS_FAIL(PS_ERR_DATA, "metrics: patient %lld has event %d; expected 0 or 1", (long long)i, (int)event[i]);
    if (risk && !isfinite(risk[i]))
      PS_FAIL(PS_ERR_DATA, "metrics: patient %lld has a non-finite risk %g", (long long)i, risk[i]);
  }
  return PS_OK;
}

// ---- Fenwick tree over risk ranks 1..K (double weights) ------------------
static inline void fw_add(double *fw, int64_t k, int64_t i, double v) {
  for (; i <= k; i += i & -i) fw[i] += v;
}
static inline double fw_sum(const double *fw, int64_t i) {
  double s = 0;
  for (; i > 0; i -= i & -i) s += fw[i];
  return s;
}
static inline void fw_clear(double *fw, int64_t k, int64_t i) {
  for (; i <= k; i += i & -i) fw[i] = 0;
}

// Censoring KM with events leaving before censorings at tied times, evaluated
// just before each patient's own time: gminus (N).
static void censor_km_minus(int64_t n, const tkey *ord, double *gminus) {
  double g = 1.0;
  int64_t i = 0;
  while (i < n) {
    int64_t j = i;
    double c = 0, d = 0;
    while (j < n && ord[j].time == ord[i].time) c += !ord[j].event, d += ord[j].event, j++;
    for (int64_t k = i; k < j; k++) gminus[ord[k].idx] = g;
    double at_risk = (double)(n - i) - d;
    if (c > 0 && at_risk > 0) g *= 1.0 - c / at_risk;
    i = j;
  }
}

ps_status ps_cindex_compute(ps_cindex_kind kind, int64_t n, const double *time, const uint8_t *event,
                            const double *risk, const int32_t *stratum, double tau, ps_cindex *out) {
  PS_REQUIRE(out && kind >= 0 && kind < PS_CINDEX_KIND_COUNT, "ps_cindex_compute: bad arguments");
  PS_REQUIRE(n == 0 || risk, "ps_cindex_compute: missing risk");
  PS_TRY(check_inputs(n, time, event, risk));
  memset(out, 0, sizeof *out);
  out->c = out->var = out->se = NAN;
  if (n == 0) return PS_OK;
  if (kind == PS_CINDEX_UNO) stratum = NULL;
  size_t sz = (size_t)n;
  tkey *ord = malloc(sz * sizeof *ord);
  dkey *rk = malloc(sz * sizeof *rk);
  int64_t *rank = malloc(sz * sizeof *rank);
  double *wt = malloc(sz * sizeof *wt);
  double *im = calloc(3 * sz, sizeof *im); // (N, 3) concordant, discordant, tied_risk per patient
  double *fw = calloc(sz + 1, sizeof *fw);
  if (!ord || !rk || !rank || !wt || !im || !fw) {
    free(ord), free(rk), free(rank), free(wt), free(im), free(fw);
    PS_FAIL(PS_ERR_MEM, "ps_cindex_compute: out of memory for %lld patients", (long long)n);
  }
  for (int64_t i = 0; i < n; i++) {
    ord[i] = (tkey){stratum ? stratum[i] : 0, event[i], time[i], i};
    rk[i] = (dkey){risk[i], i};
  }
  if (sort_time_order(ord, n) || radix_dkey(rk, n)) {
    free(ord), free(rk), free(rank), free(wt), free(im), free(fw);
    PS_FAIL(PS_ERR_MEM, "ps_cindex_compute: out of memory for %lld patients", (long long)n);
  }
  int64_t K = 0;
  for (int64_t i = 0; i < n; i++) {
    if (i == 0 || rk[i].key != rk[i - 1].key) K++;
    rank[rk[i].idx] = K;
  }
  // Time weight per patient (used for events): 1 (Harrell) or 1/G(t-)^2.
  int64_t n_events = 0;
  for (int64_t i = 0; i < n; i++) n_events += event[i];
  if (kind == PS_CINDEX_UNO && n_events >= 2) { // R falls back to weight 1 below 2 events
    censor_km_minus(n, ord, wt);
    for (int64_t i = 0; i < n; i++) wt[i] = 1.0 / (wt[i] * wt[i]);
  } else {
    for (int64_t i = 0; i < n; i++) wt[i] = 1.0;
  }
  if (kind == PS_CINDEX_UNO && tau > 0 && isfinite(tau))
    for (int64_t i = 0; i < n; i++)
      if (time[i] > tau) wt[i] = 0;

  // Everything below runs in time order: rank, weight and the per-patient
  // counts are indexed by sorted position (sequential memory; the variance
  // sums over patients in any order). pt holds point masses beside the
  // Fenwick tree so a tie needs no second prefix query.
  int64_t *rs = rank; // reuse: rank by sorted position
  double *ws = wt;    // reuse: weight by sorted position
  {
    double *tmpw = (double *)fw; // fw (N + 1) is free until the sweeps
    for (int64_t k = 0; k < n; k++) tmpw[k] = ws[ord[k].idx];
    memcpy(ws, tmpw, sz * sizeof *ws);
    int64_t *tmpr = (int64_t *)im; // im (3N) is free until the sweeps
    for (int64_t k = 0; k < n; k++) tmpr[k] = rs[ord[k].idx];
    memcpy(rs, tmpr, sz * sizeof *rs);
    memset(fw, 0, (sz + 1) * sizeof *fw);
    memset(im, 0, 3 * sz * sizeof *im);
  }
  double *pt = calloc(sz + 1, sizeof *pt);
  if (!pt) {
    free(ord), free(rk), free(rank), free(wt), free(im), free(fw);
    PS_FAIL(PS_ERR_MEM, "ps_cindex_compute: out of memory for %lld patients", (long long)n);
  }
  ps_cindex_counts cnt = {0, 0, 0, 0, 0};
  int64_t s0 = 0;
  while (s0 < n) { // one stratum [s0, s1)
    int64_t s1 = s0;
    while (s1 < n && ord[s1].stratum == ord[s0].stratum) s1++;
    // Sweep 1, descending time: each event against everyone who outlives it
    // (later times, and censorings at its own time).
    double tot = 0;
    for (int64_t hi = s1; hi > s0;) {
      int64_t lo = hi;
      while (lo > s0 && ord[lo - 1].time == ord[hi - 1].time) lo--;
      for (int64_t k = lo; k < hi; k++)
        if (!ord[k].event) fw_add(fw, K, rs[k], 1.0), pt[rs[k]] += 1, tot += 1;
      int64_t d = 0;
      for (int64_t k = lo; k < hi; k++) {
        if (!ord[k].event) continue;
        double w = ws[k], le = fw_sum(fw, rs[k]), eq = pt[rs[k]];
        double less = le - eq, greater = tot - le;
        im[3 * k] += w * less, im[3 * k + 1] += w * greater, im[3 * k + 2] += w * eq;
        cnt.concordant += w * less, cnt.discordant += w * greater, cnt.tied_risk += w * eq;
        rk[d++].key = (double)rs[k]; // reuse rk as scratch for the group's ranks
      }
      if (d > 1) { // two events at one time: not comparable, counted as tied_time / tied_both
        sort_dkey(rk, d);
        double w = ws[lo], same = 0;
        for (int64_t a = 0, b; a < d; a = b) {
          for (b = a; b < d && rk[b].key == rk[a].key; b++) {
          }
          same += 0.5 * (double)(b - a) * (double)(b - a - 1);
        }
        double all = 0.5 * (double)d * (double)(d - 1);
        cnt.tied_both += w * same, cnt.tied_time += w * (all - same);
      }
      for (int64_t k = lo; k < hi; k++)
        if (ord[k].event) fw_add(fw, K, rs[k], 1.0), pt[rs[k]] += 1, tot += 1;
      hi = lo;
    }
    for (int64_t k = s0; k < s1; k++) fw_clear(fw, K, rs[k]), pt[rs[k]] = 0;
    // Sweep 2, ascending time: each patient against the events that precede
    // it (and, for a censoring, the events at its own time), weighted.
    tot = 0;
    for (int64_t lo = s0; lo < s1;) {
      int64_t hi = lo;
      while (hi < s1 && ord[hi].time == ord[lo].time) hi++;
      for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
          for (int64_t k = lo; k < hi; k++)
            if (ord[k].event) fw_add(fw, K, rs[k], ws[k]), pt[rs[k]] += ws[k], tot += ws[k];
        for (int64_t k = lo; k < hi; k++) {
          if ((int)ord[k].event == pass) continue; // events query before, censorings after the group's events
          double le = fw_sum(fw, rs[k]), eq = pt[rs[k]];
          im[3 * k] += tot - le, im[3 * k + 1] += le - eq, im[3 * k + 2] += eq;
        }
      }
      lo = hi;
    }
    for (int64_t k = s0; k < s1; k++) fw_clear(fw, K, rs[k]), pt[rs[k]] = 0;
    s0 = s1;
  }
  free(pt);
  out->counts = cnt;
  double npair = cnt.concordant + cnt.discordant + cnt.tied_risk;
  if (npair > 0) {
    out->c = (cnt.concordant + 0.5 * cnt.tied_risk) / npair;
    double somer = (cnt.concordant - cnt.discordant) / npair, v = 0;
    for (int64_t i = 0; i < n; i++) {
      double df = (im[3 * i] - im[3 * i + 1]) / npair - (somer / npair) * (im[3 * i] + im[3 * i + 1] + im[3 * i + 2]);
      v += df * df;
    }
    out->var = v / 4;
    out->se = sqrt(out->var);
  }
  free(ord), free(rk), free(rank), free(wt), free(im), free(fw);
  return PS_OK;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// R quantile type 7 of sorted v (m).
static double quantile7(const double *v, int64_t m, double p) {
  double h = (double)(m - 1) * p;
  int64_t lo = (int64_t)floor(h);
  if (lo + 1 >= m) return v[m - 1];
  return v[lo] + (h - (double)lo) * (v[lo + 1] - v[lo]);
}

ps_status ps_cindex_bootstrap(ps_cindex_kind kind, int64_t n, const double *time, const uint8_t *event,
                              const double *risk, double tau, int64_t B, uint64_t seed, double *lo, double *hi) {
  PS_REQUIRE(B > 0 && n > 0 && lo && hi, "ps_cindex_bootstrap: need B > 0 and patients");
  size_t sz = (size_t)n;
  double *bt = malloc(sz * sizeof *bt), *br = malloc(sz * sizeof *br), *vals = malloc((size_t)B * sizeof *vals);
  uint8_t *be = malloc(sz);
  if (!bt || !br || !vals || !be) {
    free(bt), free(br), free(vals), free(be);
    PS_FAIL(PS_ERR_MEM, "ps_cindex_bootstrap: out of memory");
  }
  int64_t m = 0;
  ps_status s = PS_OK;
  for (int64_t b = 0; b < B && s == PS_OK; b++) {
    ps_rng r = ps_rng_make(seed, ps_rng_stream(PS_RNG_BOOTSTRAP, (uint64_t)b, (uint64_t)kind, 0));
    for (int64_t i = 0; i < n; i++) {
      int64_t j = (int64_t)ps_rng_below(&r, (uint64_t)i, (uint64_t)n);
      bt[i] = time[j], be[i] = event[j], br[i] = risk[j];
    }
    ps_cindex c;
    s = ps_cindex_compute(kind, n, bt, be, br, NULL, tau, &c);
    if (s == PS_OK && isfinite(c.c)) vals[m++] = c.c; // a resample without comparable pairs is skipped
  }
  if (s == PS_OK) {
    if (m == 0) {
      *lo = *hi = NAN;
    } else {
      qsort(vals, (size_t)m, sizeof *vals, cmp_double);
      *lo = quantile7(vals, m, 0.025);
      *hi = quantile7(vals, m, 0.975);
    }
  }
  free(bt), free(br), free(vals), free(be);
  return s;
}

// ---- Kaplan-Meier --------------------------------------------------------
void ps_km_free(ps_km *km) {
  if (!km) return;
  free(km->time), free(km->n_risk), free(km->n_event), free(km->n_censor), free(km->surv), free(km->std_err);
  free(km->lower), free(km->upper);
  memset(km, 0, sizeof *km);
}

// R quantile.survfit's rule on a step function (x, y) (U): the first time y
// reaches p; when y equals p (within tolerance) over an interval, the midpoint
// of that interval.
static double km_quantile(const double *x, const double *y, int64_t u, double p) {
  const double tol = sqrt(2.220446049250313e-16);
  for (int64_t k = 0; k < u; k++) {
    if (!isfinite(y[k])) continue;
    if (fabs(y[k] - p) < tol) {
      for (int64_t j = k + 1; j < u; j++)
        if (isfinite(y[j]) && y[j] < p - tol) return 0.5 * (x[k] + x[j]);
      return x[k]; // flat at p to the end: R reports the start
    }
    if (y[k] < p) return x[k];
  }
  return NAN;
}

ps_status ps_km_fit(int64_t n, const double *time, const uint8_t *event, ps_km *out) {
  PS_REQUIRE(out, "ps_km_fit: null output");
  PS_TRY(check_inputs(n, time, event, NULL));
  memset(out, 0, sizeof *out);
  size_t sz = (size_t)(n ? n : 1);
  dkey *o = malloc(sz * sizeof *o);
  out->time = malloc(sz * sizeof(double)), out->n_risk = malloc(sz * sizeof(double));
  out->n_event = malloc(sz * sizeof(double)), out->n_censor = malloc(sz * sizeof(double));
  out->surv = malloc(sz * sizeof(double)), out->std_err = malloc(sz * sizeof(double));
  out->lower = malloc(sz * sizeof(double)), out->upper = malloc(sz * sizeof(double));
  if (!o || !out->time || !out->n_risk || !out->n_event || !out->n_censor || !out->surv || !out->std_err ||
      !out->lower || !out->upper) {
    free(o);
    ps_km_free(out);
    PS_FAIL(PS_ERR_MEM, "ps_km_fit: out of memory");
  }
  for (int64_t i = 0; i < n; i++) o[i] = (dkey){time[i], i};
  qsort(o, (size_t)n, sizeof *o, dkey_cmp);
  const double z = 1.959963984540054; // qnorm(0.975)
  double s = 1, gw = 0;
  int64_t u = 0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    double d = 0, c = 0;
    while (j < n && o[j].key == o[i].key) d += event[o[j].idx], c += !event[o[j].idx], j++;
    double nr = (double)(n - i);
    s *= 1.0 - d / nr;
    gw += (nr > d) ? d / (nr * (nr - d)) : INFINITY;
    out->time[u] = o[i].key, out->n_risk[u] = nr, out->n_event[u] = d, out->n_censor[u] = c;
    out->surv[u] = s;
    out->std_err[u] = sqrt(gw);
    if (s > 0 && isfinite(gw)) {
      out->lower[u] = exp(log(s) - z * sqrt(gw));
      out->upper[u] = fmin(1.0, exp(log(s) + z * sqrt(gw)));
    } else {
      out->lower[u] = out->upper[u] = NAN;
    }
    u++;
    i = j;
  }
  out->u = u;
  out->median = km_quantile(out->time, out->surv, u, 0.5);
  out->median_lower = km_quantile(out->time, out->lower, u, 0.5);
  out->median_upper = km_quantile(out->time, out->upper, u, 0.5);
  free(o);
  return PS_OK;
}

// ---- log-rank --------------------------------------------------------------
void ps_logrank_free(ps_logrank *lr) {
  if (!lr) return;
  free(lr->observed), free(lr->expected);
  memset(lr, 0, sizeof *lr);
}

// Solves A x = b in place (m x m, Gaussian elimination with partial pivoting);
// returns the numerical rank, dropping pivots below tol (their x set to 0).
static int solve_sym(double *A, double *b, int m, double tol) {
  int rank = 0;
  int *piv = malloc((size_t)(m ? m : 1) * sizeof *piv);
  for (int c = 0; c < m; c++) piv[c] = 1;
  for (int c = 0; c < m; c++) { // Cholesky-style elimination keeping symmetry
    double p = A[c * m + c];
    if (p <= tol) {
      piv[c] = 0;
      continue;
    }
    rank++;
    for (int r = c + 1; r < m; r++) {
      double f = A[r * m + c] / p;
      for (int k = c; k < m; k++) A[r * m + k] -= f * A[c * m + k];
      b[r] -= f * b[c];
    }
  }
  for (int c = m - 1; c >= 0; c--) {
    if (!piv[c]) {
      b[c] = 0;
      continue;
    }
    double s = b[c];
    for (int k = c + 1; k < m; k++) s -= A[c * m + k] * b[k];
    b[c] = s / A[c * m + c];
  }
  free(piv);
  return rank;
}

ps_status ps_logrank_test(int64_t n, const double *time, const uint8_t *event, const int32_t *group, int32_t k,
                          ps_logrank *out) {
  PS_REQUIRE(out && k >= 1 && (n == 0 || group), "ps_logrank_test: bad arguments");
  PS_TRY(check_inputs(n, time, event, NULL));
  for (int64_t i = 0; i < n; i++)
    PS_REQUIRE(group[i] >= 0 && group[i] < k, "ps_logrank_test: patient %lld has group %d outside 0..%d",
               (long long)i, group[i], k - 1);
  memset(out, 0, sizeof *out);
  out->k = k;
  out->observed = calloc((size_t)k, sizeof(double));
  out->expected = calloc((size_t)k, sizeof(double));
  double *V = calloc((size_t)k * k, sizeof *V), *nr = calloc((size_t)k, sizeof *nr), *dg = calloc((size_t)k, sizeof *dg);
  dkey *o = malloc((size_t)(n ? n : 1) * sizeof *o);
  if (!out->observed || !out->expected || !V || !nr || !dg || !o) {
    free(V), free(nr), free(dg), free(o);
    ps_logrank_free(out);
    PS_FAIL(PS_ERR_MEM, "ps_logrank_test: out of memory");
  }
  for (int64_t i = 0; i < n; i++) o[i] = (dkey){time[i], i}, nr[group[i]] += 1;
  qsort(o, (size_t)n, sizeof *o, dkey_cmp);
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    double d = 0, ntot = (double)(n - i);
    memset(dg, 0, (size_t)k * sizeof *dg);
    while (j < n && o[j].key == o[i].key) {
      if (event[o[j].idx]) dg[group[o[j].idx]] += 1, d += 1;
      j++;
    }
    if (d > 0) {
      double f = ntot > 1 ? d * (ntot - d) / (ntot - 1) : 0;
      for (int g = 0; g < k; g++) {
        out->observed[g] += dg[g];
        out->expected[g] += d * nr[g] / ntot;
        for (int h = 0; h < k; h++) V[g * k + h] += f * (nr[g] / ntot) * ((g == h) - nr[h] / ntot);
      }
    }
    for (int64_t m = i; m < j; m++) nr[group[o[m].idx]] -= 1;
    i = j;
  }
  // chi^2 on the first K-1 groups (survdiff drops one; the rest is invariant).
  int m = k - 1;
  double *A = malloc((size_t)(m > 0 ? m * m : 1) * sizeof *A), *b = malloc((size_t)(m > 0 ? m : 1) * sizeof *b);
  double *b0 = malloc((size_t)(m > 0 ? m : 1) * sizeof *b0);
  for (int g = 0; g < m; g++) {
    b[g] = b0[g] = out->observed[g] - out->expected[g];
    for (int h = 0; h < m; h++) A[g * m + h] = V[g * k + h];
  }
  double scale = 0;
  for (int g = 0; g < m; g++) scale = fmax(scale, A[g * m + g]);
  int rank = solve_sym(A, b, m, 1e-10 * fmax(scale, 1e-300));
  double chisq = 0;
  for (int g = 0; g < m; g++) chisq += b0[g] * b[g];
  out->chisq = chisq;
  out->df = rank;
  out->p = rank > 0 ? ps_chisq_upper(chisq, rank) : NAN;
  free(A), free(b), free(b0), free(V), free(nr), free(dg), free(o);
  return PS_OK;
}

// ---- Breslow baseline, censoring KM, td-AUC, Brier -------------------------
void ps_breslow_free(ps_breslow *b) {
  if (!b) return;
  free(b->time), free(b->cumhaz);
  memset(b, 0, sizeof *b);
}

ps_status ps_breslow_fit(int64_t n, const double *time, const uint8_t *event, const double *eta, ps_breslow *out) {
  PS_REQUIRE(out && (n == 0 || eta), "ps_breslow_fit: bad arguments");
  PS_TRY(check_inputs(n, time, event, eta));
  memset(out, 0, sizeof *out);
  size_t sz = (size_t)(n ? n : 1);
  dkey *o = malloc(sz * sizeof *o);
  double *suffix = malloc((sz + 1) * sizeof *suffix);
  out->time = malloc(sz * sizeof(double)), out->cumhaz = malloc(sz * sizeof(double));
  if (!o || !suffix || !out->time || !out->cumhaz) {
    free(o), free(suffix);
    ps_breslow_free(out);
    PS_FAIL(PS_ERR_MEM, "ps_breslow_fit: out of memory");
  }
  for (int64_t i = 0; i < n; i++) o[i] = (dkey){time[i], i};
  qsort(o, (size_t)n, sizeof *o, dkey_cmp);
  // Risk-set sums from the end (stable: positive terms only).
  suffix[n] = 0;
  for (int64_t i = n - 1; i >= 0; i--) suffix[i] = suffix[i + 1] + exp(eta[o[i].idx]);
  double H = 0;
  int64_t u = 0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    double d = 0;
    while (j < n && o[j].key == o[i].key) d += event[o[j].idx], j++;
    if (d > 0) {
      H += d / suffix[i];
      out->time[u] = o[i].key, out->cumhaz[u] = H, u++;
    }
    i = j;
  }
  out->u = u;
  free(o), free(suffix);
  return PS_OK;
}

// Index of the last step at or before t (-1 when t precedes the first).
static int64_t step_index(const double *x, int64_t u, double t) {
  int64_t lo = 0, hi = u; // first x > t
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (x[mid] <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

double ps_breslow_surv(const ps_breslow *b, double t, double eta) {
  int64_t k = step_index(b->time, b->u, t);
  double H = k >= 0 ? b->cumhaz[k] : 0.0;
  return exp(-H * exp(eta));
}

void ps_censor_km_free(ps_censor_km *g) {
  if (!g) return;
  free(g->time), free(g->g);
  memset(g, 0, sizeof *g);
}

ps_status ps_censor_km_fit(int64_t n, const double *time, const uint8_t *event, ps_censor_km *out) {
  PS_REQUIRE(out, "ps_censor_km_fit: null output");
  PS_TRY(check_inputs(n, time, event, NULL));
  memset(out, 0, sizeof *out);
  size_t sz = (size_t)(n ? n : 1);
  dkey *o = malloc(sz * sizeof *o);
  out->time = malloc(sz * sizeof(double)), out->g = malloc(sz * sizeof(double));
  if (!o || !out->time || !out->g) {
    free(o);
    ps_censor_km_free(out);
    PS_FAIL(PS_ERR_MEM, "ps_censor_km_fit: out of memory");
  }
  for (int64_t i = 0; i < n; i++) o[i] = (dkey){time[i], i};
  qsort(o, (size_t)n, sizeof *o, dkey_cmp);
  double g = 1;
  int64_t u = 0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    double c = 0, d = 0;
    while (j < n && o[j].key == o[i].key) c += !event[o[j].idx], d += event[o[j].idx], j++;
    double at_risk = (double)(n - i) - d; // events leave first
    if (c > 0 && at_risk > 0) g *= 1.0 - c / at_risk;
    out->time[u] = o[i].key, out->g[u] = g, u++;
    i = j;
  }
  out->u = u;
  free(o);
  return PS_OK;
}

double ps_censor_km_at(const ps_censor_km *g, double t) {
  int64_t k = step_index(g->time, g->u, t);
  return k >= 0 ? g->g[k] : 1.0;
}

ps_status ps_td_auc(const ps_censor_km *g, int64_t n, const double *time, const uint8_t *event, const double *risk,
                    int64_t nt, const double *times, double *auc) {
  PS_REQUIRE(g && auc && nt >= 0 && (nt == 0 || times) && (n == 0 || risk), "ps_td_auc: bad arguments");
  PS_TRY(check_inputs(n, time, event, risk));
  size_t sz = (size_t)(n ? n : 1);
  dkey *o = malloc(sz * sizeof *o);
  double *w = malloc(sz * sizeof *w);
  if (!o || !w) {
    free(o), free(w);
    PS_FAIL(PS_ERR_MEM, "ps_td_auc: out of memory");
  }
  ps_status s = PS_OK;
  for (int64_t i = 0; i < n && s == PS_OK; i++) {
    o[i] = (dkey){risk[i], i};
    w[i] = 0;
    if (event[i]) {
      double gi = ps_censor_km_at(g, time[i]);
      if (!(gi > 0))
        s = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__,
                         "td-AUC: the training censoring survival G is 0 at the event time %g of patient %lld",
                         time[i], (long long)i);
      w[i] = 1.0 / gi;
    }
  }
  if (s == PS_OK) qsort(o, (size_t)n, sizeof *o, dkey_cmp);
  for (int64_t q = 0; q < nt && s == PS_OK; q++) {
    double t = times[q];
    // Ascending risk: each case counts the controls of lower risk (+1/2 equal).
    double num = 0, wcases = 0, controls = 0;
    for (int64_t a = 0, b; a < n; a = b) {
      double gcase = 0, gctrl = 0;
      for (b = a; b < n && o[b].key == o[a].key; b++) {
        int64_t i = o[b].idx;
        if (event[i] && time[i] <= t) gcase += w[i];
        else if (time[i] > t) gctrl += 1;
      }
      num += gcase * (controls + 0.5 * gctrl);
      wcases += gcase;
      controls += gctrl;
    }
    auc[q] = (wcases > 0 && controls > 0) ? num / (wcases * controls) : NAN;
  }
  free(o), free(w);
  return s;
}

ps_status ps_brier(const ps_censor_km *g, const ps_breslow *base, int64_t n, const double *time,
                   const uint8_t *event, const double *eta, int64_t nt, const double *times, double *brier,
                   double *ibs) {
  PS_REQUIRE(g && base && brier && nt >= 1 && times && n > 0 && eta, "ps_brier: bad arguments");
  PS_TRY(check_inputs(n, time, event, eta));
  for (int64_t q = 0; q < nt; q++) {
    double t = times[q], gt = ps_censor_km_at(g, t);
    if (!(gt > 0))
      PS_FAIL(PS_ERR_DATA, "Brier score: the training censoring survival G(%g) is 0; choose earlier times", t);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
      double st = ps_breslow_surv(base, t, eta[i]);
      if (event[i] && time[i] <= t) {
        double gi = ps_censor_km_at(g, time[i]);
        if (!(gi > 0))
          PS_FAIL(PS_ERR_DATA, "Brier score: G is 0 at the event time %g of patient %lld", time[i], (long long)i);
        sum += st * st / gi;
      } else if (time[i] > t) {
        sum += (1 - st) * (1 - st) / gt;
      }
    }
    brier[q] = sum / (double)n;
  }
  if (ibs) {
    if (nt < 2) {
      *ibs = NAN;
    } else {
      double area = 0;
      for (int64_t q = 1; q < nt; q++) area += 0.5 * (brier[q] + brier[q - 1]) * (times[q] - times[q - 1]);
      double span = times[nt - 1] - times[0];
      *ibs = span > 0 ? area / span : NAN;
    }
  }
  return PS_OK;
}
