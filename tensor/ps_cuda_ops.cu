// CUDA implementations of the tensor ops (ps_cuda_ops.h): cuBLAS GEMM, own
// kernels for elementwise ops, activations, softmax / log-sum-exp, reductions,
// layer and batch norm, pooling and dropout. Formulas follow the CPU ops line
// by line; sums that the CPU does in double are done in double here too.
// Kernels that accumulate into a gradient gather (each output element owned by
// one thread), so results do not depend on scheduling; the one exception is
// max-pool backward with overlapping windows (atomic adds, see there).
//
// Dimension letters: R rows, L/D columns, O/A/I reduction outer/axis/inner,
// N batch, C channels, S spatial positions per channel, NC planes.
#include <math.h>

#include "ps_cuda.h"
#include "ps_cuda_internal.h"
#include "ps_cuda_ops.h"
#include "ps_philox.h"

extern "C" {
#include "ps_rng.h"
}

// ---- GEMM ---------------------------------------------------------------------------

__global__ static void bias_fill_kernel(float *C, const float *bias, float beta, int64_t M, int64_t N) {
  PS_CUDA_FOR(i, M * N) C[i] = beta == 0.0f ? bias[i % N] : beta * C[i] + bias[i % N];
}
__global__ static void beta_scale_kernel(float *C, float beta, int64_t n) {
  PS_CUDA_FOR(i, n) C[i] = beta == 0.0f ? 0.0f : beta * C[i];
}

// bf16 copies of the two matrix inputs of a BF16-precision GEMM: A (M*K) then
// B (K*N) at a 256-byte aligned offset, in the thread's BF16 scratch slot: it grows
// to the largest GEMM seen and never shrinks, so cudaMalloc happens only while new,
// larger shapes appear (the first training step), never in a steady-state step.
extern "C" size_t ps_cuda_bf16_scratch_bytes(void) { return ps_cuda_scratch_capacity(PS_CUDA_SCRATCH_BF16); }
static ps_status bf16_scratch(size_t nbytes, void **p) { return ps_cuda_scratch_in(PS_CUDA_SCRATCH_BF16, nbytes, p); }

// C (fp32) = alpha op(A) op(B) + beta C with A and B rounded to bf16 (round to
// nearest even) and fp32 accumulation (CUBLAS_COMPUTE_32F). Bias already applied.
static ps_status gemm_bf16_inputs(float *C, const float *A, bool ta, const float *B, bool tb, float alpha, float beta,
                                  int64_t M, int64_t N, int64_t K) {
  PS_REQUIRE(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX, "bf16 gemm: sizes (%lld, %lld, %lld) exceed cuBLAS's "
             "int range", (long long)M, (long long)N, (long long)K);
  size_t na = (size_t)(M * K), nb = (size_t)(K * N);
  size_t off_b = (na * sizeof(uint16_t) + 255) / 256 * 256;
  void *scr = nullptr;
  PS_TRY(bf16_scratch(off_b + nb * sizeof(uint16_t), &scr));
  uint16_t *a16 = (uint16_t *)scr, *b16 = (uint16_t *)((char *)scr + off_b);
  PS_TRY(ps_cuda_f32_to_bf16(a16, A, (int64_t)na));
  PS_TRY(ps_cuda_f32_to_bf16(b16, B, (int64_t)nb));
  return ps_cuda_gemm_bf16(C, a16, ta, b16, tb, M, N, K, alpha, beta);
}

extern "C" ps_status ps_cuda_op_gemm(float *C, const float *A, bool ta, const float *B, bool tb, const float *bias,
                                     float alpha, float beta, int64_t M, int64_t N, int64_t K) {
  if (M == 0 || N == 0) return PS_OK;
  if (bias) { // C = beta C + bias first, then the product is added with beta = 1 (as the CPU op)
    bias_fill_kernel<<<ps_cuda_grid(M * N), PS_CUDA_BLOCK>>>(C, bias, beta, M, N);
    PS_CUDA_LAUNCHED();
    beta = 1.0f;
  }
  if (K == 0) {
    if (!bias) {
      beta_scale_kernel<<<ps_cuda_grid(M * N), PS_CUDA_BLOCK>>>(C, beta, M * N);
      PS_CUDA_LAUNCHED();
    }
    return PS_OK;
  }
  if (ps_ops_get_matmul_precision() == PS_MATMUL_BF16) return gemm_bf16_inputs(C, A, ta, B, tb, alpha, beta, M, N, K);
  cublasHandle_t h;
  PS_TRY(ps_cuda_blas_handle(&h));
  // Row-major C (M, N) = op(A) op(B) is column-major C^T (N, M) = op(B)^T op(A)^T.
  int lda = (int)(ta ? M : K), ldb = (int)(tb ? K : N);
  PS_CUBLAS_CHECK(cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M,
                              (int)K, &alpha, B, ldb, A, lda, &beta, C, (int)N));
  return PS_OK;
}

// out (D) += column sums of g (R, D), in double; one thread per column (coalesced rows).
__global__ static void colsum_add_kernel(float *out, const float *g, int64_t R, int64_t D) {
  PS_CUDA_FOR(j, D) {
    double s = 0;
    for (int64_t r = 0; r < R; r++) s += g[r * D + j];
    out[j] += (float)s;
  }
}

extern "C" ps_status ps_cuda_op_colsum_add(float *out, const float *g, int64_t R, int64_t D) {
  if (D == 0) return PS_OK;
  colsum_add_kernel<<<ps_cuda_grid(D), PS_CUDA_BLOCK>>>(out, g, R, D);
  PS_CUDA_LAUNCHED();
  return PS_OK;
}

// ---- elementwise ------------------------------------------------------------------------

__global__ static void binary_kernel(int op, float *o, const float *a, const float *b, int64_t n) {
  if (op == PS_CUDA_EW_ADD) {
    PS_CUDA_FOR(i, n) o[i] = a[i] + b[i];
  } else {
    PS_CUDA_FOR(i, n) o[i] = a[i] * b[i];
  }
}
__global__ static void axpy2_kernel(float *y1, float *y2, float s, const float *x, int64_t n) {
  PS_CUDA_FOR(i, n) {
    float v = s * x[i];
    if (y1) y1[i] += v;
    if (y2) y2[i] += v;
  }
}
__global__ static void mul_backward_kernel(float *da, float *db, const float *g, const float *a, const float *b,
                                           int64_t n) {
  PS_CUDA_FOR(i, n) {
    if (da) da[i] += g[i] * b[i];
    if (db) db[i] += g[i] * a[i];
  }
}
__global__ static void scale_kernel(float *o, float s, const float *x, int64_t n) {
  PS_CUDA_FOR(i, n) o[i] = s * x[i];
}
__global__ static void add_rowvec_kernel(float *o, const float *x, const float *v, int64_t R, int64_t D) {
  PS_CUDA_FOR(i, R * D) o[i] = x[i] + v[i % D];
}

#define LAUNCH_N(kernel, n, ...)                                                                   \
  do {                                                                                             \
    if ((n) > 0) {                                                                                 \
      kernel<<<ps_cuda_grid(n), PS_CUDA_BLOCK>>>(__VA_ARGS__);                                     \
      PS_CUDA_LAUNCHED();                                                                          \
    }                                                                                              \
    return PS_OK;                                                                                  \
  } while (0)

extern "C" ps_status ps_cuda_op_binary(ps_cuda_ew op, float *out, const float *a, const float *b, int64_t n) {
  PS_REQUIRE(op >= 0 && op < PS_CUDA_EW_COUNT, "ps_cuda_op_binary: unknown op %d", (int)op);
  LAUNCH_N(binary_kernel, n, (int)op, out, a, b, n);
}
extern "C" ps_status ps_cuda_op_axpy2(float *y1, float *y2, float s, const float *x, int64_t n) {
  if (!y1 && !y2) return PS_OK;
  LAUNCH_N(axpy2_kernel, n, y1, y2, s, x, n);
}
extern "C" ps_status ps_cuda_op_mul_backward(float *da, float *db, const float *g, const float *a, const float *b,
                                             int64_t n) {
  if (!da && !db) return PS_OK;
  LAUNCH_N(mul_backward_kernel, n, da, db, g, a, b, n);
}
extern "C" ps_status ps_cuda_op_scale(float *out, float s, const float *x, int64_t n) {
  LAUNCH_N(scale_kernel, n, out, s, x, n);
}
extern "C" ps_status ps_cuda_op_add_rowvec(float *out, const float *x, const float *v, int64_t R, int64_t D) {
  LAUNCH_N(add_rowvec_kernel, R * D, out, x, v, R, D);
}
extern "C" ps_status ps_cuda_op_add_rowvec_backward(float *din, float *dv, const float *g, int64_t R, int64_t D) {
  if (din) PS_TRY(ps_cuda_op_axpy2(din, NULL, 1.0f, g, R * D));
  if (dv) PS_TRY(ps_cuda_op_colsum_add(dv, g, R, D));
  return PS_OK;
}

// ---- activations (same formulas as ops_elementwise.c) ---------------------------------------

#define GELU_C 0.7978845608028654f // sqrt(2 / pi)
#define GELU_A 0.044715f

__device__ static inline float d_gelu(float x) {
  float u = GELU_C * (x + GELU_A * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}
__device__ static inline float d_gelu_grad(float x) {
  float u = GELU_C * (x + GELU_A * x * x * x), t = tanhf(u);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * x * x);
}
__device__ static inline float d_sigmoid(float x) {
  if (x >= 0) return 1.0f / (1.0f + expf(-x));
  float e = expf(x);
  return e / (1.0f + e);
}

__global__ static void act_forward_kernel(float *o, const float *x, int act, int64_t n) {
  PS_CUDA_FOR(i, n) {
    float v = x[i];
    switch (act) {
    case PS_ACT_RELU: o[i] = v > 0.0f ? v : 0.0f; break;
    case PS_ACT_GELU: o[i] = d_gelu(v); break;
    case PS_ACT_SIGMOID: o[i] = d_sigmoid(v); break;
    default: o[i] = tanhf(v); break;
    }
  }
}

__global__ static void act_backward_kernel(float *d, const float *g, const float *x, const float *y, int act,
                                           int64_t n) {
  PS_CUDA_FOR(i, n) {
    float gr = g[i];
    switch (act) {
    case PS_ACT_RELU: d[i] += (x ? x[i] : y[i]) > 0.0f ? gr : 0.0f; break;
    case PS_ACT_GELU: d[i] += gr * d_gelu_grad(x[i]); break;
    case PS_ACT_SIGMOID: {
      float s = y ? y[i] : d_sigmoid(x[i]);
      d[i] += gr * s * (1.0f - s);
      break;
    }
    default: {
      float t = y ? y[i] : tanhf(x[i]);
      d[i] += gr * (1.0f - t * t);
      break;
    }
    }
  }
}

extern "C" ps_status ps_cuda_op_act_forward(float *out, const float *x, ps_activation act, int64_t n) {
  LAUNCH_N(act_forward_kernel, n, out, x, (int)act, n);
}
extern "C" ps_status ps_cuda_op_act_backward(float *din, const float *g, const float *x, const float *y,
                                             ps_activation act, int64_t n) {
  PS_REQUIRE(x || (y && act != PS_ACT_GELU), "ps_act_backward: %s needs the forward input", ps_activation_name(act));
  // The CPU prefers x for relu and y for sigmoid/tanh; both are exact alternatives.
  if (act == PS_ACT_RELU && x) y = NULL;
  if ((act == PS_ACT_SIGMOID || act == PS_ACT_TANH) && y) x = NULL;
  LAUNCH_N(act_backward_kernel, n, din, g, x, y, (int)act, n);
}

// ---- softmax / log-sum-exp: one block per row ------------------------------------------------

__global__ static void softmax_forward_kernel(float *y, const float *x, const uint8_t *mask, int64_t R, int64_t L) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const float *xr = x + r * L;
    const uint8_t *mr = mask ? mask + r * L : nullptr;
    float *yr = y + r * L;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x)
      if (!mr || mr[j]) mx = xr[j] > mx ? xr[j] : mx;
    mx = ps_block_max(mx, shf);
    if (mx == -INFINITY) { // no valid entry: an all-zero row
      for (int64_t j = threadIdx.x; j < L; j += blockDim.x) yr[j] = 0.0f;
      continue;
    }
    double s = 0;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
      float e = (!mr || mr[j]) ? expf(xr[j] - mx) : 0.0f;
      yr[j] = e;
      s += e;
    }
    s = ps_block_sum(s, shd);
    float inv = (float)(1.0 / s);
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) yr[j] *= inv;
  }
}

__global__ static void softmax_backward_kernel(float *d, const float *g, const float *y, int64_t R, int64_t L) {
  __shared__ double shd[32];
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const float *yr = y + r * L, *gr = g + r * L;
    double dot = 0;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) dot += (double)yr[j] * gr[j];
    dot = ps_block_sum(dot, shd);
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x)
      if (yr[j] != 0.0f) d[r * L + j] += yr[j] * (gr[j] - (float)dot);
  }
}

__global__ static void logsumexp_forward_kernel(float *y, const float *x, const uint8_t *mask, int64_t R,
                                                int64_t L) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const float *xr = x + r * L;
    const uint8_t *mr = mask ? mask + r * L : nullptr;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x)
      if (!mr || mr[j]) mx = xr[j] > mx ? xr[j] : mx;
    mx = ps_block_max(mx, shf);
    double s = 0;
    if (mx != -INFINITY)
      for (int64_t j = threadIdx.x; j < L; j += blockDim.x)
        if ((!mr || mr[j]) && xr[j] != -INFINITY) s += exp((double)xr[j] - mx);
    s = ps_block_sum(s, shd);
    if (threadIdx.x == 0) y[r] = mx == -INFINITY ? -INFINITY : mx + (float)log(s);
  }
}

__global__ static void logsumexp_backward_kernel(float *d, const float *g, const float *x, const float *y,
                                                 const uint8_t *mask, int64_t R, int64_t L) {
  PS_CUDA_FOR(i, R * L) {
    int64_t r = i / L;
    if (y[r] != -INFINITY && (!mask || mask[i])) d[i] += g[r] * expf(x[i] - y[r]);
  }
}

#define LAUNCH_ROWS(kernel, R, ...)                                                                \
  do {                                                                                             \
    if ((R) > 0) {                                                                                 \
      kernel<<<ps_cuda_rows_grid(R), PS_CUDA_BLOCK>>>(__VA_ARGS__);                                \
      PS_CUDA_LAUNCHED();                                                                          \
    }                                                                                              \
    return PS_OK;                                                                                  \
  } while (0)

extern "C" ps_status ps_cuda_op_softmax_forward(float *y, const float *x, const uint8_t *mask, int64_t R, int64_t L) {
  LAUNCH_ROWS(softmax_forward_kernel, R, y, x, mask, R, L);
}
extern "C" ps_status ps_cuda_op_softmax_backward(float *din, const float *g, const float *y, int64_t R, int64_t L) {
  LAUNCH_ROWS(softmax_backward_kernel, R, din, g, y, R, L);
}
extern "C" ps_status ps_cuda_op_logsumexp_forward(float *y, const float *x, const uint8_t *mask, int64_t R,
                                                  int64_t L) {
  LAUNCH_ROWS(logsumexp_forward_kernel, R, y, x, mask, R, L);
}
extern "C" ps_status ps_cuda_op_logsumexp_backward(float *din, const float *g, const float *x, const float *y,
                                                   const uint8_t *mask, int64_t R, int64_t L) {
  LAUNCH_N(logsumexp_backward_kernel, R * L, din, g, x, y, mask, R, L);
}

// ---- reductions over (O, A, I) ------------------------------------------------------------------

// I > 1: one thread per (o, i), coalesced over i.
__global__ static void reduce_inner_kernel(float *y, const float *x, int64_t O, int64_t A, int64_t I, double scale) {
  PS_CUDA_FOR(k, O * I) {
    int64_t o = k / I, i = k % I;
    double s = 0;
    for (int64_t a = 0; a < A; a++) s += x[(o * A + a) * I + i];
    y[k] = (float)(s * scale);
  }
}
// I == 1 (the last axis): one block per o.
__global__ static void reduce_row_kernel(float *y, const float *x, int64_t O, int64_t A, double scale) {
  __shared__ double shd[32];
  for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
    double s = 0;
    for (int64_t a = threadIdx.x; a < A; a += blockDim.x) s += x[o * A + a];
    s = ps_block_sum(s, shd);
    if (threadIdx.x == 0) y[o] = (float)(s * scale);
  }
}
__global__ static void reduce_backward_kernel(float *d, const float *g, int64_t O, int64_t A, int64_t I,
                                              float scale) {
  PS_CUDA_FOR(k, O * A * I) {
    int64_t o = k / (A * I), i = k % I;
    d[k] += scale * g[o * I + i];
  }
}

extern "C" ps_status ps_cuda_op_reduce_forward(float *y, const float *x, int64_t O, int64_t A, int64_t I,
                                               double scale) {
  if (I == 1) LAUNCH_ROWS(reduce_row_kernel, O, y, x, O, A, scale);
  LAUNCH_N(reduce_inner_kernel, O * I, y, x, O, A, I, scale);
}
extern "C" ps_status ps_cuda_op_reduce_backward(float *din, const float *g, int64_t O, int64_t A, int64_t I,
                                                float scale) {
  LAUNCH_N(reduce_backward_kernel, O * A * I, din, g, O, A, I, scale);
}

// ---- layer norm: one block per row ------------------------------------------------------------------

__global__ static void layernorm_forward_kernel(float *y, float *mean, float *rstd, const float *x, const float *gm,
                                                const float *bt, int64_t N, int64_t D, float eps) {
  __shared__ double shd[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const float *xr = x + r * D;
    double s = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += xr[j];
    double m = ps_block_sum(s, shd) / (double)D;
    double v = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      double dd = (double)xr[j] - m;
      v += dd * dd;
    }
    v = ps_block_sum(v, shd);
    float fm = (float)m, fr = (float)(1.0 / sqrt(v / (double)D + eps));
    if (threadIdx.x == 0) {
      if (mean) mean[r] = fm;
      if (rstd) rstd[r] = fr;
    }
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      float h = (xr[j] - fm) * fr;
      y[r * D + j] = (gm ? gm[j] * h : h) + (bt ? bt[j] : 0.0f);
    }
  }
}

__global__ static void layernorm_din_kernel(float *d, const float *g, const float *x, const float *mu,
                                            const float *rs, const float *gm, int64_t N, int64_t D) {
  __shared__ double shd[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const float *xr = x + r * D, *gr = g + r * D;
    double s1 = 0, s2 = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      float dh = gm ? gr[j] * gm[j] : gr[j], h = (xr[j] - mu[r]) * rs[r];
      s1 += dh;
      s2 += (double)dh * h;
    }
    s1 = ps_block_sum(s1, shd);
    s2 = ps_block_sum(s2, shd);
    float m1 = (float)(s1 / (double)D), m2 = (float)(s2 / (double)D);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      float dh = gm ? gr[j] * gm[j] : gr[j], h = (xr[j] - mu[r]) * rs[r];
      d[r * D + j] += rs[r] * (dh - m1 - h * m2);
    }
  }
}

__global__ static void layernorm_dparams_kernel(float *dg, float *db, const float *g, const float *x, const float *mu,
                                                const float *rs, int64_t N, int64_t D) {
  PS_CUDA_FOR(j, D) {
    double ag = 0, ab = 0;
    for (int64_t r = 0; r < N; r++) {
      float gv = g[r * D + j];
      ag += (double)gv * ((x[r * D + j] - mu[r]) * rs[r]);
      ab += gv;
    }
    if (dg) dg[j] += (float)ag;
    if (db) db[j] += (float)ab;
  }
}

extern "C" ps_status ps_cuda_op_layernorm_forward(float *y, float *mean, float *rstd, const float *x,
                                                  const float *gamma, const float *beta, int64_t N, int64_t D,
                                                  float eps) {
  LAUNCH_ROWS(layernorm_forward_kernel, N, y, mean, rstd, x, gamma, beta, N, D, eps);
}
extern "C" ps_status ps_cuda_op_layernorm_backward(float *din, float *dgamma, float *dbeta, const float *g,
                                                   const float *x, const float *mean, const float *rstd,
                                                   const float *gamma, int64_t N, int64_t D) {
  if (din && N > 0) {
    layernorm_din_kernel<<<ps_cuda_rows_grid(N), PS_CUDA_BLOCK>>>(din, g, x, mean, rstd, gamma, N, D);
    PS_CUDA_LAUNCHED();
  }
  if ((dgamma || dbeta) && D > 0) {
    layernorm_dparams_kernel<<<ps_cuda_grid(D), PS_CUDA_BLOCK>>>(dgamma, dbeta, g, x, mean, rstd, N, D);
    PS_CUDA_LAUNCHED();
  }
  return PS_OK;
}

// ---- batch norm on (N, C, S): one block per channel for the sums ---------------------------------------

__global__ static void bn_stats_kernel(double *out, const float *x, int64_t N, int64_t C, int64_t S) {
  __shared__ double shd[32];
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    double s = 0, q = 0;
    for (int64_t k = threadIdx.x; k < N * S; k += blockDim.x) {
      double v = x[((k / S) * C + c) * S + k % S];
      s += v;
      q += v * v;
    }
    s = ps_block_sum(s, shd);
    q = ps_block_sum(q, shd);
    if (threadIdx.x == 0) {
      out[c] = s;
      out[C + c] = q;
    }
  }
}

extern "C" ps_status ps_cuda_op_bn_stats(double *sum, double *sumsq, const float *x, int64_t N, int64_t C,
                                         int64_t S) {
  if (C == 0) return PS_OK;
  void *scr = nullptr;
  PS_TRY(ps_cuda_scratch((size_t)(2 * C) * sizeof(double), &scr));
  double *dd = (double *)scr;
  bn_stats_kernel<<<ps_cuda_rows_grid(C), PS_CUDA_BLOCK>>>(dd, x, N, C, S);
  PS_CUDA_LAUNCHED();
  PS_CUDA_CHECK(cudaMemcpy(sum, dd, (size_t)C * sizeof(double), cudaMemcpyDeviceToHost));
  PS_CUDA_CHECK(cudaMemcpy(sumsq, dd + C, (size_t)C * sizeof(double), cudaMemcpyDeviceToHost));
  return PS_OK;
}

// Per channel, as the CPU: mean, rstd and the running statistics (unbiased variance).
__global__ static void bn_finalize_kernel(float *mu, float *rs, float *rm, float *rv, const double *sums, int64_t C,
                                          int64_t count, float eps, float momentum) {
  PS_CUDA_FOR(c, C) {
    double m = sums[c] / (double)count, v = sums[C + c] / (double)count - m * m;
    if (v < 0) v = 0;
    mu[c] = (float)m;
    rs[c] = (float)(1.0 / sqrt(v + eps));
    if (rm) rm[c] = (float)((1.0 - momentum) * rm[c] + momentum * m);
    if (rv) {
      double vu = count > 1 ? v * (double)count / (double)(count - 1) : v;
      rv[c] = (float)((1.0 - momentum) * rv[c] + momentum * vu);
    }
  }
}

// y = (x - mean) * scale * gamma + beta; scale = rstd, or from var (eval).
__global__ static void bn_affine_kernel(float *y, const float *x, int64_t N, int64_t C, int64_t S, const float *mu,
                                        const float *sc, const float *var, float eps, const float *gm,
                                        const float *bt) {
  PS_CUDA_FOR(i, N * C * S) {
    int64_t c = (i / S) % C;
    float r = sc ? sc[c] : (float)(1.0 / sqrt((double)var[c] + eps));
    float a = r * (gm ? gm[c] : 1.0f), b = bt ? bt[c] : 0.0f;
    y[i] = (x[i] - mu[c]) * a + b;
  }
}

extern "C" ps_status ps_cuda_op_bn_forward_apply(float *y, float *mean, float *rstd, const float *x,
                                                 const float *gamma, const float *beta, const double *sum,
                                                 const double *sumsq, int64_t count, float eps, float momentum,
                                                 float *running_mean, float *running_var, int64_t N, int64_t C,
                                                 int64_t S) {
  if (C == 0) return PS_OK;
  void *scr = nullptr;
  PS_TRY(ps_cuda_scratch((size_t)(2 * C) * sizeof(double), &scr));
  double *dd = (double *)scr;
  PS_CUDA_CHECK(cudaMemcpy(dd, sum, (size_t)C * sizeof(double), cudaMemcpyHostToDevice));
  PS_CUDA_CHECK(cudaMemcpy(dd + C, sumsq, (size_t)C * sizeof(double), cudaMemcpyHostToDevice));
  bn_finalize_kernel<<<ps_cuda_grid(C), PS_CUDA_BLOCK>>>(mean, rstd, running_mean, running_var, dd, C, count, eps,
                                                         momentum);
  PS_CUDA_LAUNCHED();
  LAUNCH_N(bn_affine_kernel, N * C * S, y, x, N, C, S, mean, rstd, NULL, 0.0f, gamma, beta);
}

extern "C" ps_status ps_cuda_op_bn_forward_eval(float *y, const float *x, const float *gamma, const float *beta,
                                                const float *running_mean, const float *running_var, float eps,
                                                int64_t N, int64_t C, int64_t S) {
  LAUNCH_N(bn_affine_kernel, N * C * S, y, x, N, C, S, running_mean, NULL, running_var, eps, gamma, beta);
}

__global__ static void bn_backward_reduce_kernel(double *out, const float *g, const float *x, const float *mu,
                                                 const float *rs, int64_t N, int64_t C, int64_t S) {
  __shared__ double shd[32];
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    double s = 0, t = 0, m = mu[c];
    for (int64_t k = threadIdx.x; k < N * S; k += blockDim.x) {
      int64_t i = ((k / S) * C + c) * S + k % S;
      double gv = g[i];
      s += gv;
      t += gv * ((double)x[i] - m);
    }
    s = ps_block_sum(s, shd);
    t = ps_block_sum(t, shd);
    if (threadIdx.x == 0) {
      out[c] = s;
      out[C + c] = t * rs[c];
    }
  }
}

extern "C" ps_status ps_cuda_op_bn_backward_reduce(double *sum_dy, double *sum_dy_xhat, const float *g,
                                                   const float *x, const float *mean, const float *rstd, int64_t N,
                                                   int64_t C, int64_t S) {
  if (C == 0) return PS_OK;
  void *scr = nullptr;
  PS_TRY(ps_cuda_scratch((size_t)(2 * C) * sizeof(double), &scr));
  double *dd = (double *)scr;
  bn_backward_reduce_kernel<<<ps_cuda_rows_grid(C), PS_CUDA_BLOCK>>>(dd, g, x, mean, rstd, N, C, S);
  PS_CUDA_LAUNCHED();
  PS_CUDA_CHECK(cudaMemcpy(sum_dy, dd, (size_t)C * sizeof(double), cudaMemcpyDeviceToHost));
  PS_CUDA_CHECK(cudaMemcpy(sum_dy_xhat, dd + C, (size_t)C * sizeof(double), cudaMemcpyDeviceToHost));
  return PS_OK;
}

// sums: sum_dy, sum_dy_xhat, local sum_dy, local sum_dy_xhat, C each.
__global__ static void bn_dparams_kernel(float *dg, float *db, const double *sums, int64_t C) {
  PS_CUDA_FOR(c, C) {
    if (dg) dg[c] += (float)sums[3 * C + c];
    if (db) db[c] += (float)sums[2 * C + c];
  }
}
__global__ static void bn_din_kernel(float *d, const float *g, const float *x, const float *mu, const float *rs,
                                     const float *gm, const double *sums, int64_t count, int64_t N, int64_t C,
                                     int64_t S) {
  PS_CUDA_FOR(i, N * C * S) {
    int64_t c = (i / S) % C;
    float k = (gm ? gm[c] : 1.0f) * rs[c];
    float mdy = (float)(sums[c] / (double)count), mdx = (float)(sums[C + c] / (double)count);
    float h = (x[i] - mu[c]) * rs[c];
    d[i] += k * (g[i] - mdy - h * mdx);
  }
}

extern "C" ps_status ps_cuda_op_bn_backward_apply(float *din, float *dgamma, float *dbeta, const float *g,
                                                  const float *x, const float *mean, const float *rstd,
                                                  const float *gamma, const double *sum_dy,
                                                  const double *sum_dy_xhat, const double *ldy, const double *ldx,
                                                  int64_t count, int64_t N, int64_t C, int64_t S) {
  if (C == 0) return PS_OK;
  void *scr = nullptr;
  size_t cb = (size_t)C * sizeof(double);
  PS_TRY(ps_cuda_scratch(4 * cb, &scr));
  double *dd = (double *)scr;
  PS_CUDA_CHECK(cudaMemcpy(dd, sum_dy, cb, cudaMemcpyHostToDevice));
  PS_CUDA_CHECK(cudaMemcpy(dd + C, sum_dy_xhat, cb, cudaMemcpyHostToDevice));
  PS_CUDA_CHECK(cudaMemcpy(dd + 2 * C, ldy, cb, cudaMemcpyHostToDevice));
  PS_CUDA_CHECK(cudaMemcpy(dd + 3 * C, ldx, cb, cudaMemcpyHostToDevice));
  if (dgamma || dbeta) {
    bn_dparams_kernel<<<ps_cuda_grid(C), PS_CUDA_BLOCK>>>(dgamma, dbeta, dd, C);
    PS_CUDA_LAUNCHED();
  }
  if (!din) return PS_OK;
  LAUNCH_N(bn_din_kernel, N * C * S, din, g, x, mean, rstd, gamma, dd, count, N, C, S);
}

// ---- pooling ---------------------------------------------------------------------------------------------

__global__ static void maxpool_forward_kernel(float *y, int32_t *am, const float *x, int64_t NC, int64_t H,
                                              int64_t W, int k, int s, int64_t OH, int64_t OW) {
  PS_CUDA_FOR(q, NC * OH * OW) {
    int64_t pl = q / (OH * OW), oh = (q / OW) % OH, ow = q % OW;
    const float *xp = x + pl * H * W;
    int64_t best = (oh * s) * W + ow * s;
    float bv = xp[best];
    for (int i = 0; i < k; i++)
      for (int j = 0; j < k; j++) {
        int64_t off = (oh * s + i) * W + ow * s + j;
        if (xp[off] > bv) { // first maximum wins ties, as the CPU
          bv = xp[off];
          best = off;
        }
      }
    y[q] = bv;
    am[q] = (int32_t)best;
  }
}

// One thread per output window adds its gradient at its argmax. The backward
// API carries no window size, so windows cannot be inverted per input pixel;
// with non-overlapping windows (s >= k) every pixel receives at most one add
// (deterministic), with overlapping ones the adds to a shared pixel are atomic
// and their order (hence the last bit) may vary from run to run.
__global__ static void maxpool_backward_kernel(float *d, const float *g, const int32_t *am, int64_t NC, int64_t HW,
                                               int64_t Q) {
  PS_CUDA_FOR(q, NC * Q) {
    int32_t a = am[q];
    if (a >= 0 && a < HW) atomicAdd(d + (q / Q) * HW + a, g[q]);
  }
}

extern "C" ps_status ps_cuda_op_maxpool_forward(float *y, int32_t *argmax, const float *x, int64_t NC, int64_t H,
                                                int64_t W, int k, int s, int64_t OH, int64_t OW) {
  LAUNCH_N(maxpool_forward_kernel, NC * OH * OW, y, argmax, x, NC, H, W, k, s, OH, OW);
}

extern "C" ps_status ps_cuda_op_maxpool_backward(float *din, const float *g, const int32_t *argmax, int64_t NC,
                                                 int64_t H, int64_t W, int64_t OH, int64_t OW) {
  LAUNCH_N(maxpool_backward_kernel, NC * OH * OW, din, g, argmax, NC, H * W, OH * OW);
}

__global__ static void avgpool_forward_kernel(float *y, const float *x, int64_t NC, int64_t HW) {
  __shared__ double shd[32];
  for (int64_t pl = blockIdx.x; pl < NC; pl += gridDim.x) {
    double s = 0;
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) s += x[pl * HW + i];
    s = ps_block_sum(s, shd);
    if (threadIdx.x == 0) y[pl] = (float)(s / (double)HW);
  }
}
__global__ static void avgpool_backward_kernel(float *d, const float *g, int64_t NC, int64_t HW, float inv) {
  PS_CUDA_FOR(i, NC * HW) d[i] += g[i / HW] * inv;
}

extern "C" ps_status ps_cuda_op_avgpool_forward(float *y, const float *x, int64_t NC, int64_t HW) {
  LAUNCH_ROWS(avgpool_forward_kernel, NC, y, x, NC, HW);
}
extern "C" ps_status ps_cuda_op_avgpool_backward(float *din, const float *g, int64_t NC, int64_t HW) {
  float inv = HW ? (float)(1.0 / (double)HW) : 0.0f;
  LAUNCH_N(avgpool_backward_kernel, NC * HW, din, g, NC, HW, inv);
}

// ---- dropout: the CPU's Philox stream/index rule (ps_philox.h), bit-identical masks -----------------------

__global__ static void dropout_forward_kernel(float *y, uint8_t *m, const float *x, float p, uint32_t k0,
                                              uint32_t k1, const uint64_t *streams, int64_t R, int64_t D) {
  const uint32_t key[2] = {k0, k1};
  const float scale = 1.0f / (1.0f - p);
  PS_CUDA_FOR(i, R * D) {
    int64_t r = i / D, j = i % D;
    float u = ps_philox_uniform(key, streams[r], (uint64_t)j);
    uint8_t keep = u >= p;
    m[i] = keep;
    y[i] = keep ? x[i] * scale : 0.0f;
  }
}
__global__ static void dropout_backward_kernel(float *d, const float *g, const uint8_t *m, float scale, int64_t n) {
  PS_CUDA_FOR(i, n) if (m[i]) d[i] += g[i] * scale;
}

extern "C" ps_status ps_cuda_op_dropout_forward(float *y, uint8_t *mask, const float *x, float p, uint64_t seed,
                                                const uint64_t *row_streams, int64_t R, int64_t D) {
  if (R * D == 0) return PS_OK;
  void *scr = nullptr;
  PS_TRY(ps_cuda_scratch((size_t)R * sizeof(uint64_t), &scr));
  PS_CUDA_CHECK(cudaMemcpy(scr, row_streams, (size_t)R * sizeof(uint64_t), cudaMemcpyHostToDevice));
  ps_rng g = ps_rng_make(seed, 0); // the key from the seed, exactly as the CPU
  LAUNCH_N(dropout_forward_kernel, R * D, y, mask, x, p, g.key[0], g.key[1], (const uint64_t *)scr, R, D);
}
extern "C" ps_status ps_cuda_op_dropout_backward(float *din, const float *g, const uint8_t *mask, float p,
                                                 int64_t n) {
  const float scale = 1.0f / (1.0f - p);
  LAUNCH_N(dropout_backward_kernel, n, din, g, mask, scale, n);
}
