// 1 rank == N ranks: the whole model (SyncBN in the tile CNN, dropout, input noise) on a global
// batch split unequally over 2 ranks gives the same eta, the same BN running statistics and,
// after summing gradients over ranks, the same gradients as one rank holding the full batch.
// Tolerance: float sums in a different order: eta 1e-5 absolute-ish (relative-norm 1e-5),
// gradients relative-norm 1e-4 (a missing all-reduce of BN statistics gives errors ~1e-1).
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "ps_comm.h"
#include "ps_model.h"
#include "testutil.h"

enum { B = 5, K = 3, G = 10, C = 4, TS = 3 * 8 * 8 };

int main(int argc, char **argv) {
  ps_comm *comm;
  ps_comm_options copt = {PS_COMM_MPI, PS_CPU, 1};
  TU_OK(ps_comm_init(&comm, &argc, &argv, &copt));
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  uint64_t seed = ps_tu_seed("nn_syncbn", 5);
  ps_model_config cfg;
  ps_model_config_default(&cfg);
  cfg.d = 8, cfg.genes = G, cfg.ae_hidden = 8, cfg.ae_dropout = 0.3f, cfg.ae_input_noise = 0.1f;
  cfg.tile_size = 8, cfg.max_tiles = K, cfg.cnn_ch[0] = 4, cfg.cnn_ch[1] = 6, cfg.cnn_ch[2] = 8;
  cfg.attn_hidden = 5, cfg.clinical = C, cfg.clinical_hidden = 6, cfg.heads = 2, cfg.ff_hidden = 12, cfg.seed = seed;
  static float omics[B * G], clin[B * C], tiles[B * K * TS];
  ps_tu_fill_uniform(omics, B * G, -1, 1, seed, 1);
  ps_tu_fill_uniform(clin, B * C, -1, 1, seed, 2);
  ps_tu_fill_uniform(tiles, B * K * TS, 0, 1, seed, 3);
  int64_t pid[B] = {10, 11, 12, 13, 14};
  uint8_t op[B] = {1, 0, 1, 1, 1}, cp[B] = {1, 1, 1, 0, 1};
  int32_t tc[B] = {3, 2, 0, 1, 3};
  float deta[B] = {0.3f, -0.1f, 0.2f, -0.4f, 0.25f};
  double norm = 0;
  for (int b = 0; b < B; b++) norm += op[b] * G;
  // Reference: the full batch on one rank (every rank computes it).
  ps_model *full, *part;
  TU_OK(ps_model_create(&full, &cfg));
  TU_OK(ps_model_plan(full, B));
  ps_model_set_recon_norm(full, norm);
  ps_model_batch fin = {B, pid, omics, op, clin, cp, tiles, NULL, tc, 0};
  float eta_full[B], eta[B];
  double rec;
  ps_param_zero_grad(ps_model_params(full));
  TU_OK(ps_model_forward(full, eta_full, &rec, &fin, true, 3));
  TU_OK(ps_model_backward(full, deta, 0.5f, NULL, NULL));
  // Split: rank 0 rows [0, 2), rank 1 rows [2, 5) (unequal shares); with 1 rank, everything.
  int lo = size == 1 ? 0 : (rank == 0 ? 0 : 2), hi = size == 1 ? B : (rank == 0 ? 2 : B);
  int n = hi - lo;
  TU_OK(ps_model_create(&part, &cfg));
  TU_OK(ps_model_plan(part, n));
  ps_model_set_reducer(part, ps_nn_reducer_comm(comm)); // SyncBN through ps_comm
  ps_model_set_recon_norm(part, norm);
  // Flags interleaved (B, 2) as data/'s loader keeps them: exercises present_stride.
  uint8_t flags[B * 2];
  for (int b = 0; b < B; b++) flags[2 * b] = op[b], flags[2 * b + 1] = cp[b];
  ps_model_batch pin = {n, pid + lo, omics + lo * G, flags + 2 * lo, clin + lo * C, flags + 2 * lo + 1,
                        tiles + (int64_t)lo * K * TS, NULL, tc + lo, 2};
  ps_param_table *pt = ps_model_params(part), *ft = ps_model_params(full);
  ps_param_zero_grad(pt);
  TU_OK(ps_model_forward(part, eta, &rec, &pin, true, 3));
  TU_OK(ps_model_backward(part, deta + lo, 0.5f, NULL, NULL));
  MPI_Allreduce(MPI_IN_PLACE, pt->grad, (int)pt->total, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  double e = ps_tu_rel_err(eta, eta_full + lo, n);
  TU_CHECK(e < 1e-5, "rank %d: eta differs from the 1-rank run: rel err %.3e", rank, e);
  for (int i = 0; i < ft->count; i++) {
    ps_param_info *p = &ft->p[i];
    double ge = ps_tu_rel_err(pt->grad + p->offset, ft->grad + p->offset, p->numel);
    TU_CHECK(ge < 1e-4, "rank %d: gradient of %s differs: rel err %.3e", rank, p->name, ge);
  }
  ps_param_table *pb = ps_model_buffers(part), *fb = ps_model_buffers(full);
  double be = ps_tu_rel_err(pb->data, fb->data, pb->total);
  TU_CHECK(be < 1e-5, "rank %d: BN running statistics differ: rel err %.3e", rank, be);
  printf("rank %d/%d: rows [%d, %d): eta rel err %.2e, running stats rel err %.2e\n", rank, size, lo, hi, e, be);
  ps_model_destroy(full);
  ps_model_destroy(part);
  int fails = ps_tu_failures, all = 0;
  MPI_Allreduce(&fails, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  ps_tu_failures = all;
  int rc = ps_tu_finish("nn_syncbn");
  ps_comm_finalize(comm);
  return rc;
}
