// Shared by the CPU op files (ops_*.c): argument checks and device dispatch.
// Not a public header.
#ifndef PS_OPS_INTERNAL_H
#define PS_OPS_INTERNAL_H

#include <limits.h>

#include "ps_ops.h"

// All non-NULL tensors of one call must share a device; PS_OK for CPU tensors
// (called by ps_ops_device_of for calls that are not all on cuda).
ps_status ps_ops_device_check(const char *op, const char *file, int line, int n, const ps_tensor *const *ts);
#define PS_OPS_TENSORS_(...) (const ps_tensor *const[]){__VA_ARGS__}
#define PS_OPS_NTENSORS_(...) ((int)(sizeof(PS_OPS_TENSORS_(__VA_ARGS__)) / sizeof(const ps_tensor *)))

// Ops with a CUDA implementation: PS_OPS_DEVICE(op, tensors...) at the top
// declares ps_dev_ (the call's device; CUDA only when built with CUDA, a device
// is visible and every CUDA tensor holds device memory, else it fails like
// PS_OPS_CPU), and PS_OPS_ON_CUDA(launch) after the argument checks returns the
// CUDA launcher's status for CUDA tensors (ps_cuda_ops.h). Without CUDA it
// compiles to nothing, so no CUDA symbol is referenced.
ps_status ps_ops_device_of(const char *op, const char *file, int line, int n, const ps_tensor *const *ts,
                           ps_device *dev);
#define PS_OPS_DEVICE(op, ...)                                                                     \
  ps_device ps_dev_ = PS_CPU;                                                                      \
  PS_TRY(ps_ops_device_of(op, __FILE__, __LINE__, PS_OPS_NTENSORS_(__VA_ARGS__), PS_OPS_TENSORS_(__VA_ARGS__), \
                          &ps_dev_))
#if PANSURV_HAVE_CUDA
#include "ps_cuda_ops.h"
#define PS_OPS_ON_CUDA(launch)                                                                     \
  do {                                                                                             \
    if (ps_dev_ == PS_CUDA) return (launch);                                                       \
  } while (0)
#else
#define PS_OPS_ON_CUDA(launch) (void)ps_dev_
#endif

// `t` (named `what` in messages) has dtype `dt`; `numel` >= 0 also checks the element count.
ps_status ps_ops_check(const char *op, const char *what, const ps_tensor *t, ps_dtype dt, int64_t numel,
                       const char *file, int line);
#define PS_OPS_CHECK(op, t, dt, numel) PS_TRY(ps_ops_check(op, #t, t, dt, numel, __FILE__, __LINE__))
#define PS_OPS_CHECK_OPT(op, t, dt, numel)                                                         \
  do {                                                                                             \
    if (t) PS_OPS_CHECK(op, t, dt, numel);                                                         \
  } while (0)

// Last dim and the product of the others: a tensor seen as a (rows, cols) matrix.
static inline int64_t ps_ops_cols(const ps_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }
static inline int64_t ps_ops_rows(const ps_tensor *t) {
  int64_t c = ps_ops_cols(t);
  return c ? ps_tensor_numel(t) / c : 0;
}

// OpenBLAS single-threaded (idempotent): OpenMP owns the cores, see ops_gemm.c.
void ps_ops_blas_single_thread(void);
// Row-major sgemm, C (M, N) = alpha op(A) op(B) + beta C, split across the
// OpenMP threads by rows or columns of C (single BLAS call when small or when
// already inside a parallel region). Sizes must fit in int (callers check).
void ps_ops_sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                  const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

// Double-precision sums over float rows with 8 independent lanes: the lanes
// vectorize (a single double accumulator is one dependent add per element,
// ~4x slower), and the order is fixed by n alone, so results do not depend on
// threads.
static inline double ps_ops_lanes_total(const double l[8]) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}
static inline double ps_ops_sum(const float *x, int64_t n) {
  double l[8] = {0}, s = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) l[k] += x[i + k];
  for (; i < n; i++) s += x[i];
  return s + ps_ops_lanes_total(l);
}
static inline void ps_ops_sum_sumsq(const float *x, int64_t n, double *sum, double *sumsq) {
  double l[8] = {0}, q[8] = {0}, s = 0, t = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      double v = x[i + k];
      l[k] += v;
      q[k] += v * v;
    }
  for (; i < n; i++) {
    s += x[i];
    t += (double)x[i] * x[i];
  }
  *sum = s + ps_ops_lanes_total(l);
  *sumsq = t + ps_ops_lanes_total(q);
}
// sum(x * y) over n elements.
static inline double ps_ops_dot(const float *x, const float *y, int64_t n) {
  double l[8] = {0}, s = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) l[k] += (double)x[i + k] * y[i + k];
  for (; i < n; i++) s += (double)x[i] * y[i];
  return s + ps_ops_lanes_total(l);
}
// sum((x - mu)^2) over n elements.
static inline double ps_ops_sumsq_centered(const float *x, double mu, int64_t n) {
  double l[8] = {0}, s = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      double d = (double)x[i + k] - mu;
      l[k] += d * d;
    }
  for (; i < n; i++) s += ((double)x[i] - mu) * ((double)x[i] - mu);
  return s + ps_ops_lanes_total(l);
}
// sum(g) and sum(g * (x - mu)) over n elements.
static inline void ps_ops_sum_dot_centered(const float *g, const float *x, double mu, int64_t n, double *sum_g,
                                           double *dot) {
  double l[8] = {0}, q[8] = {0}, s = 0, t = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      double gv = g[i + k];
      l[k] += gv;
      q[k] += gv * ((double)x[i + k] - mu);
    }
  for (; i < n; i++) {
    s += g[i];
    t += (double)g[i] * ((double)x[i] - mu);
  }
  *sum_g = s + ps_ops_lanes_total(l);
  *dot = t + ps_ops_lanes_total(q);
}

// Element counts below which OpenMP is not worth waking threads.
#define PS_OPS_PAR_MIN 32768

#endif
