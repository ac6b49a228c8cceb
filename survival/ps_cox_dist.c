// ps_cox_dist: exact distributed Cox loss (see ps_cox_dist.h).
// Letters: N_local patients on this rank, N global patients, R ranks.
#include "ps_cox_dist.h"

#include <stdlib.h>
#include <string.h>

struct ps_cox_dist {
  ps_comm *comm;
  int64_t capacity; // N max
  ps_cox_work *work;
  int64_t *counts;  // (R) patients per rank
  int32_t *lstrat;  // (capacity) local stratum (zeros when the batch has none)
  double *time;     // (N) gathered in rank order
  uint8_t *event;   // (N)
  int32_t *stratum; // (N)
  int64_t *index;   // (N)
  double *eta;      // (N)
  double *grad;     // (N) gradient in gathered order
};

ps_status ps_cox_dist_create(ps_cox_dist **out, ps_comm *c, int64_t global_capacity) {
  PS_REQUIRE(out && c && global_capacity >= 0, "ps_cox_dist_create: bad arguments");
  ps_cox_dist *d = calloc(1, sizeof *d);
  if (!d) PS_FAIL(PS_ERR_MEM, "ps_cox_dist_create: out of memory");
  size_t n = (size_t)(global_capacity > 0 ? global_capacity : 1);
  d->comm = c;
  d->capacity = global_capacity;
  d->counts = malloc((size_t)ps_comm_size(c) * sizeof *d->counts);
  d->lstrat = malloc(n * sizeof *d->lstrat);
  d->time = malloc(n * sizeof *d->time);
  d->event = malloc(n * sizeof *d->event);
  d->stratum = malloc(n * sizeof *d->stratum);
  d->index = malloc(n * sizeof *d->index);
  d->eta = malloc(n * sizeof *d->eta);
  d->grad = malloc(n * sizeof *d->grad);
  ps_status s = PS_OK;
  if (!d->counts || !d->lstrat || !d->time || !d->event || !d->stratum || !d->index || !d->eta || !d->grad)
    s = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "ps_cox_dist_create: out of memory for %lld patients",
                     (long long)global_capacity);
  if (s == PS_OK) s = ps_cox_work_create(&d->work, global_capacity);
  if (s != PS_OK) {
    ps_cox_dist_destroy(d);
    return s;
  }
  *out = d;
  return PS_OK;
}

void ps_cox_dist_destroy(ps_cox_dist *d) {
  if (!d) return;
  ps_cox_work_destroy(d->work);
  free(d->counts), free(d->lstrat), free(d->time), free(d->event), free(d->stratum), free(d->index);
  free(d->eta), free(d->grad);
  free(d);
}

static ps_status check_local(const ps_cox_dist *d, const ps_cox_batch *b, const double *eta) {
  PS_REQUIRE(b && (b->n == 0 || (eta && b->index)), "ps_cox_dist_loss: local batch needs eta and global indices");
  PS_REQUIRE(b->n <= d->capacity, "ps_cox_dist_loss: %lld local patients exceed the capacity %lld",
             (long long)b->n, (long long)d->capacity);
  return ps_cox_batch_validate(b);
}

ps_status ps_cox_dist_loss(ps_cox_dist *d, const ps_cox_batch *local, const double *eta, ps_cox_ties ties,
                           ps_cox_result *res, double *grad) {
  PS_REQUIRE(d && res, "ps_cox_dist_loss: null argument");
  ps_comm *c = d->comm;
  const int R = ps_comm_size(c), rank = ps_comm_rank(c);
  // Agree on validity before any data collective so no rank blocks alone.
  ps_status mine = check_local(d, local, eta), all;
  PS_TRY(ps_comm_agree(c, mine, &all));
  if (mine != PS_OK) return mine;
  if (all != PS_OK) PS_FAIL(all, "ps_cox_dist_loss: another rank's batch is invalid");

  int64_t n_local = local->n;
  PS_TRY(ps_comm_allgather(c, &n_local, d->counts, 1, PS_I64));
  int64_t total = 0, offset = 0;
  for (int r = 0; r < R; r++) {
    if (r == rank) offset = total;
    total += d->counts[r];
  }
  // Every rank sees the same total, so this check fails on all or none.
  if (total > d->capacity)
    PS_FAIL(PS_ERR_ARG, "ps_cox_dist_loss: %lld global patients exceed the capacity %lld", (long long)total,
            (long long)d->capacity);
  int32_t has_strata = local->stratum != NULL, strata_max, strata_min;
  PS_TRY(ps_comm_allreduce(c, &has_strata, &strata_max, 1, PS_I32, PS_OP_MAX));
  PS_TRY(ps_comm_allreduce(c, &has_strata, &strata_min, 1, PS_I32, PS_OP_MIN));
  if (strata_min != strata_max) // same answer on every rank: all fail together
    PS_FAIL(PS_ERR_ARG, "ps_cox_dist_loss: some ranks pass strata and others do not (rank %d: %s)", rank,
            has_strata ? "strata" : "no strata");
  const int32_t *ls = local->stratum;
  if (!ls) {
    memset(d->lstrat, 0, (size_t)n_local * sizeof *d->lstrat);
    ls = d->lstrat;
  }
  PS_TRY(ps_comm_allgatherv(c, local->time, n_local, d->time, d->counts, PS_F64));
  PS_TRY(ps_comm_allgatherv(c, local->event, n_local, d->event, d->counts, PS_U8));
  PS_TRY(ps_comm_allgatherv(c, ls, n_local, d->stratum, d->counts, PS_I32));
  PS_TRY(ps_comm_allgatherv(c, local->index, n_local, d->index, d->counts, PS_I64));
  PS_TRY(ps_comm_allgatherv(c, eta, n_local, d->eta, d->counts, PS_F64));

  // Global loss once per rank; a duplicated global index fails identically everywhere.
  ps_cox_batch g = {total, d->time, d->event, strata_max ? d->stratum : NULL, d->index};
  PS_TRY(ps_cox_loss(d->work, &g, d->eta, ties, res, grad ? d->grad : NULL));
  if (grad) memcpy(grad, d->grad + offset, (size_t)n_local * sizeof *grad);
  return PS_OK;
}
