// CUDA 2-d convolution (NCHW): im2col + cuBLAS, one image at a time through a
// workspace of one lowered image (CKK, P), the CPU's contract. Inputs are
// checked by ps_conv2d_forward/backward before they get here.
//
// Dimension letters: N batch, C input channels, OC output channels, H/W input,
// KH/KW kernel, OH/OW output, P = OH*OW, CKK = C*KH*KW.
#include "ps_cuda_internal.h"
#include "ps_cuda_ops.h"

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

extern "C" int64_t ps_cuda_op_conv2d_workspace_floats(const ps_tensor *in, const ps_tensor *w,
                                                      const ps_conv2d_params *p) {
  cconv_dims d;
  if (!conv_dims(&d, in, w, p)) return -1;
  return d.CKK * d.P;
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
  PS_TRY(check_workspace(op, &d, workspace));
  if (d.N == 0 || d.OC == 0 || d.P == 0) return PS_OK;
  float *y = (float *)out->data, *col = (float *)workspace->data;
  const float *x = (const float *)in->data, *wt = (const float *)w->data;
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
  PS_TRY(check_workspace(op, &d, workspace));
  if (d.N == 0) return PS_OK;
  const float *g = (const float *)dout->data, *x = (const float *)in->data, *wt = (const float *)w->data;
  float *col = (float *)workspace->data;
  if (db && d.OC > 0) {
    conv_db_kernel<<<ps_cuda_rows_grid(d.OC), PS_CUDA_BLOCK>>>((float *)db->data, g, d.N, d.OC, d.P);
    PS_CUDA_LAUNCHED();
  }
  if (d.P == 0 || d.OC == 0) return PS_OK;
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
