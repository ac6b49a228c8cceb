// Bucketed gradient sync against references that could fail:
//  - an independent sum in the documented ring order from all ranks' raw
//    inputs (all-gathered): must match BIT FOR BIT at any p;
//  - MPI_Allreduce: bit for bit at p = 2 (a + b == b + a), else within a
//    norm-wise relative 1e-6 (different association of p <= 4 float sums,
//    each rounding <= 2^-24 of the running sum);
//  - a second run on the same inputs: bit-identical;
//  - bucket order (from the end of the buffer) and overlap (a bucket
//    completes before finish() is called);
//  - small all-reduces on the main communicator between ready() calls, as
//    SyncBN and the Cox loss do, complete correctly beside buckets in flight.
// Usage: test_comm_grad_sync [hash]  ("hash" prints a checksum of the result
// for the two-process-runs determinism check).
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_comm.h"
#include "testutil.h"

enum { N = 100003 };                 // odd: the last bucket is partial, chunks unequal
static const int64_t BUCKET = 16384; // bytes: 4096 floats -> 25 buckets

static void fill(float *g, int rank, uint64_t seed) {
  ps_tu_fill_uniform(g, N, -1.0f, 1.0f, seed, (uint64_t)rank);
  for (int i = 0; i < N; i += 3) g[i] *= 1e4f; // mixed magnitudes: association changes the bits
}

static int run_sync(ps_comm *c, float *g, ps_grad_sync_timing *tm, int check_order) {
  ps_grad_sync *s = NULL;
  TU_OK(ps_grad_sync_create(&s, c, g, N, BUCKET));
  int nb = ps_grad_sync_bucket_count(s);
  TU_OK(ps_grad_sync_begin(s));
  enum { LAYERS = 40 };
  for (int l = LAYERS - 1; l >= 0; l--) { // simulated backward: layer l's gradients become final
    int64_t first_final = (int64_t)l * N / LAYERS;
    TU_OK(ps_grad_sync_ready(s, first_final));
    // A SyncBN / Cox-style small collective on the main communicator while buckets are in flight
    // (on their own communicator, possibly driven by the progress thread at the same time).
    int p = ps_comm_size(c);
    double stat[2] = {1.0 + ps_comm_rank(c), (double)l}, want = p * (p + 1) / 2.0;
    TU_OK(ps_comm_allreduce(c, PS_IN_PLACE, stat, 2, PS_F64, PS_OP_SUM));
    TU_CHECK(stat[0] == want && stat[1] == (double)l * p, "layer %d: small all-reduce gave %g %g", l, stat[0], stat[1]);
    if (check_order)
      for (int k = 0; k < nb; k++) {
        int64_t lo, hi;
        ps_grad_sync_bucket_range(s, k, &lo, &hi);
        TU_CHECK(ps_grad_sync_bucket_started(s, k) == (lo >= first_final),
                 "layer %d (final from %lld): bucket %d [%lld,%lld) started=%d", l, (long long)first_final, k,
                 (long long)lo, (long long)hi, ps_grad_sync_bucket_started(s, k));
      }
  }
  if (check_order) {
    // Bucket 0 is the end of the buffer; its ring must finish through ready()'s progress alone.
    struct timespec nap = {0, 100000};
    for (int i = 0; i < 50000 && !ps_grad_sync_bucket_done(s, 0); i++) {
      TU_OK(ps_grad_sync_ready(s, 0));
      nanosleep(&nap, NULL);
    }
    TU_CHECK(ps_grad_sync_bucket_done(s, 0), "bucket 0 did not complete before finish()");
  }
  TU_OK(ps_grad_sync_finish(s, tm));
  TU_CHECK(tm->buckets == nb && tm->started_early == nb, "%d of %d buckets started before finish", tm->started_early,
           nb);
  int64_t lo, hi;
  ps_grad_sync_bucket_range(s, 0, &lo, &hi);
  TU_CHECK(hi == N && (nb < 2 || lo == N - BUCKET / 4), "bucket 0 is [%lld,%lld), want the end of the buffer",
           (long long)lo, (long long)hi);
  ps_grad_sync_destroy(s);
  return 0;
}

int main(int argc, char **argv) {
  ps_comm *c = NULL;
  ps_comm_options opt = {PS_COMM_MPI, PS_CPU, 0};
  TU_OK(ps_comm_init(&c, &argc, &argv, &opt));
  int p = ps_comm_size(c), me = ps_comm_rank(c);
  uint64_t seed = ps_tu_seed("comm_grad_sync", 1234);
  float *g = malloc(sizeof(float) * N), *g2 = malloc(sizeof(float) * N), *ref = malloc(sizeof(float) * N);
  float *raw = malloc(sizeof(float) * N * (size_t)p), *mpi = malloc(sizeof(float) * N);
  if (!g || !g2 || !ref || !raw || !mpi) return 1;
  fill(g, me, seed);
  memcpy(mpi, g, sizeof(float) * N);
  TU_OK(ps_comm_allgather(c, g, raw, N, PS_F32));
  TU_OK(ps_comm_allreduce(c, PS_IN_PLACE, mpi, N, PS_F32, PS_OP_SUM));

  ps_grad_sync_timing tm;
  if (run_sync(c, g, &tm, 1)) return 1;
  if (me == 0)
    printf("np %d, progress %s: %d buckets, compute %.3f ms, comm wait %.3f ms, total %.3f ms, %d done before finish\n", p,
           ps_comm_progress_name(ps_comm_get_progress(c)), tm.buckets, 1e3 * tm.compute_s, 1e3 * tm.comm_wait_s, 1e3 * tm.total_s, tm.done_early);
  TU_CHECK(tm.done_early >= 1, "no bucket completed before finish");

  // Ring-order reference: bucket k, chunk j summed from rank j onwards.
  const int64_t e = BUCKET / 4;
  for (int64_t end = N; end > 0; end -= e) {
    int64_t first = end - e > 0 ? end - e : 0, n = end - first;
    for (int j = 0; j < p; j++)
      for (int64_t i = first + (int64_t)j * n / p; i < first + (int64_t)(j + 1) * n / p; i++) {
        float acc = raw[(size_t)j * N + i];
        for (int q = 1; q < p; q++) acc = acc + raw[(size_t)((j + q) % p) * N + i];
        ref[i] = acc;
      }
  }
  int64_t diff_ref = 0, diff_mpi = 0;
  for (int64_t i = 0; i < N; i++) {
    diff_ref += memcmp(&g[i], &ref[i], sizeof(float)) != 0;
    diff_mpi += memcmp(&g[i], &mpi[i], sizeof(float)) != 0;
  }
  TU_CHECK(diff_ref == 0, "rank %d: %lld elements differ from the ring-order reference", me, (long long)diff_ref);
  double rel = ps_tu_rel_err(g, mpi, N);
  if (p == 2) TU_CHECK(diff_mpi == 0, "p=2: %lld elements differ from MPI_Allreduce", (long long)diff_mpi);
  TU_CHECK(rel < 1e-6, "relative error vs MPI_Allreduce %.3g", rel);
  if (me == 0) printf("vs MPI_Allreduce: %lld of %d elements differ in the last bits, rel err %.3g\n",
                      (long long)diff_mpi, N, rel);

  // Same inputs again: bit-identical; and every rank holds the same bits.
  fill(g2, me, seed);
  if (run_sync(c, g2, &tm, 0)) return 1;
  TU_CHECK(memcmp(g, g2, sizeof(float) * N) == 0, "second run differs");
  float *all = raw; // reuse: every rank's result
  TU_OK(ps_comm_allgather(c, g, all, N, PS_F32));
  for (int q = 1; q < p; q++)
    TU_CHECK(memcmp(all, all + (size_t)q * N, sizeof(float) * N) == 0, "rank %d's result differs from rank 0's", q);
  if (argc > 1 && !strcmp(argv[1], "hash") && me == 0) {
    uint64_t h = 1469598103934665603ull; // FNV-1a over the result's bytes
    const unsigned char *b = (const unsigned char *)g;
    for (size_t i = 0; i < sizeof(float) * N; i++) h = (h ^ b[i]) * 1099511628211ull;
    printf("hash=%016llx\n", (unsigned long long)h);
  }

  // Bad input: ranks disagreeing on the gradient count is refused on every rank.
  ps_grad_sync *bad = NULL;
  ps_status st = ps_grad_sync_create(&bad, c, g, me == 0 ? N - 1 : N, BUCKET);
  TU_CHECK(p == 1 || (st == PS_ERR_ARG && bad == NULL), "mismatched counts accepted (%s)", ps_status_name(st));
  if (st == PS_OK) ps_grad_sync_destroy(bad);

  ps_status agreed = PS_OK;
  TU_OK(ps_comm_agree(c, ps_tu_failures ? PS_ERR_INTERNAL : PS_OK, &agreed));
  if (agreed != PS_OK && !ps_tu_failures) ps_tu_failures++;
  free(g), free(g2), free(ref), free(raw), free(mpi);
  ps_comm_finalize(c);
  return ps_tu_finish("comm_grad_sync");
}
