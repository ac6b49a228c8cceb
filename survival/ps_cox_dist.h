// ps_cox_dist: the Cox loss of a global batch split across ranks, exact.
// Every rank all-gathers (time, event, stratum, global index, eta), sorts by
// the total key (stratum, time, global index) and computes the global loss
// once; it returns dL/deta for its own patients. Because the arithmetic order
// is fixed by the key, the loss and every patient's gradient are bitwise the
// same as ps_cox_loss on the whole batch in one process, on any rank count.
// Letters: N_local patients on this rank, N global patients.
#ifndef PS_COX_DIST_H
#define PS_COX_DIST_H

#include "ps_comm.h"
#include "ps_cox.h"

typedef struct ps_cox_dist ps_cox_dist;
// Scratch for up to `global_capacity` patients summed over ranks.
ps_status ps_cox_dist_create(ps_cox_dist **out, ps_comm *c, int64_t global_capacity);
void ps_cox_dist_destroy(ps_cox_dist *d);

// Collective. local: this rank's patients (global indices required, unique
// across ranks; strata NULL on every rank or on none); eta: (N_local);
// grad: (N_local) or NULL. res holds the global loss, loglik and events.
// A bad batch on any rank fails on every rank (status agreed first).
ps_status ps_cox_dist_loss(ps_cox_dist *d, const ps_cox_batch *local, const double *eta, ps_cox_ties ties,
                           ps_cox_result *res, double *grad);

#endif
