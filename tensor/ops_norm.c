// CPU layer norm and batch norm (split into phases so SyncBN can all-reduce
// statistics between them). Statistics are accumulated in double.
//
// Dimension letters: N rows/batch, D features (layer norm), C channels,
// S spatial positions per channel (H*W, or 1 for (N, C) input).
#include <math.h>

#include "ops_internal.h"

// ---- layer norm ----------------------------------------------------------------

ps_status ps_layernorm_forward(ps_tensor *out, ps_tensor *mean, ps_tensor *rstd, const ps_tensor *in,
                               const ps_tensor *gamma, const ps_tensor *beta, float eps) {
  static const char op[] = "ps_layernorm_forward";
  PS_OPS_CPU(op, out, mean, rstd, in, gamma, beta);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t n = ps_tensor_numel(in), D = ps_ops_cols(in), N = ps_ops_rows(in);
  PS_OPS_CHECK(op, out, PS_F32, n);
  PS_OPS_CHECK_OPT(op, mean, PS_F32, N);
  PS_OPS_CHECK_OPT(op, rstd, PS_F32, N);
  PS_OPS_CHECK_OPT(op, gamma, PS_F32, D);
  PS_OPS_CHECK_OPT(op, beta, PS_F32, D);
  PS_REQUIRE(D > 0 && eps >= 0, "%s: need D > 0 and eps >= 0 (D=%lld eps=%g)", op, (long long)D, eps);
  const float *x = ps_f32(in), *gm = gamma ? ps_f32(gamma) : NULL, *bt = beta ? ps_f32(beta) : NULL;
  float *y = ps_f32(out), *mu = mean ? ps_f32(mean) : NULL, *rs = rstd ? ps_f32(rstd) : NULL;
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)
  for (int64_t r = 0; r < N; r++) {
    const float *xr = x + r * D;
    double m = ps_ops_sum(xr, D) / (double)D, v = ps_ops_sumsq_centered(xr, m, D);
    float fm = (float)m, fr = (float)(1.0 / sqrt(v / (double)D + eps));
    if (mu) mu[r] = fm;
    if (rs) rs[r] = fr;
    float *yr = y + r * D;
    for (int64_t j = 0; j < D; j++) {
      float h = (xr[j] - fm) * fr;
      yr[j] = (gm ? gm[j] * h : h) + (bt ? bt[j] : 0.0f);
    }
  }
  return PS_OK;
}

ps_status ps_layernorm_backward(ps_tensor *din, ps_tensor *dgamma, ps_tensor *dbeta, const ps_tensor *dout,
                                const ps_tensor *in, const ps_tensor *mean, const ps_tensor *rstd,
                                const ps_tensor *gamma) {
  static const char op[] = "ps_layernorm_backward";
  PS_OPS_CPU(op, din, dgamma, dbeta, dout, in, mean, rstd, gamma);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t n = ps_tensor_numel(in), D = ps_ops_cols(in), N = ps_ops_rows(in);
  PS_OPS_CHECK(op, dout, PS_F32, n);
  PS_OPS_CHECK(op, mean, PS_F32, N);
  PS_OPS_CHECK(op, rstd, PS_F32, N);
  PS_OPS_CHECK_OPT(op, gamma, PS_F32, D);
  PS_OPS_CHECK_OPT(op, din, PS_F32, n);
  PS_OPS_CHECK_OPT(op, dgamma, PS_F32, D);
  PS_OPS_CHECK_OPT(op, dbeta, PS_F32, D);
  const float *x = ps_f32(in), *g = ps_f32(dout), *mu = ps_f32(mean), *rs = ps_f32(rstd);
  const float *gm = gamma ? ps_f32(gamma) : NULL;
  if (din) {
    float *d = ps_f32(din);
    // din = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * gamma
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)
    for (int64_t r = 0; r < N; r++) {
      const float *xr = x + r * D, *gr = g + r * D;
      double l1[8] = {0}, l2[8] = {0}, s1 = 0, s2 = 0; // 8 lanes: vectorizes, fixed order
      int64_t j = 0;
      for (; j + 8 <= D; j += 8)
        for (int k = 0; k < 8; k++) {
          float dh = gm ? gr[j + k] * gm[j + k] : gr[j + k], h = (xr[j + k] - mu[r]) * rs[r];
          l1[k] += dh;
          l2[k] += (double)dh * h;
        }
      for (; j < D; j++) {
        float dh = gm ? gr[j] * gm[j] : gr[j], h = (xr[j] - mu[r]) * rs[r];
        s1 += dh;
        s2 += (double)dh * h;
      }
      s1 += ps_ops_lanes_total(l1);
      s2 += ps_ops_lanes_total(l2);
      float m1 = (float)(s1 / (double)D), m2 = (float)(s2 / (double)D);
      for (int64_t j = 0; j < D; j++) {
        float dh = gm ? gr[j] * gm[j] : gr[j], h = (xr[j] - mu[r]) * rs[r];
        d[r * D + j] += rs[r] * (dh - m1 - h * m2);
      }
    }
  }
  if (dgamma || dbeta) { // column sums over rows, D in chunks with double accumulators
    enum { CH = 128 };
    float *dg = dgamma ? ps_f32(dgamma) : NULL, *db = dbeta ? ps_f32(dbeta) : NULL;
    int64_t nch = (D + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN && nch > 1)
    for (int64_t c = 0; c < nch; c++) {
      double ag[CH] = {0}, ab[CH] = {0};
      int64_t j0 = c * CH, nj = D - j0 < CH ? D - j0 : CH;
      for (int64_t r = 0; r < N; r++)
        for (int64_t j = 0; j < nj; j++) {
          float gv = g[r * D + j0 + j];
          ag[j] += (double)gv * ((x[r * D + j0 + j] - mu[r]) * rs[r]);
          ab[j] += gv;
        }
      for (int64_t j = 0; j < nj; j++) {
        if (dg) dg[j0 + j] += (float)ag[j];
        if (db) db[j0 + j] += (float)ab[j];
      }
    }
  }
  return PS_OK;
}

// ---- batch norm ----------------------------------------------------------------

// (N, C, S) of a (N, C) or (N, C, H, W) input.
static ps_status bn_dims(const char *op, const ps_tensor *in, int64_t *N, int64_t *C, int64_t *S) {
  char buf[96];
  PS_REQUIRE(in->ndim == 2 || in->ndim == 4, "%s: in must be (N, C) or (N, C, H, W), got %s", op,
             ps_tensor_describe(in, buf, sizeof buf));
  *N = in->shape[0];
  *C = in->shape[1];
  *S = in->ndim == 4 ? in->shape[2] * in->shape[3] : 1;
  return PS_OK;
}

ps_status ps_batchnorm_stats(double *sum, double *sumsq, int64_t *count, const ps_tensor *in) {
  static const char op[] = "ps_batchnorm_stats";
  PS_OPS_CPU(op, in);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  PS_REQUIRE(sum && sumsq && count, "%s: sum, sumsq and count must not be NULL", op);
  int64_t N = 0, C = 0, S = 0;
  PS_TRY(bn_dims(op, in, &N, &C, &S));
  const float *x = ps_f32(in);
#pragma omp parallel for schedule(static) if (N * C * S > PS_OPS_PAR_MIN)
  for (int64_t c = 0; c < C; c++) {
    double s = 0, q = 0;
    for (int64_t nn = 0; nn < N; nn++) {
      double a, b;
      ps_ops_sum_sumsq(x + (nn * C + c) * S, S, &a, &b);
      s += a;
      q += b;
    }
    sum[c] = s;
    sumsq[c] = q;
  }
  *count = N * S;
  return PS_OK;
}

// y = (x - mean) * scale * gamma + beta per channel. scale is rstd (C), or NULL
// with var (C) given: scale = 1 / sqrt(var + eps) (eval mode, running variance).
static void bn_affine(float *y, const float *x, int64_t N, int64_t C, int64_t S, const float *mu, const float *sc,
                      const float *var, float eps, const float *gm, const float *bt) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * S > PS_OPS_PAR_MIN)
  for (int64_t nn = 0; nn < N; nn++)
    for (int64_t c = 0; c < C; c++) {
      float r = sc ? sc[c] : (float)(1.0 / sqrt((double)var[c] + eps));
      float a = r * (gm ? gm[c] : 1.0f), m = mu[c], b = bt ? bt[c] : 0.0f;
      const float *p = x + (nn * C + c) * S;
      float *q = y + (nn * C + c) * S;
      for (int64_t i = 0; i < S; i++) q[i] = (p[i] - m) * a + b;
    }
}

ps_status ps_batchnorm_forward_apply(ps_tensor *out, ps_tensor *mean, ps_tensor *rstd, const ps_tensor *in,
                                     const ps_tensor *gamma, const ps_tensor *beta, const double *sum,
                                     const double *sumsq, int64_t count, float eps, float momentum,
                                     ps_tensor *running_mean, ps_tensor *running_var) {
  static const char op[] = "ps_batchnorm_forward_apply";
  PS_OPS_CPU(op, out, mean, rstd, in, gamma, beta, running_mean, running_var);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t N = 0, C = 0, S = 0;
  PS_TRY(bn_dims(op, in, &N, &C, &S));
  PS_OPS_CHECK(op, out, PS_F32, N * C * S);
  PS_OPS_CHECK(op, mean, PS_F32, C);
  PS_OPS_CHECK(op, rstd, PS_F32, C);
  PS_OPS_CHECK_OPT(op, gamma, PS_F32, C);
  PS_OPS_CHECK_OPT(op, beta, PS_F32, C);
  PS_OPS_CHECK_OPT(op, running_mean, PS_F32, C);
  PS_OPS_CHECK_OPT(op, running_var, PS_F32, C);
  PS_REQUIRE(sum && sumsq, "%s: sum and sumsq must not be NULL", op);
  PS_REQUIRE(count > 0, "%s: statistics over %lld values (need > 0)", op, (long long)count);
  float *mu = ps_f32(mean), *rs = ps_f32(rstd);
  float *rm = running_mean ? ps_f32(running_mean) : NULL, *rv = running_var ? ps_f32(running_var) : NULL;
  for (int64_t c = 0; c < C; c++) {
    double m = sum[c] / (double)count, v = sumsq[c] / (double)count - m * m;
    if (v < 0) v = 0; // rounding in E[x^2] - E[x]^2
    mu[c] = (float)m;
    rs[c] = (float)(1.0 / sqrt(v + eps));
    if (rm) rm[c] = (float)((1.0 - momentum) * rm[c] + momentum * m);
    if (rv) { // running variance is unbiased (PyTorch)
      double vu = count > 1 ? v * (double)count / (double)(count - 1) : v;
      rv[c] = (float)((1.0 - momentum) * rv[c] + momentum * vu);
    }
  }
  bn_affine(ps_f32(out), ps_f32(in), N, C, S, mu, rs, NULL, 0.0f, gamma ? ps_f32(gamma) : NULL,
            beta ? ps_f32(beta) : NULL);
  return PS_OK;
}

ps_status ps_batchnorm_forward_eval(ps_tensor *out, const ps_tensor *in, const ps_tensor *gamma,
                                    const ps_tensor *beta, const ps_tensor *running_mean,
                                    const ps_tensor *running_var, float eps) {
  static const char op[] = "ps_batchnorm_forward_eval";
  PS_OPS_CPU(op, out, in, gamma, beta, running_mean, running_var);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t N = 0, C = 0, S = 0;
  PS_TRY(bn_dims(op, in, &N, &C, &S));
  PS_OPS_CHECK(op, out, PS_F32, N * C * S);
  PS_OPS_CHECK_OPT(op, gamma, PS_F32, C);
  PS_OPS_CHECK_OPT(op, beta, PS_F32, C);
  PS_OPS_CHECK(op, running_mean, PS_F32, C);
  PS_OPS_CHECK(op, running_var, PS_F32, C);
  bn_affine(ps_f32(out), ps_f32(in), N, C, S, ps_f32(running_mean), NULL, ps_f32(running_var), eps,
            gamma ? ps_f32(gamma) : NULL, beta ? ps_f32(beta) : NULL);
  return PS_OK;
}

ps_status ps_batchnorm_backward_reduce(double *sum_dy, double *sum_dy_xhat, const ps_tensor *dout,
                                       const ps_tensor *in, const ps_tensor *mean, const ps_tensor *rstd) {
  static const char op[] = "ps_batchnorm_backward_reduce";
  PS_OPS_CPU(op, dout, in, mean, rstd);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t N = 0, C = 0, S = 0;
  PS_TRY(bn_dims(op, in, &N, &C, &S));
  PS_OPS_CHECK(op, dout, PS_F32, N * C * S);
  PS_OPS_CHECK(op, mean, PS_F32, C);
  PS_OPS_CHECK(op, rstd, PS_F32, C);
  PS_REQUIRE(sum_dy && sum_dy_xhat, "%s: sum_dy and sum_dy_xhat must not be NULL", op);
  const float *x = ps_f32(in), *g = ps_f32(dout), *mu = ps_f32(mean), *rs = ps_f32(rstd);
#pragma omp parallel for schedule(static) if (N * C * S > PS_OPS_PAR_MIN)
  for (int64_t c = 0; c < C; c++) {
    double s = 0, t = 0;
    for (int64_t nn = 0; nn < N; nn++) {
      double a, b;
      ps_ops_sum_dot_centered(g + (nn * C + c) * S, x + (nn * C + c) * S, mu[c], S, &a, &b);
      s += a;
      t += b;
    }
    sum_dy[c] = s;
    sum_dy_xhat[c] = t * rs[c];
  }
  return PS_OK;
}

ps_status ps_batchnorm_backward_apply(ps_tensor *din, ps_tensor *dgamma, ps_tensor *dbeta, const ps_tensor *dout,
                                      const ps_tensor *in, const ps_tensor *mean, const ps_tensor *rstd,
                                      const ps_tensor *gamma, const double *sum_dy, const double *sum_dy_xhat,
                                      const double *local_sum_dy, const double *local_sum_dy_xhat, int64_t count) {
  static const char op[] = "ps_batchnorm_backward_apply";
  PS_OPS_CPU(op, din, dgamma, dbeta, dout, in, mean, rstd, gamma);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t N = 0, C = 0, S = 0;
  PS_TRY(bn_dims(op, in, &N, &C, &S));
  PS_OPS_CHECK(op, dout, PS_F32, N * C * S);
  PS_OPS_CHECK(op, mean, PS_F32, C);
  PS_OPS_CHECK(op, rstd, PS_F32, C);
  PS_OPS_CHECK_OPT(op, gamma, PS_F32, C);
  PS_OPS_CHECK_OPT(op, din, PS_F32, N * C * S);
  PS_OPS_CHECK_OPT(op, dgamma, PS_F32, C);
  PS_OPS_CHECK_OPT(op, dbeta, PS_F32, C);
  PS_REQUIRE(sum_dy && sum_dy_xhat, "%s: sum_dy and sum_dy_xhat must not be NULL", op);
  PS_REQUIRE(count > 0, "%s: count %lld (need > 0)", op, (long long)count);
  // Parameter gradients from the local sums when given (their all-reduce comes later), else the global ones.
  const double *ldy = local_sum_dy ? local_sum_dy : sum_dy;
  const double *ldx = local_sum_dy_xhat ? local_sum_dy_xhat : sum_dy_xhat;
  if (dgamma)
    for (int64_t c = 0; c < C; c++) ps_f32(dgamma)[c] += (float)ldx[c];
  if (dbeta)
    for (int64_t c = 0; c < C; c++) ps_f32(dbeta)[c] += (float)ldy[c];
  if (!din) return PS_OK;
  const float *x = ps_f32(in), *g = ps_f32(dout), *mu = ps_f32(mean), *rs = ps_f32(rstd);
  const float *gm = gamma ? ps_f32(gamma) : NULL;
  float *d = ps_f32(din);
#pragma omp parallel for collapse(2) schedule(static) if (N * C * S > PS_OPS_PAR_MIN)
  for (int64_t nn = 0; nn < N; nn++)
    for (int64_t c = 0; c < C; c++) {
      float k = (gm ? gm[c] : 1.0f) * rs[c];
      float mdy = (float)(sum_dy[c] / (double)count), mdx = (float)(sum_dy_xhat[c] / (double)count);
      const float *p = x + (nn * C + c) * S, *q = g + (nn * C + c) * S;
      float *o = d + (nn * C + c) * S;
      for (int64_t i = 0; i < S; i++) {
        float h = (p[i] - mu[c]) * rs[c];
        o[i] += k * (q[i] - mdy - h * mdx);
      }
    }
  return PS_OK;
}
