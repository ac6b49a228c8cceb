// CUDA 2-d convolution (NCHW). With cuDNN (PANSURV_HAVE_CUDNN=1): the legacy
// convolution API, algorithms chosen once per shape (cudnnGet*_v7 heuristics,
// first deterministic one that fits), strict fp32 (FMA math) unless TF32 is on
// or the matmul precision is BF16 (then tensor-op math: TF32 inputs, fp32
// accumulation), workspace in the caller's workspace tensor. The im2col path's
// GEMMs follow the matmul precision (bf16 inputs under BF16). Without cuDNN, or with
// PANSURV_CONV=im2col in the environment, or when the workspace is too small
// for cuDNN: im2col + cuBLAS, one image at a time through one lowered image
// (CKK, P). Inputs are checked by ps_conv2d_forward/backward before they get here.
//
// Dimension letters: N batch, C input channels, OC output channels, H/W input,
// KH/KW kernel, OH/OW output, P = OH*OW, CKK = C*KH*KW.
#include <stdlib.h>
#include <string.h>

#include "ps_cuda.h"
#include "ps_cuda_internal.h"
#include "ps_cuda_ops.h"
#if PANSURV_HAVE_CUDNN
#include <cudnn.h>
#endif

typedef struct {
  int64_t N, C, H, W, OC, KH, KW, OH, OW, P, CKK;
  int sh, sw, ph, pw;
} cconv_dims;

static bool conv_dims(cconv_dims *d, const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p) {
  if (!in || !w || !p || in->ndim != 4 || w->ndim != 4 || in->shape[1] != w->shape[1] || p->stride_h <= 0 ||
      p->stride_w <= 0 || p->pad_h < 0 || p->pad_w < 0)
    return false;
  *d = cconv_dims{in->shape[0], in->shape[1], in->shape[2], in->shape[3], w->shape[0], w->shape[2], w->shape[3],
                  0, 0, 0, 0, p->stride_h, p->stride_w, p->pad_h, p->pad_w};
  if (d->H + 2 * d->ph < d->KH || d->W + 2 * d->pw < d->KW) return false;
  d->OH = (d->H + 2 * d->ph - d->KH) / d->sh + 1;
  d->OW = (d->W + 2 * d->pw - d->KW) / d->sw + 1;
  d->P = d->OH * d->OW;
  d->CKK = d->C * d->KH * d->KW;
  return true;
}

static bool pointwise(const cconv_dims *d) {
  return d->KH == 1 && d->KW == 1 && d->sh == 1 && d->sw == 1 && d->ph == 0 && d->pw == 0;
}

#if PANSURV_HAVE_CUDNN
#define PS_CUDNN_CHECK(call) \
  PS_CHECK_GEN(call, cudnnStatus_t, r == CUDNN_STATUS_SUCCESS, PS_ERR_CUDA, cudnnGetErrorString(r))

// One planned shape: descriptors and algorithms, found once and reused.
typedef struct {
  cconv_dims d;
  bool tf32;
  cudnnTensorDescriptor_t x, y;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t c;
  cudnnConvolutionFwdAlgo_t fwd;
  cudnnConvolutionBwdDataAlgo_t bwd_data;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter;
  size_t ws_bytes; // the largest of the three algorithms' workspaces
} dnn_plan;

enum { DNN_PLANS = 32 }; // distinct conv shapes per thread (a CNN has a few dozen at most)
static thread_local cudnnHandle_t tl_dnn = nullptr;
static thread_local dnn_plan tl_plans[DNN_PLANS];
static thread_local int tl_nplans = 0;

static bool use_cudnn(void) {
  const char *e = getenv("PANSURV_CONV");
  return !(e && !strcmp(e, "im2col"));
}

// The first deterministic algorithm (perf arrays are sorted fastest first).
template <typename Perf, typename Algo> static bool pick(const Perf *perf, int n, Algo *algo, size_t *mem) {
  for (int i = 0; i < n; i++)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC) {
      *algo = perf[i].algo;
      *mem = perf[i].memory;
      return true;
    }
  return false;
}

static ps_status dnn_plan_for(const cconv_dims *d, dnn_plan **out) {
  // BF16 matmul precision: fp32 tensors with tensor-op math (TF32 inputs, fp32
  // accumulation); bf16 storage would also round the output and the gradients
  // that backward accumulates into (beta = 1).
  bool tf32 = ps_cuda_tf32_enabled() || ps_ops_get_matmul_precision() == PS_MATMUL_BF16;
  for (int i = 0; i < tl_nplans; i++)
    if (!memcmp(&tl_plans[i].d, d, sizeof *d) && tl_plans[i].tf32 == tf32) {
      *out = &tl_plans[i];
      return PS_OK;
    }
  PS_REQUIRE(d->N <= INT32_MAX && d->C <= INT32_MAX && d->H <= INT32_MAX && d->W <= INT32_MAX && d->OC <= INT32_MAX,
             "conv2d: sizes exceed cuDNN's int range");
  if (!tl_dnn) PS_CUDNN_CHECK(cudnnCreate(&tl_dnn));
  if (tl_nplans == DNN_PLANS) { // full: recycle the oldest slot
    dnn_plan *o = &tl_plans[0];
    cudnnDestroyTensorDescriptor(o->x);
    cudnnDestroyTensorDescriptor(o->y);
    cudnnDestroyFilterDescriptor(o->w);
    cudnnDestroyConvolutionDescriptor(o->c);
    memmove(tl_plans, tl_plans + 1, (DNN_PLANS - 1) * sizeof(dnn_plan));
    tl_nplans--;
  }
  dnn_plan *p = &tl_plans[tl_nplans];
  memset(p, 0, sizeof *p);
  p->d = *d;
  p->tf32 = tf32;
  PS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
  PS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
  PS_CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
  PS_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->c));
  PS_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, (int)d->N, (int)d->C, (int)d->H,
                                            (int)d->W));
  PS_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, (int)d->N, (int)d->OC,
                                            (int)d->OH, (int)d->OW));
  PS_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, (int)d->OC, (int)d->C,
                                            (int)d->KH, (int)d->KW));
  // Cross-correlation, as the CPU op (no kernel flip).
  PS_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->c, d->ph, d->pw, d->sh, d->sw, 1, 1, CUDNN_CROSS_CORRELATION,
                                                 CUDNN_DATA_FLOAT));
  // FMA math: plain fp32 (cuDNN's default may use TF32 tensor cores for float on Ampere+).
  PS_CUDNN_CHECK(cudnnSetConvolutionMathType(p->c, tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));
  int n = 0;
  size_t m1 = 0, m2 = 0, m3 = 0;
  cudnnConvolutionFwdAlgoPerf_t fp[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  PS_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(tl_dnn, p->x, p->w, p->c, p->y,
                                                        CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, fp));
  bool ok = pick(fp, n, &p->fwd, &m1);
  cudnnConvolutionBwdDataAlgoPerf_t dp[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  PS_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(tl_dnn, p->w, p->y, p->c, p->x,
                                                             CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, dp));
  ok = ok && pick(dp, n, &p->bwd_data, &m2);
  cudnnConvolutionBwdFilterAlgoPerf_t wp[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  PS_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(tl_dnn, p->x, p->y, p->c, p->w,
                                                               CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, wp));
  ok = ok && pick(wp, n, &p->bwd_filter, &m3);
  if (!ok) {
    cudnnDestroyTensorDescriptor(p->x);
    cudnnDestroyTensorDescriptor(p->y);
    cudnnDestroyFilterDescriptor(p->w);
    cudnnDestroyConvolutionDescriptor(p->c);
    PS_FAIL(PS_ERR_UNSUPPORTED, "conv2d: cuDNN offers no deterministic algorithm for this shape");
  }
  p->ws_bytes = m1 > m2 ? (m1 > m3 ? m1 : m3) : (m2 > m3 ? m2 : m3);
  tl_nplans++;
  *out = p;
  return PS_OK;
}
#endif

extern "C" int64_t ps_cuda_op_conv2d_workspace_floats(const ps_tensor *in, const ps_tensor *w,
                                                      const ps_conv2d_params *p) {
  cconv_dims d;
  if (!conv_dims(&d, in, w, p)) return -1;
  int64_t floats = d.CKK * d.P; // the im2col fallback's lowered image
#if PANSURV_HAVE_CUDNN
  dnn_plan *pl = nullptr;
  if (use_cudnn() && ps_cuda_device_count() > 0 && dnn_plan_for(&d, &pl) == PS_OK) {
    int64_t f = (int64_t)((pl->ws_bytes + sizeof(float) - 1) / sizeof(float));
    if (f > floats) floats = f;
  }
#endif
  return floats;
}

// col (CKK, P) from one image x (C, H, W); out-of-image taps are 0.
__global__ static void im2col_kernel(float *col, const float *x, cconv_dims d) {
  PS_CUDA_FOR(e, d.CKK * d.P) {
    int64_t r = e / d.P, q = e % d.P;
    int64_t c = r / (d.KH * d.KW), kh = (r / d.KW) % d.KH, kw = r % d.KW;
    int64_t ih = (q / d.OW) * d.sh - d.ph + kh, iw = (q % d.OW) * d.sw - d.pw + kw;
    col[e] = (ih >= 0 && ih < d.H && iw >= 0 && iw < d.W) ? x[(c * d.H + ih) * d.W + iw] : 0.0f;
  }
}

// dx (C, H, W) += col2im(col), gathered per input pixel in (kh, kw) order.
__global__ static void col2im_add_kernel(float *dx, const float *col, cconv_dims d) {
  PS_CUDA_FOR(e, d.C * d.H * d.W) {
    int64_t c = e / (d.H * d.W), ih = (e / d.W) % d.H, iw = e % d.W;
    float acc = 0.0f;
    for (int64_t kh = 0; kh < d.KH; kh++) {
      int64_t th = ih + d.ph - kh;
      if (th < 0 || th % d.sh) continue;
      int64_t oh = th / d.sh;
      if (oh >= d.OH) continue;
      for (int64_t kw = 0; kw < d.KW; kw++) {
        int64_t tw = iw + d.pw - kw;
        if (tw < 0 || tw % d.sw) continue;
        int64_t ow = tw / d.sw;
        if (ow >= d.OW) continue;
        acc += col[((c * d.KH + kh) * d.KW + kw) * d.P + oh * d.OW + ow];
      }
    }
    dx[e] += acc;
  }
}

__global__ static void bias_rows_kernel(float *y, const float *b, int64_t N, int64_t OC, int64_t P) {
  PS_CUDA_FOR(i, N * OC * P) y[i] = b[(i / P) % OC];
}

__global__ static void bias_add_rows_kernel(float *y, const float *b, int64_t N, int64_t OC, int64_t P) {
  PS_CUDA_FOR(i, N * OC * P) y[i] += b[(i / P) % OC];
}

// db (OC) += per-channel sums of dout (N, OC, P), in double; one block per channel.
__global__ static void conv_db_kernel(float *db, const float *g, int64_t N, int64_t OC, int64_t P) {
  __shared__ double shd[32];
  for (int64_t c = blockIdx.x; c < OC; c += gridDim.x) {
    double s = 0;
    for (int64_t k = threadIdx.x; k < N * P; k += blockDim.x) s += g[((k / P) * OC + c) * P + k % P];
    s = ps_block_sum(s, shd);
    if (threadIdx.x == 0) db[c] += (float)s;
  }
}

static ps_status check_workspace(const char *op, const cconv_dims *d, const ps_tensor *ws) {
  int64_t need = pointwise(d) ? 0 : d->CKK * d->P;
  PS_REQUIRE(ps_tensor_numel(ws) >= need, "%s: workspace has %lld floats, need at least %lld on cuda", op,
             (long long)ps_tensor_numel(ws), (long long)need);
  PS_REQUIRE(d->P <= INT32_MAX && d->CKK <= INT32_MAX && d->OC <= INT32_MAX, "%s: sizes exceed the cuBLAS int range",
             op);
  return PS_OK;
}

extern "C" ps_status ps_cuda_op_conv2d_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *w,
                                               const ps_tensor *b, const ps_conv2d_params *p, ps_tensor *workspace) {
  static const char op[] = "ps_conv2d_forward";
  cconv_dims d;
  PS_REQUIRE(conv_dims(&d, in, w, p), "%s: bad shapes", op);
  if (d.N == 0 || d.OC == 0 || d.P == 0) return PS_OK;
  float *y = (float *)out->data, *col = (float *)workspace->data;
  const float *x = (const float *)in->data, *wt = (const float *)w->data;
#if PANSURV_HAVE_CUDNN
  dnn_plan *pl = nullptr;
  if (use_cudnn() && dnn_plan_for(&d, &pl) == PS_OK &&
      pl->ws_bytes <= (size_t)ps_tensor_numel(workspace) * sizeof(float)) {
    const float one = 1.0f, zero = 0.0f;
    PS_CUDNN_CHECK(cudnnConvolutionForward(tl_dnn, &one, pl->x, x, pl->w, wt, pl->c, pl->fwd, col, pl->ws_bytes, &zero,
                                           pl->y, y));
    if (b) {
      bias_add_rows_kernel<<<ps_cuda_grid(d.N * d.OC * d.P), PS_CUDA_BLOCK>>>(y, (const float *)b->data, d.N, d.OC,
                                                                              d.P);
      PS_CUDA_LAUNCHED();
    }
    return PS_OK;
  }
  ps_error_clear();
#endif
  PS_TRY(check_workspace(op, &d, workspace));
  float beta = 0.0f;
  if (b) {
    bias_rows_kernel<<<ps_cuda_grid(d.N * d.OC * d.P), PS_CUDA_BLOCK>>>(y, (const float *)b->data, d.N, d.OC, d.P);
    PS_CUDA_LAUNCHED();
    beta = 1.0f;
  }
  for (int64_t n = 0; n < d.N; n++) {
    const float *xn = x + n * d.C * d.H * d.W, *c = xn;
    if (!pointwise(&d)) {
      im2col_kernel<<<ps_cuda_grid(d.CKK * d.P), PS_CUDA_BLOCK>>>(col, xn, d);
      PS_CUDA_LAUNCHED();
      c = col;
    }
    // out[n] (OC, P) = w (OC, CKK) · col (CKK, P)
    PS_TRY(ps_cuda_op_gemm(y + n * d.OC * d.P, wt, false, c, false, NULL, 1.0f, beta, d.OC, d.P, d.CKK));
  }
  return PS_OK;
}

extern "C" ps_status ps_cuda_op_conv2d_backward(ps_tensor *din, ps_tensor *dw, ps_tensor *db, const ps_tensor *dout,
                                                const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p,
                                                ps_tensor *workspace) {
  static const char op[] = "ps_conv2d_backward";
  cconv_dims d;
  PS_REQUIRE(conv_dims(&d, in, w, p), "%s: bad shapes", op);
  if (d.N == 0) return PS_OK;
  const float *g = (const float *)dout->data, *x = (const float *)in->data, *wt = (const float *)w->data;
  float *col = (float *)workspace->data;
  if (db && d.OC > 0) {
    conv_db_kernel<<<ps_cuda_rows_grid(d.OC), PS_CUDA_BLOCK>>>((float *)db->data, g, d.N, d.OC, d.P);
    PS_CUDA_LAUNCHED();
  }
  if (d.P == 0 || d.OC == 0) return PS_OK;
#if PANSURV_HAVE_CUDNN
  dnn_plan *pl = nullptr;
  if ((din || dw) && use_cudnn() && dnn_plan_for(&d, &pl) == PS_OK &&
      pl->ws_bytes <= (size_t)ps_tensor_numel(workspace) * sizeof(float)) {
    const float one = 1.0f; // beta = 1: both gradients accumulate
    if (dw)
      PS_CUDNN_CHECK(cudnnConvolutionBackwardFilter(tl_dnn, &one, pl->x, x, pl->y, g, pl->c, pl->bwd_filter, col,
                                                    pl->ws_bytes, &one, pl->w, (float *)dw->data));
    if (din)
      PS_CUDNN_CHECK(cudnnConvolutionBackwardData(tl_dnn, &one, pl->w, wt, pl->y, g, pl->c, pl->bwd_data, col,
                                                  pl->ws_bytes, &one, pl->x, (float *)din->data));
    return PS_OK;
  }
  ps_error_clear();
#endif
  PS_TRY(check_workspace(op, &d, workspace));
  bool pw = pointwise(&d);
  for (int64_t n = 0; n < d.N; n++) {
    const float *xn = x + n * d.C * d.H * d.W, *gn = g + n * d.OC * d.P;
    if (dw) {
      const float *c = xn;
      if (!pw) {
        im2col_kernel<<<ps_cuda_grid(d.CKK * d.P), PS_CUDA_BLOCK>>>(col, xn, d);
        PS_CUDA_LAUNCHED();
        c = col;
      }
      // dw (OC, CKK) += dout[n] (OC, P) · col^T (P, CKK)
      PS_TRY(ps_cuda_op_gemm((float *)dw->data, gn, false, c, true, NULL, 1.0f, 1.0f, d.OC, d.CKK, d.P));
    }
    if (din) {
      float *dxn = (float *)din->data + n * d.C * d.H * d.W;
      // dcol (CKK, P) = w^T (CKK, OC) · dout[n] (OC, P); pointwise: straight into dx.
      PS_TRY(ps_cuda_op_gemm(pw ? dxn : col, wt, true, gn, false, NULL, 1.0f, pw ? 1.0f : 0.0f, d.CKK, d.P, d.OC));
      if (!pw) {
        col2im_add_kernel<<<ps_cuda_grid(d.C * d.H * d.W), PS_CUDA_BLOCK>>>(dxn, col, d);
        PS_CUDA_LAUNCHED();
      }
    }
  }
  return PS_OK;
}
