// pansurv coxph: the classical Cox proportional hazards fit on a CSV file,
// the baseline every survival paper reports and a cross-check of the loss.
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_commands.h"
#include "ps_coxph.h"
#include "ps_csv.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: pansurv coxph --csv FILE --time COL --event COL [--covariates a,b,...] [--strata COL]\n"
          "                     [--ties efron|breslow] [--standardize] [--json]\n\n"
          "Newton-Raphson fit of the Cox model as R survival::coxph (Efron ties by default).\n"
          "Without --covariates every other column is a covariate. With --json stdout carries one\n"
          "JSON object (coef, se, loglik, loglik_null, concordance, n, events, iterations,\n"
          "converged, tests); notes go to stderr.\n");
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

// Splits a comma list in place into names (returns the count).
static int64_t split_list(char *s, char ***out) {
  int64_t n = 1;
  for (char *p = s; *p; p++) n += *p == ',';
  char **v = malloc((size_t)n * sizeof *v);
  if (!v) return -1;
  int64_t k = 0;
  for (char *tok = s;; tok = NULL) {
    char *t = strtok(tok, ",");
    if (!t) break;
    v[k++] = t;
  }
  *out = v;
  return k;
}

int ps_cmd_coxph(int argc, char **argv) {
  const char *csv = NULL, *tcol = NULL, *ecol = NULL, *scol = NULL, *ties_s = "efron";
  char *covs = NULL;
  bool json = false, standardize = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int has = i + 1 < argc;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--json")) json = true;
    else if (!strcmp(a, "--standardize")) standardize = true;
    else if (!strcmp(a, "--csv") && has) csv = argv[++i];
    else if (!strcmp(a, "--time") && has) tcol = argv[++i];
    else if (!strcmp(a, "--event") && has) ecol = argv[++i];
    else if (!strcmp(a, "--strata") && has) scol = argv[++i];
    else if (!strcmp(a, "--ties") && has) ties_s = argv[++i];
    else if (!strcmp(a, "--covariates") && has) covs = argv[++i];
    else {
      fprintf(stderr, "pansurv coxph: unknown or incomplete option '%s'\n\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!csv || !tcol || !ecol) {
    fprintf(stderr, "pansurv coxph: --csv, --time and --event are required\n\n");
    usage(stderr);
    return 2;
  }
  ps_cox_ties ties;
  if (ps_cox_ties_parse(ties_s, &ties) != PS_OK) return ps_report_error("coxph", PS_ERR_ARG);

  int rc = 1;
  ps_csv_table hdr = {0}, t = {0};
  char **names = NULL, **cov = NULL;
  ps_csv_kind *kinds = NULL;
  double *x = NULL;
  uint8_t *event = NULL;
  ps_coxph_fit fit = {0};
  int64_t p = 0;
  ps_status s = ps_csv_load(&hdr, csv, 0, NULL, NULL);
  if (s != PS_OK) goto fail;
  if (covs) {
    p = split_list(covs, &cov);
  } else { // every other column
    cov = malloc((size_t)(hdr.n_header ? hdr.n_header : 1) * sizeof *cov);
    for (int64_t c = 0; cov && c < hdr.n_header; c++) {
      const char *h = hdr.header[c];
      if (strcmp(h, tcol) && strcmp(h, ecol) && (!scol || strcmp(h, scol))) cov[p++] = hdr.header[c];
    }
    if (cov && p > 0) fprintf(stderr, "note: coxph: no --covariates; using the other %lld columns\n", (long long)p);
  }
  if (!cov || p < 0) {
    s = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "out of memory");
    goto fail;
  }
  if (p == 0) {
    s = ps_error_set(PS_ERR_ARG, __FILE__, __LINE__, "%s: no covariates to fit", csv);
    goto fail;
  }
  int64_t ncol = 2 + p + (scol ? 1 : 0);
  names = malloc((size_t)ncol * sizeof *names);
  kinds = malloc((size_t)ncol * sizeof *kinds);
  if (!names || !kinds) {
    s = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "out of memory");
    goto fail;
  }
  names[0] = (char *)tcol, names[1] = (char *)ecol;
  kinds[0] = kinds[1] = PS_CSV_NUMERIC;
  for (int64_t k = 0; k < p; k++) names[2 + k] = cov[k], kinds[2 + k] = PS_CSV_NUMERIC;
  if (scol) names[ncol - 1] = (char *)scol, kinds[ncol - 1] = PS_CSV_LABEL;
  s = ps_csv_load(&t, csv, ncol, (const char *const *)names, kinds);
  if (s != PS_OK) goto fail;
  int64_t n = t.n_rows;
  x = malloc((size_t)(n ? n : 1) * (size_t)p * sizeof *x);
  event = malloc((size_t)(n ? n : 1));
  if (!x || !event) {
    s = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "out of memory for %lld rows", (long long)n);
    goto fail;
  }
  for (int64_t i = 0; i < n; i++) {
    double e = t.cols[1].num[i], tm = t.cols[0].num[i];
    if (e != 0 && e != 1) {
      s = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: row %lld, column '%s': event %g; expected 0 or 1", csv,
                       (long long)(i + 1), ecol, e);
      goto fail;
    }
    if (tm < 0) {
      s = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: row %lld, column '%s': negative time %g", csv,
                       (long long)(i + 1), tcol, tm);
      goto fail;
    }
    event[i] = (uint8_t)e;
    for (int64_t k = 0; k < p; k++) x[i * p + k] = t.cols[2 + k].num[i];
  }
  ps_coxph_input in = {n, p, t.cols[0].num, event, scol ? t.cols[ncol - 1].label : NULL, x,
                       (const char *const *)cov, ties, standardize, 0, 0};
  s = ps_coxph(&in, &fit);
  if (s != PS_OK) goto fail;
  if (!fit.converged)
    fprintf(stderr, "warning: coxph: not converged after %d iterations (relative loglik change > 1e-12)\n",
            fit.iterations);
  if (json) {
    FILE *f = stdout;
    fputs("{\"coef\": {", f);
    for (int64_t k = 0; k < p; k++) {
      fputs(k ? ", " : "", f);
      json_str(f, cov[k]);
      fputs(": ", f);
      json_num(f, fit.coef[k]);
    }
    fputs("}, \"se\": {", f);
    for (int64_t k = 0; k < p; k++) {
      fputs(k ? ", " : "", f);
      json_str(f, cov[k]);
      fputs(": ", f);
      json_num(f, fit.se[k]);
    }
    fputs("}, \"loglik\": ", f), json_num(f, fit.loglik);
    fputs(", \"loglik_null\": ", f), json_num(f, fit.loglik_null);
    fputs(", \"concordance\": ", f), json_num(f, fit.concordance);
    fprintf(f, ", \"n\": %lld, \"events\": %lld, \"iterations\": %d, \"converged\": %s, \"ties\": \"%s\"",
            (long long)fit.n, (long long)fit.events, fit.iterations, fit.converged ? "true" : "false",
            ps_cox_ties_name(ties));
    fprintf(f, ", \"standardized\": %s", standardize ? "true" : "false");
    fputs(", \"lr_test\": {\"chisq\": ", f), json_num(f, fit.lr);
    fprintf(f, ", \"df\": %lld, \"p\": ", (long long)p), json_num(f, fit.lr_p);
    fputs("}, \"wald_test\": {\"chisq\": ", f), json_num(f, fit.wald);
    fprintf(f, ", \"df\": %lld, \"p\": ", (long long)p), json_num(f, fit.wald_p);
    fputs("}, \"score_test\": {\"chisq\": ", f), json_num(f, fit.score);
    fprintf(f, ", \"df\": %lld, \"p\": ", (long long)p), json_num(f, fit.score_p);
    fputs("}}\n", f);
  } else {
    printf("Cox proportional hazards (%s ties%s): n = %lld, events = %lld%s\n\n", ps_cox_ties_name(ties),
           scol ? ", stratified" : "", (long long)fit.n, (long long)fit.events,
           standardize ? ", covariates standardized (sd, n-1)" : "");
    printf("%-20s %14s %14s %14s %10s %12s\n", "", "coef", "exp(coef)", "se(coef)", "z", "p");
    for (int64_t k = 0; k < p; k++) {
      double z = fit.coef[k] / fit.se[k];
      printf("%-20s %14.7g %14.7g %14.7g %10.4f %12.4g\n", cov[k], fit.coef[k], exp(fit.coef[k]), fit.se[k], z,
             ps_chisq_upper(z * z, 1));
    }
    printf("\nloglik %.10g (null %.10g), %d iterations%s\n", fit.loglik, fit.loglik_null, fit.iterations,
           fit.converged ? "" : " (NOT converged)");
    printf("Concordance = %.6f\n", fit.concordance);
    printf("Likelihood ratio test = %.4f on %lld df, p = %.4g\n", fit.lr, (long long)p, fit.lr_p);
    printf("Wald test             = %.4f on %lld df, p = %.4g\n", fit.wald, (long long)p, fit.wald_p);
    printf("Score (logrank) test  = %.4f on %lld df, p = %.4g\n", fit.score, (long long)p, fit.score_p);
  }
  rc = 0;
fail:
  if (rc) rc = ps_report_error("coxph", s);
  ps_coxph_fit_free(&fit);
  free(x), free(event), free(names), free(kinds), free(cov);
  ps_csv_table_free(&t);
  ps_csv_table_free(&hdr);
  return rc;
}
