// ps_coxph: classical Cox fit (see ps_coxph.h).
// Letters: N patients, P covariates.
#include "ps_coxph.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_metrics.h"

// ---- chi-square upper tail: Q(df/2, x/2), series or continued fraction -----
static double gamma_q(double a, double x) {
  if (x <= 0) return 1.0;
  double lg = lgamma(a);
  if (x < a + 1) { // series for P
    double ap = a, sum = 1.0 / a, del = sum;
    for (int n = 0; n < 1000; n++) {
      ap += 1;
      del *= x / ap;
      sum += del;
      if (fabs(del) < fabs(sum) * 1e-16) break;
    }
    return 1.0 - sum * exp(-x + a * log(x) - lg);
  }
  // Lentz continued fraction for Q
  double b = x + 1 - a, c = 1.0 / 1e-300, d = 1.0 / b, h = d;
  for (int i = 1; i < 1000; i++) {
    double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (fabs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (fabs(c) < 1e-300) c = 1e-300;
    d = 1.0 / d;
    double del = d * c;
    h *= del;
    if (fabs(del - 1) < 1e-16) break;
  }
  return exp(-x + a * log(x) - lg) * h;
}

double ps_chisq_upper(double x, double df) {
  if (!(df > 0) || isnan(x)) return NAN;
  return gamma_q(0.5 * df, 0.5 * x);
}

void ps_coxph_fit_free(ps_coxph_fit *f) {
  if (!f) return;
  free(f->coef), free(f->se), free(f->var);
  memset(f, 0, sizeof *f);
}

// ---- dense helpers (P x P, row-major) ----------------------------------
// Cholesky A = L L^T in place (lower); returns the first column whose pivot
// falls below tol * its original diagonal, or -1.
static int64_t cholesky(double *A, int64_t p, double tol) {
  for (int64_t j = 0; j < p; j++) {
    double orig = A[j * p + j], s = orig;
    for (int64_t k = 0; k < j; k++) s -= A[j * p + k] * A[j * p + k];
    if (!(s > tol * fabs(orig)) || !(orig > 0)) return j;
    double l = sqrt(s);
    A[j * p + j] = l;
    for (int64_t i = j + 1; i < p; i++) {
      double t = A[i * p + j];
      for (int64_t k = 0; k < j; k++) t -= A[i * p + k] * A[j * p + k];
      A[i * p + j] = t / l;
    }
  }
  return -1;
}

static void chol_solve(const double *L, int64_t p, double *b) {
  for (int64_t i = 0; i < p; i++) {
    double s = b[i];
    for (int64_t k = 0; k < i; k++) s -= L[i * p + k] * b[k];
    b[i] = s / L[i * p + i];
  }
  for (int64_t i = p - 1; i >= 0; i--) {
    double s = b[i];
    for (int64_t k = i + 1; k < p; k++) s -= L[k * p + i] * b[k];
    b[i] = s / L[i * p + i];
  }
}

// ---- the likelihood, score and information on sorted, centred data ---------
typedef struct {
  int64_t n, p;
  const double *x;        // (N, P) centred, sorted
  const uint8_t *event;   // (N) sorted
  const double *time;     // (N) sorted
  const int32_t *stratum; // (N) sorted or NULL
  ps_cox_ties ties;
  // scratch
  double *eta;                      // (N)
  double *s1, *s2, *c1, *c2, *d1, *d2, *t1; // (P), (P,P)
} cox_problem;

static void loglik_score_info(cox_problem *pb, const double *beta, double *ll_out, double *u, double *I) {
  const int64_t n = pb->n, p = pb->p;
  double shift = -INFINITY;
  for (int64_t i = 0; i < n; i++) {
    double e = 0;
    for (int64_t k = 0; k < p; k++) e += pb->x[i * p + k] * beta[k];
    pb->eta[i] = e;
    shift = e > shift ? e : shift;
  }
  if (u) memset(u, 0, (size_t)p * sizeof *u);
  if (I) memset(I, 0, (size_t)(p * p) * sizeof *I);
  double ll = 0, S0 = 0;
  double *S1 = pb->s1, *S2 = pb->s2, *C1 = pb->c1, *C2 = pb->c2, *D1 = pb->d1, *D2 = pb->d2, *T1 = pb->t1;
  for (int64_t hi = n; hi > 0;) {
    int64_t lo = hi;
    while (lo > 0 && pb->time[lo - 1] == pb->time[hi - 1] &&
           (!pb->stratum || pb->stratum[lo - 1] == pb->stratum[hi - 1]))
      lo--;
    if (hi == n || (pb->stratum && pb->stratum[hi] != pb->stratum[hi - 1])) { // new stratum
      S0 = 0;
      memset(S1, 0, (size_t)p * sizeof *S1);
      memset(S2, 0, (size_t)(p * p) * sizeof *S2);
    }
    double C0 = 0, D0 = 0;
    int64_t d = 0;
    memset(C1, 0, (size_t)p * sizeof *C1), memset(D1, 0, (size_t)p * sizeof *D1);
    memset(C2, 0, (size_t)(p * p) * sizeof *C2), memset(D2, 0, (size_t)(p * p) * sizeof *D2);
    for (int64_t i = lo; i < hi; i++) {
      const double *xi = pb->x + i * p;
      double r = exp(pb->eta[i] - shift);
      double *A0 = pb->event[i] ? &D0 : &C0, *A1 = pb->event[i] ? D1 : C1, *A2 = pb->event[i] ? D2 : C2;
      *A0 += r;
      for (int64_t a = 0; a < p; a++) {
        A1[a] += r * xi[a];
        for (int64_t b = 0; b <= a; b++) A2[a * p + b] += r * xi[a] * xi[b];
      }
      if (pb->event[i]) {
        d++;
        ll += pb->eta[i];
        if (u)
          for (int64_t a = 0; a < p; a++) u[a] += xi[a];
      }
    }
    // Risk set without the tied deaths: previous risk set + this group's censorings.
    S0 += C0;
    for (int64_t a = 0; a < p; a++) {
      S1[a] += C1[a];
      for (int64_t b = 0; b <= a; b++) S2[a * p + b] += C2[a * p + b];
    }
    for (int64_t r = 0; r < d; r++) {
      double f = (pb->ties == PS_COX_EFRON) ? 1.0 - (double)r / (double)d : 1.0;
      double s0 = S0 + f * D0;
      ll -= log(s0) + shift;
      for (int64_t a = 0; a < p; a++) T1[a] = (S1[a] + f * D1[a]) / s0;
      if (u)
        for (int64_t a = 0; a < p; a++) u[a] -= T1[a];
      if (I)
        for (int64_t a = 0; a < p; a++)
          for (int64_t b = 0; b <= a; b++) I[a * p + b] += (S2[a * p + b] + f * D2[a * p + b]) / s0 - T1[a] * T1[b];
    }
    S0 += D0;
    for (int64_t a = 0; a < p; a++) {
      S1[a] += D1[a];
      for (int64_t b = 0; b <= a; b++) S2[a * p + b] += D2[a * p + b];
    }
    hi = lo;
  }
  if (I)
    for (int64_t a = 0; a < p; a++)
      for (int64_t b = 0; b < a; b++) I[b * p + a] = I[a * p + b];
  *ll_out = ll;
}

ps_status ps_coxph(const ps_coxph_input *in, ps_coxph_fit *out) {
  PS_REQUIRE(in && out && in->n >= 0 && in->p >= 0 && (in->p == 0 || in->x), "ps_coxph: bad arguments");
  PS_REQUIRE(in->ties >= 0 && in->ties < PS_COX_TIES_COUNT, "ps_coxph: bad ties mode");
  memset(out, 0, sizeof *out);
  const int64_t n = in->n, p = in->p;
  ps_cox_batch b = {n, in->time, in->event, in->stratum, NULL};
  PS_TRY(ps_cox_batch_validate(&b));
  int64_t events = 0;
  for (int64_t i = 0; i < n; i++) events += in->event[i];
  if (events == 0) PS_FAIL(PS_ERR_DATA, "coxph: no events among %lld patients; nothing to fit", (long long)n);
  const int max_iter = in->max_iter > 0 ? in->max_iter : 50;
  const double eps = in->eps > 0 ? in->eps : 1e-12;
  size_t np = (size_t)(n ? n : 1), pp = (size_t)(p ? p : 1);
  ps_cox_work *w = NULL;
  cox_problem pb = {0};
  double *x = malloc(np * pp * sizeof *x), *time = malloc(np * sizeof *time), *mean = calloc(pp, sizeof *mean);
  double *scale = malloc(pp * sizeof *scale);
  uint8_t *event = malloc(np);
  int32_t *strat = malloc(np * sizeof *strat);
  int64_t *perm = malloc(np * sizeof *perm);
  double *beta = calloc(pp, sizeof *beta), *nb = calloc(pp, sizeof *nb), *u = malloc(pp * sizeof *u);
  double *I = malloc(pp * pp * sizeof *I), *L = malloc(pp * pp * sizeof *L), *step = malloc(pp * sizeof *step);
  double *u0 = malloc(pp * sizeof *u0), *risk = malloc(np * sizeof *risk);
  out->coef = calloc(pp, sizeof(double)), out->se = calloc(pp, sizeof(double)), out->var = calloc(pp * pp, sizeof(double));
  pb.eta = malloc(np * sizeof(double));
  pb.s1 = malloc(pp * sizeof(double)), pb.c1 = malloc(pp * sizeof(double)), pb.d1 = malloc(pp * sizeof(double));
  pb.t1 = malloc(pp * sizeof(double));
  pb.s2 = malloc(pp * pp * sizeof(double)), pb.c2 = malloc(pp * pp * sizeof(double)), pb.d2 = malloc(pp * pp * sizeof(double));
  ps_status s = PS_OK;
#define COXPH_FAIL(st, ...)                                                                                  \
  do {                                                                                                       \
    s = ps_error_set((st), __FILE__, __LINE__, __VA_ARGS__);                                                 \
    goto done;                                                                                               \
  } while (0)
  if (!x || !time || !mean || !scale || !event || !strat || !perm || !beta || !nb || !u || !I || !L || !step ||
      !u0 || !risk || !out->coef || !out->se || !out->var || !pb.eta || !pb.s1 || !pb.c1 || !pb.d1 || !pb.t1 ||
      !pb.s2 || !pb.c2 || !pb.d2)
    COXPH_FAIL(PS_ERR_MEM, "coxph: out of memory for %lld x %lld covariates", (long long)n, (long long)p);
  s = ps_cox_work_create(&w, n);
  if (s != PS_OK) goto done;
  s = ps_cox_sort(w, &b, perm);
  if (s != PS_OK) goto done;
  // Centre (and optionally scale) in input order with a two-pass mean; then gather sorted.
  for (int64_t k = 0; k < p; k++) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m += in->x[i * p + k];
    m /= (double)n;
    double c = 0, ss = 0;
    for (int64_t i = 0; i < n; i++) c += in->x[i * p + k] - m;
    m += c / (double)n; // one correction step: the mean to the last bit
    int constant = 1;
    for (int64_t i = 0; i < n; i++) {
      double dv = in->x[i * p + k] - m;
      ss += dv * dv;
      constant &= in->x[i * p + k] == in->x[k];
    }
    const char *name = in->names ? in->names[k] : "?";
    if (constant) COXPH_FAIL(PS_ERR_DATA, "coxph: covariate '%s' is constant (value %g); remove it", name, in->x[k]);
    mean[k] = m;
    scale[k] = in->standardize ? sqrt(ss / (double)(n - 1)) : 1.0;
  }
  for (int64_t s2 = 0; s2 < n; s2++) {
    int64_t i = perm[s2];
    time[s2] = in->time[i], event[s2] = in->event[i], strat[s2] = in->stratum ? in->stratum[i] : 0;
    for (int64_t k = 0; k < p; k++) x[s2 * p + k] = (in->x[i * p + k] - mean[k]) / scale[k];
  }
  // Collinearity: Cholesky of the centred cross-product (correlation scale).
  if (p > 0) {
    for (int64_t a = 0; a < p; a++)
      for (int64_t c = 0; c <= a; c++) {
        double t = 0;
        for (int64_t i = 0; i < n; i++) t += x[i * p + a] * x[i * p + c];
        L[a * p + c] = L[c * p + a] = t;
      }
    double *dg = step;
    for (int64_t a = 0; a < p; a++) dg[a] = sqrt(L[a * p + a]);
    for (int64_t a = 0; a < p; a++)
      for (int64_t c = 0; c < p; c++) L[a * p + c] /= dg[a] * dg[c];
    int64_t bad = cholesky(L, p, 1e-9);
    if (bad >= 0)
      COXPH_FAIL(PS_ERR_DATA,
                 "coxph: covariate '%s' is collinear with the covariates listed before it (a linear combination "
                 "of them); remove it",
                 in->names ? in->names[bad] : "?");
  }
  pb = (cox_problem){n, p, x, event, time, in->stratum ? strat : NULL, in->ties, pb.eta,
                     pb.s1, pb.s2, pb.c1, pb.c2, pb.d1, pb.d2, pb.t1};
  double ll;
  loglik_score_info(&pb, beta, &ll, u, I);
  out->loglik_null = ll;
  memcpy(u0, u, pp * sizeof *u);
  // Score test at beta = 0: U' I^-1 U.
  memcpy(L, I, pp * pp * sizeof *L);
  if (p > 0 && cholesky(L, p, 1e-12) >= 0)
    COXPH_FAIL(PS_ERR_NUMERIC, "coxph: the information matrix at beta = 0 is singular");
  memcpy(step, u, pp * sizeof *step);
  if (p > 0) chol_solve(L, p, step);
  out->score = 0;
  for (int64_t k = 0; k < p; k++) out->score += u0[k] * step[k];
  int iter = 0, converged = (p == 0);
  int halving = 0;
  while (!converged && iter < max_iter) {
    iter++;
    // step = I^-1 U at the current beta (L holds chol(I) there).
    for (int64_t k = 0; k < p; k++) nb[k] = beta[k] + step[k];
    double nll;
    loglik_score_info(&pb, nb, &nll, NULL, NULL);
    if (!isfinite(nll) || nll < ll) { // step halving toward the last accepted beta
      halving++;
      for (int64_t k = 0; k < p; k++) step[k] *= 0.5;
      if (halving > 60) COXPH_FAIL(PS_ERR_NUMERIC, "coxph: step halving failed to improve the log likelihood");
      continue;
    }
    halving = 0;
    double rel = fabs(1.0 - ll / nll);
    memcpy(beta, nb, pp * sizeof *beta);
    loglik_score_info(&pb, beta, &ll, u, I);
    memcpy(L, I, pp * pp * sizeof *L);
    if (cholesky(L, p, 1e-12) >= 0)
      COXPH_FAIL(PS_ERR_NUMERIC, "coxph: the information matrix became singular at iteration %d (infinite "
                                 "coefficient? a covariate may separate the events)", iter);
    memcpy(step, u, pp * sizeof *step);
    chol_solve(L, p, step);
    if (rel <= eps) converged = 1;
  }
  out->loglik = ll;
  out->iterations = iter;
  out->converged = converged;
  out->n = n, out->p = p, out->events = events;
  // var = I^-1 (columns by solves with chol(I) in L), on the scale that was fitted.
  for (int64_t c = 0; c < p; c++) {
    for (int64_t k = 0; k < p; k++) step[k] = (k == c);
    chol_solve(L, p, step);
    for (int64_t k = 0; k < p; k++) out->var[k * p + c] = step[k];
  }
  out->wald = 0;
  for (int64_t a = 0; a < p; a++) {
    double t = 0;
    for (int64_t c = 0; c < p; c++) t += I[a * p + c] * beta[c];
    out->wald += beta[a] * t;
  }
  for (int64_t k = 0; k < p; k++) {
    out->coef[k] = beta[k]; // centring leaves beta unchanged; --standardize fits on the z-scale
    out->se[k] = sqrt(out->var[k * p + k]);
  }
  out->lr = 2.0 * (out->loglik - out->loglik_null);
  out->lr_p = p > 0 ? ps_chisq_upper(out->lr, (double)p) : NAN;
  out->wald_p = p > 0 ? ps_chisq_upper(out->wald, (double)p) : NAN;
  out->score_p = p > 0 ? ps_chisq_upper(out->score, (double)p) : NAN;
  // Harrell's C of the linear predictor, within strata (as coxph reports it).
  for (int64_t i = 0; i < n; i++) {
    double e = 0;
    for (int64_t k = 0; k < p; k++) e += in->x[i * p + k] * out->coef[k];
    risk[i] = in->standardize ? 0 : e;
  }
  if (in->standardize)
    for (int64_t i = 0; i < n; i++) {
      double e = 0;
      for (int64_t k = 0; k < p; k++) e += (in->x[i * p + k] - mean[k]) / scale[k] * out->coef[k];
      risk[i] = e;
    }
  ps_cindex ci;
  s = ps_cindex_compute(PS_CINDEX_HARRELL, n, in->time, in->event, risk, in->stratum, 0, &ci);
  if (s != PS_OK) goto done;
  out->concordance = ci.c;
done:
#undef COXPH_FAIL
  ps_cox_work_destroy(w);
  free(x), free(time), free(mean), free(scale), free(event), free(strat), free(perm), free(beta), free(nb), free(u);
  free(I), free(L), free(step), free(u0), free(risk);
  free(pb.eta), free(pb.s1), free(pb.s2), free(pb.c1), free(pb.c2), free(pb.d1), free(pb.d2), free(pb.t1);
  if (s != PS_OK) ps_coxph_fit_free(out);
  return s;
}
