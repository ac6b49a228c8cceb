// ps_cox: the negative log partial likelihood of a log-risk eta (Cox 1972)
// with Efron (default) or Breslow ties and optional strata, exact and stable.
//
// Letters: N patients in a batch, G (stratum, time) groups, M micro-batches.
// Conventions (as R survival::coxph):
//  - at an event time t everyone in the stratum with time >= t is at risk,
//    including those censored at t; times may be 0;
//  - patients are sorted once by the total key (stratum, time, global index),
//    so the arithmetic order, hence every bit of the result, depends only on
//    the set of patients and never on their input order or rank layout;
//  - loss = -loglik / E with E the number of events; E = 0 gives loss 0 and a
//    zero gradient;
//  - log-sum-exp with a running maximum over the (shrinking) risk set, double
//    accumulation, Efron's r-th denominator computed as
//    S0(risk set without the tied deaths) + (1 - r/d) S0(tied deaths).
#ifndef PS_COX_H
#define PS_COX_H

#include <stddef.h>
#include <stdint.h>

#include "ps_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { PS_COX_EFRON = 0, PS_COX_BRESLOW, PS_COX_TIES_COUNT } ps_cox_ties;
const char *ps_cox_ties_name(ps_cox_ties t);
ps_status ps_cox_ties_parse(const char *s, ps_cox_ties *out);

// One batch of patients (all pointers borrowed).
typedef struct {
  int64_t n;              // N
  const double *time;     // (N) finite, >= 0
  const uint8_t *event;   // (N) 0 censored, 1 event
  const int32_t *stratum; // (N) or NULL: one stratum
  const int64_t *index;   // (N) unique global patient index, or NULL: 0..N-1
} ps_cox_batch;

typedef struct {
  double loss;    // -loglik / events (0 when events == 0)
  double loglik;  // log partial likelihood (not negated, not normalised)
  int64_t events; // E
} ps_cox_result;

// Scratch sized once for up to `capacity` patients, so a training step
// allocates nothing.
typedef struct ps_cox_work ps_cox_work;
ps_status ps_cox_work_create(ps_cox_work **out, int64_t capacity);
void ps_cox_work_destroy(ps_cox_work *w);
int64_t ps_cox_work_capacity(const ps_cox_work *w);

// Checks times (finite, >= 0) and events (0/1); names the first bad patient.
ps_status ps_cox_batch_validate(const ps_cox_batch *b);

// Loss and dL/deta (grad may be NULL; written, not accumulated).
// eta: (N), grad: (N). |eta| up to 1e3 is safe.
ps_status ps_cox_loss(ps_cox_work *w, const ps_cox_batch *b, const double *eta, ps_cox_ties ties,
                      ps_cox_result *res, double *grad);
// Same in float at the interface (accumulation stays in double).
ps_status ps_cox_loss_f32(ps_cox_work *w, const ps_cox_batch *b, const float *eta, ps_cox_ties ties,
                          ps_cox_result *res, float *grad);

// Exact gradient accumulation: the loss of the whole window formed by M
// micro-batches (with globally unique indices) and dL/deta for every patient
// of every micro-batch: the same numbers as ps_cox_loss on the concatenation.
// micro: (M), eta[m]: (micro[m].n), grad[m]: (micro[m].n) or grad == NULL.
ps_status ps_cox_window(ps_cox_work *w, int n_micro, const ps_cox_batch *micro, const double *const *eta,
                        ps_cox_ties ties, ps_cox_result *res, double *const *grad);

// The core on a batch already in total-key order (used by the distributed
// loss): no sorting, no copies. eta, grad: (N) in the batch's order.
ps_status ps_cox_loss_sorted(ps_cox_work *w, const ps_cox_batch *b, const double *eta, ps_cox_ties ties,
                             ps_cox_result *res, double *grad);
// Writes perm (N) such that b[perm[0]], b[perm[1]], ... is in total-key order
// (stable merge sort); fails on a duplicated (stratum, time, index) key.
ps_status ps_cox_sort(ps_cox_work *w, const ps_cox_batch *b, int64_t *perm);

#ifdef __cplusplus
}
#endif

#endif
