// Spatial and stochastic CPU ops: conv2d, max/global-average pooling, batch
// norm (including the SyncBN split contract) and dropout (masks keyed by
// (seed, row stream) only).
//
// Tolerances: as in test_ops_dense.c, float forward passes put ~1e-7
// relative noise on each output; with h = 1e-2, central differences of these
// ops (linear, piecewise linear away from ties, or smooth with O(1) curvature)
// are accurate to ~1e-4 relative, and each tolerance leaves room above that.
#include "opstest.h"
#include "ops_conv_kernels.h" // ps_conv_force_kernel: test each GEMM path of the lowering

// ---- conv2d ----------------------------------------------------------------------

typedef struct {
  ps_tensor out, in, w, b, ws;
  ps_conv2d_params p;
} conv_ctx;
static ps_status conv_fwd(void *v) {
  conv_ctx *c = v;
  return ps_conv2d_forward(&c->out, &c->in, &c->w, &c->b, &c->p, &c->ws);
}

static conv_ctx conv_make(int64_t N, int64_t C, int64_t H, int64_t W, int64_t OC, int64_t KH, int64_t KW,
                          ps_conv2d_params p) {
  conv_ctx c = {.in = OT_RAND(-1, 1, N, C, H, W), .w = OT_RAND(-1, 1, OC, C, KH, KW), .b = OT_RAND(-1, 1, OC), .p = p};
  int64_t OH = (H + 2 * p.pad_h - KH) / p.stride_h + 1, OW = (W + 2 * p.pad_w - KW) / p.stride_w + 1;
  c.out = OT_ZEROS(N, OC, OH, OW);
  c.ws = ot_zeros(PS_F32, PS_SHAPE(ps_conv2d_workspace_floats(&c.in, &c.w, &p)));
  return c;
}

static void conv_ref(double *y, const conv_ctx *c) {
  const ps_tensor *x = &c->in, *w = &c->w;
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t OC = w->shape[0], KH = w->shape[2], KW = w->shape[3], OH = c->out.shape[2], OW = c->out.shape[3];
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < OC; o++)
      for (int64_t oh = 0; oh < OH; oh++)
        for (int64_t ow = 0; ow < OW; ow++) {
          double s = ps_f32(&c->b)[o];
          for (int64_t ci = 0; ci < C; ci++)
            for (int64_t kh = 0; kh < KH; kh++)
              for (int64_t kw = 0; kw < KW; kw++) {
                int64_t ih = oh * c->p.stride_h - c->p.pad_h + kh, iw = ow * c->p.stride_w - c->p.pad_w + kw;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                s += (double)ps_f32(x)[((n * C + ci) * H + ih) * W + iw] * ps_f32(w)[((o * C + ci) * KH + kh) * KW + kw];
              }
          y[((n * OC + o) * OH + oh) * OW + ow] = s;
        }
}

static int test_conv_forward(void) {
  struct {
    int64_t N, C, H, W, OC, KH, KW;
    ps_conv2d_params p;
  } cfg[] = {
      {3, 3, 8, 8, 4, 3, 3, {1, 1, 1, 1}},  // the model's 3x3 pad 1
      {2, 3, 7, 6, 4, 3, 3, {2, 2, 1, 1}},  // stride 2, odd sizes
      {2, 2, 6, 7, 3, 2, 3, {1, 2, 0, 2}},  // rectangular kernel, mixed stride, wide padding
      {3, 5, 4, 4, 6, 1, 1, {1, 1, 0, 0}},  // pointwise fast path
      {2, 2, 5, 5, 3, 5, 5, {3, 3, 2, 2}},  // kernel = image, stride > 1
  };
  for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++) {
    conv_ctx c = conv_make(cfg[k].N, cfg[k].C, cfg[k].H, cfg[k].W, cfg[k].OC, cfg[k].KH, cfg[k].KW, cfg[k].p);
    int64_t n = ps_tensor_numel(&c.out);
    double *ref = malloc((size_t)n * sizeof(double));
    conv_ref(ref, &c);
    for (int threads = 1; threads <= 2; threads++) { // batch-parallel path with 2 threads
      ps_ops_set_threads(threads);
      c.ws = ot_zeros(PS_F32, PS_SHAPE(ps_conv2d_workspace_floats(&c.in, &c.w, &c.p)));
      TU_OK(conv_fwd(&c));
      char what[80];
      snprintf(what, sizeof what, "conv config %zu, %d thread(s)", k, threads);
      ot_expect_close(what, ps_f32(&c.out), ref, n, 1e-5, 1e-5); // <= 125 float products per output
    }
    ps_ops_set_threads(1);
    free(ref);
  }
  // Bad inputs: channel mismatch, too small a workspace.
  conv_ctx c = conv_make(1, 3, 5, 5, 2, 3, 3, (ps_conv2d_params){1, 1, 1, 1});
  ps_tensor w4 = OT_ZEROS(2, 4, 3, 3), small = OT_ZEROS(10);
  TU_CHECK(ps_conv2d_forward(&c.out, &c.in, &w4, NULL, &c.p, &c.ws) == PS_ERR_ARG, "channel mismatch must fail");
  TU_CHECK(strstr(ps_error_message(), "channels") != NULL, "message: %s", ps_error_message());
  TU_CHECK(ps_conv2d_forward(&c.out, &c.in, &c.w, NULL, &c.p, &small) == PS_ERR_ARG, "small workspace must fail");
  TU_CHECK(strstr(ps_error_message(), "workspace") != NULL, "message: %s", ps_error_message());
  return 0;
}

static int test_conv_grad(void) {
  struct {
    int64_t N, C, H, W, OC, KH, KW;
    ps_conv2d_params p;
  } cfg[] = {
      {2, 2, 5, 5, 3, 3, 3, {2, 2, 1, 1}},
      {3, 2, 4, 5, 2, 2, 3, {1, 1, 0, 1}},
      {2, 3, 3, 3, 4, 1, 1, {1, 1, 0, 0}},
  };
  for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++)
    for (int threads = 1; threads <= 2; threads++) {
      ps_ops_set_threads(threads);
      conv_ctx c = conv_make(cfg[k].N, cfg[k].C, cfg[k].H, cfg[k].W, cfg[k].OC, cfg[k].KH, cfg[k].KW, cfg[k].p);
      ps_tensor wt = ot_uniform(-1, 1, c.out.ndim, c.out.shape);
      ps_tensor din = ot_zeros(PS_F32, c.in.ndim, c.in.shape), dw = ot_zeros(PS_F32, c.w.ndim, c.w.shape);
      ps_tensor db = OT_ZEROS(cfg[k].OC);
      TU_OK(ps_conv2d_backward(&din, &dw, &db, &wt, &c.in, &c.w, &c.p, &c.ws));
      ot_loss l = {conv_fwd, &c, &c.out, &wt};
      char what[80];
      // Bilinear in (in, w): FD error is rounding only (~1e-5); tolerance 1e-3.
      snprintf(what, sizeof what, "conv %zu T=%d din", k, threads);
      ot_gradcheck(what, &c.in, &din, 1e-2f, 1e-3, &l);
      snprintf(what, sizeof what, "conv %zu T=%d dw", k, threads);
      ot_gradcheck(what, &c.w, &dw, 1e-2f, 1e-3, &l);
      snprintf(what, sizeof what, "conv %zu T=%d db", k, threads);
      ot_gradcheck(what, &c.b, &db, 1e-2f, 1e-3, &l);
    }
  ps_ops_set_threads(1);
  return 0;
}

// The three execution paths (1 thread; images in parallel; images in turn with
// each GEMM split across threads) agree. Serial single-thread results were
// checked against finite differences above; these shapes are too big for that.
static int test_conv_threads(void) {
  struct {
    int64_t N, C, H, W, OC;
  } cfg[] = {
      {1, 8, 48, 48, 16}, // one image: GEMMs (> 4 MFLOP) split across threads
      {4, 8, 48, 48, 16}, // images in parallel
  };
  const ps_conv2d_params p = {1, 1, 1, 1};
  for (size_t k = 0; k < 2; k++) {
    ps_tensor res[3][4]; // [path][out, din, dw, db]
    ps_ops_set_threads(1);
    conv_ctx c = conv_make(cfg[k].N, cfg[k].C, cfg[k].H, cfg[k].W, cfg[k].OC, 3, 3, p);
    ps_tensor dy = ot_uniform(-1, 1, c.out.ndim, c.out.shape);
    ps_tensor ws1 = ot_copy(&c.ws); // one slice
    for (int path = 0; path < 3; path++) {
      // path 0: 1 thread; 1: 2 threads, full workspace; 2: 2 threads, one-slice workspace (serial images)
      ps_ops_set_threads(path == 0 ? 1 : 2);
      ps_tensor ws = path == 1 ? ot_zeros(PS_F32, PS_SHAPE(ps_conv2d_workspace_floats(&c.in, &c.w, &p))) : ws1;
      res[path][0] = ot_zeros(PS_F32, c.out.ndim, c.out.shape);
      res[path][1] = ot_zeros(PS_F32, c.in.ndim, c.in.shape);
      res[path][2] = ot_zeros(PS_F32, c.w.ndim, c.w.shape);
      res[path][3] = ot_zeros(PS_F32, c.b.ndim, c.b.shape);
      TU_OK(ps_conv2d_forward(&res[path][0], &c.in, &c.w, &c.b, &p, &ws));
      TU_OK(ps_conv2d_backward(&res[path][1], &res[path][2], &res[path][3], &dy, &c.in, &c.w, &p, &ws));
    }
    ps_ops_set_threads(1);
    static const char *names[] = {"out", "din", "dw", "db"};
    for (int path = 1; path < 3; path++)
      for (int t = 0; t < 4; t++) {
        double e = ps_tu_rel_err(ps_f32(&res[path][t]), ps_f32(&res[0][t]), ps_tensor_numel(&res[0][t]));
        printf("  conv N=%lld path %d vs 1 thread: %-3s rel %.2e\n", (long long)cfg[k].N, path, names[t], e);
        // Same products, summed in another order (split GEMM blocking, per-thread dw partials): float rounding.
        TU_CHECK(e < 1e-6, "conv N=%lld path %d %s differs from 1 thread by %.2e", (long long)cfg[k].N, path, names[t], e);
      }
  }
  return 0;
}

// din (N, C, H, W) and dw (OC, C, KH, KW) of sum(out * dy), in double, with the
// sums of |terms| (the scale of the float rounding) in dmag / wmag.
static void conv_bwd_ref(double *din, double *dmag, double *dw, double *wmag, const conv_ctx *c, const float *dy) {
  const ps_tensor *x = &c->in, *w = &c->w;
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t OC = w->shape[0], KH = w->shape[2], KW = w->shape[3], OH = c->out.shape[2], OW = c->out.shape[3];
  memset(din, 0, (size_t)(N * C * H * W) * sizeof(double));
  memset(dmag, 0, (size_t)(N * C * H * W) * sizeof(double));
  memset(dw, 0, (size_t)(OC * C * KH * KW) * sizeof(double));
  memset(wmag, 0, (size_t)(OC * C * KH * KW) * sizeof(double));
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < OC; o++)
      for (int64_t oh = 0; oh < OH; oh++)
        for (int64_t ow = 0; ow < OW; ow++) {
          double g = dy[((n * OC + o) * OH + oh) * OW + ow];
          for (int64_t ci = 0; ci < C; ci++)
            for (int64_t kh = 0; kh < KH; kh++)
              for (int64_t kw = 0; kw < KW; kw++) {
                int64_t ih = oh * c->p.stride_h - c->p.pad_h + kh, iw = ow * c->p.stride_w - c->p.pad_w + kw;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                int64_t xi = ((n * C + ci) * H + ih) * W + iw, wi = ((o * C + ci) * KH + kh) * KW + kw;
                din[xi] += g * ps_f32(w)[wi];
                dmag[xi] += fabs(g * ps_f32(w)[wi]);
                dw[wi] += g * ps_f32(x)[xi];
                wmag[wi] += fabs(g * ps_f32(x)[xi]);
              }
        }
}

// The double references of one conv case for output gradient dy: out, din, dw, each with its sums
// of |terms| (omag, dmag, wmag: the scale of the float rounding). One allocation at out; free(out).
typedef struct {
  double *out, *omag, *din, *dmag, *dw, *wmag;
} conv_refs;

static conv_refs conv_refs_make(const conv_ctx *c, const float *dy) {
  const int64_t nx = ps_tensor_numel(&c->in), nw = ps_tensor_numel(&c->w), ny = ps_tensor_numel(&c->out);
  conv_refs r;
  r.out = malloc((size_t)(2 * ny + 2 * nx + 2 * nw) * sizeof(double));
  TU_CHECK(r.out != NULL, "out of memory");
  r.omag = r.out + ny, r.din = r.omag + ny, r.dmag = r.din + nx, r.dw = r.dmag + nx, r.wmag = r.dw + nw;
  conv_ref(r.out, c);
  conv_ctx a = *c; // sum of |terms| of each output: the same convolution of |in|, |w|, |b|
  a.in = ot_copy(&c->in), a.w = ot_copy(&c->w), a.b = ot_copy(&c->b);
  for (int64_t i = 0; i < nx; i++) ps_f32(&a.in)[i] = fabsf(ps_f32(&a.in)[i]);
  for (int64_t i = 0; i < nw; i++) ps_f32(&a.w)[i] = fabsf(ps_f32(&a.w)[i]);
  for (int64_t i = 0; i < ps_tensor_numel(&c->b); i++) ps_f32(&a.b)[i] = fabsf(ps_f32(&a.b)[i]);
  conv_ref(r.omag, &a);
  conv_bwd_ref(r.din, r.dmag, r.dw, r.wmag, c, dy);
  return r;
}

// |got - want| <= tol * (sum of |terms|) + 1e-6 everywhere.
static void expect_close_mag(const char *what, const float *got, const double *want, const double *mag, int64_t n,
                             double tol) {
  double worst = 0;
  int64_t wi = 0;
  for (int64_t i = 0; i < n; i++) {
    double r = fabs((double)got[i] - want[i]) / (tol * mag[i] + 1e-6);
    if (!(r <= worst)) {
      worst = r;
      wi = i;
    }
  }
  printf("  %-44s n=%-7lld worst scaled error %.3f\n", what, (long long)n, worst);
  TU_CHECK(worst <= 1.0, "%s: element %lld got %.9g want %.9g (sum|terms| %.3g)", what, (long long)wi, got[wi], want[wi],
           mag[wi]);
}

// Each GEMM path of the lowering (OpenBLAS; the AVX-512 weight-gradient kernel
// where the CPU has AVX-512F; the automatic choice) at 1 and 2 threads against
// the double reference: the three reference-model layers (batch cut to 2),
// stride 2, pad 0, 5x5, the "same"-convolution run copies of im2col/col2im
// (OW == W) with and without row padding, a lowering split into row chunks
// (layer 2 and the 128-channel 5x5), odd batches (2 threads: images unevenly split), output
// positions not a multiple of 16 (masked K tail) and channel counts that are
// not multiples of the 8 x 3 register tile.
static int test_conv_kernels(void) {
  struct {
    int64_t N, C, H, W, OC, KH, KW;
    ps_conv2d_params p;
  } cfg[] = {
      {2, 3, 64, 64, 32, 3, 3, {1, 1, 1, 1}},   // layer 1: CKK 27, P 4096 (several K chunks)
      {2, 32, 32, 32, 64, 3, 3, {1, 1, 1, 1}},  // layer 2
      {1, 64, 16, 16, 128, 3, 3, {1, 1, 1, 1}}, // layer 3
      {3, 3, 9, 7, 5, 3, 3, {2, 2, 1, 1}},      // stride 2, P = 20
      {3, 4, 7, 9, 6, 3, 3, {1, 1, 0, 0}},      // pad 0, P = 35
      {3, 2, 11, 10, 5, 5, 5, {1, 1, 2, 2}},    // 5x5: CKK 50, P 110
      {2, 3, 6, 8, 4, 3, 3, {1, 1, 0, 1}},      // one-tap-run im2col with OH != H (pad only along W)
      {2, 2, 5, 6, 3, 1, 3, {1, 1, 1, 1}},      // 1x3 with row padding: whole tap planes outside the image
      {3, 128, 12, 12, 4, 5, 5, {1, 1, 0, 0}},  // CKK 3200: lowered in two chunks of 4 output rows
  };
  static const char *const kname[] = {"auto", "blas", "avx512"};
  for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++) {
    ps_ops_set_threads(1);
    conv_ctx c = conv_make(cfg[k].N, cfg[k].C, cfg[k].H, cfg[k].W, cfg[k].OC, cfg[k].KH, cfg[k].KW, cfg[k].p);
    ps_tensor dy = ot_uniform(-1, 1, c.out.ndim, c.out.shape);
    int64_t nx = ps_tensor_numel(&c.in), nw = ps_tensor_numel(&c.w), ny = ps_tensor_numel(&c.out);
    const conv_refs rf = conv_refs_make(&c, ps_f32(&dy));
    const double *ref = rf.out, *omag = rf.omag, *din = rf.din, *dmag = rf.dmag, *dw = rf.dw, *wmag = rf.wmag;
    for (int kern = PS_CONV_KERNEL_AUTO; kern < PS_CONV_KERNEL_COUNT; kern++) {
      if (kern == PS_CONV_KERNEL_AVX512 && !ps_conv_have_avx512()) {
        printf("  conv config %zu: no AVX-512F on this CPU, avx512 path skipped\n", k);
        continue;
      }
      ps_conv_force_kernel((ps_conv_kernel)kern);
      for (int threads = 1; threads <= 2; threads++) {
        ps_ops_set_threads(threads);
        c.ws = ot_zeros(PS_F32, PS_SHAPE(ps_conv2d_workspace_floats(&c.in, &c.w, &c.p)));
        ps_tensor gx = ot_zeros(PS_F32, c.in.ndim, c.in.shape), gw = ot_zeros(PS_F32, c.w.ndim, c.w.shape);
        TU_OK(conv_fwd(&c));
        TU_OK(ps_conv2d_backward(&gx, &gw, NULL, &dy, &c.in, &c.w, &c.p, &c.ws));
        char what[96];
        snprintf(what, sizeof what, "conv %zu %s T=%d out", k, kname[kern], threads);
        // Float sums of up to 8192 products: rounding ~1e-6 of sum|terms| (random walk), 1e-5 leaves room;
        // a wrong tap or image is off by ~1/sqrt(terms) of it.
        expect_close_mag(what, ps_f32(&c.out), ref, omag, ny, 1e-5);
        snprintf(what, sizeof what, "conv %zu %s T=%d din", k, kname[kern], threads);
        expect_close_mag(what, ps_f32(&gx), din, dmag, nx, 1e-5);
        snprintf(what, sizeof what, "conv %zu %s T=%d dw", k, kname[kern], threads);
        expect_close_mag(what, ps_f32(&gw), dw, wmag, nw, 1e-5);
      }
    }
    ps_conv_force_kernel(PS_CONV_KERNEL_AUTO);
    ps_ops_set_threads(1);
    free(rf.out);
  }
  return 0;
}

// The direct kernels of 3x3 "same" convolutions (forward, input gradient,
// weight gradient; ops_conv_direct.c, ops_conv_avx512.c), forced, against
// the double reference: C = 1..4 and wider, images whose width is not a
// multiple of the 16-pixel vector (masked tails, vectors of a register tile
// spanning rows), tiny images (1, 2 and 3 rows: the weight gradient's row
// walk without a middle), channel counts not a multiple of the 8-channel tile
// or of the weight gradient's 3-channel tile, odd batches at 2 threads; with
// and without din. Then: the
// automatic choice per product for the reference model's layers, its results
// match the forced lowering's, and repeated calls give the same bits.
static int test_conv_direct(void) {
  struct {
    int64_t N, C, H, W, OC;
  } cfg[] = {
      {2, 3, 64, 64, 32}, // the reference model's first layer (batch cut to 2)
      {3, 1, 5, 7, 5},    // one channel, width below one vector, OC < 8
      {1, 2, 17, 33, 13}, // 3 vectors per row (last one 1 pixel wide), OC tail of 5
      {3, 4, 9, 16, 20},  // exactly one vector per row, OC tail of 4
      {2, 3, 1, 1, 3},    // 1x1 image: every tap but the centre is padding
      {2, 4, 12, 40, 17}, // 40 = 16 + 16 + 8
      {3, 16, 6, 32, 24}, // wider input: input gradient into 16 channels (2 tiles), dout padded per image
      {2, 9, 5, 20, 10},  // 9 input channels: the input gradient's channel tile has a tail of 1
      {2, 2, 2, 18, 7},   // 2 rows: the weight gradient's first and last rows only, no middle row
      {5, 2, 3, 16, 4},   // 3 rows, 5 images: weight-gradient passes over 4 images and then 1
  };
  static const ps_conv_path paths[] = {PS_CONV_PATH_DIRECT, PS_CONV_PATH_DIRECT_C, PS_CONV_PATH_IM2COL};
  static const char *const pname[] = {"direct", "direct_c", "im2col"};
  const ps_conv2d_params p = {1, 1, 1, 1};
  for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++) {
    ps_ops_set_threads(1);
    conv_ctx c = conv_make(cfg[k].N, cfg[k].C, cfg[k].H, cfg[k].W, cfg[k].OC, 3, 3, p);
    ps_tensor dy = ot_uniform(-1, 1, c.out.ndim, c.out.shape);
    int64_t nx = ps_tensor_numel(&c.in), nw = ps_tensor_numel(&c.w), ny = ps_tensor_numel(&c.out);
    const conv_refs rf = conv_refs_make(&c, ps_f32(&dy));
    const double *ref = rf.out, *omag = rf.omag, *din = rf.din, *dmag = rf.dmag, *dw = rf.dw, *wmag = rf.wmag;
    ps_tensor got[3][2]; // [path][out, dw] at 1 thread, without din
    for (size_t q = 0; q < 3; q++) {
      if (paths[q] == PS_CONV_PATH_DIRECT && !ps_conv_have_avx512())
        printf("  conv direct %zu: no AVX-512F on this CPU, 'direct' runs the portable kernels\n", k);
      ps_conv_force_path(paths[q]);
      ps_conv_path want = paths[q] == PS_CONV_PATH_DIRECT && !ps_conv_have_avx512() ? PS_CONV_PATH_DIRECT_C : paths[q];
      for (int pr = 0; pr < PS_CONV_PRODUCT_COUNT; pr++)
        TU_CHECK(ps_conv_path_for(&c.in, &c.w, &p, (ps_conv_product)pr) == want, "config %zu: forced %s not taken",
                 k, pname[q]);
      for (int threads = 1; threads <= 2; threads++)
        for (int with_din = 0; with_din <= 1; with_din++) {
          ps_ops_set_threads(threads);
          c.ws = ot_zeros(PS_F32, PS_SHAPE(ps_conv2d_workspace_floats(&c.in, &c.w, &c.p)));
          ps_tensor gx = ot_zeros(PS_F32, c.in.ndim, c.in.shape), gw = ot_zeros(PS_F32, c.w.ndim, c.w.shape);
          TU_OK(conv_fwd(&c));
          TU_OK(ps_conv2d_backward(with_din ? &gx : NULL, &gw, NULL, &dy, &c.in, &c.w, &c.p, &c.ws));
          char what[96];
          // <= 36 float products per output; dw sums up to 2*64*64 products: rounding ~1e-6 of
          // sum|terms|, 1e-5 leaves room, a wrong tap, lane or image is off by far more.
          snprintf(what, sizeof what, "conv direct %zu %s T=%d%s out", k, pname[q], threads, with_din ? " +din" : "");
          expect_close_mag(what, ps_f32(&c.out), ref, omag, ny, 1e-5);
          snprintf(what, sizeof what, "conv direct %zu %s T=%d%s dw", k, pname[q], threads, with_din ? " +din" : "");
          expect_close_mag(what, ps_f32(&gw), dw, wmag, nw, 1e-5);
          if (with_din) {
            snprintf(what, sizeof what, "conv direct %zu %s T=%d din", k, pname[q], threads);
            expect_close_mag(what, ps_f32(&gx), din, dmag, nx, 1e-5);
          }
          // Normalized error against the double reference, as a second measure.
          const float *yf = ps_f32(&c.out), *wf = ps_f32(&gw);
          double num = 0, den = 0, wn = 0, wd = 0;
          for (int64_t i = 0; i < ny; i++) num += (yf[i] - ref[i]) * (yf[i] - ref[i]), den += ref[i] * ref[i];
          for (int64_t i = 0; i < nw; i++) wn += (wf[i] - dw[i]) * (wf[i] - dw[i]), wd += dw[i] * dw[i];
          TU_CHECK(sqrt(num) <= 1e-5 * sqrt(den) && sqrt(wn) <= 1e-5 * sqrt(wd),
                   "config %zu %s T=%d: relative error out %.2e dw %.2e", k, pname[q], threads, sqrt(num / den),
                   sqrt(wn / wd));
          if (threads == 1 && !with_din) got[q][0] = ot_copy(&c.out), got[q][1] = ot_copy(&gw);
          if (threads == 1 && with_din) { // the same call again: the same bits
            TU_CHECK(!memcmp(ps_f32(&gw), ps_f32(&got[q][1]), (size_t)nw * sizeof(float)),
                     "config %zu %s: dw differs between identical calls", k, pname[q]);
          }
        }
    }
    // The automatic choice (whatever it is for this shape) agrees with the lowering.
    ps_conv_force_path(PS_CONV_PATH_AUTO);
    ps_ops_set_threads(1);
    c.ws = ot_zeros(PS_F32, PS_SHAPE(ps_conv2d_workspace_floats(&c.in, &c.w, &c.p)));
    TU_OK(conv_fwd(&c));
    ps_tensor gw = ot_zeros(PS_F32, c.w.ndim, c.w.shape);
    TU_OK(ps_conv2d_backward(NULL, &gw, NULL, &dy, &c.in, &c.w, &c.p, &c.ws));
    double eo = ps_tu_rel_err(ps_f32(&c.out), ps_f32(&got[2][0]), ny), ew = ps_tu_rel_err(ps_f32(&gw), ps_f32(&got[2][1]), nw);
    printf("  conv direct %zu: auto vs im2col: out rel %.2e, dw rel %.2e\n", k, eo, ew);
    TU_CHECK(eo <= 1e-5 && ew <= 1e-5, "config %zu: auto differs from im2col: out %.2e dw %.2e", k, eo, ew);
    free(rf.out);
  }
  // The automatic choice for the reference model's layers on an AVX-512F CPU (the shapes measured
  // in docs/conv.md; the lowering everywhere without AVX-512F): {C, H, OC, fwd, dx, dw direct?}.
  struct {
    int64_t C, H, OC;
    bool direct[PS_CONV_PRODUCT_COUNT];
  } layer[] = {{3, 64, 32, {true, false, true}}, {32, 32, 64, {true, true, true}}, {64, 16, 128, {true, true, false}}};
  ps_conv_force_path(PS_CONV_PATH_AUTO);
  for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
    ps_tensor in = ot_zeros(PS_F32, PS_SHAPE(1, layer[i].C, layer[i].H, layer[i].H)),
              w = ot_zeros(PS_F32, PS_SHAPE(layer[i].OC, layer[i].C, 3, 3));
    for (int pr = 0; pr < PS_CONV_PRODUCT_COUNT; pr++) {
      ps_conv_path want = layer[i].direct[pr] && ps_conv_have_avx512() ? PS_CONV_PATH_DIRECT : PS_CONV_PATH_IM2COL;
      ps_conv_path got = ps_conv_path_for(&in, &w, &p, (ps_conv_product)pr);
      TU_CHECK(got == want, "layer %zu product %d: auto path %d, expected %d", i, pr, (int)got, (int)want);
    }
  }
  // Ineligible shapes always lower, whatever is forced: stride 2, no padding, 5x5, 3x1.
  struct {
    int64_t KH, KW;
    ps_conv2d_params p;
  } no[] = {{3, 3, {2, 2, 1, 1}}, {3, 3, {1, 1, 0, 0}}, {5, 5, {1, 1, 1, 1}}, {3, 1, {1, 1, 1, 1}}};
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
    ps_tensor in = ot_zeros(PS_F32, PS_SHAPE(1, 3, 8, 8)), w = ot_zeros(PS_F32, PS_SHAPE(4, 3, no[i].KH, no[i].KW));
    for (int q = PS_CONV_PATH_AUTO; q < PS_CONV_PATH_COUNT; q++) {
      ps_conv_force_path((ps_conv_path)q);
      for (int pr = 0; pr < PS_CONV_PRODUCT_COUNT; pr++)
        TU_CHECK(ps_conv_path_for(&in, &w, &no[i].p, (ps_conv_product)pr) == PS_CONV_PATH_IM2COL,
                 "ineligible shape %zu took path %d", i, (int)ps_conv_path_for(&in, &w, &no[i].p, (ps_conv_product)pr));
    }
  }
  ps_conv_force_path(PS_CONV_PATH_AUTO);
  return 0;
}

// ---- pooling ---------------------------------------------------------------------

// Distinct values 0.05 apart (a shuffled ramp): no ties in any window, and a
// perturbation of h = 1e-2 never changes which entry wins.
static ps_tensor distinct_input(int64_t N, int64_t C, int64_t H, int64_t W) {
  ps_tensor t = OT_ZEROS(N, C, H, W);
  int64_t n = ps_tensor_numel(&t);
  int64_t *perm = malloc((size_t)n * sizeof(int64_t));
  ps_rng r = ps_rng_make(ot_seed, ps_rng_stream(PS_RNG_TEST, ++ot_stream, 0, 0));
  ps_rng_permutation(&r, perm, n);
  for (int64_t i = 0; i < n; i++) ps_f32(&t)[i] = 0.05f * (float)(perm[i] - n / 2);
  free(perm);
  return t;
}

typedef struct {
  ps_tensor out, am, in;
  int k, s;
} mp_ctx;
static ps_status mp_fwd(void *v) {
  mp_ctx *c = v;
  return ps_maxpool2d_forward(&c->out, &c->am, &c->in, c->k, c->s);
}

static int test_maxpool_forward(void) {
  int ks[2][2] = {{2, 2}, {3, 2}}; // non-overlapping and overlapping windows
  for (int t = 0; t < 2; t++) {
    int k = ks[t][0], s = ks[t][1];
    int64_t H = 7, W = 8, OH = (H - k) / s + 1, OW = (W - k) / s + 1;
    mp_ctx c = {OT_ZEROS(2, 3, OH, OW), ot_zeros(PS_I32, PS_SHAPE(2, 3, OH, OW)), OT_RAND(-1, 1, 2, 3, 7, 8), k, s};
    TU_OK(mp_fwd(&c));
    double *ref = malloc((size_t)(6 * OH * OW) * sizeof(double));
    for (int64_t pl = 0; pl < 6; pl++)
      for (int64_t oh = 0; oh < OH; oh++)
        for (int64_t ow = 0; ow < OW; ow++) {
          double m = -INFINITY;
          int64_t arg = -1;
          for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++) {
              int64_t off = (oh * s + i) * W + ow * s + j;
              if (ps_f32(&c.in)[pl * H * W + off] > m) {
                m = ps_f32(&c.in)[pl * H * W + off];
                arg = off;
              }
            }
          ref[(pl * OH + oh) * OW + ow] = m;
          TU_CHECK(((int32_t *)c.am.data)[(pl * OH + oh) * OW + ow] == arg, "argmax at plane %lld (%lld, %lld)",
                   (long long)pl, (long long)oh, (long long)ow);
        }
    ot_expect_close(k == 2 ? "maxpool 2/2 forward" : "maxpool 3/2 forward", ps_f32(&c.out), ref, 6 * OH * OW, 1e-30, 0); // exact copies
    free(ref);
  }
  return 0;
}

static int test_maxpool_grad(void) {
  int ks[2][2] = {{2, 2}, {3, 2}};
  for (int t = 0; t < 2; t++) {
    int k = ks[t][0], s = ks[t][1];
    int64_t OH = (7 - k) / s + 1, OW = (8 - k) / s + 1;
    mp_ctx c = {OT_ZEROS(2, 3, OH, OW), ot_zeros(PS_I32, PS_SHAPE(2, 3, OH, OW)), distinct_input(2, 3, 7, 8), k, s};
    ps_tensor w = OT_RAND(-1, 1, 2, 3, OH, OW), din = OT_ZEROS(2, 3, 7, 8);
    TU_OK(mp_fwd(&c));
    TU_OK(ps_maxpool2d_backward(&din, &w, &c.am));
    ot_loss l = {mp_fwd, &c, &c.out, &w};
    // Piecewise linear with no winner change under +-h: rounding only; tolerance 1e-3.
    ot_gradcheck(k == 2 ? "maxpool 2/2 din" : "maxpool 3/2 din", &c.in, &din, 1e-2f, 1e-3, &l);
  }
  return 0;
}

typedef struct {
  ps_tensor out, in;
} ap_ctx;
static ps_status ap_fwd(void *v) {
  ap_ctx *c = v;
  return ps_global_avgpool_forward(&c->out, &c->in);
}

static int test_avgpool_forward(void) {
  ap_ctx c = {OT_ZEROS(3, 4), OT_RAND(-1, 1, 3, 4, 5, 6)};
  TU_OK(ap_fwd(&c));
  double ref[12] = {0};
  for (int pl = 0; pl < 12; pl++)
    for (int i = 0; i < 30; i++) ref[pl] += ps_f32(&c.in)[pl * 30 + i] / 30.0;
  ot_expect_close("global avgpool forward", ps_f32(&c.out), ref, 12, 1e-7, 1e-6);
  return 0;
}

static int test_avgpool_grad(void) {
  ap_ctx c = {OT_ZEROS(3, 4), OT_RAND(-1, 1, 3, 4, 5, 6)};
  ps_tensor w = OT_RAND(-1, 1, 3, 4), din = OT_ZEROS(3, 4, 5, 6);
  TU_OK(ps_global_avgpool_backward(&din, &w));
  ot_loss l = {ap_fwd, &c, &c.out, &w};
  ot_gradcheck("global avgpool din", &c.in, &din, 1e-2f, 1e-3, &l); // linear: rounding only
  return 0;
}

// ---- batch norm ------------------------------------------------------------------

typedef struct {
  ps_tensor out, mean, rstd, in, gamma, beta;
  double sum[16], sumsq[16];
  int64_t count;
} bn_ctx;
static ps_status bn_fwd(void *v) {
  bn_ctx *c = v;
  PS_TRY(ps_batchnorm_stats(c->sum, c->sumsq, &c->count, &c->in));
  return ps_batchnorm_forward_apply(&c->out, &c->mean, &c->rstd, &c->in, &c->gamma, &c->beta, c->sum, c->sumsq,
                                    c->count, 1e-5f, 0.1f, NULL, NULL);
}

static bn_ctx bn_make(int ndim, const int64_t *shape, float lo, float hi) {
  int64_t C = shape[1];
  bn_ctx c = {.out = ot_zeros(PS_F32, ndim, shape), .mean = OT_ZEROS(C), .rstd = OT_ZEROS(C),
              .in = ot_uniform(lo, hi, ndim, shape), .gamma = OT_RAND(0.5, 1.5, C), .beta = OT_RAND(-1, 1, C)};
  return c;
}

static int test_batchnorm_forward(void) {
  for (int four = 0; four < 2; four++) {
    bn_ctx c = four ? bn_make(PS_SHAPE(4, 3, 5, 6), 1, 4) : bn_make(PS_SHAPE(40, 3), 1, 4);
    int64_t N = c.in.shape[0], C = 3, S = four ? 30 : 1, n = N * C * S;
    ps_tensor rm = OT_RAND(-1, 1, 3), rv = OT_RAND(0.5, 2, 3), rm0 = ot_copy(&rm), rv0 = ot_copy(&rv);
    TU_OK(ps_batchnorm_stats(c.sum, c.sumsq, &c.count, &c.in));
    TU_CHECK(c.count == N * S, "count %lld", (long long)c.count);
    TU_OK(ps_batchnorm_forward_apply(&c.out, &c.mean, &c.rstd, &c.in, &c.gamma, &c.beta, c.sum, c.sumsq, c.count,
                                     1e-5f, 0.1f, &rm, &rv));
    double *ref = malloc((size_t)n * sizeof(double)), mref[3], rmref[3], rvref[3];
    for (int64_t ch = 0; ch < C; ch++) {
      double m = 0, v = 0;
      for (int64_t i = 0; i < N; i++)
        for (int64_t s = 0; s < S; s++) m += ps_f32(&c.in)[(i * C + ch) * S + s] / (double)(N * S);
      for (int64_t i = 0; i < N; i++)
        for (int64_t s = 0; s < S; s++) v += pow(ps_f32(&c.in)[(i * C + ch) * S + s] - m, 2) / (double)(N * S);
      for (int64_t i = 0; i < N; i++)
        for (int64_t s = 0; s < S; s++) {
          int64_t idx = (i * C + ch) * S + s;
          ref[idx] = (ps_f32(&c.in)[idx] - m) / sqrt(v + 1e-5) * ps_f32(&c.gamma)[ch] + ps_f32(&c.beta)[ch];
        }
      mref[ch] = m;
      rmref[ch] = 0.9 * ps_f32(&rm0)[ch] + 0.1 * m;
      rvref[ch] = 0.9 * ps_f32(&rv0)[ch] + 0.1 * v * (double)(N * S) / (double)(N * S - 1); // unbiased
    }
    ot_expect_close(four ? "batchnorm (N,C,H,W) forward" : "batchnorm (N,C) forward", ps_f32(&c.out), ref, n, 1e-5,
                    1e-5);
    ot_expect_close("batchnorm saved mean", ps_f32(&c.mean), mref, 3, 1e-6, 1e-6);
    ot_expect_close("batchnorm running mean", ps_f32(&rm), rmref, 3, 1e-6, 1e-6);
    ot_expect_close("batchnorm running var", ps_f32(&rv), rvref, 3, 1e-6, 1e-6);
    // Eval mode normalizes with the running statistics.
    TU_OK(ps_batchnorm_forward_eval(&c.out, &c.in, &c.gamma, &c.beta, &rm, &rv, 1e-5f));
    for (int64_t i = 0; i < n; i++) {
      int64_t ch = (i / S) % C;
      ref[i] = (ps_f32(&c.in)[i] - ps_f32(&rm)[ch]) / sqrt(ps_f32(&rv)[ch] + 1e-5) * ps_f32(&c.gamma)[ch] +
               ps_f32(&c.beta)[ch];
    }
    ot_expect_close("batchnorm eval forward", ps_f32(&c.out), ref, n, 1e-5, 1e-5);
    free(ref);
  }
  bn_ctx c = bn_make(PS_SHAPE(4, 3, 5), 0, 1);
  TU_CHECK(ps_batchnorm_stats(c.sum, c.sumsq, &c.count, &c.in) == PS_ERR_ARG, "3-d input must fail");
  TU_CHECK(strstr(ps_error_message(), "(N, C) or (N, C, H, W)") != NULL, "message: %s", ps_error_message());
  return 0;
}

static int test_batchnorm_grad(void) {
  for (int four = 0; four < 2; four++) {
    bn_ctx c = four ? bn_make(PS_SHAPE(3, 2, 3, 2), -2, 2) : bn_make(PS_SHAPE(7, 3), -2, 2);
    int64_t C = c.in.shape[1];
    ps_tensor w = ot_uniform(-1, 1, c.in.ndim, c.in.shape), din = ot_zeros(PS_F32, c.in.ndim, c.in.shape);
    ps_tensor dg = OT_ZEROS(C), db = OT_ZEROS(C);
    double sdy[16], sdx[16];
    TU_OK(bn_fwd(&c));
    TU_OK(ps_batchnorm_backward_reduce(sdy, sdx, &w, &c.in, &c.mean, &c.rstd));
    TU_OK(ps_batchnorm_backward_apply(&din, &dg, &db, &w, &c.in, &c.mean, &c.rstd, &c.gamma, sdy, sdx, NULL, NULL,
                                      c.count));
    ot_loss l = {bn_fwd, &c, &c.out, &w};
    // Smooth; 6-7 values per channel with std ~1.1 keep curvature O(1): truncation
    // ~1e-4 relative at h = 1e-2; tolerance 3e-3.
    ot_gradcheck(four ? "batchnorm 4-d din" : "batchnorm 2-d din", &c.in, &din, 1e-2f, 3e-3, &l);
    ot_gradcheck(four ? "batchnorm 4-d dgamma" : "batchnorm 2-d dgamma", &c.gamma, &dg, 1e-2f, 1e-3, &l); // linear
    ot_gradcheck(four ? "batchnorm 4-d dbeta" : "batchnorm 2-d dbeta", &c.beta, &db, 1e-2f, 1e-3, &l);    // linear
  }
  return 0;
}

// SyncBN contract: statistics from two halves of a batch, summed, give the
// single-phase result on each half, forward and backward.
static int test_batchnorm_split(void) {
  const int64_t N = 6, C = 4, H = 3, W = 5, half = N / 2 * C * H * W;
  bn_ctx full = bn_make(PS_SHAPE(N, C, H, W), -1, 3);
  ps_tensor dy = OT_RAND(-1, 1, N, C, H, W), din = OT_ZEROS(N, C, H, W), dg = OT_ZEROS(C), db = OT_ZEROS(C);
  double sdy[4], sdx[4];
  TU_OK(bn_fwd(&full));
  TU_OK(ps_batchnorm_backward_reduce(sdy, sdx, &dy, &full.in, &full.mean, &full.rstd));
  TU_OK(ps_batchnorm_backward_apply(&din, &dg, &db, &dy, &full.in, &full.mean, &full.rstd, &full.gamma, sdy, sdx,
                                    NULL, NULL, full.count));

  ps_tensor x[2], y[2], g[2], dx[2], mean = OT_ZEROS(C), rstd = OT_ZEROS(C), dgs = OT_ZEROS(C), dbs = OT_ZEROS(C);
  ps_tensor yall = OT_ZEROS(N, C, H, W), dxall = OT_ZEROS(N, C, H, W);
  double s[2][4], q[2][4], ls_dy[2][4], ls_dx[2][4], gs[4], gq[4], gdy[4], gdx[4];
  int64_t cnt[2];
  for (int h = 0; h < 2; h++) { // phase 1 on each "rank"
    TU_OK(ps_tensor_view(&x[h], &full.in, h * half, PS_SHAPE(N / 2, C, H, W)));
    TU_OK(ps_tensor_view(&y[h], &yall, h * half, PS_SHAPE(N / 2, C, H, W)));
    TU_OK(ps_tensor_view(&g[h], &dy, h * half, PS_SHAPE(N / 2, C, H, W)));
    TU_OK(ps_tensor_view(&dx[h], &dxall, h * half, PS_SHAPE(N / 2, C, H, W)));
    TU_OK(ps_batchnorm_stats(s[h], q[h], &cnt[h], &x[h]));
  }
  for (int c = 0; c < C; c++) { // the "all-reduce"
    gs[c] = s[0][c] + s[1][c];
    gq[c] = q[0][c] + q[1][c];
  }
  for (int h = 0; h < 2; h++) {
    TU_OK(ps_batchnorm_forward_apply(&y[h], &mean, &rstd, &x[h], &full.gamma, &full.beta, gs, gq, cnt[0] + cnt[1],
                                     1e-5f, 0.1f, NULL, NULL));
    TU_OK(ps_batchnorm_backward_reduce(ls_dy[h], ls_dx[h], &g[h], &x[h], &mean, &rstd));
  }
  for (int c = 0; c < C; c++) {
    gdy[c] = ls_dy[0][c] + ls_dy[1][c];
    gdx[c] = ls_dx[0][c] + ls_dx[1][c];
  }
  for (int h = 0; h < 2; h++) // parameter gradients from local sums: summing them over ranks gives the global
    TU_OK(ps_batchnorm_backward_apply(&dx[h], &dgs, &dbs, &g[h], &x[h], &mean, &rstd, &full.gamma, gdy, gdx, ls_dy[h],
                                      ls_dx[h], cnt[0] + cnt[1]));
  // Same arithmetic up to double summation order: agreement to float rounding.
  double e;
  e = ps_tu_rel_err(ps_f32(&yall), ps_f32(&full.out), N * C * H * W);
  printf("  split vs single: out %.2e", e);
  TU_CHECK(e < 1e-6, "split-phase forward differs: %.2e", e);
  e = ps_tu_rel_err(ps_f32(&dxall), ps_f32(&din), N * C * H * W);
  printf(", din %.2e", e);
  TU_CHECK(e < 1e-6, "split-phase din differs: %.2e", e);
  e = ps_tu_rel_err(ps_f32(&dgs), ps_f32(&dg), C);
  printf(", dgamma %.2e", e);
  TU_CHECK(e < 1e-6, "split-phase dgamma differs: %.2e", e);
  e = ps_tu_rel_err(ps_f32(&dbs), ps_f32(&db), C);
  printf(", dbeta %.2e\n", e);
  TU_CHECK(e < 1e-6, "split-phase dbeta differs: %.2e", e);
  TU_CHECK(ps_tu_rel_err(ps_f32(&mean), ps_f32(&full.mean), C) < 1e-7, "saved mean differs");
  return 0;
}

// ---- dropout ---------------------------------------------------------------------

enum { DR = 64, DD = 1000 }; // 64000 elements: above the OpenMP threshold
typedef struct {
  ps_tensor out, mask, in;
  float p;
  uint64_t seed, streams[DR];
} dr_ctx;
static ps_status dr_fwd(void *v) {
  dr_ctx *c = v;
  return ps_dropout_forward(&c->out, &c->mask, &c->in, c->p, c->seed, c->streams);
}

static dr_ctx dr_make(int64_t R, int64_t D, float p) {
  dr_ctx c = {.out = OT_ZEROS(R, D), .mask = ot_zeros(PS_U8, PS_SHAPE(R, D)), .in = OT_RAND(-1, 1, R, D), .p = p,
              .seed = ot_seed};
  for (int64_t r = 0; r < R; r++) c.streams[r] = ps_rng_stream(PS_RNG_DROPOUT, 7 /*step*/, 1000 + (uint64_t)r, 3);
  return c;
}

static int test_dropout_forward(void) {
  dr_ctx c = dr_make(DR, DD, 0.3f);
  TU_OK(dr_fwd(&c));
  int64_t dropped = 0, bad = 0;
  for (int64_t r = 0; r < DR; r++) {
    ps_rng g = ps_rng_make(c.seed, c.streams[r]);
    for (int64_t j = 0; j < DD; j++) {
      int64_t i = r * DD + j;
      uint8_t keep = ps_rng_uniform(&g, (uint64_t)j) >= c.p; // the documented definition
      dropped += !keep;
      bad += ps_u8(&c.mask)[i] != keep || ps_f32(&c.out)[i] != (keep ? ps_f32(&c.in)[i] * (1.0f / 0.7f) : 0.0f);
    }
  }
  TU_CHECK(bad == 0, "%lld elements differ from mask = (uniform(seed, stream_r, j) >= p), out = x / (1 - p)",
           (long long)bad);
  // Binomial(64000, 0.3): sd = 116; 5 sd = 580.
  double expect = 0.3 * DR * DD;
  printf("  dropped %lld of %d (expected %.0f +- 580)\n", (long long)dropped, DR * DD, expect);
  TU_CHECK(fabs((double)dropped - expect) < 580, "dropped %lld, expected %.0f", (long long)dropped, expect);
  // p = 0 is the identity; p = 1 is refused.
  dr_ctx z = dr_make(4, 10, 0.0f);
  TU_OK(dr_fwd(&z));
  TU_CHECK(!memcmp(z.out.data, z.in.data, 40 * sizeof(float)), "p = 0 must copy the input");
  z.p = 1.0f;
  TU_CHECK(dr_fwd(&z) == PS_ERR_ARG, "p = 1 must fail");
  TU_CHECK(strstr(ps_error_message(), "outside [0, 1)") != NULL, "message: %s", ps_error_message());
  return 0;
}

// The mask depends only on (seed, row stream): reversing the row order (with
// the streams) and changing the thread count give identical rows.
static int test_dropout_streams(void) {
  dr_ctx a = dr_make(DR, DD, 0.5f), b = dr_make(DR, DD, 0.5f);
  for (int64_t r = 0; r < DR; r++) {
    memcpy(ps_f32(&b.in) + r * DD, ps_f32(&a.in) + (DR - 1 - r) * DD, DD * sizeof(float));
    b.streams[r] = a.streams[DR - 1 - r];
  }
  ps_ops_set_threads(1);
  TU_OK(dr_fwd(&a));
  ps_ops_set_threads(2);
  TU_OK(dr_fwd(&b));
  ps_ops_set_threads(1);
  int64_t diff = 0;
  for (int64_t r = 0; r < DR; r++)
    diff += memcmp(ps_u8(&a.mask) + r * DD, ps_u8(&b.mask) + (DR - 1 - r) * DD, DD) != 0 ||
            memcmp(ps_f32(&a.out) + r * DD, ps_f32(&b.out) + (DR - 1 - r) * DD, DD * sizeof(float)) != 0;
  TU_CHECK(diff == 0, "%lld rows changed with row order / thread count", (long long)diff);
  // A sub-batch (rows 10..19 alone) reproduces the same rows: what a rank with part of the batch computes.
  dr_ctx s = dr_make(10, DD, 0.5f);
  memcpy(ps_f32(&s.in), ps_f32(&a.in) + 10 * DD, 10 * DD * sizeof(float));
  memcpy(s.streams, a.streams + 10, 10 * sizeof(uint64_t));
  TU_OK(dr_fwd(&s));
  TU_CHECK(!memcmp(ps_u8(&s.mask), ps_u8(&a.mask) + 10 * DD, 10 * DD), "sub-batch masks differ");
  // Another seed gives another mask.
  b = a;
  b.seed = a.seed + 1;
  b.out = OT_ZEROS(DR, DD);
  b.mask = ot_zeros(PS_U8, PS_SHAPE(DR, DD));
  TU_OK(dr_fwd(&b));
  TU_CHECK(memcmp(ps_u8(&a.mask), ps_u8(&b.mask), DR * DD) != 0, "seed must change the mask");
  return 0;
}

static int test_dropout_grad(void) {
  dr_ctx c = dr_make(6, 9, 0.4f);
  ps_tensor w = OT_RAND(-1, 1, 6, 9), din = OT_ZEROS(6, 9);
  TU_OK(dr_fwd(&c));
  TU_OK(ps_dropout_backward(&din, &w, &c.mask, c.p));
  ot_loss l = {dr_fwd, &c, &c.out, &w};
  // For a fixed (seed, streams) the mask is fixed, so the op is linear: rounding only.
  ot_gradcheck("dropout din", &c.in, &din, 1e-2f, 1e-3, &l);
  return 0;
}

static const ot_case cases[] = {
    {"tensor_conv_forward", test_conv_forward},
    {"tensor_conv_grad", test_conv_grad},
    {"tensor_conv_threads", test_conv_threads},
    {"tensor_conv_kernels", test_conv_kernels},
    {"tensor_conv_direct", test_conv_direct},
    {"tensor_maxpool_forward", test_maxpool_forward},
    {"tensor_maxpool_grad", test_maxpool_grad},
    {"tensor_avgpool_forward", test_avgpool_forward},
    {"tensor_avgpool_grad", test_avgpool_grad},
    {"tensor_batchnorm_forward", test_batchnorm_forward},
    {"tensor_batchnorm_grad", test_batchnorm_grad},
    {"tensor_batchnorm_split", test_batchnorm_split},
    {"tensor_dropout_forward", test_dropout_forward},
    {"tensor_dropout_streams", test_dropout_streams},
    {"tensor_dropout_grad", test_dropout_grad},
    {NULL, NULL},
};

int main(int argc, char **argv) { return ot_main(argc, argv, cases); }
