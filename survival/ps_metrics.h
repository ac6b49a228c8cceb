// ps_metrics: survival statistics with R survival conventions.
// Higher risk = shorter survival throughout.
// Letters: N patients, K groups, T evaluation times, U distinct times.
#ifndef PS_METRICS_H
#define PS_METRICS_H

#include <stdint.h>

#include "ps_status.h"

// Pair counts as R survival::concordance(..., reverse = TRUE) reports them
// (weighted by the time weight for Uno's C).
typedef struct {
  double concordant, discordant;
  double tied_risk; // comparable pairs with equal risk (count 1/2)
  double tied_time; // two events at the same time, different risk (not comparable)
  double tied_both; // two events at the same time, same risk (not comparable)
} ps_cindex_counts;

typedef struct {
  double c;   // (concordant + tied_risk / 2) / (concordant + discordant + tied_risk); NaN with no pairs
  double var; // the infinitesimal-jackknife variance R's concordance() reports
  double se;  // sqrt(var)
  ps_cindex_counts counts;
} ps_cindex;

typedef enum { PS_CINDEX_HARRELL = 0, PS_CINDEX_UNO, PS_CINDEX_KIND_COUNT } ps_cindex_kind;
const char *ps_cindex_kind_name(ps_cindex_kind k);

// Harrell's C (within strata when stratum != NULL), O(N log N).
// UNO: pairs weighted by 1/G(t-)^2 with G the censoring Kaplan-Meier of the
// same data (events leave before censorings at tied times), pairs whose event
// time exceeds tau get weight 0 (tau <= 0 or infinite: untruncated); equals R
// concordance(timewt = "n/G2", ymax = tau). Strata are not used for UNO.
// time, risk: (N), event: (N) 0/1.
ps_status ps_cindex_compute(ps_cindex_kind kind, int64_t n, const double *time, const uint8_t *event,
                            const double *risk, const int32_t *stratum, double tau, ps_cindex *out);

// Percentile bootstrap interval (2.5%, 97.5%) of the C-index from B resamples
// drawn with ps_rng (PS_RNG_BOOTSTRAP, seed): replayable on any machine.
ps_status ps_cindex_bootstrap(ps_cindex_kind kind, int64_t n, const double *time, const uint8_t *event,
                              const double *risk, double tau, int64_t B, uint64_t seed, double *lo, double *hi);

// ---- Kaplan-Meier (R survfit defaults) -----------------------------------
typedef struct {
  int64_t u;          // U distinct times (events or censorings)
  double *time;       // (U)
  double *n_risk;     // (U)
  double *n_event;    // (U)
  double *n_censor;   // (U)
  double *surv;       // (U)
  double *std_err;    // (U) Greenwood standard error of log S
  double *lower, *upper; // (U) 95% log-scale interval (NaN where undefined)
  double median;      // R's median (NaN when the curve does not reach 0.5)
  double median_lower, median_upper; // R's interval for the median (NaN when not reached)
} ps_km;
ps_status ps_km_fit(int64_t n, const double *time, const uint8_t *event, ps_km *out);
void ps_km_free(ps_km *km);

// ---- log-rank test (R survdiff, rho = 0) ---------------------------------
typedef struct {
  int32_t k;                 // K groups
  double *observed, *expected; // (K)
  double chisq;
  int32_t df;
  double p;
} ps_logrank;
// group: (N) ids 0..K-1.
ps_status ps_logrank_test(int64_t n, const double *time, const uint8_t *event, const int32_t *group, int32_t k,
                          ps_logrank *out);
void ps_logrank_free(ps_logrank *lr);

// ---- predicted survival, td-AUC, Brier (IPCW, training-set G) ------------
// The Breslow baseline cumulative hazard H0 at the training set's distinct
// event times, so that S(t | eta) = exp(-H0(t) exp(eta)).
typedef struct {
  int64_t u;     // distinct event times
  double *time;  // (U)
  double *cumhaz; // (U)
} ps_breslow;
ps_status ps_breslow_fit(int64_t n, const double *time, const uint8_t *event, const double *eta, ps_breslow *out);
double ps_breslow_surv(const ps_breslow *b, double t, double eta);
void ps_breslow_free(ps_breslow *b);

// The censoring survival G (reverse Kaplan-Meier of the training set).
typedef struct {
  int64_t u;
  double *time; // (U) distinct times of the training set
  double *g;    // (U) G just after time[k]
} ps_censor_km;
ps_status ps_censor_km_fit(int64_t n, const double *time, const uint8_t *event, ps_censor_km *out);
double ps_censor_km_at(const ps_censor_km *g, double t); // G(t), right-continuous
void ps_censor_km_free(ps_censor_km *g);

// Cumulative/dynamic AUC at times (T) of a risk score on a test set, weights
// 1/G(t_i) from the training set (scikit-survival's cumulative_dynamic_auc).
ps_status ps_td_auc(const ps_censor_km *g, int64_t n, const double *time, const uint8_t *event, const double *risk,
                    int64_t nt, const double *times, double *auc);
// Brier score at times (T) of S(t|eta) = exp(-H0(t) exp(eta)) on a test set
// (Graf 1999 IPCW with training-set G, as scikit-survival's brier_score) and
// the integrated Brier score (trapezoid over times / span; needs T >= 2).
ps_status ps_brier(const ps_censor_km *g, const ps_breslow *base, int64_t n, const double *time,
                   const uint8_t *event, const double *eta, int64_t nt, const double *times, double *brier,
                   double *ibs);

#endif
