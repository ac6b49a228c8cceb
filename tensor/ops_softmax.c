// CPU row softmax / log-sum-exp with an optional mask, and axis reductions.
//
// Dimension letters: R rows, L entries per row (the last dim);
// reductions see their input as (O outer, A axis, I inner).
#include <math.h>

#include "ops_internal.h"

ps_status ps_softmax_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *mask) {
  static const char op[] = "ps_softmax_forward";
  PS_OPS_CPU(op, out, in, mask);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t n = ps_tensor_numel(in), L = ps_ops_cols(in), R = ps_ops_rows(in);
  PS_OPS_CHECK(op, out, PS_F32, n);
  PS_OPS_CHECK_OPT(op, mask, PS_U8, n);
  const float *x = ps_f32(in);
  const uint8_t *m = mask ? ps_u8(mask) : NULL;
  float *y = ps_f32(out);
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)
  for (int64_t r = 0; r < R; r++) {
    const float *xr = x + r * L;
    const uint8_t *mr = m ? m + r * L : NULL;
    float *yr = y + r * L;
    float mx = -INFINITY;
    for (int64_t j = 0; j < L; j++)
      if (!mr || mr[j]) mx = xr[j] > mx ? xr[j] : mx;
    if (mx == -INFINITY) { // no valid entry (or all -inf): an all-zero row
      for (int64_t j = 0; j < L; j++) yr[j] = 0.0f;
      continue;
    }
    for (int64_t j = 0; j < L; j++) yr[j] = (!mr || mr[j]) ? expf(xr[j] - mx) : 0.0f;
    float inv = (float)(1.0 / ps_ops_sum(yr, L));
    for (int64_t j = 0; j < L; j++) yr[j] *= inv;
  }
  return PS_OK;
}

ps_status ps_softmax_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *out) {
  static const char op[] = "ps_softmax_backward";
  PS_OPS_CPU(op, din, dout, out);
  PS_OPS_CHECK(op, out, PS_F32, -1);
  int64_t n = ps_tensor_numel(out), L = ps_ops_cols(out), R = ps_ops_rows(out);
  PS_OPS_CHECK(op, dout, PS_F32, n);
  PS_OPS_CHECK(op, din, PS_F32, n);
  const float *y = ps_f32(out), *g = ps_f32(dout);
  float *d = ps_f32(din);
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)
  for (int64_t r = 0; r < R; r++) {
    const float *yr = y + r * L, *gr = g + r * L;
    double dot = ps_ops_dot(yr, gr, L);
    // Masked entries have y == 0 and so receive exactly no gradient.
    for (int64_t j = 0; j < L; j++)
      if (yr[j] != 0.0f) d[r * L + j] += yr[j] * (gr[j] - (float)dot);
  }
  return PS_OK;
}

ps_status ps_logsumexp_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *mask) {
  static const char op[] = "ps_logsumexp_forward";
  PS_OPS_CPU(op, out, in, mask);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t n = ps_tensor_numel(in), L = ps_ops_cols(in), R = ps_ops_rows(in);
  PS_OPS_CHECK(op, out, PS_F32, R);
  PS_OPS_CHECK_OPT(op, mask, PS_U8, n);
  const float *x = ps_f32(in);
  const uint8_t *m = mask ? ps_u8(mask) : NULL;
  float *y = ps_f32(out);
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)
  for (int64_t r = 0; r < R; r++) {
    const float *xr = x + r * L;
    const uint8_t *mr = m ? m + r * L : NULL;
    // Running max: one pass, rescaling the sum when the max grows.
    float mx = -INFINITY;
    double s = 0;
    for (int64_t j = 0; j < L; j++) {
      if (mr && !mr[j]) continue;
      float v = xr[j];
      if (v == -INFINITY) continue;
      if (v > mx) {
        s = s * exp((double)mx - v) + 1.0;
        mx = v;
      } else {
        s += exp((double)v - mx);
      }
    }
    y[r] = mx == -INFINITY ? -INFINITY : mx + (float)log(s); // empty row: log 0
  }
  return PS_OK;
}

ps_status ps_logsumexp_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *in, const ps_tensor *out,
                                const ps_tensor *mask) {
  static const char op[] = "ps_logsumexp_backward";
  PS_OPS_CPU(op, din, dout, in, out, mask);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t n = ps_tensor_numel(in), L = ps_ops_cols(in), R = ps_ops_rows(in);
  PS_OPS_CHECK(op, din, PS_F32, n);
  PS_OPS_CHECK(op, dout, PS_F32, R);
  PS_OPS_CHECK(op, out, PS_F32, R);
  PS_OPS_CHECK_OPT(op, mask, PS_U8, n);
  const float *x = ps_f32(in), *g = ps_f32(dout), *y = ps_f32(out);
  const uint8_t *m = mask ? ps_u8(mask) : NULL;
  float *d = ps_f32(din);
  // d lse / d x_j = softmax_j = exp(x_j - lse) on valid entries.
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)
  for (int64_t r = 0; r < R; r++) {
    if (y[r] == -INFINITY) continue;
    for (int64_t j = 0; j < L; j++)
      if (!m || m[r * L + j]) d[r * L + j] += g[r] * expf(x[r * L + j] - y[r]);
  }
  return PS_OK;
}

// ---- reductions ----------------------------------------------------------------

static const char *const ps_reduce_names[] = {"sum", "mean"};
_Static_assert(sizeof ps_reduce_names / sizeof ps_reduce_names[0] == PS_REDUCE_COUNT,
               "ps_reduce_names must list every ps_reduce");

// (O, A, I) of t around `axis`.
static ps_status reduce_dims(const char *op, const ps_tensor *t, int axis, int64_t *O, int64_t *A, int64_t *I) {
  PS_REQUIRE(axis >= 0 && axis < (t->ndim ? t->ndim : 1), "%s: axis %d out of range for a %d-dim tensor", op,
             axis, t->ndim);
  *O = 1;
  *I = 1;
  *A = t->ndim ? t->shape[axis] : 1;
  for (int i = 0; i < axis; i++) *O *= t->shape[i];
  for (int i = axis + 1; i < t->ndim; i++) *I *= t->shape[i];
  return PS_OK;
}

ps_status ps_reduce_forward(ps_tensor *out, const ps_tensor *in, int axis, ps_reduce rop) {
  static const char op[] = "ps_reduce_forward";
  PS_OPS_CPU(op, out, in);
  PS_REQUIRE(rop >= 0 && rop < PS_REDUCE_COUNT, "%s: unknown reduction %d", op, (int)rop);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t O = 0, A = 0, I = 0;
  PS_TRY(reduce_dims(op, in, axis, &O, &A, &I));
  PS_OPS_CHECK(op, out, PS_F32, O * I);
  const float *x = ps_f32(in);
  float *y = ps_f32(out);
  double scale = (rop == PS_REDUCE_MEAN && A > 0) ? 1.0 / (double)A : 1.0;
  enum { CH = 256 }; // inner index chunk; double accumulators on the stack
  int64_t nch = (I + CH - 1) / CH;
#pragma omp parallel for collapse(2) schedule(static) if (O * A * I > PS_OPS_PAR_MIN)
  for (int64_t o = 0; o < O; o++)
    for (int64_t c = 0; c < nch; c++) {
      double acc[CH] = {0};
      int64_t i0 = c * CH, ni = I - i0 < CH ? I - i0 : CH;
      for (int64_t a = 0; a < A; a++) {
        const float *src = x + (o * A + a) * I + i0;
        for (int64_t i = 0; i < ni; i++) acc[i] += src[i];
      }
      for (int64_t i = 0; i < ni; i++) y[o * I + i0 + i] = (float)(acc[i] * scale);
    }
  return PS_OK;
}

ps_status ps_reduce_backward(ps_tensor *din, const ps_tensor *dout, int axis, ps_reduce rop) {
  static const char op[] = "ps_reduce_backward";
  PS_OPS_CPU(op, din, dout);
  PS_REQUIRE(rop >= 0 && rop < PS_REDUCE_COUNT, "%s: unknown reduction %d", op, (int)rop);
  PS_OPS_CHECK(op, din, PS_F32, -1);
  int64_t O = 0, A = 0, I = 0;
  PS_TRY(reduce_dims(op, din, axis, &O, &A, &I));
  PS_OPS_CHECK(op, dout, PS_F32, O * I);
  const float *g = ps_f32(dout);
  float *d = ps_f32(din);
  float scale = (rop == PS_REDUCE_MEAN && A > 0) ? (float)(1.0 / (double)A) : 1.0f;
#pragma omp parallel for collapse(2) schedule(static) if (O * A * I > PS_OPS_PAR_MIN)
  for (int64_t o = 0; o < O; o++)
    for (int64_t a = 0; a < A; a++)
      for (int64_t i = 0; i < I; i++) d[(o * A + a) * I + i] += scale * g[o * I + i];
  return PS_OK;
}

const char *ps_reduce_name(ps_reduce r) { return (r >= 0 && r < PS_REDUCE_COUNT) ? ps_reduce_names[r] : "unknown"; }
