// ps_ops: tensor operations, each a forward/backward pair where a gradient
// exists. Conventions (llm.c): outputs first, then inputs, then sizes;
// backward ACCUMULATES (+=) into every gradient it writes (din, dw, db), and a
// NULL gradient pointer means "not needed". All float32 unless noted.
// Dispatch is on the tensors' device tag; every tensor of one call lives on
// one device. Shapes are checked and a mismatch returns PS_ERR_ARG naming it.
//
// Dimension letters: N rows/batch, D/Din/Dout features, C/OC channels,
// H/W height/width, KH/KW kernel, R rows, L columns.
#ifndef PS_OPS_H
#define PS_OPS_H

#include "ps_tensor.h"

// Threads used by CPU kernels (OpenMP); 0 = leave as is. OpenBLAS is held at
// one thread (the ops split GEMMs across the OpenMP threads themselves) so one
// thread pool owns the cores; see docs/threads.md.
void ps_ops_set_threads(int nthreads);
int ps_ops_get_threads(void);

// ---- matmul precision ----------------------------------------------------
// Precision of the matrix products of CUDA tensors (ps_gemm, ps_linear_*,
// ps_conv2d_*), process-wide. FP32: plain fp32 (results match the CPU to
// ~1e-6). TF32: tensor cores with 10-bit-mantissa inputs (ps_cuda_set_tf32).
// BF16: ps_gemm/ps_linear_* round their two matrix inputs to bf16 (8-bit
// mantissa) in a device scratch that grows to the largest GEMM seen and is
// then reused (no cudaMalloc per call once the first step has run), and
// multiply with fp32 accumulation into an fp32 output; cuDNN convolutions run
// on fp32 tensors with tensor-op math (TF32 inputs, fp32 accumulation), the
// im2col fallback through the bf16 GEMM. Everything else (activations,
// weights, optimizer state, norms, softmax, reductions) stays fp32.
// CPU ops always compute in fp32: setting TF32 or BF16 in a build without
// CUDA returns PS_ERR_UNSUPPORTED and leaves the setting at FP32.
typedef enum { PS_MATMUL_FP32 = 0, PS_MATMUL_TF32, PS_MATMUL_BF16, PS_MATMUL_PRECISION_COUNT } ps_matmul_precision;
const char *ps_matmul_precision_name(ps_matmul_precision p);
ps_status ps_ops_set_matmul_precision(ps_matmul_precision p);
ps_matmul_precision ps_ops_get_matmul_precision(void);

// ---- GEMM ----------------------------------------------------------------
// out (M, N) = alpha * op(a) · op(b) + beta * out (+ bias (N) broadcast over rows, when non-NULL)
// op(a) is (M, K): a is (M, K) or, with trans_a, (K, M); likewise b. Each
// tensor is read as a matrix (product of its leading dims, its last dim), so a
// (B, T, K) input is a (B*T, K) matrix; likewise in/out of ps_linear_*.
ps_status ps_gemm(ps_tensor *out, const ps_tensor *a, bool trans_a, const ps_tensor *b, bool trans_b,
                  const ps_tensor *bias, float alpha, float beta);

// ---- linear: out (N, Dout) = in (N, Din) · w^T + b; w (Dout, Din), b (Dout) or NULL
ps_status ps_linear_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *w, const ps_tensor *b);
ps_status ps_linear_backward(ps_tensor *din, ps_tensor *dw, ps_tensor *db, const ps_tensor *dout,
                             const ps_tensor *in, const ps_tensor *w);

// ---- elementwise (any shape; operands of equal element count) -------------
ps_status ps_add_forward(ps_tensor *out, const ps_tensor *a, const ps_tensor *b);           // out = a + b
ps_status ps_add_backward(ps_tensor *da, ps_tensor *db, const ps_tensor *dout);
ps_status ps_mul_forward(ps_tensor *out, const ps_tensor *a, const ps_tensor *b);           // out = a * b
ps_status ps_mul_backward(ps_tensor *da, ps_tensor *db, const ps_tensor *dout, const ps_tensor *a, const ps_tensor *b);
ps_status ps_scale_forward(ps_tensor *out, const ps_tensor *in, float s);                   // out = s * in
ps_status ps_scale_backward(ps_tensor *din, const ps_tensor *dout, float s);
// Add a row vector: out (N, D) = in (N, D) + v (D)
ps_status ps_add_rowvec_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *v);
ps_status ps_add_rowvec_backward(ps_tensor *din, ps_tensor *dv, const ps_tensor *dout);

typedef enum { PS_ACT_RELU = 0, PS_ACT_GELU, PS_ACT_SIGMOID, PS_ACT_TANH, PS_ACT_COUNT } ps_activation;
const char *ps_activation_name(ps_activation a);
// out = act(in); GELU is the tanh approximation (as PyTorch's approximate='tanh').
ps_status ps_act_forward(ps_tensor *out, const ps_tensor *in, ps_activation act);
// din += dout * act'(in); `in` is the forward input, `out` the forward output (either may be used).
ps_status ps_act_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *in, const ps_tensor *out,
                          ps_activation act);

// ---- softmax / log-sum-exp over the last dim of (R, L) ----------------------
// mask (R, L) u8 or NULL: entries with mask 0 get exactly 0 probability (and 0
// gradient); a row with no valid entry is all zeros.
ps_status ps_softmax_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *mask);
ps_status ps_softmax_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *out);
// out (R) = log sum_j exp(in[r, j]) over valid entries (stable, running max);
// -inf for a row with no valid entry, whose backward then adds nothing.
ps_status ps_logsumexp_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *mask);
ps_status ps_logsumexp_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *in, const ps_tensor *out,
                                const ps_tensor *mask);

// ---- reductions over one axis of a (A, B, C) view: axis 0..2 ------------------
// in viewed as (outer, axis_len, inner); out has the axis removed (any in
// of 1..4 dims with 0 <= axis < ndim; out is checked by element count).
typedef enum { PS_REDUCE_SUM = 0, PS_REDUCE_MEAN, PS_REDUCE_COUNT } ps_reduce;
const char *ps_reduce_name(ps_reduce r);
ps_status ps_reduce_forward(ps_tensor *out, const ps_tensor *in, int axis, ps_reduce op);
ps_status ps_reduce_backward(ps_tensor *din, const ps_tensor *dout, int axis, ps_reduce op);

// ---- convolution, NCHW ---------------------------------------------------------
typedef struct {
  int stride_h, stride_w;
  int pad_h, pad_w;
} ps_conv2d_params;
// out (N, OC, OH, OW) = conv(in (N, C, H, W), w (OC, C, KH, KW)) + b (OC) or NULL
// OH = (H + 2 pad_h - KH) / stride_h + 1. workspace: f32 scratch of at least
// ps_conv2d_workspace_floats(...) elements (planned once, reused every step).
// That size is one slice per thread (ps_ops_get_threads() at planning time, at
// most N); any workspace of at least one slice works, with fewer images in flight.
int64_t ps_conv2d_workspace_floats(const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p);
ps_status ps_conv2d_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *w, const ps_tensor *b,
                            const ps_conv2d_params *p, ps_tensor *workspace);
ps_status ps_conv2d_backward(ps_tensor *din, ps_tensor *dw, ps_tensor *db, const ps_tensor *dout,
                             const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p,
                             ps_tensor *workspace);

// ---- pooling ------------------------------------------------------------------
// out (N, C, OH, OW) = max over k x k windows with stride s (no padding);
// argmax (N, C, OH, OW) i32 records the winning input offset within (H, W).
ps_status ps_maxpool2d_forward(ps_tensor *out, ps_tensor *argmax, const ps_tensor *in, int k, int s);
ps_status ps_maxpool2d_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *argmax);
// out (N, C) = mean over H, W of in (N, C, H, W)
ps_status ps_global_avgpool_forward(ps_tensor *out, const ps_tensor *in);
ps_status ps_global_avgpool_backward(ps_tensor *din, const ps_tensor *dout);

// ---- batch norm (over N [and H, W] per channel), split for synchronization -------
// in is (N, C) or (N, C, H, W). Training uses batch statistics that the caller
// may all-reduce across ranks between the two phases (SyncBN):
//   1. ps_batchnorm_stats: local per-channel count/sum/sum of squares, f64 (C).
//   2. (caller all-reduces sum, sumsq, count)
//   3. ps_batchnorm_forward_apply with the global statistics.
// Backward likewise: ps_batchnorm_backward_reduce -> all-reduce -> _apply.
ps_status ps_batchnorm_stats(double *sum, double *sumsq, int64_t *count, const ps_tensor *in);
// mean (C), rstd (C) f32 are saved for backward. running_* (C) updated with
// momentum (PyTorch convention: running = (1-m) running + m batch, unbiased var).
ps_status ps_batchnorm_forward_apply(ps_tensor *out, ps_tensor *mean, ps_tensor *rstd, const ps_tensor *in,
                                     const ps_tensor *gamma, const ps_tensor *beta, const double *sum,
                                     const double *sumsq, int64_t count, float eps, float momentum,
                                     ps_tensor *running_mean, ps_tensor *running_var);
// Eval mode: normalize with running statistics.
ps_status ps_batchnorm_forward_eval(ps_tensor *out, const ps_tensor *in, const ps_tensor *gamma,
                                    const ps_tensor *beta, const ps_tensor *running_mean,
                                    const ps_tensor *running_var, float eps);
// sum_dy (C) and sum_dy_xhat (C), f64, local; dgamma/dbeta are accumulated from
// the GLOBAL sums by the caller or by _apply.
ps_status ps_batchnorm_backward_reduce(double *sum_dy, double *sum_dy_xhat, const ps_tensor *dout,
                                       const ps_tensor *in, const ps_tensor *mean, const ps_tensor *rstd);
// din += gamma*rstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count) with global sums
// and count; dgamma += sum_dy_xhat, dbeta += sum_dy (pass local sums for
// dgamma/dbeta if the parameter gradients are all-reduced later anyway).
ps_status ps_batchnorm_backward_apply(ps_tensor *din, ps_tensor *dgamma, ps_tensor *dbeta, const ps_tensor *dout,
                                      const ps_tensor *in, const ps_tensor *mean, const ps_tensor *rstd,
                                      const ps_tensor *gamma, const double *sum_dy, const double *sum_dy_xhat,
                                      const double *local_sum_dy, const double *local_sum_dy_xhat, int64_t count);

// ---- layer norm over the last dim of (N, D) -------------------------------------
ps_status ps_layernorm_forward(ps_tensor *out, ps_tensor *mean, ps_tensor *rstd, const ps_tensor *in,
                               const ps_tensor *gamma, const ps_tensor *beta, float eps);
ps_status ps_layernorm_backward(ps_tensor *din, ps_tensor *dgamma, ps_tensor *dbeta, const ps_tensor *dout,
                                const ps_tensor *in, const ps_tensor *mean, const ps_tensor *rstd,
                                const ps_tensor *gamma);

// ---- dropout (inverted) over rows of (N, D) ----------------------------------------
// Rows are the leading dims flattened (the last dim is D); 0 <= p < 1; element
// j of row r is kept iff ps_rng_uniform(ps_rng_make(seed, row_streams[r]), j) >= p.
// Row r's mask comes from the counter-based RNG stream row_streams[r] (e.g.
// keyed by step, patient id, layer), element index j, so a row's mask does not
// depend on which rank or thread computes it. mask (N, D) u8 is saved for backward.
ps_status ps_dropout_forward(ps_tensor *out, ps_tensor *mask, const ps_tensor *in, float p, uint64_t seed,
                             const uint64_t *row_streams);
ps_status ps_dropout_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *mask, float p);

#endif
