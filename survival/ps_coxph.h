// ps_coxph: the classical Cox proportional hazards fit, as R survival::coxph.
// Newton-Raphson with step halving on the exact log partial likelihood
// (Efron or Breslow, optional strata), covariates centred internally
// (coefficients reported on the input scale), convergence on the relative
// change of the log likelihood, standard errors from the inverse information,
// likelihood-ratio, Wald and score tests.
// Letters: N patients, P covariates.
#ifndef PS_COXPH_H
#define PS_COXPH_H

#include <stdbool.h>
#include <stdint.h>

#include "ps_cox.h"
#include "ps_status.h"

typedef struct {
  int64_t n, p;
  const double *time;        // (N)
  const uint8_t *event;      // (N)
  const int32_t *stratum;    // (N) or NULL
  const double *x;           // (N, P) row-major
  const char *const *names;  // (P) covariate names (for error messages)
  ps_cox_ties ties;
  bool standardize;          // z-score with the sample sd (n - 1); coef on that scale
  int max_iter;              // 0: 50
  double eps;                // 0: 1e-12 (relative loglik change)
} ps_coxph_input;

typedef struct {
  int64_t n, p, events;
  double *coef;        // (P)
  double *se;          // (P)
  double *var;         // (P, P) inverse information
  double loglik, loglik_null;
  double lr, lr_p;     // likelihood ratio test, df = P
  double wald, wald_p;
  double score, score_p;
  double concordance;  // Harrell's C of x'beta (within strata), R conventions
  int iterations;
  bool converged;
} ps_coxph_fit;

ps_status ps_coxph(const ps_coxph_input *in, ps_coxph_fit *out);
void ps_coxph_fit_free(ps_coxph_fit *f);

// Upper tail of the chi-square distribution with df degrees of freedom.
double ps_chisq_upper(double x, double df);

#endif
