// CPU 2-d convolution (NCHW) and pooling.
//
// Dimension letters: N batch, C input channels, OC output channels, H/W input
// height/width, KH/KW kernel, OH/OW output, P = OH*OW output positions,
// CKK = C*KH*KW the lowered (im2col) inner dimension, RB output rows per chunk
// of the lowering and PB = RB*OW its positions, T worker threads.
//
// Two paths, chosen per product (forward, input gradient, weight gradient):
// - direct (3x3, stride 1, pad 1 only; ops_conv_direct.c, ops_conv_avx512.c):
//   register tiles over a zero-padded copy of each image, no lowered matrix;
//   taken where it measured faster (conv_direct_auto, docs/conv.md), e.g.
//   every product the reference model's tile encoder needs but the 16x16
//   layer's weight gradient.
// - lowering: per image and per chunk of output rows, col (CKK, PB) =
//   im2col(in[n], rows); out[n][:, rows] (OC, PB) = w (OC, CKK) · col on
//   OpenBLAS. The weight gradient of narrow lowerings runs on an AVX-512
//   GEMM kernel (ops_conv_avx512.c) when the CPU has it.
// Images run in parallel (OpenMP over the batch), each thread owning a
// workspace slice, with OpenBLAS held to one thread inside the region so the
// two thread pools do not oversubscribe cores. docs/conv.md records what was
// measured (batching images per GEMM was not faster).
#include <omp.h>
#include <string.h>

#include "ops_conv_kernels.h"
#include "ops_internal.h"

// RB output rows form one chunk of the lowering (PB = RB*OW positions): col
// (CKK, PB) is sized to stay in a 1 MB L2 between im2col writing it and the
// GEMM reading it (the 32->64 layer's whole-image col is 1.2 MB).
typedef struct {
  int64_t N, C, H, W, OC, KH, KW, OH, OW, P, CKK, RB, PB;
  int sh, sw, ph, pw;
} conv_dims;

enum { CONV_COL_BYTES = 640 * 1024 };

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
  // Rows per chunk: at most CONV_COL_BYTES of col, then balanced over the chunks (>= 1 row).
  int64_t rmax = CONV_COL_BYTES / ((int64_t)sizeof(float) * (d->CKK * d->OW > 0 ? d->CKK * d->OW : 1));
  rmax = rmax < 1 ? 1 : rmax;
  int64_t chunks = d->OH > 0 ? (d->OH + rmax - 1) / rmax : 1;
  d->RB = d->OH > 0 ? (d->OH + chunks - 1) / chunks : 1;
  d->PB = d->RB * d->OW;
  return PS_OK;
}

// 3x3, stride 1, pad 1 ("same"): the direct kernels (ops_conv_direct.c) can run it without a lowered matrix.
static bool conv_direct_eligible(const conv_dims *d) {
  return d->C >= 1 && d->OC >= 1 && d->KH == 3 && d->KW == 3 && d->sh == 1 && d->sw == 1 && d->ph == 1 &&
         d->pw == 1;
}

typedef enum { CONV_DIRECT_NONE = 0, CONV_DIRECT_AVX512, CONV_DIRECT_PORTABLE } conv_direct_kind;

static ps_conv_path conv_forced_path = PS_CONV_PATH_AUTO;
void ps_conv_force_path(ps_conv_path p) { conv_forced_path = p < PS_CONV_PATH_COUNT ? p : PS_CONV_PATH_AUTO; }

// Where the AVX-512 direct kernels measured faster than im2col + OpenBLAS
// (pansurv bench gemm --conv-path compare, docs/conv.md): the forward and the
// weight gradient of few-channel inputs (the 3->32 first layer: K = 27 starves
// the GEMM), and for wider layers the forward and input gradient when rows
// are whole 16-pixel vectors (32->64 at 32x32, 64->128 at 16x16) and the weight
// gradient when an image has >= 64 such vectors (32x32; at 16x16 the per-pass
// overhead made it no faster). C*OC is capped at the largest layer measured,
// and the input gradient needs >= 8 output channels (C) to fill the tile.
static bool conv_direct_auto(const conv_dims *d, ps_conv_product what) {
  const bool few = d->C <= 4, rows16 = d->W % 16 == 0 && d->C * d->OC <= 64 * 128;
  switch (what) {
  case PS_CONV_FWD: return few || rows16;
  case PS_CONV_DX: return rows16 && d->C >= 8;
  case PS_CONV_DW: return few || (rows16 && d->H * d->W >= 1024);
  default: return false;
  }
}

static conv_direct_kind conv_direct_for(const conv_dims *d, ps_conv_product what) {
  if (!conv_direct_eligible(d) || conv_forced_path == PS_CONV_PATH_IM2COL) return CONV_DIRECT_NONE;
  if (conv_forced_path == PS_CONV_PATH_DIRECT_C) return CONV_DIRECT_PORTABLE;
  if (conv_forced_path == PS_CONV_PATH_DIRECT) return ps_conv_have_avx512() ? CONV_DIRECT_AVX512 : CONV_DIRECT_PORTABLE;
  return ps_conv_have_avx512() && conv_direct_auto(d, what) ? CONV_DIRECT_AVX512 : CONV_DIRECT_NONE;
}

// Dims of the direct kernels for the forward / weight gradient (in: C channels, out: OC) and for the input
// gradient (in: dout's OC channels, out: C).
static ps_conv_direct_dims conv_direct_dims(const conv_dims *d) {
  return ps_conv_direct_dims_of(d->C, d->H, d->W, d->OC);
}
static ps_conv_direct_dims conv_direct_dims_dx(const conv_dims *d) {
  return ps_conv_direct_dims_of(d->OC, d->H, d->W, d->C);
}

// Images per call of the AVX-512 weight-gradient kernel: each register tile then passes over G
// images, which spreads its fixed costs; 32x32 images (1024 pixels) ran at 84-87 GFLOP/s with G = 3
// or 4 against 77 with G = 1 (docs/conv.md).
static int conv_dw_group(const conv_dims *d) { return d->P <= 1024 ? 4 : 1; }

// Layout of one thread's slice on the direct path: padded input (C or, for the input gradient, OC
// channels; conv_dw_group images of it for the weight gradient), packed weights (either packing),
// then the weight-gradient lane partials when that product is direct.
typedef struct {
  int64_t pad, wpack, lanes; // floats of each part; lanes at pad + wpack
} conv_direct_slice;

static conv_direct_slice conv_direct_slice_of(const conv_dims *d) {
  conv_direct_slice s = {0, 0, 0};
  const ps_conv_direct_dims f = conv_direct_dims(d), x = conv_direct_dims_dx(d);
  if (conv_direct_for(d, PS_CONV_FWD) || conv_direct_for(d, PS_CONV_DW)) {
    s.pad = ps_conv_direct_pad_floats(&f);
    s.wpack = ps_conv_direct_wpack_floats(&f);
  }
  if (conv_direct_for(d, PS_CONV_DX)) {
    int64_t p = ps_conv_direct_pad_floats(&x), w = ps_conv_direct_wpack_floats(&x);
    s.pad = p > s.pad ? p : s.pad;
    s.wpack = w > s.wpack ? w : s.wpack;
  }
  if (conv_direct_for(d, PS_CONV_DW)) {
    int64_t p = conv_dw_group(d) * ps_conv_direct_pad_floats(&f);
    s.pad = p > s.pad ? p : s.pad;
    s.lanes = ps_conv_direct_lanes_floats(&f);
  }
  return s;
}

// One thread's workspace: one lowered chunk (CKK, PB), then a private dw
// partial (OC, CKK); or the direct path's slice (conv_direct_slice_of). Sized
// for the larger, so one workspace serves both when products mix paths; the
// size follows the path choice (and the forcing) at planning time.
static int64_t conv_slice_floats(const conv_dims *d) {
  int64_t lowered = d->CKK * d->PB + d->OC * d->CKK;
  conv_direct_slice s = conv_direct_slice_of(d);
  int64_t direct = s.pad + s.wpack + s.lanes;
  return direct > lowered ? direct : lowered;
}

static int conv_plan_threads(const conv_dims *d) {
  int64_t t = ps_ops_get_threads();
  if (t > d->N) t = d->N;
  return t < 1 ? 1 : (int)t;
}

int64_t ps_conv2d_workspace_floats(const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p) {
  conv_dims d = {0};
  if (conv_dims_of("ps_conv2d_workspace_floats", &d, in, w, p) != PS_OK) return -1;
#if PANSURV_HAVE_CUDA
  if (in->device == PS_CUDA) return ps_cuda_op_conv2d_workspace_floats(in, w, p);
#endif
  return conv_plan_threads(&d) * conv_slice_floats(&d);
}

// "Same" stride-1 convolutions (OW == W, e.g. 3x3 pad 1) have a shifted plane
// per tap: the image's rows and the tap's rows have the same stride, so one
// tap is one contiguous run of the image (its flat index shifted by
// (kh-ph)*W + kw-pw), except the columns that wrap into the neighbouring row,
// which are out-of-image taps. One memcpy/add per tap instead of one per row.
static bool conv_same_stride1(const conv_dims *d) { return d->sh == 1 && d->sw == 1 && d->OW == d->W; }

// Output rows [*lo, *hi) within [oh0, oh1) whose tap row oh - ph + kh lies inside the image.
static void tap_rows(const conv_dims *d, int64_t kh, int64_t oh0, int64_t oh1, int64_t *lo, int64_t *hi) {
  *lo = d->ph - kh > oh0 ? d->ph - kh : oh0;
  *hi = d->H + d->ph - kh < oh1 ? d->H + d->ph - kh : oh1;
  if (*hi < *lo) *hi = *lo;
}

// Zeroes the columns of `rows` rows (OW wide) of a tap plane whose input column ow - pw + kw is outside [0, W).
static void zero_wrapped(float *plane, const conv_dims *d, int64_t kw, int64_t rows) {
  int64_t left = d->pw - kw, right = d->W + d->pw - kw; // valid ow in [left, right)
  for (int64_t r = 0; r < rows; r++) {
    float *row = plane + r * d->OW;
    for (int64_t ow = 0; ow < left && ow < d->OW; ow++) row[ow] = 0.0f;
    for (int64_t ow = right > 0 ? right : 0; ow < d->OW; ow++) row[ow] = 0.0f;
  }
}

static void im2col_same(float *col, const float *x, const conv_dims *d, int64_t oh0, int64_t oh1) {
  const int64_t HW = d->H * d->W, CHW = d->C * HW, pc = (oh1 - oh0) * d->OW;
  for (int64_t c = 0; c < d->C; c++)
    for (int64_t kh = 0; kh < d->KH; kh++) {
      int64_t lo, hi;
      tap_rows(d, kh, oh0, oh1, &lo, &hi);
      for (int64_t kw = 0; kw < d->KW; kw++) {
        float *dst = col + ((c * d->KH + kh) * d->KW + kw) * pc;
        memset(dst, 0, (size_t)((lo - oh0) * d->OW) * sizeof(float));
        memset(dst + (hi - oh0) * d->OW, 0, (size_t)((oh1 - hi) * d->OW) * sizeof(float));
        // Flat run [s0, s0 + n) of x; ends outside the image are wrapped columns (zeroed below).
        int64_t s0 = c * HW + (lo - d->ph + kh) * d->W + kw - d->pw, n = (hi - lo) * d->OW;
        int64_t a = s0 < 0 ? -s0 : 0, b = s0 + n > CHW ? CHW - s0 : n;
        float *run = dst + (lo - oh0) * d->OW;
        if (b > a) memcpy(run + a, x + s0 + a, (size_t)(b - a) * sizeof(float));
        zero_wrapped(run, d, kw, hi - lo);
      }
    }
}

// col (CKK, (oh1-oh0)*OW) from output rows [oh0, oh1) of one image x (C, H, W); out-of-image taps are 0.
static void im2col(float *col, const float *x, const conv_dims *d, int64_t oh0, int64_t oh1) {
  const int64_t pc = (oh1 - oh0) * d->OW;
  if (conv_same_stride1(d)) {
    im2col_same(col, x, d, oh0, oh1);
    return;
  }
  for (int64_t c = 0; c < d->C; c++)
    for (int64_t kh = 0; kh < d->KH; kh++)
      for (int64_t kw = 0; kw < d->KW; kw++) {
        float *dst = col + ((c * d->KH + kh) * d->KW + kw) * pc;
        // Output columns whose tap iw = ow*sw - pw + kw lands inside [0, W).
        int64_t lo = 0, hi = d->OW;
        while (lo < d->OW && lo * d->sw - d->pw + kw < 0) lo++;
        while (hi > lo && (hi - 1) * d->sw - d->pw + kw >= d->W) hi--;
        for (int64_t oh = oh0; oh < oh1; oh++) {
          int64_t ih = oh * d->sh - d->ph + kh;
          float *row = dst + (oh - oh0) * d->OW;
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

// col2im_add for conv_same_stride1: zeroes the wrapped columns of col (scratch) and adds each tap as one run.
static void col2im_add_same(float *dx, float *col, const conv_dims *d, int64_t oh0, int64_t oh1) {
  const int64_t HW = d->H * d->W, CHW = d->C * HW, pc = (oh1 - oh0) * d->OW;
  for (int64_t c = 0; c < d->C; c++)
    for (int64_t kh = 0; kh < d->KH; kh++) {
      int64_t lo, hi;
      tap_rows(d, kh, oh0, oh1, &lo, &hi);
      for (int64_t kw = 0; kw < d->KW; kw++) {
        float *src = col + ((c * d->KH + kh) * d->KW + kw) * pc + (lo - oh0) * d->OW;
        zero_wrapped(src, d, kw, hi - lo);
        int64_t s0 = c * HW + (lo - d->ph + kh) * d->W + kw - d->pw, n = (hi - lo) * d->OW;
        int64_t a = s0 < 0 ? -s0 : 0, b = s0 + n > CHW ? CHW - s0 : n;
        float *dst = dx + s0 + a;
        const float *run = src + a;
        for (int64_t i = 0; i < b - a; i++) dst[i] += run[i];
      }
    }
}

// dx (C, H, W) += col2im(col (CKK, (oh1-oh0)*OW)) for output rows [oh0, oh1), the adjoint of im2col;
// col is scratch (may be modified).
static void col2im_add(float *dx, float *col, const conv_dims *d, int64_t oh0, int64_t oh1) {
  const int64_t pc = (oh1 - oh0) * d->OW;
  if (conv_same_stride1(d)) {
    col2im_add_same(dx, col, d, oh0, oh1);
    return;
  }
  for (int64_t c = 0; c < d->C; c++)
    for (int64_t kh = 0; kh < d->KH; kh++)
      for (int64_t kw = 0; kw < d->KW; kw++) {
        const float *srcc = col + ((c * d->KH + kh) * d->KW + kw) * pc;
        int64_t lo = 0, hi = d->OW;
        while (lo < d->OW && lo * d->sw - d->pw + kw < 0) lo++;
        while (hi > lo && (hi - 1) * d->sw - d->pw + kw >= d->W) hi--;
        for (int64_t oh = oh0; oh < oh1; oh++) {
          int64_t ih = oh * d->sh - d->ph + kh;
          if (ih < 0 || ih >= d->H) continue;
          float *dst = dx + (c * d->H + ih) * d->W - d->pw + kw;
          const float *row = srcc + (oh - oh0) * d->OW;
          if (d->sw == 1) // contiguous: vectorizes
            for (int64_t ow = lo; ow < hi; ow++) dst[ow] += row[ow];
          else
            for (int64_t ow = lo; ow < hi; ow++) dst[ow * d->sw] += row[ow];
        }
      }
}

static ps_conv_kernel conv_forced = PS_CONV_KERNEL_AUTO;
void ps_conv_force_kernel(ps_conv_kernel k) { conv_forced = k < PS_CONV_KERNEL_COUNT ? k : PS_CONV_KERNEL_AUTO; }

// The weight gradient runs on the AVX-512 kernel when its output is narrow
// (CKK <= 64: the first layer's 27, where single-threaded OpenBLAS reached
// 26% of its 1024^3 rate against the kernel's 40%, pansurv bench gemm
// --conv-kernel; docs/conv.md). Everything else stays on OpenBLAS, which was
// as fast or faster for these shapes. With several threads but images running
// one after another, each GEMM is split across threads by ps_ops_sgemm, which
// the kernel does not do: BLAS then.
static bool conv_dw_avx512(const conv_dims *d, int T) {
  bool split = T == 1 && !omp_in_parallel() && omp_get_max_threads() > 1;
  if (conv_forced == PS_CONV_KERNEL_BLAS || split || !ps_conv_have_avx512()) return false;
  return conv_forced == PS_CONV_KERNEL_AVX512 || d->CKK <= 64;
}

// A 1x1, stride 1, unpadded kernel needs no lowering: the image already is col.
static bool conv_is_pointwise(const conv_dims *d) {
  return d->KH == 1 && d->KW == 1 && d->sh == 1 && d->sw == 1 && d->ph == 0 && d->pw == 0;
}

static void conv_forward_im2col(float *y, const float *x, const float *w, const float *b, const conv_dims *d,
                                float *ws, int T) {
  const int64_t slice = conv_slice_floats(d);
  const bool pw = conv_is_pointwise(d);
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
  for (int64_t n = 0; n < d->N; n++) {
    float *col = ws + (int64_t)omp_get_thread_num() * slice;
    const float *xn = x + n * d->C * d->H * d->W;
    float *yn = y + n * d->OC * d->P;
    float beta = 0.0f;
    if (b) {
      for (int64_t o = 0; o < d->OC; o++)
        for (int64_t i = 0; i < d->P; i++) yn[o * d->P + i] = b[o];
      beta = 1.0f;
    }
    for (int64_t oh0 = 0; oh0 < d->OH; oh0 += d->RB) { // out[:, chunk] (OC, pc) = w · col (CKK, pc)
      int64_t oh1 = oh0 + d->RB < d->OH ? oh0 + d->RB : d->OH, p0 = oh0 * d->OW, pc = (oh1 - oh0) * d->OW;
      if (!pw) im2col(col, xn, d, oh0, oh1);
      const float *c = pw ? xn + p0 : col;
      ps_ops_sgemm(false, false, d->OC, pc, d->CKK, 1.0f, w, d->CKK, c, pw ? d->P : pc, beta, yn + p0, d->P);
    }
  }
}

static void conv_backward_im2col(float *dx, float *dw, const float *g, const float *x, const float *w,
                                 const conv_dims *d, float *ws, int T) {
  const int64_t slice = conv_slice_floats(d), wn = d->OC * d->CKK, colf = d->CKK * d->PB;
  const bool dw_avx512 = dw && conv_dw_avx512(d, T), pw = conv_is_pointwise(d);
  // On OpenBLAS, dw is computed transposed, dw^T (CKK, OC) += col (CKK, P) ·
  // dout[n]^T: the long side of the output then runs along M, where OpenBLAS'
  // kernels are 1.1-1.3x faster for these shapes than with OC x CKK (docs/conv.md).
  const bool dw_trans = dw && !dw_avx512;
  // With one thread and no transpose dw accumulates in place; otherwise each
  // thread owns a partial in its workspace slice, summed in thread order.
  const bool partial = dw && (T > 1 || dw_trans);
  if (partial)
    for (int t = 0; t < T; t++) memset(ws + t * slice + colf, 0, (size_t)wn * sizeof(float));
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
  for (int64_t n = 0; n < d->N; n++) {
    int t = omp_get_thread_num();
    float *col = ws + t * slice, *dwt = partial ? col + colf : dw;
    const float *xn = x + n * d->C * d->H * d->W, *gn = g + n * d->OC * d->P;
    float *dxn = dx ? dx + n * d->C * d->H * d->W : NULL;
    for (int64_t oh0 = 0; oh0 < d->OH; oh0 += d->RB) {
      int64_t oh1 = oh0 + d->RB < d->OH ? oh0 + d->RB : d->OH, p0 = oh0 * d->OW, pc = (oh1 - oh0) * d->OW;
      const float *gc = gn + p0; // dout[n][:, chunk] (OC, pc), row stride P
      if (dw) {
        if (!pw) im2col(col, xn, d, oh0, oh1);
        const float *c = pw ? xn + p0 : col;
        int64_t ldc = pw ? d->P : pc;
        // dw (OC, CKK) += dout[n][:, chunk] · col^T (pc, CKK)
        if (dw_avx512) ps_conv_gemm_nt_avx512(d->OC, d->CKK, pc, gc, d->P, c, ldc, dwt, d->CKK);
        else if (dw_trans) ps_ops_sgemm(false, true, d->CKK, d->OC, pc, 1.0f, c, ldc, gc, d->P, 1.0f, dwt, d->OC);
        else ps_ops_sgemm(false, true, d->OC, d->CKK, pc, 1.0f, gc, d->P, c, ldc, 1.0f, dwt, d->CKK);
      }
      if (dx) {
        // dcol (CKK, pc) = w^T (CKK, OC) · dout[n][:, chunk]; pointwise: straight into dx.
        if (pw) ps_ops_sgemm(true, false, d->CKK, pc, d->OC, 1.0f, w, d->CKK, gc, d->P, 1.0f, dxn + p0, d->P);
        else {
          ps_ops_sgemm(true, false, d->CKK, pc, d->OC, 1.0f, w, d->CKK, gc, d->P, 0.0f, col, pc);
          col2im_add(dxn, col, d, oh0, oh1);
        }
      }
    }
  }
  if (partial)
    for (int t = 0; t < T; t++) {
      const float *part = ws + t * slice + colf;
      if (!dw_trans)
        for (int64_t i = 0; i < wn; i++) dw[i] += part[i];
      else
        for (int64_t o = 0; o < d->OC; o++)
          for (int64_t k = 0; k < d->CKK; k++) dw[o * d->CKK + k] += part[k * d->OC + o];
    }
}

ps_conv_path ps_conv_path_for(const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p,
                              ps_conv_product what) {
  conv_dims d = {0};
  if (conv_dims_of("ps_conv_path_for", &d, in, w, p) != PS_OK) return PS_CONV_PATH_IM2COL;
  conv_direct_kind k = conv_direct_for(&d, what);
  return k == CONV_DIRECT_AVX512 ? PS_CONV_PATH_DIRECT : k == CONV_DIRECT_PORTABLE ? PS_CONV_PATH_DIRECT_C
                                                                                    : PS_CONV_PATH_IM2COL;
}

// Direct forward (accumulate = false: y = conv(x) + b) or input gradient (dx += conv of dout with the
// flipped weights; dd from conv_direct_dims_dx, x = dout), OpenMP over images as the lowering: each
// thread packs the weights once and pads its image into its slice.
static void conv_direct_run(float *y, const float *x, const float *w, const float *b, bool dx, const conv_dims *d,
                            float *ws, int T, conv_direct_kind kind) {
  const int64_t slice = conv_slice_floats(d);
  const ps_conv_direct_dims dd = dx ? conv_direct_dims_dx(d) : conv_direct_dims(d);
  const int64_t padf = conv_direct_slice_of(d).pad, xn = dd.C * d->H * d->W, yn = dd.OC * d->H * d->W;
#pragma omp parallel num_threads(T) if (T > 1)
  {
    float *xp = ws + (int64_t)omp_get_thread_num() * slice, *wp = xp + padf;
    if (dx) ps_conv_direct_pack_weights_dx(wp, w, &dd);
    else ps_conv_direct_pack_weights(wp, w, &dd);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < d->N; n++) {
      ps_conv_direct_pad(xp, x + n * xn, &dd);
      if (kind == CONV_DIRECT_AVX512) ps_conv_direct_forward_avx512(y + n * yn, xp, wp, b, dx, &dd);
      else ps_conv_direct_forward_c(y + n * yn, xp, wp, b, dx, &dd);
    }
  }
}

// dw (OC, C, 3, 3) += the direct weight gradient: per-thread lane partials
// over that thread's images (static schedule), reduced into dw in thread
// order, so the sums depend on the shapes and the thread count only.
static void conv_dw_direct(float *dw, const float *g, const float *x, const conv_dims *d, float *ws, int T,
                           conv_direct_kind kind) {
  const int64_t slice = conv_slice_floats(d);
  const ps_conv_direct_dims dd = conv_direct_dims(d);
  const conv_direct_slice sl = conv_direct_slice_of(d);
  const int64_t lanes_at = sl.pad + sl.wpack, padf = ps_conv_direct_pad_floats(&dd);
  const int G = kind == CONV_DIRECT_AVX512 ? conv_dw_group(d) : 1;
  const int64_t groups = (d->N + G - 1) / G;
#pragma omp parallel num_threads(T) if (T > 1)
  {
    float *xp = ws + (int64_t)omp_get_thread_num() * slice, *lanes = xp + lanes_at;
    memset(lanes, 0, (size_t)sl.lanes * sizeof(float));
#pragma omp for schedule(static)
    for (int64_t q = 0; q < groups; q++) {
      const float *gs[4], *xs[4];
      const int ng = (int)(d->N - q * G < G ? d->N - q * G : G);
      for (int i = 0; i < ng; i++) {
        int64_t n = q * G + i;
        ps_conv_direct_pad(xp + i * padf, x + n * d->C * d->H * d->W, &dd);
        xs[i] = xp + i * padf;
        gs[i] = g + n * d->OC * d->P;
      }
      if (kind == CONV_DIRECT_AVX512) ps_conv_direct_dw_avx512(lanes, gs, xs, ng, &dd);
      else ps_conv_direct_dw_c(lanes, gs[0], xs[0], &dd);
    }
  }
  for (int t = 0; t < T; t++) ps_conv_direct_dw_reduce(dw, ws + t * slice + lanes_at, &dd);
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
  PS_OPS_DEVICE(op, out, in, w, b, workspace);
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
  PS_OPS_ON_CUDA(ps_cuda_op_conv2d_forward(out, in, w, b, p, workspace));
  int T = 1;
  PS_TRY(conv_threads_for(op, &d, workspace, &T));
  if (d.N == 0) return PS_OK;
  conv_direct_kind kind = conv_direct_for(&d, PS_CONV_FWD);
  if (kind != CONV_DIRECT_NONE)
    conv_direct_run(ps_f32(out), ps_f32(in), ps_f32(w), b ? ps_f32(b) : NULL, false, &d, ps_f32(workspace), T, kind);
  else conv_forward_im2col(ps_f32(out), ps_f32(in), ps_f32(w), b ? ps_f32(b) : NULL, &d, ps_f32(workspace), T);
  return PS_OK;
}

ps_status ps_conv2d_backward(ps_tensor *din, ps_tensor *dw, ps_tensor *db, const ps_tensor *dout,
                             const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p,
                             ps_tensor *workspace) {
  static const char op[] = "ps_conv2d_backward";
  PS_OPS_DEVICE(op, din, dw, db, dout, in, w, workspace);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  PS_OPS_CHECK(op, w, PS_F32, -1);
  conv_dims d = {0};
  PS_TRY(conv_dims_of(op, &d, in, w, p));
  PS_OPS_CHECK(op, dout, PS_F32, d.N * d.OC * d.P);
  PS_OPS_CHECK_OPT(op, din, PS_F32, d.N * d.C * d.H * d.W);
  PS_OPS_CHECK_OPT(op, dw, PS_F32, d.OC * d.CKK);
  PS_OPS_CHECK_OPT(op, db, PS_F32, d.OC);
  PS_OPS_CHECK(op, workspace, PS_F32, -1);
  PS_OPS_ON_CUDA(ps_cuda_op_conv2d_backward(din, dw, db, dout, in, w, p, workspace));
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
  // Each product on its own path; what is not direct runs on the lowering (both there: one pass).
  conv_direct_kind kdw = dw ? conv_direct_for(&d, PS_CONV_DW) : CONV_DIRECT_NONE;
  conv_direct_kind kdx = din ? conv_direct_for(&d, PS_CONV_DX) : CONV_DIRECT_NONE;
  if (kdw) conv_dw_direct(ps_f32(dw), ps_f32(dout), ps_f32(in), &d, ps_f32(workspace), T, kdw);
  if (kdx) conv_direct_run(ps_f32(din), ps_f32(dout), ps_f32(w), NULL, true, &d, ps_f32(workspace), T, kdx);
  float *dwl = dw && !kdw ? ps_f32(dw) : NULL, *dxl = din && !kdx ? ps_f32(din) : NULL;
  if (dxl || dwl)
    conv_backward_im2col(dxl, dwl, ps_f32(dout), ps_f32(in), ps_f32(w), &d, ps_f32(workspace), T);
  return PS_OK;
}

// ---- pooling ------------------------------------------------------------------

ps_status ps_maxpool2d_forward(ps_tensor *out, ps_tensor *argmax, const ps_tensor *in, int k, int s) {
  static const char op[] = "ps_maxpool2d_forward";
  PS_OPS_DEVICE(op, out, argmax, in);
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
  PS_OPS_ON_CUDA(ps_cuda_op_maxpool_forward(ps_f32(out), (int32_t *)argmax->data, ps_f32(in), N * C, H, W, k, s, OH,
                                            OW));
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
  PS_OPS_DEVICE(op, din, dout, argmax);
  PS_OPS_CHECK(op, din, PS_F32, -1);
  char buf[96];
  PS_REQUIRE(din->ndim == 4, "%s: din must be (N, C, H, W), got %s", op, ps_tensor_describe(din, buf, sizeof buf));
  PS_OPS_CHECK(op, dout, PS_F32, -1);
  PS_REQUIRE(dout->ndim == 4 && dout->shape[0] == din->shape[0] && dout->shape[1] == din->shape[1],
             "%s: dout %s does not match din's (N, C)", op, ps_tensor_describe(dout, buf, sizeof buf));
  int64_t NC = din->shape[0] * din->shape[1], HW = din->shape[2] * din->shape[3];
  int64_t Q = dout->shape[2] * dout->shape[3];
  PS_OPS_CHECK(op, argmax, PS_I32, NC * Q);
  PS_OPS_ON_CUDA(ps_cuda_op_maxpool_backward(ps_f32(din), ps_f32(dout), (const int32_t *)argmax->data, NC,
                                             din->shape[2], din->shape[3], dout->shape[2], dout->shape[3]));
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
  PS_OPS_DEVICE(op, out, in);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  char buf[96];
  PS_REQUIRE(in->ndim == 4, "%s: in must be (N, C, H, W), got %s", op, ps_tensor_describe(in, buf, sizeof buf));
  int64_t NC = in->shape[0] * in->shape[1], HW = in->shape[2] * in->shape[3];
  PS_OPS_CHECK(op, out, PS_F32, NC);
  PS_REQUIRE(HW > 0, "%s: empty planes", op);
  PS_OPS_ON_CUDA(ps_cuda_op_avgpool_forward(ps_f32(out), ps_f32(in), NC, HW));
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
  PS_OPS_DEVICE(op, din, dout);
  PS_OPS_CHECK(op, din, PS_F32, -1);
  char buf[96];
  PS_REQUIRE(din->ndim == 4, "%s: din must be (N, C, H, W), got %s", op, ps_tensor_describe(din, buf, sizeof buf));
  int64_t NC = din->shape[0] * din->shape[1], HW = din->shape[2] * din->shape[3];
  PS_OPS_CHECK(op, dout, PS_F32, NC);
  PS_OPS_ON_CUDA(ps_cuda_op_avgpool_backward(ps_f32(din), ps_f32(dout), NC, HW));
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
