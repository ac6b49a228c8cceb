// CPU elementwise ops and activations. Operands are compared by element count
// (any shape); every backward accumulates (+=) into its gradients.
#include <math.h>

#include "ops_internal.h"

static const char *const ps_activation_names[] = {"relu", "gelu", "sigmoid", "tanh"};
_Static_assert(sizeof ps_activation_names / sizeof ps_activation_names[0] == PS_ACT_COUNT,
               "ps_activation_names must list every ps_activation");

const char *ps_activation_name(ps_activation a) {
  return (a >= 0 && a < PS_ACT_COUNT) ? ps_activation_names[a] : "unknown";
}

#define PAR_FOR _Pragma("omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)") for

ps_status ps_add_forward(ps_tensor *out, const ps_tensor *a, const ps_tensor *b) {
  static const char op[] = "ps_add_forward";
  PS_OPS_CPU(op, out, a, b);
  PS_OPS_CHECK(op, out, PS_F32, -1);
  int64_t n = ps_tensor_numel(out);
  PS_OPS_CHECK(op, a, PS_F32, n);
  PS_OPS_CHECK(op, b, PS_F32, n);
  float *o = ps_f32(out);
  const float *x = ps_f32(a), *y = ps_f32(b);
  PAR_FOR(int64_t i = 0; i < n; i++) o[i] = x[i] + y[i];
  return PS_OK;
}

static void acc_into(float *d, const float *g, int64_t n) { PAR_FOR(int64_t i = 0; i < n; i++) d[i] += g[i]; }

ps_status ps_add_backward(ps_tensor *da, ps_tensor *db, const ps_tensor *dout) {
  static const char op[] = "ps_add_backward";
  PS_OPS_CPU(op, da, db, dout);
  PS_OPS_CHECK(op, dout, PS_F32, -1);
  int64_t n = ps_tensor_numel(dout);
  PS_OPS_CHECK_OPT(op, da, PS_F32, n);
  PS_OPS_CHECK_OPT(op, db, PS_F32, n);
  if (da) acc_into(ps_f32(da), ps_f32(dout), n);
  if (db) acc_into(ps_f32(db), ps_f32(dout), n);
  return PS_OK;
}

ps_status ps_mul_forward(ps_tensor *out, const ps_tensor *a, const ps_tensor *b) {
  static const char op[] = "ps_mul_forward";
  PS_OPS_CPU(op, out, a, b);
  PS_OPS_CHECK(op, out, PS_F32, -1);
  int64_t n = ps_tensor_numel(out);
  PS_OPS_CHECK(op, a, PS_F32, n);
  PS_OPS_CHECK(op, b, PS_F32, n);
  float *o = ps_f32(out);
  const float *x = ps_f32(a), *y = ps_f32(b);
  PAR_FOR(int64_t i = 0; i < n; i++) o[i] = x[i] * y[i];
  return PS_OK;
}

ps_status ps_mul_backward(ps_tensor *da, ps_tensor *db, const ps_tensor *dout, const ps_tensor *a,
                          const ps_tensor *b) {
  static const char op[] = "ps_mul_backward";
  PS_OPS_CPU(op, da, db, dout, a, b);
  PS_OPS_CHECK(op, dout, PS_F32, -1);
  int64_t n = ps_tensor_numel(dout);
  const float *g = ps_f32(dout);
  if (da) { // da += dout * b
    PS_OPS_CHECK(op, da, PS_F32, n);
    PS_OPS_CHECK(op, b, PS_F32, n);
    float *d = ps_f32(da);
    const float *y = ps_f32(b);
    PAR_FOR(int64_t i = 0; i < n; i++) d[i] += g[i] * y[i];
  }
  if (db) { // db += dout * a
    PS_OPS_CHECK(op, db, PS_F32, n);
    PS_OPS_CHECK(op, a, PS_F32, n);
    float *d = ps_f32(db);
    const float *x = ps_f32(a);
    PAR_FOR(int64_t i = 0; i < n; i++) d[i] += g[i] * x[i];
  }
  return PS_OK;
}

ps_status ps_scale_forward(ps_tensor *out, const ps_tensor *in, float s) {
  static const char op[] = "ps_scale_forward";
  PS_OPS_CPU(op, out, in);
  PS_OPS_CHECK(op, out, PS_F32, -1);
  int64_t n = ps_tensor_numel(out);
  PS_OPS_CHECK(op, in, PS_F32, n);
  float *o = ps_f32(out);
  const float *x = ps_f32(in);
  PAR_FOR(int64_t i = 0; i < n; i++) o[i] = s * x[i];
  return PS_OK;
}

ps_status ps_scale_backward(ps_tensor *din, const ps_tensor *dout, float s) {
  static const char op[] = "ps_scale_backward";
  PS_OPS_CPU(op, din, dout);
  PS_OPS_CHECK(op, dout, PS_F32, -1);
  int64_t n = ps_tensor_numel(dout);
  PS_OPS_CHECK(op, din, PS_F32, n);
  float *d = ps_f32(din);
  const float *g = ps_f32(dout);
  PAR_FOR(int64_t i = 0; i < n; i++) d[i] += s * g[i];
  return PS_OK;
}

ps_status ps_add_rowvec_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *v) {
  static const char op[] = "ps_add_rowvec_forward";
  PS_OPS_CPU(op, out, in, v);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t n = ps_tensor_numel(in), D = ps_ops_cols(in), R = ps_ops_rows(in);
  PS_OPS_CHECK(op, out, PS_F32, n);
  PS_OPS_CHECK(op, v, PS_F32, D);
  float *o = ps_f32(out);
  const float *x = ps_f32(in), *w = ps_f32(v);
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)
  for (int64_t r = 0; r < R; r++)
    for (int64_t j = 0; j < D; j++) o[r * D + j] = x[r * D + j] + w[j];
  return PS_OK;
}

ps_status ps_add_rowvec_backward(ps_tensor *din, ps_tensor *dv, const ps_tensor *dout) {
  static const char op[] = "ps_add_rowvec_backward";
  PS_OPS_CPU(op, din, dv, dout);
  PS_OPS_CHECK(op, dout, PS_F32, -1);
  int64_t n = ps_tensor_numel(dout), D = ps_ops_cols(dout), R = ps_ops_rows(dout);
  if (din) {
    PS_OPS_CHECK(op, din, PS_F32, n);
    acc_into(ps_f32(din), ps_f32(dout), n);
  }
  if (dv) {
    PS_OPS_CHECK(op, dv, PS_F32, D);
    enum { CH = 256 }; // column sums in double, chunked so the accumulator stays on the stack
    const float *g = ps_f32(dout);
    float *o = ps_f32(dv);
    int64_t nchunks = (D + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN && nchunks > 1)
    for (int64_t c = 0; c < nchunks; c++) {
      double acc[CH] = {0};
      int64_t j0 = c * CH, nj = D - j0 < CH ? D - j0 : CH;
      for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < nj; j++) acc[j] += g[r * D + j0 + j];
      for (int64_t j = 0; j < nj; j++) o[j0 + j] += (float)acc[j];
    }
  }
  return PS_OK;
}

// ---- activations ---------------------------------------------------------------

#define GELU_C 0.7978845608028654f // sqrt(2 / pi)
#define GELU_A 0.044715f

static inline float gelu(float x) {
  float u = GELU_C * (x + GELU_A * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}
static inline float gelu_grad(float x) {
  float u = GELU_C * (x + GELU_A * x * x * x), t = tanhf(u);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * x * x);
}
static inline float sigmoid(float x) {
  // Split by sign so exp never overflows.
  if (x >= 0) return 1.0f / (1.0f + expf(-x));
  float e = expf(x);
  return e / (1.0f + e);
}

ps_status ps_act_forward(ps_tensor *out, const ps_tensor *in, ps_activation act) {
  static const char op[] = "ps_act_forward";
  PS_OPS_CPU(op, out, in);
  PS_REQUIRE(act >= 0 && act < PS_ACT_COUNT, "%s: unknown activation %d", op, (int)act);
  PS_OPS_CHECK(op, out, PS_F32, -1);
  int64_t n = ps_tensor_numel(out);
  PS_OPS_CHECK(op, in, PS_F32, n);
  float *o = ps_f32(out);
  const float *x = ps_f32(in);
  switch (act) {
  case PS_ACT_RELU: PAR_FOR(int64_t i = 0; i < n; i++) o[i] = x[i] > 0.0f ? x[i] : 0.0f; break;
  case PS_ACT_GELU: PAR_FOR(int64_t i = 0; i < n; i++) o[i] = gelu(x[i]); break;
  case PS_ACT_SIGMOID: PAR_FOR(int64_t i = 0; i < n; i++) o[i] = sigmoid(x[i]); break;
  case PS_ACT_TANH: PAR_FOR(int64_t i = 0; i < n; i++) o[i] = tanhf(x[i]); break;
  default: break;
  }
  return PS_OK;
}

ps_status ps_act_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *in, const ps_tensor *out,
                          ps_activation act) {
  static const char op[] = "ps_act_backward";
  PS_OPS_CPU(op, din, dout, in, out);
  PS_REQUIRE(act >= 0 && act < PS_ACT_COUNT, "%s: unknown activation %d", op, (int)act);
  PS_OPS_CHECK(op, dout, PS_F32, -1);
  int64_t n = ps_tensor_numel(dout);
  PS_OPS_CHECK(op, din, PS_F32, n);
  PS_OPS_CHECK_OPT(op, in, PS_F32, n);
  PS_OPS_CHECK_OPT(op, out, PS_F32, n);
  float *d = ps_f32(din);
  const float *g = ps_f32(dout);
  const float *x = in ? ps_f32(in) : NULL, *y = out ? ps_f32(out) : NULL;
  switch (act) {
  case PS_ACT_RELU: // relu(x) > 0 iff x > 0, so either tensor serves
    PS_REQUIRE(x || y, "%s: relu needs the forward input or output", op);
    if (x) PAR_FOR(int64_t i = 0; i < n; i++) d[i] += x[i] > 0.0f ? g[i] : 0.0f;
    else PAR_FOR(int64_t i = 0; i < n; i++) d[i] += y[i] > 0.0f ? g[i] : 0.0f;
    break;
  case PS_ACT_GELU:
    PS_REQUIRE(x, "%s: gelu needs the forward input", op);
    PAR_FOR(int64_t i = 0; i < n; i++) d[i] += g[i] * gelu_grad(x[i]);
    break;
  case PS_ACT_SIGMOID:
    PS_REQUIRE(x || y, "%s: sigmoid needs the forward input or output", op);
    if (y) PAR_FOR(int64_t i = 0; i < n; i++) d[i] += g[i] * y[i] * (1.0f - y[i]);
    else PAR_FOR(int64_t i = 0; i < n; i++) {
      float s = sigmoid(x[i]);
      d[i] += g[i] * s * (1.0f - s);
    }
    break;
  case PS_ACT_TANH:
    PS_REQUIRE(x || y, "%s: tanh needs the forward input or output", op);
    if (y) PAR_FOR(int64_t i = 0; i < n; i++) d[i] += g[i] * (1.0f - y[i] * y[i]);
    else PAR_FOR(int64_t i = 0; i < n; i++) {
      float t = tanhf(x[i]);
      d[i] += g[i] * (1.0f - t * t);
    }
    break;
  default: break;
  }
  return PS_OK;
}
