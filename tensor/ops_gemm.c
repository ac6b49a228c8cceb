// CPU GEMM and linear layers on OpenBLAS, plus the shared op plumbing
// (threads, device dispatch, argument checks).
//
// Dimension letters: M, N, K the GEMM sizes (out (M, N) = op(a) (M, K) · op(b) (K, N));
// Nr rows of a linear input, Din/Dout its feature widths.
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "ops_internal.h"

// One thread pool owns the cores: OpenMP. OpenBLAS (the pthread build on
// Debian) keeps its own pool whose workers spin after each call; alternating
// OpenMP regions and threaded BLAS calls then makes the two pools fight over
// the same cores (measured: a linear layer 2-8x slower on 2 cores). So BLAS is
// called single-threaded, and ps_ops_sgemm splits large products across the
// OpenMP threads itself.
void ps_ops_set_threads(int nthreads) {
  if (nthreads > 0) omp_set_num_threads(nthreads);
  ps_ops_blas_single_thread();
}

int ps_ops_get_threads(void) { return omp_get_max_threads(); }

void ps_ops_blas_single_thread(void) {
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

void ps_ops_sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                  const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  ps_ops_blas_single_thread();
  int T = omp_in_parallel() ? 1 : omp_get_max_threads();
  // Below ~4 MFLOP the fork/join costs more than it saves.
  if (T <= 1 || 2.0 * (double)M * (double)N * (double)K < 4e6) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
    return;
  }
  // Split the larger of M and N into T slabs (multiples of 16, the kernels' register width).
  bool by_rows = M >= N;
  int64_t dim = by_rows ? M : N, chunk = ((dim + T - 1) / T + 15) / 16 * 16;
  int64_t nchunks = (dim + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(T)
  for (int64_t c = 0; c < nchunks; c++) {
    int64_t lo = c * chunk, len = dim - lo < chunk ? dim - lo : chunk;
    if (by_rows) // rows lo.. of C and of op(A): A is (M, K) or, transposed, (K, M)
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)len, (int)N,
                  (int)K, alpha, ta ? A + lo : A + lo * lda, (int)lda, B, (int)ldb, beta, C + lo * ldc, (int)ldc);
    else // columns lo.. of C and of op(B): B is (K, N) or, transposed, (N, K)
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)len,
                  (int)K, alpha, A, (int)lda, tb ? B + lo * ldb : B + lo, (int)ldb, beta, C + lo, (int)ldc);
  }
}

ps_status ps_ops_device_check(const char *op, const char *file, int line, int n, const ps_tensor *const *ts) {
  int dev = -1;
  for (int i = 0; i < n; i++) {
    if (!ts[i]) continue;
    if (dev < 0) dev = (int)ts[i]->device;
    else if ((int)ts[i]->device != dev)
      return ps_error_set(PS_ERR_ARG, file, line, "%s: tensors on different devices (%s and %s); move them first",
                          op, ps_device_name((ps_device)dev), ps_device_name(ts[i]->device));
  }
  // All-cuda calls never get here: ps_ops_device_of routes them to the CUDA launchers.
  if (dev > PS_CUDA) return ps_error_set(PS_ERR_ARG, file, line, "%s: unknown device tag %d", op, dev);
  return PS_OK;
}

ps_status ps_ops_check(const char *op, const char *what, const ps_tensor *t, ps_dtype dt, int64_t numel,
                       const char *file, int line) {
  char buf[96];
  if (!t) return ps_error_set(PS_ERR_ARG, file, line, "%s: %s is NULL", op, what);
  if (t->dtype != dt)
    return ps_error_set(PS_ERR_ARG, file, line, "%s: %s is %s, expected dtype %s", op, what,
                        ps_tensor_describe(t, buf, sizeof buf), ps_dtype_name(dt));
  if (numel >= 0 && ps_tensor_numel(t) != numel)
    return ps_error_set(PS_ERR_ARG, file, line, "%s: %s is %s, expected %lld elements", op, what,
                        ps_tensor_describe(t, buf, sizeof buf), (long long)numel);
  if (!t->data && ps_tensor_numel(t) > 0)
    return ps_error_set(PS_ERR_ARG, file, line, "%s: %s has no data", op, what);
  return PS_OK;
}

// ---- GEMM ----------------------------------------------------------------------

ps_status ps_gemm(ps_tensor *out, const ps_tensor *a, bool trans_a, const ps_tensor *b, bool trans_b,
                  const ps_tensor *bias, float alpha, float beta) {
  static const char op[] = "ps_gemm";
  PS_OPS_DEVICE(op, out, a, b, bias);
  PS_OPS_CHECK(op, a, PS_F32, -1);
  PS_OPS_CHECK(op, b, PS_F32, -1);
  PS_OPS_CHECK(op, out, PS_F32, -1);
  // Matrices are the tensors seen as (product of leading dims, last dim).
  int64_t ar = ps_ops_rows(a), ac = ps_ops_cols(a), br = ps_ops_rows(b), bc = ps_ops_cols(b);
  int64_t M = trans_a ? ac : ar, K = trans_a ? ar : ac;
  int64_t Kb = trans_b ? bc : br, N = trans_b ? br : bc;
  char d1[96], d2[96], d3[96];
  PS_REQUIRE(K == Kb, "%s: inner dimensions differ: a %s%s gives K=%lld, b %s%s gives K=%lld", op,
             ps_tensor_describe(a, d1, sizeof d1), trans_a ? "^T" : "", (long long)K,
             ps_tensor_describe(b, d2, sizeof d2), trans_b ? "^T" : "", (long long)Kb);
  PS_REQUIRE(ps_ops_rows(out) == M && ps_ops_cols(out) == N, "%s: out is %s, expected (%lld, %lld)", op,
             ps_tensor_describe(out, d3, sizeof d3), (long long)M, (long long)N);
  PS_REQUIRE(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX, "%s: sizes exceed the BLAS int range", op);
  PS_OPS_CHECK_OPT(op, bias, PS_F32, N);
  PS_OPS_ON_CUDA(ps_cuda_op_gemm(ps_f32(out), ps_f32(a), trans_a, ps_f32(b), trans_b, bias ? ps_f32(bias) : NULL,
                                 alpha, beta, M, N, K));
  if (M == 0 || N == 0) return PS_OK;
  float *o = ps_f32(out);
  if (bias) { // out = beta * out + bias first, then the product is added with beta = 1
    const float *bv = ps_f32(bias);
#pragma omp parallel for schedule(static) if (M * N > PS_OPS_PAR_MIN)
    for (int64_t i = 0; i < M; i++) {
      float *row = o + i * N;
      if (beta == 0.0f)
        for (int64_t j = 0; j < N; j++) row[j] = bv[j];
      else
        for (int64_t j = 0; j < N; j++) row[j] = beta * row[j] + bv[j];
    }
    beta = 1.0f;
  }
  if (K == 0) { // empty product: cblas may not touch out at all
    if (!bias) {
      for (int64_t i = 0; i < M * N; i++) o[i] = beta == 0.0f ? 0.0f : beta * o[i];
    }
    return PS_OK;
  }
  ps_ops_sgemm(trans_a, trans_b, M, N, K, alpha, ps_f32(a), ac, ps_f32(b), bc, beta, o, N);
  return PS_OK;
}

// ---- linear --------------------------------------------------------------------

ps_status ps_linear_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *w, const ps_tensor *b) {
  static const char op[] = "ps_linear_forward";
  PS_OPS_DEVICE(op, out, in, w, b);
  (void)ps_dev_; // ps_gemm dispatches
  PS_OPS_CHECK(op, w, PS_F32, -1);
  PS_REQUIRE(w->ndim == 2, "%s: w must be (Dout, Din), got %d dims", op, w->ndim);
  int64_t Dout = w->shape[0], Din = w->shape[1];
  PS_OPS_CHECK(op, in, PS_F32, -1);
  PS_REQUIRE(ps_ops_cols(in) == Din, "%s: in has last dim %lld, w expects Din=%lld", op, (long long)ps_ops_cols(in),
             (long long)Din);
  PS_OPS_CHECK(op, out, PS_F32, ps_ops_rows(in) * Dout);
  PS_REQUIRE(ps_ops_cols(out) == Dout, "%s: out has last dim %lld, expected Dout=%lld", op,
             (long long)ps_ops_cols(out), (long long)Dout);
  return ps_gemm(out, in, false, w, true, b, 1.0f, 0.0f);
}

ps_status ps_linear_backward(ps_tensor *din, ps_tensor *dw, ps_tensor *db, const ps_tensor *dout,
                             const ps_tensor *in, const ps_tensor *w) {
  static const char op[] = "ps_linear_backward";
  PS_OPS_DEVICE(op, din, dw, db, dout, in, w);
  PS_OPS_CHECK(op, w, PS_F32, -1);
  PS_REQUIRE(w->ndim == 2, "%s: w must be (Dout, Din), got %d dims", op, w->ndim);
  int64_t Dout = w->shape[0], Din = w->shape[1];
  PS_OPS_CHECK(op, dout, PS_F32, -1);
  PS_REQUIRE(ps_ops_cols(dout) == Dout, "%s: dout has last dim %lld, expected Dout=%lld", op,
             (long long)ps_ops_cols(dout), (long long)Dout);
  int64_t Nr = ps_ops_rows(dout);
  if (din) {
    PS_OPS_CHECK(op, din, PS_F32, Nr * Din);
    PS_TRY(ps_gemm(din, dout, false, w, false, NULL, 1.0f, 1.0f)); // (Nr, Dout) · (Dout, Din)
  }
  if (dw) {
    PS_OPS_CHECK(op, dw, PS_F32, Dout * Din);
    PS_OPS_CHECK(op, in, PS_F32, Nr * Din);
    PS_TRY(ps_gemm(dw, dout, true, in, false, NULL, 1.0f, 1.0f)); // (Dout, Nr) · (Nr, Din)
  }
  if (db) {
    PS_OPS_CHECK(op, db, PS_F32, Dout);
    PS_OPS_ON_CUDA(ps_cuda_op_colsum_add(ps_f32(db), ps_f32(dout), Nr, Dout)); // db is the last gradient
    // Column sums in double, Dout in chunks so the accumulator stays on the stack.
    enum { CH = 256 };
    const float *g = ps_f32(dout);
    float *o = ps_f32(db);
    int64_t nchunks = (Dout + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (Nr * Dout > PS_OPS_PAR_MIN && nchunks > 1)
    for (int64_t c = 0; c < nchunks; c++) {
      double acc[CH] = {0};
      int64_t j0 = c * CH, nj = Dout - j0 < CH ? Dout - j0 : CH;
      for (int64_t i = 0; i < Nr; i++) {
        const float *row = g + i * Dout + j0;
        for (int64_t j = 0; j < nj; j++) acc[j] += row[j];
      }
      for (int64_t j = 0; j < nj; j++) o[j0 + j] += (float)acc[j];
    }
  }
  return PS_OK;
}
