// NCCL backend on device buffers, against the same closed-form values as the
// MPI test (rank r contributes (r + 1) * 3 + i % 7). Needs one visible GPU
// per local rank; otherwise prints SKIP and exits 0 (this machine has none).
#include <stdlib.h>
#include <string.h>

#include "ps_comm.h"
#include "ps_cuda.h"
#include "testutil.h"

static double v(int r, int64_t i) { return (double)((r + 1) * 3 + i % 7); }

static void put(void *buf, ps_dtype t, int64_t i, double x) {
  switch (t) {
  case PS_F32: ((float *)buf)[i] = (float)x; break;
  case PS_F64: ((double *)buf)[i] = x; break;
  case PS_I32: ((int32_t *)buf)[i] = (int32_t)x; break;
  case PS_I64: ((int64_t *)buf)[i] = (int64_t)x; break;
  case PS_U8: ((uint8_t *)buf)[i] = (uint8_t)x; break;
  default: break;
  }
}

static double get(const void *buf, ps_dtype t, int64_t i) {
  switch (t) {
  case PS_F32: return ((const float *)buf)[i];
  case PS_F64: return ((const double *)buf)[i];
  case PS_I32: return ((const int32_t *)buf)[i];
  case PS_I64: return (double)((const int64_t *)buf)[i];
  case PS_U8: return ((const uint8_t *)buf)[i];
  default: return -1;
  }
}

static double expect_reduce(int p, int64_t i, ps_comm_op op) {
  double acc = v(0, i);
  for (int r = 1; r < p; r++) {
    double x = v(r, i);
    acc = op == PS_OP_SUM ? acc + x : op == PS_OP_MAX ? (x > acc ? x : acc) : (x < acc ? x : acc);
  }
  return acc;
}

static int run(ps_comm *c) {
  int p = ps_comm_size(c), me = ps_comm_rank(c);
  TU_CHECK(ps_comm_get_backend(c) == PS_COMM_NCCL, "auto with device cuda picked %s",
           ps_comm_backend_name(ps_comm_get_backend(c)));
  enum { N = 4099 };
  static char h[N * 8 * 4];
  void *ds = NULL, *dr = NULL;
  TU_OK(ps_cuda_malloc(&ds, sizeof h));
  TU_OK(ps_cuda_malloc(&dr, sizeof h));
  for (int t = 0; t < PS_DTYPE_COUNT; t++)
    for (int op = 0; op < PS_OP_COUNT; op++)
      for (int inplace = 0; inplace < 2; inplace++) {
        size_t nb = (size_t)N * ps_dtype_size((ps_dtype)t);
        for (int64_t i = 0; i < N; i++) put(h, (ps_dtype)t, i, v(me, i));
        TU_OK(ps_cuda_copy_h2d(inplace ? dr : ds, h, nb));
        TU_OK(ps_comm_allreduce(c, inplace ? PS_IN_PLACE : ds, dr, N, (ps_dtype)t, (ps_comm_op)op));
        TU_OK(ps_cuda_copy_d2h(h, dr, nb));
        int wrong = 0;
        for (int64_t i = 0; i < N; i++) wrong += get(h, (ps_dtype)t, i) != expect_reduce(p, i, (ps_comm_op)op);
        TU_CHECK(wrong == 0, "nccl allreduce %s op %d inplace %d: %d wrong", ps_dtype_name((ps_dtype)t), op, inplace,
                 wrong);
      }
  // all-gather (out of place), all-gather-v with unequal counts, broadcast, async.
  float f[N];
  for (int i = 0; i < 5; i++) f[i] = (float)(me * 100 + i);
  TU_OK(ps_cuda_copy_h2d(ds, f, 5 * sizeof(float)));
  TU_OK(ps_comm_allgather(c, ds, dr, 5, PS_F32));
  TU_OK(ps_cuda_copy_d2h(f, dr, (size_t)p * 5 * sizeof(float)));
  for (int r = 0; r < p; r++)
    for (int i = 0; i < 5; i++) TU_CHECK(f[r * 5 + i] == (float)(r * 100 + i), "nccl allgather [%d][%d]", r, i);
  int64_t counts[64], off = 0;
  for (int r = 0; r < p; r++) counts[r] = (r * 3) % 5 + 1;
  for (int i = 0; i < counts[me]; i++) f[i] = (float)(me * 10 + i);
  TU_OK(ps_cuda_copy_h2d(ds, f, (size_t)counts[me] * sizeof(float)));
  TU_OK(ps_comm_allgatherv(c, ds, counts[me], dr, counts, PS_F32));
  TU_OK(ps_cuda_copy_d2h(f, dr, 64 * sizeof(float)));
  for (int r = 0; r < p; r++)
    for (int i = 0; i < counts[r]; i++, off++) TU_CHECK(f[off] == (float)(r * 10 + i), "nccl allgatherv r%d i%d", r, i);
  for (int i = 0; i < 100; i++) f[i] = me == 0 ? (float)i + 0.25f : -1.0f;
  TU_OK(ps_cuda_copy_h2d(dr, f, 100 * sizeof(float)));
  TU_OK(ps_comm_broadcast(c, dr, 100, PS_F32, 0));
  TU_OK(ps_cuda_copy_d2h(f, dr, 100 * sizeof(float)));
  for (int i = 0; i < 100; i++) TU_CHECK(f[i] == (float)i + 0.25f, "nccl broadcast [%d]", i);
  for (int i = 0; i < N; i++) f[i] = (float)v(me, i);
  TU_OK(ps_cuda_copy_h2d(dr, f, N * sizeof(float)));
  ps_comm_request *q = NULL;
  TU_OK(ps_comm_iallreduce(c, PS_IN_PLACE, dr, N, PS_F32, PS_OP_SUM, &q));
  TU_OK(ps_comm_wait(q));
  TU_OK(ps_cuda_copy_d2h(f, dr, N * sizeof(float)));
  for (int i = 0; i < N; i++) TU_CHECK(f[i] == (float)expect_reduce(p, i, PS_OP_SUM), "nccl iallreduce [%d]", i);
  // Bucketed gradient sync on the device buffer (integer-valued floats: exact in any order).
  for (int i = 0; i < N; i++) f[i] = (float)v(me, i);
  TU_OK(ps_cuda_copy_h2d(dr, f, N * sizeof(float)));
  ps_grad_sync *s = NULL;
  ps_grad_sync_timing tm;
  TU_OK(ps_grad_sync_create(&s, c, dr, N, 4096));
  TU_OK(ps_grad_sync_begin(s));
  for (int l = 7; l >= 0; l--) TU_OK(ps_grad_sync_ready(s, (int64_t)l * N / 8));
  TU_OK(ps_grad_sync_finish(s, &tm));
  ps_grad_sync_destroy(s);
  TU_OK(ps_cuda_copy_d2h(f, dr, N * sizeof(float)));
  for (int i = 0; i < N; i++) TU_CHECK(f[i] == (float)expect_reduce(p, i, PS_OP_SUM), "nccl grad sync [%d]", i);
  TU_CHECK(tm.started_early == tm.buckets, "%d of %d buckets started early", tm.started_early, tm.buckets);
  ps_cuda_free(ds);
  ps_cuda_free(dr);
  return 0;
}

int main(int argc, char **argv) {
  // A host communicator first: it initializes MPI, decides whether to skip on
  // every rank together, and shows ps_comm_init reusing an initialized MPI.
  ps_comm *host = NULL;
  ps_comm_options hopt = {PS_COMM_MPI, PS_CPU, 0};
  TU_OK(ps_comm_init(&host, &argc, &argv, &hopt));
  int gpus = ps_cuda_device_count(), enough = gpus >= ps_comm_local_size(host) ? 1 : 0, all = 0;
  TU_OK(ps_comm_allreduce(host, &enough, &all, 1, PS_I32, PS_OP_MIN));
  if (!all) {
    if (gpus == 0) { // asking for GPU collectives without a GPU is a clear error on every rank, not a crash
      ps_comm *bad = NULL;
      ps_comm_options gopt = {PS_COMM_AUTO, PS_CUDA, 0};
      ps_status st = ps_comm_init(&bad, &argc, &argv, &gopt);
      TU_CHECK(st == PS_ERR_UNSUPPORTED && bad == NULL, "device cuda without a GPU gave %s", ps_status_name(st));
      TU_CHECK(strstr(ps_error_message(), "no GPU is visible") != NULL, "message: %s", ps_error_message());
    }
    if (ps_comm_rank(host) == 0)
      printf("SKIP: NCCL test needs one visible GPU per local rank (%d ranks here, %d GPUs visible)\n",
             ps_comm_local_size(host), gpus);
    ps_comm_finalize(host);
    return ps_tu_failures ? ps_tu_finish("comm_nccl") : 0;
  }
  ps_comm *c = NULL;
  ps_comm_options opt = {PS_COMM_AUTO, PS_CUDA, 0};
  TU_OK(ps_comm_init(&c, &argc, &argv, &opt));
  int rc = run(c);
  ps_comm_finalize(c);
  ps_status g = PS_OK;
  TU_OK(ps_comm_agree(host, (rc || ps_tu_failures) ? PS_ERR_INTERNAL : PS_OK, &g));
  if (g != PS_OK && !ps_tu_failures) ps_tu_failures++;
  ps_comm_finalize(host);
  return rc ? rc : ps_tu_finish("comm_nccl");
}
