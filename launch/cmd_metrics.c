// pansurv metrics: survival statistics of a risk score on a CSV file, with R
// survival conventions (higher risk = shorter survival).
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_commands.h"
#include "ps_csv.h"
#include "ps_metrics.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: pansurv metrics --csv FILE --time COL --event COL --risk COL [--group COL]\n"
          "                       [--times t1,t2,...] [--train FILE] [--tau T] [--km]\n"
          "                       [--bootstrap N --seed S] [--json]\n\n"
          "Harrell's C (with R's standard error and pair counts) and Uno's C always; with\n"
          "--times the cumulative/dynamic AUC, Brier scores and the integrated Brier score of\n"
          "S(t|x) = S0(t)^exp(risk) (Breslow S0 and censoring G from --train, a CSV with the same\n"
          "columns, or from FILE itself); with --group per-group C-indices and the log-rank test;\n"
          "--km adds the Kaplan-Meier curve; --bootstrap adds percentile intervals.\n"
          "--baseline FILE is a synonym of --train FILE.\n");
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static void json_num(FILE *f, double v) {
  if (isfinite(v)) fprintf(f, "%.17g", v);
  else fputs("null", f);
}

static void json_arr(FILE *f, const double *v, int64_t n) {
  fputc('[', f);
  for (int64_t i = 0; i < n; i++) {
    if (i) fputs(", ", f);
    json_num(f, v[i]);
  }
  fputc(']', f);
}

// Parses "a,b,c" into doubles (strictly increasing, >= 0).
static ps_status parse_times(const char *s, double **out, int64_t *nt) {
  int64_t n = 1;
  for (const char *p = s; *p; p++) n += *p == ',';
  double *v = malloc((size_t)n * sizeof *v);
  if (!v) PS_FAIL(PS_ERR_MEM, "out of memory");
  int64_t k = 0;
  const char *p = s;
  while (*p) {
    char *end;
    double t = strtod(p, &end);
    if (end == p || (*end && *end != ',') || !isfinite(t) || t < 0 || (k > 0 && t <= v[k - 1])) {
      free(v);
      PS_FAIL(PS_ERR_ARG, "--times '%s': expected increasing non-negative numbers separated by commas", s);
    }
    v[k++] = t;
    p = *end ? end + 1 : end;
  }
  *out = v, *nt = k;
  return PS_OK;
}

typedef struct {
  ps_csv_table t;
  int64_t n;
  double *time, *risk; // borrowed from t
  uint8_t *event;      // (N)
  int32_t *group;      // borrowed or NULL
} dataset;

static ps_status load_dataset(dataset *d, const char *csv, const char *tcol, const char *ecol, const char *rcol,
                              const char *gcol) {
  memset(d, 0, sizeof *d);
  const char *names[4] = {tcol, ecol, rcol, gcol};
  ps_csv_kind kinds[4] = {PS_CSV_NUMERIC, PS_CSV_NUMERIC, PS_CSV_NUMERIC, PS_CSV_LABEL};
  PS_TRY(ps_csv_load(&d->t, csv, gcol ? 4 : 3, names, kinds));
  d->n = d->t.n_rows;
  d->time = d->t.cols[0].num, d->risk = d->t.cols[2].num;
  d->group = gcol ? d->t.cols[3].label : NULL;
  d->event = malloc((size_t)(d->n ? d->n : 1));
  if (!d->event) PS_FAIL(PS_ERR_MEM, "out of memory");
  for (int64_t i = 0; i < d->n; i++) {
    double e = d->t.cols[1].num[i];
    if (e != 0 && e != 1)
      PS_FAIL(PS_ERR_DATA, "%s: row %lld, column '%s': event %g; expected 0 or 1", csv, (long long)(i + 1), ecol, e);
    if (d->time[i] < 0)
      PS_FAIL(PS_ERR_DATA, "%s: row %lld, column '%s': negative time %g", csv, (long long)(i + 1), tcol, d->time[i]);
    d->event[i] = (uint8_t)e;
  }
  if (d->n == 0) PS_FAIL(PS_ERR_DATA, "%s: no data rows", csv);
  return PS_OK;
}

static void free_dataset(dataset *d) {
  free(d->event);
  ps_csv_table_free(&d->t);
}

int ps_cmd_metrics(int argc, char **argv) {
  const char *csv = NULL, *tcol = NULL, *ecol = NULL, *rcol = NULL, *gcol = NULL, *times_s = NULL, *train = NULL;
  double tau = 0;
  long long boot = 0, seed = 0;
  bool json = false, km_out = false, have_seed = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int has = i + 1 < argc;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--json")) json = true;
    else if (!strcmp(a, "--km")) km_out = true;
    else if (!strcmp(a, "--csv") && has) csv = argv[++i];
    else if (!strcmp(a, "--time") && has) tcol = argv[++i];
    else if (!strcmp(a, "--event") && has) ecol = argv[++i];
    else if (!strcmp(a, "--risk") && has) rcol = argv[++i];
    else if (!strcmp(a, "--group") && has) gcol = argv[++i];
    else if (!strcmp(a, "--times") && has) times_s = argv[++i];
    else if ((!strcmp(a, "--train") || !strcmp(a, "--baseline")) && has) train = argv[++i];
    else if (!strcmp(a, "--tau") && has) {
      char *end;
      tau = strtod(argv[++i], &end);
      if (*end || !(tau > 0)) {
        fprintf(stderr, "pansurv metrics: --tau '%s': expected a positive number\n", argv[i]);
        return 2;
      }
    } else if (!strcmp(a, "--bootstrap") && has) {
      char *end;
      boot = strtoll(argv[++i], &end, 10);
      if (*end || boot <= 0) {
        fprintf(stderr, "pansurv metrics: --bootstrap '%s': expected a positive integer\n", argv[i]);
        return 2;
      }
    } else if (!strcmp(a, "--seed") && has) {
      char *end;
      seed = strtoll(argv[++i], &end, 10);
      have_seed = true;
      if (*end) {
        fprintf(stderr, "pansurv metrics: --seed '%s': expected an integer\n", argv[i]);
        return 2;
      }
    } else {
      fprintf(stderr, "pansurv metrics: unknown or incomplete option '%s'\n\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!csv || !tcol || !ecol || !rcol) {
    fprintf(stderr, "pansurv metrics: --csv, --time, --event and --risk are required\n\n");
    usage(stderr);
    return 2;
  }
  if (boot > 0 && !have_seed) {
    fprintf(stderr, "pansurv metrics: --bootstrap needs --seed (so the interval can be reproduced)\n");
    return 2;
  }
  int rc = 1;
  dataset d = {0}, tr = {0};
  double *times = NULL, *auc = NULL, *brier = NULL, ibs = NAN;
  int64_t nt = 0;
  ps_km km = {0};
  ps_logrank lr = {0};
  ps_breslow base = {0};
  ps_censor_km gk = {0};
  ps_cindex h, u;
  double hlo = NAN, hhi = NAN, ulo = NAN, uhi = NAN;
  ps_status s = PS_OK;
  if (times_s && (s = parse_times(times_s, &times, &nt)) != PS_OK) goto fail;
  if ((s = load_dataset(&d, csv, tcol, ecol, rcol, gcol)) != PS_OK) goto fail;
  int64_t events = 0;
  for (int64_t i = 0; i < d.n; i++) events += d.event[i];
  if ((s = ps_cindex_compute(PS_CINDEX_HARRELL, d.n, d.time, d.event, d.risk, NULL, 0, &h)) != PS_OK) goto fail;
  if ((s = ps_cindex_compute(PS_CINDEX_UNO, d.n, d.time, d.event, d.risk, NULL, tau, &u)) != PS_OK) goto fail;
  if (boot > 0) {
    if ((s = ps_cindex_bootstrap(PS_CINDEX_HARRELL, d.n, d.time, d.event, d.risk, 0, boot, (uint64_t)seed, &hlo,
                                 &hhi)) != PS_OK)
      goto fail;
    if ((s = ps_cindex_bootstrap(PS_CINDEX_UNO, d.n, d.time, d.event, d.risk, tau, boot, (uint64_t)seed, &ulo,
                                 &uhi)) != PS_OK)
      goto fail;
  }
  if ((s = ps_km_fit(d.n, d.time, d.event, &km)) != PS_OK) goto fail;
  if (nt > 0) {
    const dataset *src = &d;
    if (train) {
      if ((s = load_dataset(&tr, train, tcol, ecol, rcol, NULL)) != PS_OK) goto fail;
      src = &tr;
    } else {
      fprintf(stderr, "note: metrics: no --train file; the Breslow baseline and the censoring distribution G "
                      "come from %s itself\n", csv);
    }
    auc = malloc((size_t)nt * sizeof *auc), brier = malloc((size_t)nt * sizeof *brier);
    if (!auc || !brier) {
      s = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "out of memory");
      goto fail;
    }
    if ((s = ps_censor_km_fit(src->n, src->time, src->event, &gk)) != PS_OK) goto fail;
    if ((s = ps_breslow_fit(src->n, src->time, src->event, src->risk, &base)) != PS_OK) goto fail;
    if ((s = ps_td_auc(&gk, d.n, d.time, d.event, d.risk, nt, times, auc)) != PS_OK) goto fail;
    if ((s = ps_brier(&gk, &base, d.n, d.time, d.event, d.risk, nt, times, brier, &ibs)) != PS_OK) goto fail;
  }
  int32_t K = gcol ? d.t.cols[3].n_levels : 0;
  if (gcol && (s = ps_logrank_test(d.n, d.time, d.event, d.group, K, &lr)) != PS_OK) goto fail;

  FILE *f = stdout;
  if (json) {
    fputs("{\"harrell_c\": ", f), json_num(f, h.c);
    fputs(", \"harrell_c_se\": ", f), json_num(f, h.se);
    fprintf(f, ", \"counts\": {\"concordant\": %.17g, \"discordant\": %.17g, \"tied_risk\": %.17g, "
               "\"tied_time\": %.17g, \"tied_both\": %.17g}",
            h.counts.concordant, h.counts.discordant, h.counts.tied_risk, h.counts.tied_time, h.counts.tied_both);
    fputs(", \"uno_c\": ", f), json_num(f, u.c);
    if (tau > 0) fputs(", \"tau\": ", f), json_num(f, tau);
    fprintf(f, ", \"n\": %lld, \"events\": %lld", (long long)d.n, (long long)events);
    fputs(", \"km_median\": ", f), json_num(f, km.median);
    if (boot > 0) {
      fprintf(f, ", \"bootstrap\": {\"n\": %lld, \"seed\": %lld, \"harrell_c_ci\": ", boot, seed);
      double hc[2] = {hlo, hhi}, uc[2] = {ulo, uhi};
      json_arr(f, hc, 2);
      fputs(", \"uno_c_ci\": ", f);
      json_arr(f, uc, 2);
      fputc('}', f);
    }
    if (nt > 0) {
      fputs(", \"td_auc\": {", f);
      for (int64_t q = 0; q < nt; q++) {
        fprintf(f, "%s\"%.17g\": ", q ? ", " : "", times[q]);
        json_num(f, auc[q]);
      }
      fputs("}, \"brier\": {", f);
      for (int64_t q = 0; q < nt; q++) {
        fprintf(f, "%s\"%.17g\": ", q ? ", " : "", times[q]);
        json_num(f, brier[q]);
      }
      fputs("}, \"ibs\": ", f), json_num(f, ibs);
    }
    if (km_out) {
      fputs(", \"km\": {\"time\": ", f), json_arr(f, km.time, km.u);
      fputs(", \"n_risk\": ", f), json_arr(f, km.n_risk, km.u);
      fputs(", \"n_event\": ", f), json_arr(f, km.n_event, km.u);
      fputs(", \"surv\": ", f), json_arr(f, km.surv, km.u);
      fputs(", \"std_err\": ", f), json_arr(f, km.std_err, km.u);
      fputs(", \"lower\": ", f), json_arr(f, km.lower, km.u);
      fputs(", \"upper\": ", f), json_arr(f, km.upper, km.u);
      fputs(", \"median\": ", f), json_num(f, km.median);
      fputs(", \"median_lower\": ", f), json_num(f, km.median_lower);
      fputs(", \"median_upper\": ", f), json_num(f, km.median_upper);
      fputc('}', f);
    }
    if (gcol) {
      fprintf(f, ", \"logrank\": {\"chisq\": %.17g, \"df\": %d, \"p\": ", lr.chisq, lr.df);
      json_num(f, lr.p);
      fputs(", \"observed\": {", f);
      for (int32_t g = 0; g < K; g++) {
        fputs(g ? ", " : "", f), json_str(f, d.t.cols[3].levels[g]), fputs(": ", f), json_num(f, lr.observed[g]);
      }
      fputs("}, \"expected\": {", f);
      for (int32_t g = 0; g < K; g++) {
        fputs(g ? ", " : "", f), json_str(f, d.t.cols[3].levels[g]), fputs(": ", f), json_num(f, lr.expected[g]);
      }
      fputs("}}, \"per_group\": {", f);
    }
  } else {
    printf("n = %lld, events = %lld\n", (long long)d.n, (long long)events);
    printf("Harrell's C = %.6f (se %.6f); pairs: concordant %.0f, discordant %.0f, tied risk %.0f, tied time %.0f, "
           "tied both %.0f\n",
           h.c, h.se, h.counts.concordant, h.counts.discordant, h.counts.tied_risk, h.counts.tied_time,
           h.counts.tied_both);
    printf("Uno's C = %.6f%s\n", u.c, tau > 0 ? " (truncated at tau)" : "");
    if (boot > 0) printf("bootstrap 95%% CI (%lld resamples): Harrell [%.6f, %.6f], Uno [%.6f, %.6f]\n", boot, hlo, hhi, ulo, uhi);
    printf("Kaplan-Meier median = %g [%g, %g]\n", km.median, km.median_lower, km.median_upper);
    for (int64_t q = 0; q < nt; q++) printf("t = %-10g AUC = %.6f  Brier = %.6f\n", times[q], auc[q], brier[q]);
    if (nt > 1) printf("integrated Brier score = %.6f\n", ibs);
    if (gcol) printf("log-rank: chisq = %.4f on %d df, p = %.4g\n", lr.chisq, lr.df, lr.p);
  }
  // Per-group statistics: the same computations on each group's patients.
  if (gcol) {
    double *gt = malloc((size_t)d.n * sizeof *gt), *gr = malloc((size_t)d.n * sizeof *gr);
    uint8_t *ge = malloc((size_t)d.n);
    if (!gt || !gr || !ge) {
      free(gt), free(gr), free(ge);
      s = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "out of memory");
      goto fail;
    }
    for (int32_t g = 0; g < K && s == PS_OK; g++) {
      int64_t m = 0, ev = 0;
      for (int64_t i = 0; i < d.n; i++)
        if (d.group[i] == g) gt[m] = d.time[i], ge[m] = d.event[i], gr[m] = d.risk[i], ev += d.event[i], m++;
      ps_cindex gh, gu;
      ps_km gkm;
      s = ps_cindex_compute(PS_CINDEX_HARRELL, m, gt, ge, gr, NULL, 0, &gh);
      if (s == PS_OK) s = ps_cindex_compute(PS_CINDEX_UNO, m, gt, ge, gr, NULL, tau, &gu);
      if (s == PS_OK) s = ps_km_fit(m, gt, ge, &gkm);
      if (s != PS_OK) break;
      const char *name = d.t.cols[3].levels[g];
      if (json) {
        fputs(g ? ", " : "", f), json_str(f, name);
        fprintf(f, ": {\"n\": %lld, \"events\": %lld, \"harrell_c\": ", (long long)m, (long long)ev);
        json_num(f, gh.c), fputs(", \"harrell_c_se\": ", f), json_num(f, gh.se);
        fputs(", \"uno_c\": ", f), json_num(f, gu.c);
        fputs(", \"km_median\": ", f), json_num(f, gkm.median);
        fputc('}', f);
      } else {
        printf("group %-16s n = %-6lld events = %-6lld Harrell's C = %.6f (se %.6f)  Uno's C = %.6f  KM median = %g\n",
               name, (long long)m, (long long)ev, gh.c, gh.se, gu.c, gkm.median);
      }
      ps_km_free(&gkm);
    }
    free(gt), free(gr), free(ge);
    if (s != PS_OK) goto fail;
    if (json) fputc('}', f);
  }
  if (json) fputs("}\n", f);
  rc = 0;
fail:
  if (rc) rc = ps_report_error("metrics", s);
  free(times), free(auc), free(brier);
  ps_km_free(&km);
  ps_logrank_free(&lr);
  ps_breslow_free(&base);
  ps_censor_km_free(&gk);
  free_dataset(&d);
  free_dataset(&tr);
  return rc;
}
