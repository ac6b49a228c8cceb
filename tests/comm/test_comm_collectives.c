// Collectives against values every rank can compute on its own: rank r
// contributes v(r, i) = (r + 1) * 3 + i % 7 (exact in every dtype, u8 sums
// stay below 256 for up to 4 ranks), so sum/max/min have closed forms.
// Usage: test_comm_collectives allreduce|allgather|broadcast|agree|singleton
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "ps_comm.h"
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

static int test_allreduce(ps_comm *c) {
  int p = ps_comm_size(c), me = ps_comm_rank(c);
  enum { N = 1000 };
  static char send[N * 8], recv[N * 8];
  for (int t = 0; t < PS_DTYPE_COUNT; t++)
    for (int op = 0; op < PS_OP_COUNT; op++)
      for (int inplace = 0; inplace < 2; inplace++) {
        for (int64_t i = 0; i < N; i++) put(inplace ? recv : send, (ps_dtype)t, i, v(me, i));
        if (!inplace) memset(recv, 0xAB, sizeof recv);
        TU_OK(ps_comm_allreduce(c, inplace ? PS_IN_PLACE : send, recv, N, (ps_dtype)t, (ps_comm_op)op));
        int wrong = 0;
        for (int64_t i = 0; i < N; i++) wrong += get(recv, (ps_dtype)t, i) != expect_reduce(p, i, (ps_comm_op)op);
        TU_CHECK(wrong == 0, "allreduce %s op %d %s: %d wrong of %d", ps_dtype_name((ps_dtype)t), op,
                 inplace ? "in-place" : "out-of-place", wrong, N);
        if (!inplace) // out-of-place leaves the send buffer alone
          for (int64_t i = 0; i < N; i++) wrong += get(send, (ps_dtype)t, i) != v(me, i);
        TU_CHECK(wrong == 0, "allreduce modified its send buffer");
      }
  // Async path: same values through iallreduce/test/wait.
  float a[N];
  for (int i = 0; i < N; i++) a[i] = (float)v(me, i);
  ps_comm_request *q = NULL;
  TU_OK(ps_comm_iallreduce(c, PS_IN_PLACE, a, N, PS_F32, PS_OP_SUM, &q));
  bool done = false;
  TU_OK(ps_comm_test(q, &done));
  TU_OK(ps_comm_wait(q));
  int wrong = 0;
  for (int i = 0; i < N; i++) wrong += a[i] != (float)expect_reduce(p, i, PS_OP_SUM);
  TU_CHECK(wrong == 0, "iallreduce: %d wrong", wrong);
  // Bad input: a clear error, not a crash.
  TU_CHECK(ps_comm_allreduce(c, send, recv, -1, PS_F32, PS_OP_SUM) == PS_ERR_ARG, "negative count accepted");
  TU_CHECK(strstr(ps_error_message(), "negative") != NULL, "message: %s", ps_error_message());
  return 0;
}

static int test_allgather(ps_comm *c) {
  int p = ps_comm_size(c), me = ps_comm_rank(c);
  // Equal counts.
  enum { N = 5 };
  int64_t mine[N], all[4 * 64];
  for (int i = 0; i < N; i++) mine[i] = me * 100 + i;
  TU_OK(ps_comm_allgather(c, mine, all, N, PS_I64));
  for (int r = 0; r < p; r++)
    for (int i = 0; i < N; i++) TU_CHECK(all[r * N + i] == r * 100 + i, "allgather[%d][%d] = %lld", r, i, (long long)all[r * N + i]);
  // In place: own slice already in recv.
  for (int i = 0; i < p * N; i++) all[i] = (i / N == me) ? me * 100 + i % N : -1;
  TU_OK(ps_comm_allgather(c, PS_IN_PLACE, all, N, PS_I64));
  for (int r = 0; r < p; r++)
    for (int i = 0; i < N; i++) TU_CHECK(all[r * N + i] == r * 100 + i, "in-place allgather[%d][%d]", r, i);
  // Unequal counts, including an empty rank: rank r sends (r * 3) % 5 floats.
  int64_t counts[64], total = 0;
  for (int r = 0; r < p; r++) total += counts[r] = (r * 3) % 5;
  float fs[8], fr[256];
  for (int i = 0; i < counts[me]; i++) fs[i] = (float)(me * 10 + i) + 0.5f;
  for (int i = 0; i < 256; i++) fr[i] = -1.0f;
  TU_OK(ps_comm_allgatherv(c, fs, counts[me], fr, counts, PS_F32));
  int64_t off = 0;
  for (int r = 0; r < p; r++)
    for (int i = 0; i < counts[r]; i++, off++)
      TU_CHECK(fr[off] == (float)(r * 10 + i) + 0.5f, "allgatherv rank %d elem %d = %g", r, i, fr[off]);
  TU_CHECK(off == total && fr[total] == -1.0f, "allgatherv wrote past its %lld elements", (long long)total);
  // Unequal counts in place (u8).
  uint8_t u[64];
  memset(u, 0, sizeof u);
  off = 0;
  for (int r = 0; r < me; r++) off += counts[r];
  for (int i = 0; i < counts[me]; i++) u[off + i] = (uint8_t)(me * 10 + i + 1);
  TU_OK(ps_comm_allgatherv(c, PS_IN_PLACE, counts[me], u, counts, PS_U8));
  off = 0;
  for (int r = 0; r < p; r++)
    for (int i = 0; i < counts[r]; i++, off++) TU_CHECK(u[off] == r * 10 + i + 1, "in-place allgatherv u8");
  // Inconsistent counts are refused on the calling rank.
  int64_t bad[64];
  memcpy(bad, counts, sizeof bad);
  bad[me] = counts[me] + 1;
  TU_CHECK(ps_comm_allgatherv(c, fs, counts[me], fr, bad, PS_F32) == PS_ERR_ARG, "mismatched count accepted");
  return 0;
}

static int test_broadcast(ps_comm *c) {
  int p = ps_comm_size(c), me = ps_comm_rank(c);
  for (int root = 0; root < p; root++) {
    double d[100];
    int32_t k[3];
    for (int i = 0; i < 100; i++) d[i] = me == root ? 1.0 / (i + 1) + root : -7.0;
    for (int i = 0; i < 3; i++) k[i] = me == root ? root * 1000 + i : 0;
    TU_OK(ps_comm_broadcast(c, d, 100, PS_F64, root));
    TU_OK(ps_comm_broadcast(c, k, 3, PS_I32, root));
    for (int i = 0; i < 100; i++) TU_CHECK(d[i] == 1.0 / (i + 1) + root, "bcast root %d d[%d] = %g", root, i, d[i]);
    for (int i = 0; i < 3; i++) TU_CHECK(k[i] == root * 1000 + i, "bcast root %d k[%d]", root, i);
  }
  TU_CHECK(ps_comm_broadcast(c, NULL, 1, PS_F32, p) == PS_ERR_ARG, "root out of range accepted");
  TU_OK(ps_comm_barrier(c));
  return 0;
}

static int test_agree(ps_comm *c) {
  int p = ps_comm_size(c), me = ps_comm_rank(c);
  ps_status g = PS_ERR_INTERNAL;
  TU_OK(ps_comm_agree(c, PS_OK, &g));
  TU_CHECK(g == PS_OK, "all ok -> %d", g);
  // The last rank fails a "step"; every rank must learn it and who failed.
  ps_status local = PS_OK;
  if (me == p - 1) local = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "rank-local failure");
  TU_OK(ps_comm_agree(c, local, &g));
  TU_CHECK(g == PS_ERR_DATA, "rank %d agreed on %s, want data error", me, ps_status_name(g));
  if (me == p - 1)
    TU_CHECK(strstr(ps_error_message(), "rank-local failure") != NULL, "own message lost: %s", ps_error_message());
  else {
    char want[32];
    snprintf(want, sizeof want, "rank %d failed", p - 1);
    TU_CHECK(strstr(ps_error_message(), want) != NULL, "message does not name the rank: %s", ps_error_message());
  }
  // Worst status wins when several fail.
  local = me == 0 ? PS_ERR_IO : (me == p - 1 ? PS_ERR_NUMERIC : PS_OK);
  TU_OK(ps_comm_agree(c, local, &g));
  TU_CHECK(g == (p == 1 ? PS_ERR_IO : PS_ERR_NUMERIC), "worst status: got %s", ps_status_name(g));
  return 0;
}

static int test_singleton(ps_comm *c) {
  TU_CHECK(ps_comm_size(c) == 1 && ps_comm_rank(c) == 0, "singleton: rank %d of %d", ps_comm_rank(c), ps_comm_size(c));
  TU_CHECK(ps_comm_local_size(c) == 1 && ps_comm_local_rank(c) == 0 && ps_comm_node_count(c) == 1,
           "singleton: local %d/%d nodes %d", ps_comm_local_rank(c), ps_comm_local_size(c), ps_comm_node_count(c));
  TU_CHECK(ps_comm_threads(c) >= 1, "threads %d", ps_comm_threads(c));
  TU_CHECK(ps_comm_get_backend(c) == PS_COMM_MPI, "backend %s", ps_comm_backend_name(ps_comm_get_backend(c)));
  ps_comm_backend b;
  TU_CHECK(ps_comm_backend_parse("gloo", &b) == PS_ERR_ARG, "unknown backend accepted");
  TU_OK(ps_comm_backend_parse("nccl", &b));
  TU_CHECK(b == PS_COMM_NCCL, "parse nccl");
  if (test_allreduce(c) || test_allgather(c) || test_broadcast(c) || test_agree(c)) return 1;
  return 0;
}

// A launcher environment that disagrees with MPI's node split must be a clear error.
static int test_localid_mismatch(int argc, char **argv) {
  setenv("SLURM_LOCALID", "3", 1);
  ps_comm *c = NULL;
  ps_comm_options opt = {PS_COMM_MPI, PS_CPU, 0};
  ps_status s = ps_comm_init(&c, &argc, &argv, &opt);
  TU_CHECK(s == PS_ERR_MPI && c == NULL, "mismatched SLURM_LOCALID accepted (status %s)", ps_status_name(s));
  TU_CHECK(strstr(ps_error_message(), "SLURM_LOCALID=3") != NULL, "message: %s", ps_error_message());
  fprintf(stderr, "expected error: %s\n", ps_error_message());
  return ps_tu_finish("localid_mismatch");
}

// Threads per rank: OMP_NUM_THREADS wins over SLURM_CPUS_PER_TASK; a malformed value is an error.
static int test_threads(int argc, char **argv, bool bad) {
  setenv("OMP_NUM_THREADS", bad ? "four" : "3", 1);
  setenv("SLURM_CPUS_PER_TASK", "5", 1);
  ps_comm *c = NULL;
  ps_comm_options opt = {PS_COMM_MPI, PS_CPU, 0};
  ps_status s = ps_comm_init(&c, &argc, &argv, &opt);
  if (bad) {
    TU_CHECK(s == PS_ERR_ARG && c == NULL, "OMP_NUM_THREADS=four accepted (%s)", ps_status_name(s));
    TU_CHECK(strstr(ps_error_message(), "OMP_NUM_THREADS='four'") != NULL, "message: %s", ps_error_message());
  } else {
    TU_OK(s);
    TU_CHECK(ps_comm_threads(c) == 3, "threads %d, want 3 from OMP_NUM_THREADS", ps_comm_threads(c));
    ps_comm_finalize(c);
  }
  return ps_tu_finish(bad ? "threads_bad" : "threads");
}

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "";
  if (!strcmp(what, "localid_mismatch")) return test_localid_mismatch(argc, argv);
  if (!strcmp(what, "threads") || !strcmp(what, "threads_bad"))
    return test_threads(argc, argv, !strcmp(what, "threads_bad"));
  ps_comm *c = NULL;
  ps_comm_options opt = {PS_COMM_MPI, PS_CPU, 0};
  TU_OK(ps_comm_init(&c, &argc, &argv, &opt));
  TU_CHECK(ps_comm_local_size(c) >= 1 && ps_comm_local_rank(c) < ps_comm_local_size(c), "local rank");
  TU_CHECK(ps_comm_node_count(c) == 1, "one machine, %d nodes", ps_comm_node_count(c));
  int rc = 0;
  if (!strcmp(what, "allreduce")) rc = test_allreduce(c);
  else if (!strcmp(what, "allgather")) rc = test_allgather(c);
  else if (!strcmp(what, "broadcast")) rc = test_broadcast(c);
  else if (!strcmp(what, "agree")) rc = test_agree(c);
  else if (!strcmp(what, "singleton")) rc = test_singleton(c);
  else {
    fprintf(stderr, "usage: test_comm_collectives allreduce|allgather|broadcast|agree|singleton\n");
    rc = 2;
  }
  // Every rank's verdict counts: agree on failures so mpirun's exit code reflects any rank.
  ps_status g = PS_OK;
  ps_status s = ps_comm_agree(c, (rc || ps_tu_failures) ? PS_ERR_INTERNAL : PS_OK, &g);
  ps_comm_finalize(c);
  if (rc) return rc;
  if (s != PS_OK || (g != PS_OK && !ps_tu_failures)) ps_tu_failures++;
  return ps_tu_finish(what);
}
