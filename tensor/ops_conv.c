// CPU 2-d convolution (NCHW) and pooling.
//
// Dimension letters: N batch, C input channels, OC output channels, H/W input
// height/width, KH/KW kernel, OH/OW output, P = OH*OW output positions,
// CKK = C*KH*KW the lowered (im2col) inner dimension, T worker threads.
//
// Convolution is lowered per image: col (CKK, P) = im2col(in[n]); out[n]
// (OC, P) = w (OC, CKK) · col. Images run in parallel (OpenMP over the batch),
// each thread owning a workspace slice, with OpenBLAS held to one thread
// inside the region so the two thread pools do not oversubscribe cores.
// The lowering lives behind conv_forward_im2col / conv_backward_im2col so a
// faster one (e.g. a direct 3x3 kernel or a batched implicit GEMM) can replace
// it without touching the public API or the workspace contract.
#include <omp.h>
#include <string.h>

#include "ops_internal.h"

typedef struct {
  int64_t N, C, H, W, OC, KH, KW, OH, OW, P, CKK;
  int sh, sw, ph, pw;
} conv_dims;

static ps_status conv_dims_of(const char *op, conv_dims *d, const ps_tensor *in, const ps_tensor *w,
                              const ps_conv2d_params *p) {
  char b1[96], b2[96];
  PS_REQUIRE(p, "%s: params must not be NULL", op);
  PS_REQUIRE(in && in->ndim == 4, "%s: in must be (N, C, H, W), got %s", op,
             in ? ps_tensor_describe(in, b1, sizeof b1) : "NULL");
  PS_REQUIRE(w && w->ndim == 4, "%s: w must be (OC, C, KH, KW), got %s", op,
             w ? ps_tensor_describe(w, b2, sizeof b2) : "NULL");
  PS_REQUIRE(in->shape[1] == w->shape[1], "%s: in %s has %lld channels but w %s expects %lld", op,
             ps_tensor_describe(in, b1, sizeof b1), (long long)in->shape[1], ps_tensor_describe(w, b2, sizeof b2),
             (long long)w->shape[1]);
  PS_REQUIRE(p->stride_h > 0 && p->stride_w > 0 && p->pad_h >= 0 && p->pad_w >= 0,
             "%s: stride (%d, %d) must be > 0 and padding (%d, %d) >= 0", op, p->stride_h, p->stride_w, p->pad_h,
             p->pad_w);
  *d = (conv_dims){.N = in->shape[0], .C = in->shape[1], .H = in->shape[2], .W = in->shape[3], .OC = w->shape[0],
                   .KH = w->shape[2], .KW = w->shape[3], .sh = p->stride_h, .sw = p->stride_w, .ph = p->pad_h,
                   .pw = p->pad_w};
  PS_REQUIRE(d->H + 2 * d->ph >= d->KH && d->W + 2 * d->pw >= d->KW,
             "%s: kernel %lldx%lld larger than the padded input %lldx%lld", op, (long long)d->KH, (long long)d->KW,
             (long long)(d->H + 2 * d->ph), (long long)(d->W + 2 * d->pw));
  d->OH = (d->H + 2 * d->ph - d->KH) / d->sh + 1;
  d->OW = (d->W + 2 * d->pw - d->KW) / d->sw + 1;
  d->P = d->OH * d->OW;
  d->CKK = d->C * d->KH * d->KW;
  PS_REQUIRE(d->P <= INT_MAX && d->CKK <= INT_MAX && d->OC <= INT_MAX, "%s: sizes exceed the BLAS int range", op);
  return PS_OK;
}

// One thread's workspace: the lowered image (CKK, P), then a private dw partial (OC, CKK).
static int64_t conv_slice_floats(const conv_dims *d) { return d->CKK * d->P + d->OC * d->CKK; }

static int conv_plan_threads(const conv_dims *d) {
  int64_t t = ps_ops_get_threads();
  if (t > d->N) t = d->N;
  return t < 1 ? 1 : (int)t;
}

int64_t ps_conv2d_workspace_floats(const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p) {
  conv_dims d = {0};
  if (conv_dims_of("ps_conv2d_workspace_floats", &d, in, w, p) != PS_OK) return -1;
  return conv_plan_threads(&d) * conv_slice_floats(&d);
}

// col (CKK, P) from one image x (C, H, W); out-of-image taps are 0.
static void im2col(float *col, const float *x, const conv_dims *d) {
  for (int64_t c = 0; c < d->C; c++)
    for (int64_t kh = 0; kh < d->KH; kh++)
      for (int64_t kw = 0; kw < d->KW; kw++) {
        float *dst = col + ((c * d->KH + kh) * d->KW + kw) * d->P;
        // Output columns whose tap iw = ow*sw - pw + kw lands inside [0, W).
        int64_t lo = 0, hi = d->OW;
        while (lo < d->OW && lo * d->sw - d->pw + kw < 0) lo++;
        while (hi > lo && (hi - 1) * d->sw - d->pw + kw >= d->W) hi--;
        for (int64_t oh = 0; oh < d->OH; oh++) {
          int64_t ih = oh * d->sh - d->ph + kh;
          float *row = dst + oh * d->OW;
          if (ih < 0 || ih >= d->H) {
            memset(row, 0, (size_t)d->OW * sizeof(float));
            continue;
          }
          const float *src = x + (c * d->H + ih) * d->W - d->pw + kw;
          for (int64_t ow = 0; ow < lo; ow++) row[ow] = 0.0f;
          if (d->sw == 1) memcpy(row + lo, src + lo, (size_t)(hi - lo) * sizeof(float));
          else
            for (int64_t ow = lo; ow < hi; ow++) row[ow] = src[ow * d->sw];
          for (int64_t ow = hi; ow < d->OW; ow++) row[ow] = 0.0f;
        }
      }
}

// dx (C, H, W) += col2im(col (CKK, P)), the adjoint of im2col.
static void col2im_add(float *dx, const float *col, const conv_dims *d) {
  for (int64_t c = 0; c < d->C; c++)
    for (int64_t kh = 0; kh < d->KH; kh++)
      for (int64_t kw = 0; kw < d->KW; kw++) {
        const float *srcc = col + ((c * d->KH + kh) * d->KW + kw) * d->P;
        int64_t lo = 0, hi = d->OW;
        while (lo < d->OW && lo * d->sw - d->pw + kw < 0) lo++;
        while (hi > lo && (hi - 1) * d->sw - d->pw + kw >= d->W) hi--;
        for (int64_t oh = 0; oh < d->OH; oh++) {
          int64_t ih = oh * d->sh - d->ph + kh;
          if (ih < 0 || ih >= d->H) continue;
          float *dst = dx + (c * d->H + ih) * d->W - d->pw + kw;
          const float *row = srcc + oh * d->OW;
          if (d->sw == 1) // contiguous: vectorizes
            for (int64_t ow = lo; ow < hi; ow++) dst[ow] += row[ow];
          else
            for (int64_t ow = lo; ow < hi; ow++) dst[ow * d->sw] += row[ow];
        }
      }
}

// A 1x1, stride 1, unpadded kernel needs no lowering: the image already is col.
static bool conv_is_pointwise(const conv_dims *d) {
  return d->KH == 1 && d->KW == 1 && d->sh == 1 && d->sw == 1 && d->ph == 0 && d->pw == 0;
}

static void conv_forward_im2col(float *y, const float *x, const float *w, const float *b, const conv_dims *d,
                                float *ws, int T) {
  const int64_t slice = conv_slice_floats(d);
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
  for (int64_t n = 0; n < d->N; n++) {
    float *col = ws + (int64_t)omp_get_thread_num() * slice;
    const float *xn = x + n * d->C * d->H * d->W;
    float *yn = y + n * d->OC * d->P;
    if (conv_is_pointwise(d)) col = (float *)xn;
    else im2col(col, xn, d);
    float beta = 0.0f;
    if (b) {
      for (int64_t o = 0; o < d->OC; o++)
        for (int64_t i = 0; i < d->P; i++) yn[o * d->P + i] = b[o];
      beta = 1.0f;
    }
    ps_ops_sgemm(false, false, d->OC, d->P, d->CKK, 1.0f, w, d->CKK, col, d->P, beta, yn, d->P);
  }
}

static void conv_backward_im2col(float *dx, float *dw, const float *g, const float *x, const float *w,
                                 const conv_dims *d, float *ws, int T) {
  const int64_t slice = conv_slice_floats(d), wn = d->OC * d->CKK;
  // With one thread dw accumulates in place; with several each owns a partial, summed in thread order.
  if (dw && T > 1)
    for (int t = 0; t < T; t++) memset(ws + t * slice + d->CKK * d->P, 0, (size_t)wn * sizeof(float));
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
  for (int64_t n = 0; n < d->N; n++) {
    int t = omp_get_thread_num();
    float *col = ws + t * slice, *dwt = T > 1 ? col + d->CKK * d->P : dw;
    const float *xn = x + n * d->C * d->H * d->W, *gn = g + n * d->OC * d->P;
    if (dw) {
      const float *c = xn;
      if (!conv_is_pointwise(d)) {
        im2col(col, xn, d);
        c = col;
      }
      // dw (OC, CKK) += dout[n] (OC, P) · col^T (P, CKK)
      ps_ops_sgemm(false, true, d->OC, d->CKK, d->P, 1.0f, gn, d->P, c, d->P, 1.0f, dwt, d->CKK);
    }
    if (dx) {
      float *dxn = dx + n * d->C * d->H * d->W;
      // dcol (CKK, P) = w^T (CKK, OC) · dout[n] (OC, P); pointwise: straight into dx.
      bool pw = conv_is_pointwise(d);
      ps_ops_sgemm(true, false, d->CKK, d->P, d->OC, 1.0f, w, d->CKK, gn, d->P, pw ? 1.0f : 0.0f, pw ? dxn : col,
                   d->P);
      if (!pw) col2im_add(dxn, col, d);
    }
  }
  if (dw && T > 1)
    for (int t = 0; t < T; t++) {
      const float *part = ws + t * slice + d->CKK * d->P;
      for (int64_t i = 0; i < wn; i++) dw[i] += part[i];
    }
}

// Images in parallel (T threads, each on its own workspace slice, BLAS called
// single-threaded inside) when the batch has at least one image per thread and
// the workspace holds T slices; otherwise images one after another with each
// GEMM split across the threads (T = 1: one slice).
static ps_status conv_threads_for(const char *op, const conv_dims *d, const ps_tensor *workspace, int *T) {
  int64_t slice = conv_slice_floats(d), have = ps_tensor_numel(workspace);
  PS_REQUIRE(have >= slice, "%s: workspace has %lld floats, need at least %lld (ps_conv2d_workspace_floats)", op,
             (long long)have, (long long)slice);
  int t = omp_in_parallel() ? 1 : omp_get_max_threads();
  *T = (t > 1 && d->N >= t && have / slice >= t) ? t : 1;
  ps_ops_blas_single_thread();
  return PS_OK;
}

ps_status ps_conv2d_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *w, const ps_tensor *b,
                            const ps_conv2d_params *p, ps_tensor *workspace) {
  static const char op[] = "ps_conv2d_forward";
  PS_OPS_CPU(op, out, in, w, b, workspace);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  PS_OPS_CHECK(op, w, PS_F32, -1);
  conv_dims d = {0};
  PS_TRY(conv_dims_of(op, &d, in, w, p));
  PS_OPS_CHECK(op, out, PS_F32, d.N * d.OC * d.P);
  char buf[96];
  PS_REQUIRE(out->ndim == 4 && out->shape[1] == d.OC && out->shape[2] == d.OH && out->shape[3] == d.OW,
             "%s: out is %s, expected (%lld, %lld, %lld, %lld)", op, ps_tensor_describe(out, buf, sizeof buf),
             (long long)d.N, (long long)d.OC, (long long)d.OH, (long long)d.OW);
  PS_OPS_CHECK_OPT(op, b, PS_F32, d.OC);
  PS_OPS_CHECK(op, workspace, PS_F32, -1);
  int T = 1;
  PS_TRY(conv_threads_for(op, &d, workspace, &T));
  if (d.N == 0) return PS_OK;
  conv_forward_im2col(ps_f32(out), ps_f32(in), ps_f32(w), b ? ps_f32(b) : NULL, &d, ps_f32(workspace), T);
  return PS_OK;
}

ps_status ps_conv2d_backward(ps_tensor *din, ps_tensor *dw, ps_tensor *db, const ps_tensor *dout,
                             const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p,
                             ps_tensor *workspace) {
  static const char op[] = "ps_conv2d_backward";
  PS_OPS_CPU(op, din, dw, db, dout, in, w, workspace);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  PS_OPS_CHECK(op, w, PS_F32, -1);
  conv_dims d = {0};
  PS_TRY(conv_dims_of(op, &d, in, w, p));
  PS_OPS_CHECK(op, dout, PS_F32, d.N * d.OC * d.P);
  PS_OPS_CHECK_OPT(op, din, PS_F32, d.N * d.C * d.H * d.W);
  PS_OPS_CHECK_OPT(op, dw, PS_F32, d.OC * d.CKK);
  PS_OPS_CHECK_OPT(op, db, PS_F32, d.OC);
  PS_OPS_CHECK(op, workspace, PS_F32, -1);
  int T = 1;
  PS_TRY(conv_threads_for(op, &d, workspace, &T));
  if (d.N == 0) return PS_OK;
  if (db) { // per-channel sums of dout in double
    const float *g = ps_f32(dout);
    float *o = ps_f32(db);
#pragma omp parallel for schedule(static) if (d.N * d.OC * d.P > PS_OPS_PAR_MIN)
    for (int64_t c = 0; c < d.OC; c++) {
      double s = 0;
      for (int64_t n = 0; n < d.N; n++) s += ps_ops_sum(g + (n * d.OC + c) * d.P, d.P);
      o[c] += (float)s;
    }
  }
  if (din || dw)
    conv_backward_im2col(din ? ps_f32(din) : NULL, dw ? ps_f32(dw) : NULL, ps_f32(dout), ps_f32(in), ps_f32(w), &d,
                         ps_f32(workspace), T);
  return PS_OK;
}

// ---- pooling ------------------------------------------------------------------

ps_status ps_maxpool2d_forward(ps_tensor *out, ps_tensor *argmax, const ps_tensor *in, int k, int s) {
  static const char op[] = "ps_maxpool2d_forward";
  PS_OPS_CPU(op, out, argmax, in);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  char buf[96];
  PS_REQUIRE(in->ndim == 4, "%s: in must be (N, C, H, W), got %s", op, ps_tensor_describe(in, buf, sizeof buf));
  int64_t N = in->shape[0], C = in->shape[1], H = in->shape[2], W = in->shape[3];
  PS_REQUIRE(k > 0 && s > 0 && k <= H && k <= W, "%s: window %d stride %d for a %lldx%lld input", op, k, s,
             (long long)H, (long long)W);
  int64_t OH = (H - k) / s + 1, OW = (W - k) / s + 1;
  PS_OPS_CHECK(op, out, PS_F32, N * C * OH * OW);
  PS_REQUIRE(out->ndim == 4 && out->shape[2] == OH && out->shape[3] == OW,
             "%s: out is %s, expected (%lld, %lld, %lld, %lld)", op, ps_tensor_describe(out, buf, sizeof buf),
             (long long)N, (long long)C, (long long)OH, (long long)OW);
  PS_OPS_CHECK(op, argmax, PS_I32, N * C * OH * OW);
  PS_REQUIRE(H * W <= INT32_MAX, "%s: plane too large for i32 argmax", op);
  const float *x = ps_f32(in);
  float *y = ps_f32(out);
  int32_t *am = (int32_t *)argmax->data;
#pragma omp parallel for schedule(static) if (N * C * H * W > PS_OPS_PAR_MIN)
  for (int64_t pl = 0; pl < N * C; pl++) {
    const float *xp = x + pl * H * W;
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++) {
        int64_t best = (oh * s) * W + ow * s;
        float bv = xp[best];
        for (int64_t i = 0; i < k; i++)
          for (int64_t j = 0; j < k; j++) {
            int64_t off = (oh * s + i) * W + ow * s + j;
            if (xp[off] > bv) { // first maximum wins ties
              bv = xp[off];
              best = off;
            }
          }
        y[pl * OH * OW + oh * OW + ow] = bv;
        am[pl * OH * OW + oh * OW + ow] = (int32_t)best;
      }
  }
  return PS_OK;
}

ps_status ps_maxpool2d_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *argmax) {
  static const char op[] = "ps_maxpool2d_backward";
  PS_OPS_CPU(op, din, dout, argmax);
  PS_OPS_CHECK(op, din, PS_F32, -1);
  char buf[96];
  PS_REQUIRE(din->ndim == 4, "%s: din must be (N, C, H, W), got %s", op, ps_tensor_describe(din, buf, sizeof buf));
  PS_OPS_CHECK(op, dout, PS_F32, -1);
  PS_REQUIRE(dout->ndim == 4 && dout->shape[0] == din->shape[0] && dout->shape[1] == din->shape[1],
             "%s: dout %s does not match din's (N, C)", op, ps_tensor_describe(dout, buf, sizeof buf));
  int64_t NC = din->shape[0] * din->shape[1], HW = din->shape[2] * din->shape[3];
  int64_t Q = dout->shape[2] * dout->shape[3];
  PS_OPS_CHECK(op, argmax, PS_I32, NC * Q);
  const float *g = ps_f32(dout);
  const int32_t *am = (const int32_t *)argmax->data;
  float *d = ps_f32(din);
  // Planes are independent; overlapping windows (s < k) add within one plane on one thread.
#pragma omp parallel for schedule(static) if (NC * HW > PS_OPS_PAR_MIN)
  for (int64_t pl = 0; pl < NC; pl++)
    for (int64_t q = 0; q < Q; q++) {
      int32_t a = am[pl * Q + q];
      if (a >= 0 && a < HW) d[pl * HW + a] += g[pl * Q + q];
    }
  return PS_OK;
}

ps_status ps_global_avgpool_forward(ps_tensor *out, const ps_tensor *in) {
  static const char op[] = "ps_global_avgpool_forward";
  PS_OPS_CPU(op, out, in);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  char buf[96];
  PS_REQUIRE(in->ndim == 4, "%s: in must be (N, C, H, W), got %s", op, ps_tensor_describe(in, buf, sizeof buf));
  int64_t NC = in->shape[0] * in->shape[1], HW = in->shape[2] * in->shape[3];
  PS_OPS_CHECK(op, out, PS_F32, NC);
  PS_REQUIRE(HW > 0, "%s: empty planes", op);
  const float *x = ps_f32(in);
  float *y = ps_f32(out);
#pragma omp parallel for schedule(static) if (NC * HW > PS_OPS_PAR_MIN)
  for (int64_t pl = 0; pl < NC; pl++) {
    y[pl] = (float)(ps_ops_sum(x + pl * HW, HW) / (double)HW);
  }
  return PS_OK;
}

ps_status ps_global_avgpool_backward(ps_tensor *din, const ps_tensor *dout) {
  static const char op[] = "ps_global_avgpool_backward";
  PS_OPS_CPU(op, din, dout);
  PS_OPS_CHECK(op, din, PS_F32, -1);
  char buf[96];
  PS_REQUIRE(din->ndim == 4, "%s: din must be (N, C, H, W), got %s", op, ps_tensor_describe(din, buf, sizeof buf));
  int64_t NC = din->shape[0] * din->shape[1], HW = din->shape[2] * din->shape[3];
  PS_OPS_CHECK(op, dout, PS_F32, NC);
  const float *g = ps_f32(dout);
  float *d = ps_f32(din);
  float inv = HW ? (float)(1.0 / (double)HW) : 0.0f;
#pragma omp parallel for schedule(static) if (NC * HW > PS_OPS_PAR_MIN)
  for (int64_t pl = 0; pl < NC; pl++) {
    float v = g[pl] * inv;
    for (int64_t i = 0; i < HW; i++) d[pl * HW + i] += v;
  }
  return PS_OK;
}
