// Dense CPU ops: GEMM, linear, elementwise, activations, softmax/log-sum-exp,
// reductions, layer norm. Forward against naive double loops; backward
// against central differences of loss = sum(w * out).
//
// Tolerances: inputs are O(1); float forward passes carry ~1e-7 relative
// rounding per value, so central differences with step h see noise of about
// 1e-7 * |loss| / h on top of O(h^2) truncation. With h = 1e-2 (or 1e-3 for
// linear ops, which have no truncation error) both are < 1e-3 of the gradient
// norm; the tolerances below leave a factor of ~5-10 over what was measured.
#include "opstest.h"

// ---- GEMM ------------------------------------------------------------------------

static void gemm_ref(double *out, const float *a, bool ta, const float *b, bool tb, const float *bias, float alpha,
                     float beta, const float *out0, int64_t M, int64_t N, int64_t K) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++) s += (double)(ta ? a[k * M + i] : a[i * K + k]) * (tb ? b[j * K + k] : b[k * N + j]);
      out[i * N + j] = alpha * s + (beta != 0.0f ? beta * (double)out0[i * N + j] : 0.0) + (bias ? bias[j] : 0.0);
    }
}

static int test_gemm_forward(void) {
  const int64_t M = 13, N = 9, K = 17;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int variant = 0; variant < 3; variant++) { // plain; bias; bias + alpha/beta
        ps_tensor a = ta ? OT_RAND(-1, 1, K, M) : OT_RAND(-1, 1, M, K);
        ps_tensor b = tb ? OT_RAND(-1, 1, N, K) : OT_RAND(-1, 1, K, N);
        ps_tensor bias = OT_RAND(-1, 1, N), out = OT_RAND(-1, 1, M, N), out0 = ot_copy(&out);
        float alpha = variant == 2 ? 0.5f : 1.0f, beta = variant == 2 ? -2.0f : 0.0f;
        const ps_tensor *bp = variant ? &bias : NULL;
        TU_OK(ps_gemm(&out, &a, ta, &b, tb, bp, alpha, beta));
        double ref[13 * 9];
        gemm_ref(ref, ps_f32(&a), ta, ps_f32(&b), tb, bp ? ps_f32(bp) : NULL, alpha, beta, ps_f32(&out0), M, N, K);
        char what[64];
        snprintf(what, sizeof what, "gemm ta=%d tb=%d variant=%d", ta, tb, variant);
        // sgemm sums K=17 products of |.|<1 in float: error < K * 2^-24 * sum|terms| ~ 1e-6.
        ot_expect_close(what, ps_f32(&out), ref, M * N, 1e-5, 1e-5);
      }
  // Large enough (> 4 MFLOP) to be split across 2 OpenMP threads, by rows (M >= N) and by columns.
  ps_ops_set_threads(2);
  const int64_t big[2][3] = {{200, 37, 300}, {37, 200, 300}};
  for (int s = 0; s < 2; s++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        int64_t m = big[s][0], n = big[s][1], k = big[s][2];
        ps_tensor a = ta ? OT_RAND(-1, 1, k, m) : OT_RAND(-1, 1, m, k);
        ps_tensor b = tb ? OT_RAND(-1, 1, n, k) : OT_RAND(-1, 1, k, n);
        ps_tensor bias = OT_RAND(-1, 1, n), out = OT_RAND(-1, 1, m, n), out0 = ot_copy(&out);
        TU_OK(ps_gemm(&out, &a, ta, &b, tb, &bias, 0.5f, 0.25f));
        double *ref = malloc((size_t)(m * n) * sizeof(double));
        gemm_ref(ref, ps_f32(&a), ta, ps_f32(&b), tb, ps_f32(&bias), 0.5f, 0.25f, ps_f32(&out0), m, n, k);
        char what[64];
        snprintf(what, sizeof what, "gemm %s split ta=%d tb=%d, 2 threads", s ? "column" : "row", ta, tb);
        ot_expect_close(what, ps_f32(&out), ref, m * n, 1e-4, 1e-5); // K = 300: error ~ sqrt(K) ulps of sum|ab|
        free(ref);
      }
  ps_ops_set_threads(1);
  // A batched (B, T, K) input is a (B*T, K) matrix.
  ps_tensor a3 = OT_RAND(-1, 1, 2, 3, 4), b2 = OT_RAND(-1, 1, 4, 5), o3 = OT_ZEROS(2, 3, 5);
  TU_OK(ps_gemm(&o3, &a3, false, &b2, false, NULL, 1, 0));
  double r3[30];
  gemm_ref(r3, ps_f32(&a3), false, ps_f32(&b2), false, NULL, 1, 0, NULL, 6, 5, 4);
  ot_expect_close("gemm 3-d input as a matrix", ps_f32(&o3), r3, 30, 1e-5, 1e-5);
  // Bad shapes name the problem.
  ps_tensor bad = OT_ZEROS(5, 4);
  TU_CHECK(ps_gemm(&bad, &a3, false, &a3, false, NULL, 1, 0) == PS_ERR_ARG, "inner-dim mismatch must fail");
  TU_CHECK(strstr(ps_error_message(), "inner dimensions differ") != NULL, "message: %s", ps_error_message());
  TU_CHECK(ps_gemm(&bad, &a3, false, &b2, false, NULL, 1, 0) == PS_ERR_ARG, "wrong out shape must fail");
  TU_CHECK(strstr(ps_error_message(), "expected (6, 5)") != NULL, "message: %s", ps_error_message());
  // A failing call writes nothing: every argument is checked before the first store.
  ps_tensor o35 = OT_RAND(-1, 1, 6, 5), o35c = ot_copy(&o35), bias4 = OT_ZEROS(4);
  TU_CHECK(ps_gemm(&o35, &a3, false, &b2, false, &bias4, 1, 0) == PS_ERR_ARG, "wrong bias size must fail");
  TU_CHECK(strstr(ps_error_message(), "bias") != NULL, "message: %s", ps_error_message());
  TU_CHECK(!memcmp(o35.data, o35c.data, 30 * sizeof(float)), "out modified by a failing call");
  return 0;
}

// ---- linear ----------------------------------------------------------------------

typedef struct {
  ps_tensor out, in, w, b;
} lin_ctx;
static ps_status lin_fwd(void *p) {
  lin_ctx *c = p;
  return ps_linear_forward(&c->out, &c->in, &c->w, &c->b);
}

static int test_linear_forward(void) {
  lin_ctx c = {OT_ZEROS(6, 5), OT_RAND(-1, 1, 6, 7), OT_RAND(-1, 1, 5, 7), OT_RAND(-1, 1, 5)};
  TU_OK(lin_fwd(&c));
  double ref[30];
  gemm_ref(ref, ps_f32(&c.in), false, ps_f32(&c.w), true, ps_f32(&c.b), 1, 0, NULL, 6, 5, 7);
  ot_expect_close("linear forward", ps_f32(&c.out), ref, 30, 1e-5, 1e-5);
  ps_tensor wbad = OT_ZEROS(5, 6);
  TU_CHECK(ps_linear_forward(&c.out, &c.in, &wbad, &c.b) == PS_ERR_ARG, "Din mismatch must fail");
  TU_CHECK(strstr(ps_error_message(), "Din=6") != NULL, "message: %s", ps_error_message());
  return 0;
}

static int test_linear_grad(void) {
  lin_ctx c = {OT_ZEROS(6, 5), OT_RAND(-1, 1, 6, 7), OT_RAND(-1, 1, 5, 7), OT_RAND(-1, 1, 5)};
  ps_tensor w = OT_RAND(-1, 1, 6, 5);
  // Gradients start at 1 so the check also proves backward accumulates (+=).
  ps_tensor din = OT_ZEROS(6, 7), dw = OT_ZEROS(5, 7), db = OT_ZEROS(5);
  for (int64_t i = 0; i < 42; i++) ps_f32(&din)[i] = 1;
  for (int64_t i = 0; i < 35; i++) ps_f32(&dw)[i] = 1;
  for (int64_t i = 0; i < 5; i++) ps_f32(&db)[i] = 1;
  TU_OK(ps_linear_backward(&din, &dw, &db, &w, &c.in, &c.w));
  for (int64_t i = 0; i < 42; i++) ps_f32(&din)[i] -= 1;
  for (int64_t i = 0; i < 35; i++) ps_f32(&dw)[i] -= 1;
  for (int64_t i = 0; i < 5; i++) ps_f32(&db)[i] -= 1;
  ot_loss l = {lin_fwd, &c, &c.out, &w};
  // Linear in each input: no truncation error, only float rounding (~1e-5 at h = 1e-2).
  ot_gradcheck("linear din", &c.in, &din, 1e-2f, 1e-3, &l);
  ot_gradcheck("linear dw", &c.w, &dw, 1e-2f, 1e-3, &l);
  ot_gradcheck("linear db", &c.b, &db, 1e-2f, 1e-3, &l);
  return 0;
}

// ---- elementwise -----------------------------------------------------------------

typedef struct {
  int which; // 0 add, 1 mul, 2 scale, 3 add_rowvec
  ps_tensor out, a, b, v;
  float s;
} ew_ctx;
static ps_status ew_fwd(void *p) {
  ew_ctx *c = p;
  switch (c->which) {
  case 0: return ps_add_forward(&c->out, &c->a, &c->b);
  case 1: return ps_mul_forward(&c->out, &c->a, &c->b);
  case 2: return ps_scale_forward(&c->out, &c->a, c->s);
  default: return ps_add_rowvec_forward(&c->out, &c->a, &c->v);
  }
}

static int test_elementwise_forward(void) {
  ew_ctx c = {0, OT_ZEROS(4, 6), OT_RAND(-2, 2, 4, 6), OT_RAND(-2, 2, 4, 6), OT_RAND(-2, 2, 6), -1.5f};
  const float *a = ps_f32(&c.a), *b = ps_f32(&c.b), *v = ps_f32(&c.v);
  double ref[24];
  for (c.which = 0; c.which < 4; c.which++) {
    TU_OK(ew_fwd(&c));
    for (int i = 0; i < 24; i++)
      ref[i] = c.which == 0 ? (double)a[i] + b[i] : c.which == 1 ? (double)a[i] * b[i] : c.which == 2 ? c.s * (double)a[i]
                                                                                          : (double)a[i] + v[i % 6];
    static const char *names[] = {"add forward", "mul forward", "scale forward", "add_rowvec forward"};
    ot_expect_close(names[c.which], ps_f32(&c.out), ref, 24, 1e-6, 1e-6); // one rounding each
  }
  ps_tensor small = OT_ZEROS(5);
  TU_CHECK(ps_add_forward(&c.out, &c.a, &small) == PS_ERR_ARG, "size mismatch must fail");
  TU_CHECK(strstr(ps_error_message(), "expected 24 elements") != NULL, "message: %s", ps_error_message());
  return 0;
}

static int test_elementwise_grad(void) {
  ew_ctx c = {0, OT_ZEROS(4, 6), OT_RAND(-2, 2, 4, 6), OT_RAND(-2, 2, 4, 6), OT_RAND(-2, 2, 6), -1.5f};
  ps_tensor w = OT_RAND(-1, 1, 4, 6);
  ot_loss l = {ew_fwd, &c, &c.out, &w};
  // All four are (bi)linear: FD error is rounding only (~1e-6 at h = 1e-2).
  const double tol = 1e-3;
  ps_tensor da = OT_ZEROS(4, 6), db = OT_ZEROS(4, 6), dv = OT_ZEROS(6);
  c.which = 0;
  TU_OK(ps_add_backward(&da, &db, &w));
  ot_gradcheck("add da", &c.a, &da, 1e-2f, tol, &l);
  ot_gradcheck("add db", &c.b, &db, 1e-2f, tol, &l);
  c.which = 1;
  TU_OK(ps_tensor_zero(&da));
  TU_OK(ps_tensor_zero(&db));
  TU_OK(ps_mul_backward(&da, &db, &w, &c.a, &c.b));
  ot_gradcheck("mul da", &c.a, &da, 1e-2f, tol, &l);
  ot_gradcheck("mul db", &c.b, &db, 1e-2f, tol, &l);
  c.which = 2;
  TU_OK(ps_tensor_zero(&da));
  TU_OK(ps_scale_backward(&da, &w, c.s));
  ot_gradcheck("scale din", &c.a, &da, 1e-2f, tol, &l);
  c.which = 3;
  TU_OK(ps_tensor_zero(&da));
  TU_OK(ps_add_rowvec_backward(&da, &dv, &w));
  ot_gradcheck("add_rowvec din", &c.a, &da, 1e-2f, tol, &l);
  ot_gradcheck("add_rowvec dv", &c.v, &dv, 1e-2f, tol, &l);
  return 0;
}

// ---- activations -----------------------------------------------------------------

static double act_ref(ps_activation a, double x) {
  switch (a) {
  case PS_ACT_RELU: return x > 0 ? x : 0;
  case PS_ACT_GELU: return 0.5 * x * (1 + tanh(sqrt(2 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
  case PS_ACT_SIGMOID: return 1 / (1 + exp(-x));
  default: return tanh(x);
  }
}

typedef struct {
  ps_tensor out, in;
  ps_activation act;
} act_ctx;
static ps_status act_fwd(void *p) {
  act_ctx *c = p;
  return ps_act_forward(&c->out, &c->in, c->act);
}

static int test_act_forward(void) {
  // Wide range, including values where a naive sigmoid would overflow exp.
  act_ctx c = {OT_ZEROS(64), OT_RAND(-6, 6, 64), PS_ACT_RELU};
  ps_f32(&c.in)[0] = -100.0f;
  ps_f32(&c.in)[1] = 100.0f;
  double ref[64];
  for (c.act = 0; c.act < PS_ACT_COUNT; c.act++) {
    TU_OK(act_fwd(&c));
    for (int i = 0; i < 64; i++) ref[i] = act_ref(c.act, ps_f32(&c.in)[i]);
    char what[64];
    snprintf(what, sizeof what, "%s forward", ps_activation_name(c.act));
    ot_expect_close(what, ps_f32(&c.out), ref, 64, 1e-6, 1e-5); // a few float ulps of libm
  }
  TU_CHECK(ps_act_forward(&c.out, &c.in, PS_ACT_COUNT) == PS_ERR_ARG, "unknown activation must fail");
  return 0;
}

static int test_act_grad(void) {
  const float h = 1e-2f;
  for (ps_activation a = 0; a < PS_ACT_COUNT; a++) {
    act_ctx c = {OT_ZEROS(5, 8), OT_RAND(-3, 3, 5, 8), a};
    // ReLU has a kink at 0: keep |x| > 2h so x +- h never crosses it.
    if (a == PS_ACT_RELU) ot_away_from_zero(&c.in, 2.5f * h);
    ps_tensor w = OT_RAND(-1, 1, 5, 8), din = OT_ZEROS(5, 8), din2 = OT_ZEROS(5, 8);
    TU_OK(act_fwd(&c));
    TU_OK(ps_act_backward(&din, &w, &c.in, &c.out, a));
    ot_loss l = {act_fwd, &c, &c.out, &w};
    char what[64];
    snprintf(what, sizeof what, "%s din", ps_activation_name(a));
    // Smooth (or piecewise linear) on O(1) inputs: O(h^2) truncation ~1e-4 relative; tolerance 2e-3.
    ot_gradcheck(what, &c.in, &din, h, 2e-3, &l);
    // The other formulation (input-only or output-only) agrees with the first.
    if (a != PS_ACT_GELU) {
      TU_OK(ps_act_backward(&din2, &w, a == PS_ACT_RELU ? NULL : &c.in, a == PS_ACT_RELU ? &c.out : NULL, a));
      double e = ps_tu_rel_err(ps_f32(&din2), ps_f32(&din), 40);
      TU_CHECK(e < 1e-5, "%s: backward from input vs from output differ by %.2e", ps_activation_name(a), e);
    }
  }
  return 0;
}

// ---- softmax / log-sum-exp -------------------------------------------------------

typedef struct {
  ps_tensor out, in, mask;
  bool use_mask;
} sm_ctx;
static ps_status sm_fwd(void *p) {
  sm_ctx *c = p;
  return ps_softmax_forward(&c->out, &c->in, c->use_mask ? &c->mask : NULL);
}
static ps_status lse_fwd(void *p) {
  sm_ctx *c = p;
  return ps_logsumexp_forward(&c->out, &c->in, c->use_mask ? &c->mask : NULL);
}

// Mask pattern for (R, L) = (5, 7): row 3 fully masked, others mixed.
static ps_tensor make_mask(void) {
  ps_tensor m = ot_zeros(PS_U8, PS_SHAPE(5, 7));
  for (int r = 0; r < 5; r++)
    for (int j = 0; j < 7; j++) ps_u8(&m)[r * 7 + j] = r == 3 ? 0 : (r == 0 || (j + r) % 3 != 0);
  return m;
}

static int test_softmax_forward(void) {
  sm_ctx c = {OT_ZEROS(5, 7), OT_RAND(-4, 4, 5, 7), make_mask(), true};
  ps_f32(&c.in)[1] = 80.0f; // would overflow expf without the max shift
  TU_OK(sm_fwd(&c));
  double ref[35];
  for (int r = 0; r < 5; r++) {
    double mx = -INFINITY, s = 0;
    for (int j = 0; j < 7; j++)
      if (ps_u8(&c.mask)[r * 7 + j]) mx = fmax(mx, ps_f32(&c.in)[r * 7 + j]);
    for (int j = 0; j < 7; j++) s += ps_u8(&c.mask)[r * 7 + j] ? exp(ps_f32(&c.in)[r * 7 + j] - mx) : 0;
    for (int j = 0; j < 7; j++) ref[r * 7 + j] = ps_u8(&c.mask)[r * 7 + j] ? exp(ps_f32(&c.in)[r * 7 + j] - mx) / s : 0;
  }
  ot_expect_close("masked softmax forward", ps_f32(&c.out), ref, 35, 1e-7, 1e-5);
  for (int i = 0; i < 35; i++)
    if (!ps_u8(&c.mask)[i]) TU_CHECK(ps_f32(&c.out)[i] == 0.0f, "masked entry %d has probability %g", i, ps_f32(&c.out)[i]);
  return 0;
}

static int test_logsumexp_forward(void) {
  sm_ctx c = {OT_ZEROS(5, 7), OT_RAND(-4, 4, 5, 7), make_mask(), true};
  ps_f32(&c.in)[1] = 80.0f; // exp(80) overflows float: the running max must shift it
  // Log-sum-exp over masked rows; the fully masked row is log(0) = -inf.
  ps_tensor lse = OT_ZEROS(5);
  TU_OK(ps_logsumexp_forward(&lse, &c.in, &c.mask));
  double lref[5];
  for (int r = 0; r < 5; r++) {
    double s = 0;
    for (int j = 0; j < 7; j++) s += ps_u8(&c.mask)[r * 7 + j] ? exp((double)ps_f32(&c.in)[r * 7 + j]) : 0;
    lref[r] = log(s);
  }
  TU_CHECK(isinf(ps_f32(&lse)[3]) && ps_f32(&lse)[3] < 0, "empty row: lse %g, expected -inf", ps_f32(&lse)[3]);
  lref[3] = 0;
  ps_f32(&lse)[3] = 0;
  ot_expect_close("masked logsumexp forward", ps_f32(&lse), lref, 5, 1e-6, 1e-6);
  return 0;
}

static int test_softmax_grad(void) {
  for (int um = 0; um < 2; um++) {
    sm_ctx c = {OT_ZEROS(5, 7), OT_RAND(-2, 2, 5, 7), make_mask(), um};
    ps_tensor w = OT_RAND(-1, 1, 5, 7), din = OT_ZEROS(5, 7);
    TU_OK(sm_fwd(&c));
    TU_OK(ps_softmax_backward(&din, &w, &c.out));
    ot_loss l = {sm_fwd, &c, &c.out, &w};
    // Smooth, O(1) inputs: truncation ~h^2 = 1e-4 relative; tolerance 2e-3.
    ot_gradcheck(um ? "softmax din (masked)" : "softmax din", &c.in, &din, 1e-2f, 2e-3, &l);
    if (um)
      for (int i = 0; i < 35; i++)
        if (!ps_u8(&c.mask)[i]) TU_CHECK(ps_f32(&din)[i] == 0.0f, "masked entry %d has gradient %g", i, ps_f32(&din)[i]);
  }
  return 0;
}

static int test_logsumexp_grad(void) {
  for (int um = 0; um < 2; um++) {
    sm_ctx c = {OT_ZEROS(5), OT_RAND(-2, 2, 5, 7), make_mask(), um};
    ps_tensor w = OT_RAND(-1, 1, 5), din = OT_ZEROS(5, 7);
    TU_OK(lse_fwd(&c));
    if (um) ps_f32(&w)[3] = 0; // the empty row's output is -inf; keep it out of the loss
    TU_OK(ps_logsumexp_backward(&din, &w, &c.in, &c.out, um ? &c.mask : NULL));
    ot_loss l = {lse_fwd, &c, &c.out, &w};
    // Smooth: truncation ~h^2 = 1e-4 relative; tolerance 2e-3.
    if (!um) ot_gradcheck("logsumexp din", &c.in, &din, 1e-2f, 2e-3, &l);
    else {
      // sum(w * out) with out[3] = -inf is NaN even for w = 0: check rows 0..2 on a copy.
      sm_ctx c3 = {OT_ZEROS(3), OT_ZEROS(3, 7), ot_zeros(PS_U8, PS_SHAPE(3, 7)), true};
      memcpy(ps_f32(&c3.in), ps_f32(&c.in), 21 * sizeof(float));
      memcpy(c3.mask.data, c.mask.data, 21);
      ps_tensor w3 = OT_ZEROS(3), d3 = OT_ZEROS(3, 7);
      memcpy(ps_f32(&w3), ps_f32(&w), 3 * sizeof(float));
      TU_OK(lse_fwd(&c3));
      TU_OK(ps_logsumexp_backward(&d3, &w3, &c3.in, &c3.out, &c3.mask));
      ot_loss l3 = {lse_fwd, &c3, &c3.out, &w3};
      ot_gradcheck("logsumexp din (masked)", &c3.in, &d3, 1e-2f, 2e-3, &l3);
      for (int i = 0; i < 35; i++)
        if (!ps_u8(&c.mask)[i]) TU_CHECK(ps_f32(&din)[i] == 0.0f, "masked entry %d has gradient %g", i, ps_f32(&din)[i]);
    }
  }
  return 0;
}

// ---- reductions ------------------------------------------------------------------

typedef struct {
  ps_tensor out, in;
  int axis;
  ps_reduce op;
} red_ctx;
static ps_status red_fwd(void *p) {
  red_ctx *c = p;
  return ps_reduce_forward(&c->out, &c->in, c->axis, c->op);
}

static int test_reduce_forward(void) {
  const int64_t d[3] = {3, 4, 300}; // inner 300 > the 256-wide accumulator chunk
  ps_tensor in = OT_RAND(-1, 1, 3, 4, 300);
  for (int axis = 0; axis < 3; axis++)
    for (ps_reduce op = 0; op < PS_REDUCE_COUNT; op++) {
      int64_t O = 1, A = d[axis], I = 1;
      for (int i = 0; i < axis; i++) O *= d[i];
      for (int i = axis + 1; i < 3; i++) I *= d[i];
      ps_tensor out = ot_zeros(PS_F32, PS_SHAPE(O * I));
      TU_OK(ps_reduce_forward(&out, &in, axis, op));
      double *ref = calloc((size_t)(O * I), sizeof(double));
      for (int64_t o = 0; o < O; o++)
        for (int64_t a = 0; a < A; a++)
          for (int64_t i = 0; i < I; i++) ref[o * I + i] += ps_f32(&in)[(o * A + a) * I + i] / (op == PS_REDUCE_MEAN ? (double)A : 1.0);
      char what[64];
      snprintf(what, sizeof what, "reduce %s axis %d", ps_reduce_name(op), axis);
      ot_expect_close(what, ps_f32(&out), ref, O * I, 1e-6, 1e-6); // double accumulation, one rounding
      free(ref);
    }
  ps_tensor out = OT_ZEROS(4);
  TU_CHECK(ps_reduce_forward(&out, &in, 3, PS_REDUCE_SUM) == PS_ERR_ARG, "axis out of range must fail");
  TU_CHECK(ps_reduce_forward(&out, &in, 1, PS_REDUCE_SUM) == PS_ERR_ARG, "wrong out size must fail");
  return 0;
}

static int test_reduce_grad(void) {
  for (int axis = 0; axis < 3; axis++)
    for (ps_reduce op = 0; op < PS_REDUCE_COUNT; op++) {
      const int64_t d[3] = {3, 4, 5};
      int64_t on = 60 / d[axis];
      red_ctx c = {ot_zeros(PS_F32, PS_SHAPE(on)), OT_RAND(-1, 1, 3, 4, 5), axis, op};
      ps_tensor w = ot_uniform(-1, 1, PS_SHAPE(on)), din = OT_ZEROS(3, 4, 5);
      TU_OK(ps_reduce_backward(&din, &w, axis, op));
      ot_loss l = {red_fwd, &c, &c.out, &w};
      char what[64];
      snprintf(what, sizeof what, "reduce %s axis %d din", ps_reduce_name(op), axis);
      ot_gradcheck(what, &c.in, &din, 1e-2f, 1e-3, &l); // linear: rounding only
    }
  return 0;
}

// ---- layer norm ------------------------------------------------------------------

typedef struct {
  ps_tensor out, mean, rstd, in, gamma, beta;
} ln_ctx;
static ps_status ln_fwd(void *p) {
  ln_ctx *c = p;
  return ps_layernorm_forward(&c->out, &c->mean, &c->rstd, &c->in, &c->gamma, &c->beta, 1e-5f);
}

static int test_layernorm_forward(void) {
  ln_ctx c = {OT_ZEROS(4, 300), OT_ZEROS(4), OT_ZEROS(4), OT_RAND(-2, 3, 4, 300), OT_RAND(0.5, 1.5, 300),
              OT_RAND(-1, 1, 300)};
  TU_OK(ln_fwd(&c));
  double *ref = calloc(1200, sizeof(double));
  for (int r = 0; r < 4; r++) {
    double m = 0, v = 0;
    for (int j = 0; j < 300; j++) m += ps_f32(&c.in)[r * 300 + j] / 300.0;
    for (int j = 0; j < 300; j++) v += pow(ps_f32(&c.in)[r * 300 + j] - m, 2) / 300.0;
    for (int j = 0; j < 300; j++)
      ref[r * 300 + j] = (ps_f32(&c.in)[r * 300 + j] - m) / sqrt(v + 1e-5) * ps_f32(&c.gamma)[j] + ps_f32(&c.beta)[j];
  }
  ot_expect_close("layernorm forward", ps_f32(&c.out), ref, 1200, 1e-5, 1e-5);
  free(ref);
  return 0;
}

static int test_layernorm_grad(void) {
  ln_ctx c = {OT_ZEROS(4, 9), OT_ZEROS(4), OT_ZEROS(4), OT_RAND(-2, 2, 4, 9), OT_RAND(0.5, 1.5, 9),
              OT_RAND(-1, 1, 9)};
  ps_tensor w = OT_RAND(-1, 1, 4, 9), din = OT_ZEROS(4, 9), dg = OT_ZEROS(9), db = OT_ZEROS(9);
  TU_OK(ln_fwd(&c));
  TU_OK(ps_layernorm_backward(&din, &dg, &db, &w, &c.in, &c.mean, &c.rstd, &c.gamma));
  ot_loss l = {ln_fwd, &c, &c.out, &w};
  // Smooth with rstd ~ 1: truncation ~h^2 * |x''' | ~ 1e-4 relative; tolerance 3e-3.
  ot_gradcheck("layernorm din", &c.in, &din, 1e-2f, 3e-3, &l);
  ot_gradcheck("layernorm dgamma", &c.gamma, &dg, 1e-2f, 1e-3, &l); // linear in gamma
  ot_gradcheck("layernorm dbeta", &c.beta, &db, 1e-2f, 1e-3, &l);   // linear in beta
  return 0;
}

// ---- devices ---------------------------------------------------------------------

static int test_ops_device(void) {
  ps_tensor a = OT_RAND(-1, 1, 4), out = OT_ZEROS(4);
  ps_tensor ga = a;
  ga.device = PS_CUDA; // a tag only: the op must refuse before touching memory
  ps_tensor gout = out;
  gout.device = PS_CUDA;
  TU_CHECK(ps_act_forward(&gout, &ga, PS_ACT_RELU) == PS_ERR_UNSUPPORTED, "CUDA tensors: unsupported for now");
  TU_CHECK(strstr(ps_error_message(), "CUDA backend") != NULL, "message: %s", ps_error_message());
  TU_CHECK(ps_act_forward(&out, &ga, PS_ACT_RELU) == PS_ERR_ARG, "mixed devices must fail");
  TU_CHECK(strstr(ps_error_message(), "different devices") != NULL, "message: %s", ps_error_message());
  ps_tensor i32 = ot_zeros(PS_I32, PS_SHAPE(4));
  TU_CHECK(ps_act_forward(&out, &i32, PS_ACT_RELU) == PS_ERR_ARG, "wrong dtype must fail");
  TU_CHECK(strstr(ps_error_message(), "expected dtype f32") != NULL, "message: %s", ps_error_message());
  ps_ops_set_threads(1);
  TU_CHECK(ps_ops_get_threads() == 1, "threads %d", ps_ops_get_threads());

  // Every op dispatches on the device tag before touching memory: with all
  // tensors tagged CUDA (over host memory here) each must refuse cleanly.
  ps_tensor g = OT_ZEROS(64), gu8 = ot_zeros(PS_U8, PS_SHAPE(64)), gi = ot_zeros(PS_I32, PS_SHAPE(64));
  g.device = gu8.device = gi.device = PS_CUDA;
  ps_conv2d_params cp = {1, 1, 0, 0};
  double sd[4], sq[4];
  int64_t cnt = 0;
  uint64_t streams[4] = {0};
  ps_status st[] = {
      ps_gemm(&g, &g, false, &g, false, &g, 1, 0),
      ps_linear_forward(&g, &g, &g, &g),
      ps_linear_backward(&g, &g, &g, &g, &g, &g),
      ps_add_forward(&g, &g, &g),
      ps_add_backward(&g, &g, &g),
      ps_mul_forward(&g, &g, &g),
      ps_mul_backward(&g, &g, &g, &g, &g),
      ps_scale_forward(&g, &g, 2),
      ps_scale_backward(&g, &g, 2),
      ps_add_rowvec_forward(&g, &g, &g),
      ps_add_rowvec_backward(&g, &g, &g),
      ps_act_forward(&g, &g, PS_ACT_GELU),
      ps_act_backward(&g, &g, &g, &g, PS_ACT_GELU),
      ps_softmax_forward(&g, &g, &gu8),
      ps_softmax_backward(&g, &g, &g),
      ps_logsumexp_forward(&g, &g, &gu8),
      ps_logsumexp_backward(&g, &g, &g, &g, &gu8),
      ps_reduce_forward(&g, &g, 0, PS_REDUCE_SUM),
      ps_reduce_backward(&g, &g, 0, PS_REDUCE_SUM),
      ps_conv2d_forward(&g, &g, &g, &g, &cp, &g),
      ps_conv2d_backward(&g, &g, &g, &g, &g, &g, &cp, &g),
      ps_maxpool2d_forward(&g, &gi, &g, 2, 2),
      ps_maxpool2d_backward(&g, &g, &gi),
      ps_global_avgpool_forward(&g, &g),
      ps_global_avgpool_backward(&g, &g),
      ps_batchnorm_stats(sd, sq, &cnt, &g),
      ps_batchnorm_forward_apply(&g, &g, &g, &g, &g, &g, sd, sq, 1, 1e-5f, 0.1f, &g, &g),
      ps_batchnorm_forward_eval(&g, &g, &g, &g, &g, &g, 1e-5f),
      ps_batchnorm_backward_reduce(sd, sq, &g, &g, &g, &g),
      ps_batchnorm_backward_apply(&g, &g, &g, &g, &g, &g, &g, &g, sd, sq, NULL, NULL, 1),
      ps_layernorm_forward(&g, &g, &g, &g, &g, &g, 1e-5f),
      ps_layernorm_backward(&g, &g, &g, &g, &g, &g, &g, &g),
      ps_dropout_forward(&g, &gu8, &g, 0.5f, 1, streams),
      ps_dropout_backward(&g, &g, &gu8, 0.5f),
  };
  for (size_t i = 0; i < sizeof st / sizeof st[0]; i++)
    TU_CHECK(st[i] == PS_ERR_UNSUPPORTED, "op #%zu with CUDA tensors returned %s, expected unsupported", i,
             ps_status_name(st[i]));
  printf("  %zu ops refuse CUDA tensors\n", sizeof st / sizeof st[0]);
  return 0;
}

static const ot_case cases[] = {
    {"tensor_gemm_forward", test_gemm_forward},
    {"tensor_linear_forward", test_linear_forward},
    {"tensor_linear_grad", test_linear_grad},
    {"tensor_elementwise_forward", test_elementwise_forward},
    {"tensor_elementwise_grad", test_elementwise_grad},
    {"tensor_act_forward", test_act_forward},
    {"tensor_act_grad", test_act_grad},
    {"tensor_softmax_forward", test_softmax_forward},
    {"tensor_softmax_grad", test_softmax_grad},
    {"tensor_logsumexp_forward", test_logsumexp_forward},
    {"tensor_logsumexp_grad", test_logsumexp_grad},
    {"tensor_reduce_forward", test_reduce_forward},
    {"tensor_reduce_grad", test_reduce_grad},
    {"tensor_layernorm_forward", test_layernorm_forward},
    {"tensor_layernorm_grad", test_layernorm_grad},
    {"tensor_ops_device", test_ops_device},
    {NULL, NULL},
};

int main(int argc, char **argv) { return ot_main(argc, argv, cases); }
