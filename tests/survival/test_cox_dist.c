// Distributed Cox loss on R ranks == the 1-rank loss of the same global batch
// computed in-process on the full data: bitwise for the loss and for every
// patient's dL/deta (the total-key sort fixes the arithmetic order).
#include <stdlib.h>
#include <string.h>

#include "ps_comm.h"
#include "ps_cox_dist.h"
#include "testutil.h"

// Letters: N global patients, N_local on this rank.
enum { N = 997 };

int main(int argc, char **argv) {
  ps_comm *c;
  ps_comm_options opt = {PS_COMM_MPI, PS_CPU, 1};
  TU_OK(ps_comm_init(&c, &argc, &argv, &opt));
  const int R = ps_comm_size(c), rank = ps_comm_rank(c);
  uint64_t seed = ps_tu_seed("survival_cox_dist", 77);
  static double time[N], eta[N], ref_grad[N], grad[N], ltime[N], leta[N];
  static uint8_t event[N], levent[N];
  static int32_t strat[N], lstrat[N];
  static int64_t index[N], lindex[N];
  ps_rng r = ps_rng_make(seed, ps_rng_stream(PS_RNG_TEST, 2, 0, 0));
  for (int i = 0; i < N; i++) {
    time[i] = (double)ps_rng_below(&r, 5 * i, 12);
    event[i] = ps_rng_uniform(&r, 5 * i + 1) < 0.6f;
    strat[i] = (int32_t)ps_rng_below(&r, 5 * i + 2, 3);
    index[i] = (int64_t)i * 13 + 5;
    eta[i] = 4.0 * ps_rng_uniform_open_f64(&r, 5 * i + 3) - 2.0;
  }
  ps_cox_work *w;
  TU_OK(ps_cox_work_create(&w, N));
  ps_cox_dist *d;
  TU_OK(ps_cox_dist_create(&d, c, N));
  for (int mode = 0; mode < 4; mode++) {
    ps_cox_ties ties = mode & 1 ? PS_COX_BRESLOW : PS_COX_EFRON;
    int use_strata = mode >= 2;
    ps_cox_batch full = {N, time, event, use_strata ? strat : NULL, index};
    ps_cox_result ref, got;
    TU_OK(ps_cox_loss(w, &full, eta, ties, &ref, ref_grad));
    // Uneven, scrambled split: patient i goes to rank (i * 7 + i / 10) % R.
    int64_t n = 0;
    int64_t owner_pos[N];
    for (int i = 0; i < N; i++)
      if ((i * 7 + i / 10) % R == rank) {
        ltime[n] = time[i], levent[n] = event[i], lstrat[n] = strat[i], lindex[n] = index[i], leta[n] = eta[i];
        owner_pos[n++] = i;
      }
    ps_cox_batch local = {n, ltime, levent, use_strata ? lstrat : NULL, lindex};
    TU_OK(ps_cox_dist_loss(d, &local, leta, ties, &got, grad));
    TU_CHECK(memcmp(&got.loss, &ref.loss, sizeof(double)) == 0, "rank %d mode %d: loss %.17g vs %.17g", rank, mode,
             got.loss, ref.loss);
    TU_CHECK(got.events == ref.events, "events");
    int bad = 0;
    for (int64_t k = 0; k < n; k++) bad += memcmp(&grad[k], &ref_grad[owner_pos[k]], sizeof(double)) != 0;
    TU_CHECK(bad == 0, "rank %d mode %d: %d gradients differ from the 1-rank values", rank, mode, bad);
    if (rank == 0)
      printf("  np=%d %s strata=%d loss=%.17g events=%lld: bitwise equal\n", R, ps_cox_ties_name(ties), use_strata,
             got.loss, (long long)got.events);
  }
  // A global batch without events: loss 0 and zero gradient on every rank.
  {
    int64_t n = 0;
    for (int i = rank; i < 40; i += R) ltime[n] = i, levent[n] = 0, lindex[n] = i, leta[n] = 1.0, n++;
    ps_cox_batch local = {n, ltime, levent, NULL, lindex};
    ps_cox_result got;
    for (int64_t k = 0; k < n; k++) grad[k] = 1;
    TU_OK(ps_cox_dist_loss(d, &local, leta, PS_COX_EFRON, &got, grad));
    TU_CHECK(got.loss == 0 && got.events == 0, "no events: loss %g", got.loss);
    for (int64_t k = 0; k < n; k++) TU_CHECK(grad[k] == 0, "no events: grad %g", grad[k]);
  }
  // A bad batch on the last rank fails on every rank (no hang).
  {
    ltime[0] = (rank == R - 1) ? -1.0 : 1.0;
    levent[0] = 1, lindex[0] = rank, leta[0] = 0;
    ps_cox_batch local = {1, ltime, levent, NULL, lindex};
    ps_cox_result got;
    ps_status s = ps_cox_dist_loss(d, &local, leta, PS_COX_EFRON, &got, grad);
    TU_CHECK(s != PS_OK, "rank %d: a negative time on rank %d was accepted", rank, R - 1);
  }
  // Strata on some ranks only: an error on every rank (when R > 1).
  if (R > 1) {
    ltime[0] = 1.0, levent[0] = 1, lindex[0] = rank, leta[0] = 0, lstrat[0] = 0;
    ps_cox_batch local = {1, ltime, levent, rank == 0 ? lstrat : NULL, lindex};
    ps_cox_result got;
    TU_CHECK(ps_cox_dist_loss(d, &local, leta, PS_COX_EFRON, &got, grad) == PS_ERR_ARG,
             "rank %d: mixed strata presence accepted", rank);
  }
  ps_cox_dist_destroy(d);
  ps_cox_work_destroy(w);
  int rc = ps_tu_finish("survival_cox_dist");
  int all = rc;
  ps_comm_allreduce(c, &rc, &all, 1, PS_I32, PS_OP_MAX);
  ps_comm_finalize(c);
  return all;
}
