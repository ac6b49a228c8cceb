#include "ps_layers.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "ps_rng.h"

static const char *const act_names[] = {"none", "relu", "gelu", "tanh", "sigmoid"};
_Static_assert(sizeof(act_names) / sizeof(act_names[0]) == PS_NN_ACT_COUNT, "activation name table");
const char *ps_nn_act_name(ps_nn_act a) { return (unsigned)a < PS_NN_ACT_COUNT ? act_names[a] : "?"; }

#define GELU_K 0.7978845608028654f // sqrt(2/pi)
#define GELU_C 0.044715f

static inline float gelu_f(float x) { return 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_C * x * x * x))); }
static inline float gelu_df(float x) {
  float t = tanhf(GELU_K * (x + GELU_C * x * x * x));
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
}

void ps_nn_act_forward(float *x, float *pre, int64_t n, ps_nn_act act) {
  switch (act) {
  case PS_NN_ACT_NONE: break;
  case PS_NN_ACT_RELU:
    for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
    break;
  case PS_NN_ACT_GELU:
    for (int64_t i = 0; i < n; i++) {
      pre[i] = x[i];
      x[i] = gelu_f(x[i]);
    }
    break;
  case PS_NN_ACT_TANH:
    for (int64_t i = 0; i < n; i++) x[i] = tanhf(x[i]);
    break;
  case PS_NN_ACT_SIGMOID:
    for (int64_t i = 0; i < n; i++) x[i] = 1.0f / (1.0f + expf(-x[i]));
    break;
  default: break;
  }
}

void ps_nn_act_backward(float *dy, const float *out, const float *pre, int64_t n, ps_nn_act act) {
  switch (act) {
  case PS_NN_ACT_NONE: break;
  case PS_NN_ACT_RELU:
    for (int64_t i = 0; i < n; i++)
      if (!(out[i] > 0.0f)) dy[i] = 0.0f;
    break;
  case PS_NN_ACT_GELU:
    for (int64_t i = 0; i < n; i++) dy[i] *= gelu_df(pre[i]);
    break;
  case PS_NN_ACT_TANH:
    for (int64_t i = 0; i < n; i++) dy[i] *= 1.0f - out[i] * out[i];
    break;
  case PS_NN_ACT_SIGMOID:
    for (int64_t i = 0; i < n; i++) dy[i] *= out[i] * (1.0f - out[i]);
    break;
  default: break;
  }
}

// ---- Linear -------------------------------------------------------------------------------------
void ps_nn_linear_forward(float *out, float *pre, const float *in, const float *w, const float *b, int64_t n,
                          int64_t din, int64_t dout, ps_nn_act act) {
  if (n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)dout, (int)din, 1.0f, in, (int)din, w, (int)din,
              0.0f, out, (int)dout);
  // Fused bias + activation: one pass over the output while it is in cache.
  for (int64_t r = 0; r < n; r++) {
    float *o = out + r * dout;
    if (b)
      for (int64_t j = 0; j < dout; j++) o[j] += b[j];
    ps_nn_act_forward(o, pre ? pre + r * dout : NULL, dout, act);
  }
}

void ps_nn_linear_backward(float *din, float *dw, float *db, float *dout, const float *in, const float *w,
                           const float *out, const float *pre, int64_t n, int64_t din_, int64_t dout_, ps_nn_act act) {
  if (n == 0) return;
  ps_nn_act_backward(dout, out, pre, n * dout_, act);
  if (db)
    for (int64_t r = 0; r < n; r++)
      for (int64_t j = 0; j < dout_; j++) db[j] += dout[r * dout_ + j];
  if (dw)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)dout_, (int)din_, (int)n, 1.0f, dout, (int)dout_, in,
                (int)din_, 1.0f, dw, (int)din_);
  if (din)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)din_, (int)dout_, 1.0f, dout, (int)dout_, w,
                (int)din_, 1.0f, din, (int)din_);
}

// ---- im2col / col2im (stride 1, padding ks/2) -------------------------------------------------
// col (C*KS*KS, H*W)
static void im2col(float *col, const float *in, int64_t c, int64_t h, int64_t w, int ks) {
  int p = ks / 2;
  for (int64_t ci = 0; ci < c; ci++)
    for (int ky = 0; ky < ks; ky++)
      for (int kx = 0; kx < ks; kx++) {
        float *dst = col + ((ci * ks + ky) * ks + kx) * h * w;
        const float *src = in + ci * h * w;
        int64_t x0 = p - kx > 0 ? p - kx : 0;            // first x with ix >= 0
        int64_t x1 = w + p - kx < w ? w + p - kx : w;    // one past last x with ix < w
        for (int64_t y = 0; y < h; y++) {
          int64_t iy = y + ky - p;
          float *d = dst + y * w;
          if (iy < 0 || iy >= h) {
            memset(d, 0, (size_t)w * sizeof(float));
            continue;
          }
          for (int64_t x = 0; x < x0; x++) d[x] = 0.0f;
          memcpy(d + x0, src + iy * w + x0 + kx - p, (size_t)(x1 - x0) * sizeof(float));
          for (int64_t x = x1; x < w; x++) d[x] = 0.0f;
        }
      }
}

static void col2im_add(float *in, const float *col, int64_t c, int64_t h, int64_t w, int ks) {
  int p = ks / 2;
  for (int64_t ci = 0; ci < c; ci++)
    for (int ky = 0; ky < ks; ky++)
      for (int kx = 0; kx < ks; kx++) {
        const float *src = col + ((ci * ks + ky) * ks + kx) * h * w;
        float *dst = in + ci * h * w;
        int64_t x0 = p - kx > 0 ? p - kx : 0;
        int64_t x1 = w + p - kx < w ? w + p - kx : w;
        for (int64_t y = 0; y < h; y++) {
          int64_t iy = y + ky - p;
          if (iy < 0 || iy >= h) continue;
          float *d = dst + iy * w + kx - p;
          const float *s = src + y * w;
          for (int64_t x = x0; x < x1; x++) d[x] += s[x];
        }
      }
}

int64_t ps_nn_conv_col_floats(int64_t c, int64_t h, int64_t w, int ks) {
  return 2 * c * ks * ks * h * w; // col + dcol
}

void ps_nn_conv2d_forward(float *out, const float *in, const float *w, const float *b, int64_t n, int64_t c,
                          int64_t oc, int64_t h, int64_t wd, int ks, float *col) {
  int64_t hw = h * wd, ck = c * ks * ks, colsz = ps_nn_conv_col_floats(c, h, wd, ks);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float *cl = col + omp_get_thread_num() * colsz;
    im2col(cl, in + i * c * hw, c, h, wd, ks);
    float *o = out + i * oc * hw;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)oc, (int)hw, (int)ck, 1.0f, w, (int)ck, cl, (int)hw,
                0.0f, o, (int)hw);
    if (b)
      for (int64_t o_ = 0; o_ < oc; o_++)
        for (int64_t j = 0; j < hw; j++) o[o_ * hw + j] += b[o_];
  }
}

static void reduce_thread_buffers(float *dst, float *scratch, int64_t len, int nth) {
  for (int t = 0; t < nth; t++)
    for (int64_t j = 0; j < len; j++) dst[j] += scratch[t * len + j];
}

// Per sample: dW_t += dout_i · col_i^T, dcol = W^T dout_i, din_i += col2im(dcol).
static void conv_backward_sample(float *din_i, float *dw_t, const float *dout_i, const float *in_i, const float *w,
                                 int64_t c, int64_t oc, int64_t h, int64_t wd, int ks, float *cl) {
  int64_t hw = h * wd, ck = c * ks * ks;
  float *dcol = cl + ck * hw;
  if (dw_t) {
    im2col(cl, in_i, c, h, wd, ks);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)oc, (int)ck, (int)hw, 1.0f, dout_i, (int)hw, cl, (int)hw,
                1.0f, dw_t, (int)ck);
  }
  if (din_i) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)ck, (int)hw, (int)oc, 1.0f, w, (int)ck, dout_i, (int)hw,
                0.0f, dcol, (int)hw);
    col2im_add(din_i, dcol, c, h, wd, ks);
  }
}

void ps_nn_conv2d_backward(float *din, float *dw, float *db, const float *dout, const float *in, const float *w,
                           int64_t n, int64_t c, int64_t oc, int64_t h, int64_t wd, int ks, float *col,
                           float *dw_scratch) {
  int64_t hw = h * wd, wsz = oc * c * ks * ks, colsz = ps_nn_conv_col_floats(c, h, wd, ks);
  int nth = omp_get_max_threads();
  if (dw) memset(dw_scratch, 0, (size_t)(nth * wsz) * sizeof(float));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    int t = omp_get_thread_num();
    conv_backward_sample(din ? din + i * c * hw : NULL, dw ? dw_scratch + t * wsz : NULL, dout + i * oc * hw,
                         in + i * c * hw, w, c, oc, h, wd, ks, col + t * colsz);
  }
  if (dw) reduce_thread_buffers(dw, dw_scratch, wsz, nth);
  if (db)
    for (int64_t i = 0; i < n; i++)
      for (int64_t o = 0; o < oc; o++) {
        double s = 0;
        for (int64_t j = 0; j < hw; j++) s += dout[(i * oc + o) * hw + j];
        db[o] += (float)s;
      }
}

// Sum and sum of squares of x (n): 8 float lanes per block of up to 1024 elements (the loop
// vectorizes without -ffast-math), blocks accumulated in double. Fixed order: deterministic.
static void sum_sumsq(const float *x, int64_t n, double *s, double *ss) {
  double ds = 0, dss = 0;
  for (int64_t b0 = 0; b0 < n; b0 += 1024) {
    int64_t b1 = b0 + 1024 < n ? b0 + 1024 : n, i = b0;
    float a[8] = {0}, q[8] = {0};
    for (; i + 8 <= b1; i += 8)
      for (int l = 0; l < 8; l++) {
        a[l] += x[i + l];
        q[l] += x[i + l] * x[i + l];
      }
    for (; i < b1; i++) ds += x[i], dss += (double)x[i] * x[i];
    for (int l = 0; l < 8; l++) ds += a[l], dss += q[l];
  }
  *s = ds;
  *ss = dss;
}

// ---- BatchNorm -------------------------------------------------------------------------------
ps_status ps_nn_bn_finish_stats(float *mean, float *rstd, float *running_mean, float *running_var, int64_t c,
                                const ps_nn_bn_opts *o, double *stats) {
  if (!o->training) {
    for (int64_t j = 0; j < c; j++) {
      mean[j] = running_mean[j];
      rstd[j] = (float)(1.0 / sqrt((double)running_var[j] + o->eps));
    }
    return PS_OK;
  }
  if (o->reducer.fn) PS_TRY(o->reducer.fn(o->reducer.ctx, stats, 2 * c + 1));
  double cnt = stats[2 * c];
  if (!(cnt > 0)) { // no element anywhere (e.g. no patient of the global batch has a slide): nothing to normalize
    for (int64_t j = 0; j < c; j++) mean[j] = 0.0f, rstd[j] = 1.0f;
    return PS_OK;
  }
  for (int64_t j = 0; j < c; j++) {
    double m = stats[j] / cnt, var = stats[c + j] / cnt - m * m;
    if (var < 0) var = 0;
    mean[j] = (float)m;
    rstd[j] = (float)(1.0 / sqrt(var + o->eps));
    if (running_mean) {
      double unb = cnt > 1 ? var * cnt / (cnt - 1) : var;
      running_mean[j] = (float)((1.0 - o->momentum) * running_mean[j] + o->momentum * m);
      running_var[j] = (float)((1.0 - o->momentum) * running_var[j] + o->momentum * unb);
    }
  }
  return PS_OK;
}

ps_status ps_nn_batchnorm_forward(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                                  const float *beta, float *running_mean, float *running_var, int64_t n, int64_t c,
                                  int64_t hw, const ps_nn_bn_opts *o, double *stats) {
  if (o->training) {
    memset(stats, 0, (size_t)(2 * c + 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < c; j++) {
        double s, ss;
        sum_sumsq(in + (i * c + j) * hw, hw, &s, &ss);
        stats[j] += s;
        stats[c + j] += ss;
      }
    stats[2 * c] = (double)(n * hw);
  }
  PS_TRY(ps_nn_bn_finish_stats(mean, rstd, running_mean, running_var, c, o, stats));
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < c; j++) {
      float sc = gamma[j] * rstd[j], sh = beta[j] - mean[j] * sc;
      const float *x = in + (i * c + j) * hw;
      float *y = out + (i * c + j) * hw;
      for (int64_t k = 0; k < hw; k++) y[k] = x[k] * sc + sh;
    }
  return PS_OK;
}

ps_status ps_nn_batchnorm_backward(float *din, float *dgamma, float *dbeta, const float *dout, const float *in,
                                   const float *mean, const float *rstd, const float *gamma, int64_t n, int64_t c,
                                   int64_t hw, const ps_nn_bn_opts *o, double *stats) {
  memset(stats, 0, (size_t)(2 * c + 1) * sizeof(double));
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < c; j++) {
      const float *x = in + (i * c + j) * hw, *dy = dout + (i * c + j) * hw;
      double s = 0, sx = 0;
      for (int64_t k = 0; k < hw; k++) {
        s += dy[k];
        sx += (double)dy[k] * ((x[k] - mean[j]) * rstd[j]);
      }
      stats[j] += s;
      stats[c + j] += sx;
    }
  stats[2 * c] = (double)(n * hw);
  // Parameter gradients from LOCAL sums: the gradient all-reduce sums them later.
  for (int64_t j = 0; j < c; j++) {
    if (dgamma) dgamma[j] += (float)stats[c + j];
    if (dbeta) dbeta[j] += (float)stats[j];
  }
  if (!din) return PS_OK;
  if (o->training && o->reducer.fn) PS_TRY(o->reducer.fn(o->reducer.ctx, stats, 2 * c + 1));
  double cnt = stats[2 * c];
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < c; j++) {
      const float *x = in + (i * c + j) * hw, *dy = dout + (i * c + j) * hw;
      float *dx = din + (i * c + j) * hw;
      float g = gamma[j] * rstd[j];
      if (o->training) {
        float a = (float)(stats[j] / cnt), bq = (float)(stats[c + j] / cnt);
        for (int64_t k = 0; k < hw; k++) dx[k] += g * (dy[k] - a - (x[k] - mean[j]) * rstd[j] * bq);
      } else {
        for (int64_t k = 0; k < hw; k++) dx[k] += g * dy[k];
      }
    }
  return PS_OK;
}

// ---- LayerNorm -------------------------------------------------------------------------------
void ps_nn_layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                             const float *beta, int64_t n, int64_t d, float eps) {
  for (int64_t i = 0; i < n; i++) {
    const float *x = in + i * d;
    double s = 0, ss = 0;
    for (int64_t j = 0; j < d; j++) s += x[j];
    double m = s / (double)d;
    for (int64_t j = 0; j < d; j++) ss += (x[j] - m) * (x[j] - m);
    float r = (float)(1.0 / sqrt(ss / (double)d + eps));
    mean[i] = (float)m;
    rstd[i] = r;
    for (int64_t j = 0; j < d; j++) out[i * d + j] = (x[j] - (float)m) * r * gamma[j] + beta[j];
  }
}

void ps_nn_layernorm_backward(float *din, float *dgamma, float *dbeta, const float *dout, const float *in,
                              const float *mean, const float *rstd, const float *gamma, int64_t n, int64_t d) {
  for (int64_t i = 0; i < n; i++) {
    const float *x = in + i * d, *dy = dout + i * d;
    double a = 0, bq = 0;
    for (int64_t j = 0; j < d; j++) {
      float xh = (x[j] - mean[i]) * rstd[i];
      float g = dy[j] * gamma[j];
      a += g;
      bq += g * xh;
      if (dgamma) dgamma[j] += dy[j] * xh;
      if (dbeta) dbeta[j] += dy[j];
    }
    a /= (double)d;
    bq /= (double)d;
    if (din)
      for (int64_t j = 0; j < d; j++) {
        float xh = (x[j] - mean[i]) * rstd[i];
        din[i * d + j] += rstd[i] * (dy[j] * gamma[j] - (float)a - xh * (float)bq);
      }
  }
}

// ---- Dropout ---------------------------------------------------------------------------------
void ps_nn_dropout_forward(float *out, uint8_t *mask, const float *in, float p, uint64_t seed,
                           const uint64_t *row_streams, int64_t n, int64_t d) {
  float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  for (int64_t i = 0; i < n; i++) {
    ps_rng r = ps_rng_make(seed, row_streams[i]);
    for (int64_t j = 0; j < d; j++) {
      uint8_t keep = ps_rng_uniform(&r, (uint64_t)j) >= p;
      mask[i * d + j] = keep;
      out[i * d + j] = keep ? in[i * d + j] * scale : 0.0f;
    }
  }
}

void ps_nn_dropout_backward(float *din, const float *dout, const uint8_t *mask, float p, int64_t n, int64_t d) {
  float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  for (int64_t i = 0; i < n * d; i++)
    if (mask[i]) din[i] += dout[i] * scale;
}

// ---- pooling ---------------------------------------------------------------------------------
void ps_nn_maxpool2d_forward(float *out, uint8_t *argmax, const float *in, int64_t n, int64_t c, int64_t h,
                             int64_t w, int k) {
  int64_t oh = h / k, ow = w / k;
  for (int64_t p = 0; p < n * c; p++) {
    const float *x = in + p * h * w;
    for (int64_t oy = 0; oy < oh; oy++)
      for (int64_t ox = 0; ox < ow; ox++) {
        float best = x[oy * k * w + ox * k];
        int bi = 0;
        for (int ky = 0; ky < k; ky++)
          for (int kx = 0; kx < k; kx++) {
            float v = x[(oy * k + ky) * w + ox * k + kx];
            if (v > best) {
              best = v;
              bi = ky * k + kx;
            }
          }
        out[(p * oh + oy) * ow + ox] = best;
        argmax[(p * oh + oy) * ow + ox] = (uint8_t)bi;
      }
  }
}

void ps_nn_maxpool2d_backward(float *din, const float *dout, const uint8_t *argmax, int64_t n, int64_t c, int64_t h,
                              int64_t w, int k) {
  int64_t oh = h / k, ow = w / k;
  for (int64_t p = 0; p < n * c; p++)
    for (int64_t oy = 0; oy < oh; oy++)
      for (int64_t ox = 0; ox < ow; ox++) {
        int64_t o = (p * oh + oy) * ow + ox;
        int bi = argmax[o];
        din[p * h * w + (oy * k + bi / k) * w + ox * k + bi % k] += dout[o];
      }
}

void ps_nn_avgpool_forward(float *out, const float *in, int64_t n, int64_t c, int64_t hw) {
  for (int64_t p = 0; p < n * c; p++) {
    double s = 0;
    for (int64_t k = 0; k < hw; k++) s += in[p * hw + k];
    out[p] = (float)(s / (double)hw);
  }
}

void ps_nn_avgpool_backward(float *din, const float *dout, int64_t n, int64_t c, int64_t hw) {
  for (int64_t p = 0; p < n * c; p++) {
    float g = dout[p] / (float)hw;
    for (int64_t k = 0; k < hw; k++) din[p * hw + k] += g;
  }
}

// ---- fused conv block ---------------------------------------------------------------------------
ps_status ps_nn_convblock_forward(float *pool_out, uint8_t *argmax, float *z, float *mean, float *rstd,
                                  const float *in, const float *w, const float *gamma, const float *beta,
                                  float *running_mean, float *running_var, const ps_nn_convblock_dims *d,
                                  const ps_nn_bn_opts *o, ps_nn_convblock_scratch *s) {
  const int64_t n = d->n, c = d->c, oc = d->oc, h = d->h, wd = d->w, hw = h * wd, ck = c * 9;
  const int64_t colsz = ps_nn_conv_col_floats(c, h, wd, 3), oh = h / 2, ow = wd / 2;
  PS_REQUIRE(h % 2 == 0 && wd % 2 == 0, "conv block: input %lldx%lld must be even for 2x2 pooling", (long long)h,
             (long long)wd);
  PS_REQUIRE(o->groups <= 0 || oc % o->groups == 0, "conv block: %lld channels not divisible into %d groups",
             (long long)oc, o->groups);
  int nth = omp_get_max_threads();
  memset(s->stats, 0, (size_t)(nth * (2 * oc + 1)) * sizeof(double));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    int t = omp_get_thread_num();
    float *cl = s->col + t * colsz, *zi = z + i * oc * hw;
    double *st = s->stats + t * (2 * oc + 1);
    im2col(cl, in + i * c * hw, c, h, wd, 3);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)oc, (int)hw, (int)ck, 1.0f, w, (int)ck, cl, (int)hw,
                0.0f, zi, (int)hw);
    if (o->groups > 0) { // GroupNorm: per-tile statistics over (OC/groups channels, H, W)
      const int64_t cg = oc / o->groups;
      for (int64_t g = 0; g < o->groups; g++) {
        double sm, ss;
        sum_sumsq(zi + g * cg * hw, cg * hw, &sm, &ss);
        double m = sm / (double)(cg * hw), var = ss / (double)(cg * hw) - m * m;
        mean[i * o->groups + g] = (float)m;
        rstd[i * o->groups + g] = (float)(1.0 / sqrt((var > 0 ? var : 0) + o->eps));
      }
    } else if (o->training) // BN statistics while the tile's output is hot in cache
      for (int64_t j = 0; j < oc; j++) {
        double sm, ss;
        sum_sumsq(zi + j * hw, hw, &sm, &ss);
        st[j] += sm;
        st[oc + j] += ss;
      }
  }
  if (o->groups <= 0) {
    for (int t = 1; t < nth; t++)
      for (int64_t j = 0; j < 2 * oc; j++) s->stats[j] += s->stats[t * (2 * oc + 1) + j];
    s->stats[2 * oc] = (double)(n * hw);
    PS_TRY(ps_nn_bn_finish_stats(mean, rstd, running_mean, running_var, oc, o, s->stats));
  }
  // Norm + ReLU + 2x2 max-pool in one pass; the normalized map is never stored.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < oc; j++) {
      int64_t si = o->groups > 0 ? i * o->groups + j / (oc / o->groups) : j; // statistics index
      float sc = gamma[j] * rstd[si], sh = beta[j] - mean[si] * sc;
      const float *zz = z + (i * oc + j) * hw;
      float *po = pool_out + (i * oc + j) * oh * ow;
      uint8_t *am = argmax + (i * oc + j) * oh * ow;
      for (int64_t oy = 0; oy < oh; oy++)
        for (int64_t ox = 0; ox < ow; ox++) {
          const float *q = zz + 2 * oy * wd + 2 * ox;
          float v0 = q[0] * sc + sh, v1 = q[1] * sc + sh, v2 = q[wd] * sc + sh, v3 = q[wd + 1] * sc + sh;
          float best = v0 > 0.0f ? v0 : 0.0f;
          int bi = 0;
          if (v1 > best) best = v1, bi = 1;
          if (v2 > best) best = v2, bi = 2;
          if (v3 > best) best = v3, bi = 3;
          po[oy * ow + ox] = best;
          am[oy * ow + ox] = (uint8_t)bi;
        }
    }
  return PS_OK;
}

// GroupNorm variant of the block backward: everything is per tile, so one pass per tile
// (unpool + ReLU mask, group sums, dz, conv GEMMs); gamma/beta gradients in per-thread doubles.
static ps_status groupnorm_block_backward(float *din, float *dw, float *dgamma, float *dbeta, float *gz,
                                          const float *dpool, const uint8_t *argmax, const float *z,
                                          const float *mean, const float *rstd, const float *in, const float *w,
                                          const float *gamma, const float *beta, const ps_nn_convblock_dims *d,
                                          const ps_nn_bn_opts *o, ps_nn_convblock_scratch *s) {
  const int64_t n = d->n, c = d->c, oc = d->oc, h = d->h, wd = d->w, hw = h * wd, G = o->groups, cg = oc / G;
  const int64_t colsz = ps_nn_conv_col_floats(c, h, wd, 3), oh = h / 2, ow = wd / 2, wsz = oc * c * 9;
  int nth = omp_get_max_threads();
  memset(s->dw_scratch, 0, (size_t)(nth * wsz) * sizeof(float));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    int t = omp_get_thread_num();
    double *st = s->stats + t * (2 * oc + 1); // dbeta (OC), dgamma (OC)
    float *gt = gz + t * oc * hw;
    for (int64_t g = 0; g < G; g++) {
      const float mg = mean[i * G + g], rg = rstd[i * G + g];
      double sa = 0, sb = 0; // sum of dxhat, sum of dxhat * xhat over the group
      for (int64_t j = g * cg; j < (g + 1) * cg; j++) {
        float sc = gamma[j] * rg, sh = beta[j] - mg * sc;
        const float *zz = z + (i * oc + j) * hw;
        const float *dp = dpool + (i * oc + j) * oh * ow;
        const uint8_t *am = argmax + (i * oc + j) * oh * ow;
        float *gg = gt + j * hw;
        memset(gg, 0, (size_t)hw * sizeof(float));
        double sdy = 0, sdx = 0;
        for (int64_t oy = 0; oy < oh; oy++)
          for (int64_t ox = 0; ox < ow; ox++) {
            int bi = am[oy * ow + ox];
            int64_t pos = (2 * oy + (bi >> 1)) * wd + 2 * ox + (bi & 1);
            if (zz[pos] * sc + sh > 0.0f) {
              float gv = dp[oy * ow + ox];
              gg[pos] = gv;
              sdy += gv;
              sdx += (double)gv * ((zz[pos] - mg) * rg);
            }
          }
        st[j] += sdy;
        st[oc + j] += sdx;
        sa += gamma[j] * sdy;
        sb += gamma[j] * sdx;
      }
      const float a = (float)(sa / (double)(cg * hw)), bq = (float)(sb / (double)(cg * hw));
      for (int64_t j = g * cg; j < (g + 1) * cg; j++) {
        const float *zz = z + (i * oc + j) * hw;
        float *gg = gt + j * hw;
        for (int64_t k = 0; k < hw; k++) gg[k] = rg * (gamma[j] * gg[k] - a - (zz[k] - mg) * rg * bq);
      }
    }
    conv_backward_sample(din ? din + i * c * hw : NULL, s->dw_scratch + t * wsz, gt, in + i * c * hw, w, c, oc, h, wd,
                         3, s->col + t * colsz);
  }
  for (int t = 0; t < nth; t++)
    for (int64_t j = 0; j < oc; j++) {
      dbeta[j] += (float)s->stats[t * (2 * oc + 1) + j];
      dgamma[j] += (float)s->stats[t * (2 * oc + 1) + oc + j];
    }
  reduce_thread_buffers(dw, s->dw_scratch, wsz, nth);
  return PS_OK;
}

ps_status ps_nn_convblock_backward(float *din, float *dw, float *dgamma, float *dbeta, float *gz, const float *dpool,
                                   const uint8_t *argmax, const float *z, const float *mean, const float *rstd,
                                   const float *in, const float *w, const float *gamma, const float *beta,
                                   const ps_nn_convblock_dims *d, const ps_nn_bn_opts *o, ps_nn_convblock_scratch *s) {
  const int64_t n = d->n, c = d->c, oc = d->oc, h = d->h, wd = d->w, hw = h * wd;
  const int64_t colsz = ps_nn_conv_col_floats(c, h, wd, 3), oh = h / 2, ow = wd / 2, wsz = oc * c * 9;
  int nth = omp_get_max_threads();
  memset(s->stats, 0, (size_t)(nth * (2 * oc + 1)) * sizeof(double));
  if (o->groups > 0) return groupnorm_block_backward(din, dw, dgamma, dbeta, gz, dpool, argmax, z, mean, rstd, in, w,
                                                     gamma, beta, d, o, s);
  // 1. Local BN sums of dy = unpool(dpool) * relu'(.): only the pooled winners carry gradient,
  //    so nothing of size (N, OC, H, W) is written here.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    double *st = s->stats + omp_get_thread_num() * (2 * oc + 1);
    for (int64_t j = 0; j < oc; j++) {
      float sc = gamma[j] * rstd[j], sh = beta[j] - mean[j] * sc;
      const float *zz = z + (i * oc + j) * hw;
      const float *dp = dpool + (i * oc + j) * oh * ow;
      const uint8_t *am = argmax + (i * oc + j) * oh * ow;
      double sdy = 0, sdx = 0;
      for (int64_t oy = 0; oy < oh; oy++)
        for (int64_t ox = 0; ox < ow; ox++) {
          int bi = am[oy * ow + ox];
          float zv = zz[(2 * oy + (bi >> 1)) * wd + 2 * ox + (bi & 1)];
          if (zv * sc + sh > 0.0f) {
            float gv = dp[oy * ow + ox];
            sdy += gv;
            sdx += (double)gv * ((zv - mean[j]) * rstd[j]);
          }
        }
      st[j] += sdy;
      st[oc + j] += sdx;
    }
  }
  for (int t = 1; t < nth; t++)
    for (int64_t j = 0; j < 2 * oc; j++) s->stats[j] += s->stats[t * (2 * oc + 1) + j];
  s->stats[2 * oc] = (double)(n * hw);
  for (int64_t j = 0; j < oc; j++) { // local sums: parameter gradients are all-reduced later
    dgamma[j] += (float)s->stats[oc + j];
    dbeta[j] += (float)s->stats[j];
  }
  if (o->training && o->reducer.fn) PS_TRY(o->reducer.fn(o->reducer.ctx, s->stats, 2 * oc + 1));
  const double cnt = s->stats[2 * oc] > 0 ? s->stats[2 * oc] : 1.0; // 0 only when there is no tile at all
  const double *stats = s->stats;
  // 2. Per tile, in a cache-resident per-thread buffer: dz = BN backward of the unpooled,
  //    ReLU-masked gradient, then the conv GEMMs.
  memset(s->dw_scratch, 0, (size_t)(nth * wsz) * sizeof(float));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    int t = omp_get_thread_num();
    float *gt = gz + t * oc * hw;
    for (int64_t j = 0; j < oc; j++) {
      float sc = gamma[j] * rstd[j], sh = beta[j] - mean[j] * sc, g = sc;
      float a = o->training ? (float)(stats[j] / cnt) : 0.0f, bq = o->training ? (float)(stats[oc + j] / cnt) : 0.0f;
      const float *zz = z + (i * oc + j) * hw;
      const float *dp = dpool + (i * oc + j) * oh * ow;
      const uint8_t *am = argmax + (i * oc + j) * oh * ow;
      float *gg = gt + j * hw;
      memset(gg, 0, (size_t)hw * sizeof(float));
      for (int64_t oy = 0; oy < oh; oy++)
        for (int64_t ox = 0; ox < ow; ox++) {
          int bi = am[oy * ow + ox];
          int64_t pos = (2 * oy + (bi >> 1)) * wd + 2 * ox + (bi & 1);
          if (zz[pos] * sc + sh > 0.0f) gg[pos] = dp[oy * ow + ox];
        }
      float mj = mean[j], rj = rstd[j];
      for (int64_t k = 0; k < hw; k++) gg[k] = g * (gg[k] - a - (zz[k] - mj) * rj * bq);
    }
    conv_backward_sample(din ? din + i * c * hw : NULL, s->dw_scratch + t * wsz, gt, in + i * c * hw, w, c, oc, h, wd,
                         3, s->col + t * colsz);
  }
  reduce_thread_buffers(dw, s->dw_scratch, wsz, nth);
  return PS_OK;
}

// ---- gated attention ----------------------------------------------------------------------------
void ps_nn_gattn_forward(float *out, ps_nn_gattn_cache *c, const float *h, const float *v, const float *bv,
                         const float *u, const float *bu, const float *wv, const int64_t *off, int64_t nbags,
                         int64_t d, int64_t a) {
  int64_t nt = off[nbags];
  ps_nn_linear_forward(c->a, NULL, h, v, bv, nt, d, a, PS_NN_ACT_TANH);
  ps_nn_linear_forward(c->g, NULL, h, u, bu, nt, d, a, PS_NN_ACT_SIGMOID);
  for (int64_t b = 0; b < nbags; b++) {
    float *o = out + b * d;
    memset(o, 0, (size_t)d * sizeof(float));
    if (off[b + 1] == off[b]) continue;
    float mx = -INFINITY;
    for (int64_t k = off[b]; k < off[b + 1]; k++) {
      float s = 0;
      for (int64_t j = 0; j < a; j++) s += wv[j] * c->a[k * a + j] * c->g[k * a + j];
      c->alpha[k] = s;
      if (s > mx) mx = s;
    }
    double z = 0;
    for (int64_t k = off[b]; k < off[b + 1]; k++) z += (c->alpha[k] = expf(c->alpha[k] - mx));
    for (int64_t k = off[b]; k < off[b + 1]; k++) {
      c->alpha[k] = (float)(c->alpha[k] / z);
      for (int64_t j = 0; j < d; j++) o[j] += c->alpha[k] * h[k * d + j];
    }
  }
}

void ps_nn_gattn_backward(float *dh, float *dv, float *dbv, float *du, float *dbu, float *dwv, const float *dout,
                          const ps_nn_gattn_cache *c, const float *h, const float *v, const float *u, const float *wv,
                          const int64_t *off, int64_t nbags, int64_t d, int64_t a, float *scratch) {
  int64_t nt = off[nbags];
  float *da = scratch, *dg = da + nt * a, *ds = dg + nt * a, *dal = ds + nt;
  for (int64_t b = 0; b < nbags; b++) {
    const float *go = dout + b * d;
    double dot = 0;
    for (int64_t k = off[b]; k < off[b + 1]; k++) {
      float s = 0;
      for (int64_t j = 0; j < d; j++) {
        s += go[j] * h[k * d + j];
        dh[k * d + j] += c->alpha[k] * go[j];
      }
      dal[k] = s;
      dot += (double)c->alpha[k] * s;
    }
    for (int64_t k = off[b]; k < off[b + 1]; k++) ds[k] = c->alpha[k] * (dal[k] - (float)dot);
  }
  for (int64_t k = 0; k < nt; k++)
    for (int64_t j = 0; j < a; j++) {
      float av = c->a[k * a + j], gv = c->g[k * a + j];
      da[k * a + j] = ds[k] * wv[j] * gv;
      dg[k * a + j] = ds[k] * wv[j] * av;
      dwv[j] += ds[k] * av * gv;
    }
  ps_nn_linear_backward(dh, dv, dbv, da, h, v, c->a, NULL, nt, d, a, PS_NN_ACT_TANH);
  ps_nn_linear_backward(dh, du, dbu, dg, h, u, c->g, NULL, nt, d, a, PS_NN_ACT_SIGMOID);
}

// ---- transformer encoder layer ---------------------------------------------------------------------
int64_t ps_nn_mhsa_cache_floats(const ps_nn_mhsa_dims *s) {
  int64_t n = s->b * s->t;
  return n * (3 * s->d + 4 * s->d + 4 + 2 * s->df) + s->b * s->nh * s->t * s->t;
}
int64_t ps_nn_mhsa_scratch_floats(const ps_nn_mhsa_dims *s) { return s->b * s->t * (7 * s->d + s->df); }

void ps_nn_mhsa_cache_bind(ps_nn_mhsa_cache *c, float *mem, const ps_nn_mhsa_dims *s) {
  int64_t n = s->b * s->t, d = s->d;
  c->qkv = mem, mem += n * 3 * d;
  c->prob = mem, mem += s->b * s->nh * s->t * s->t;
  c->ctx = mem, mem += n * d;
  c->r1 = mem, mem += n * d;
  c->y1 = mem, mem += n * d;
  c->r2 = mem, mem += n * d;
  c->mean1 = mem, mem += n;
  c->rstd1 = mem, mem += n;
  c->mean2 = mem, mem += n;
  c->rstd2 = mem, mem += n;
  c->hpre = mem, mem += n * s->df;
  c->h = mem;
}

void ps_nn_mhsa_forward(float *y, ps_nn_mhsa_cache *c, const float *x, const uint8_t *mask,
                        const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s) {
  const int64_t B = s->b, T = s->t, D = s->d, NH = s->nh, DH = D / NH, N = B * T;
  const float scale = 1.0f / sqrtf((float)DH);
  ps_nn_linear_forward(c->qkv, NULL, x, p->wqkv, p->bqkv, N, D, 3 * D, PS_NN_ACT_NONE);
  for (int64_t b = 0; b < B; b++)
    for (int64_t hh = 0; hh < NH; hh++)
      for (int64_t i = 0; i < T; i++) {
        float *pr = c->prob + ((b * NH + hh) * T + i) * T;
        const float *q = c->qkv + (b * T + i) * 3 * D + hh * DH;
        float mx = -INFINITY;
        for (int64_t j = 0; j < T; j++) {
          if (!mask[b * T + j]) continue;
          const float *k = c->qkv + (b * T + j) * 3 * D + D + hh * DH;
          float sc = 0;
          for (int64_t e = 0; e < DH; e++) sc += q[e] * k[e];
          pr[j] = sc * scale;
          if (pr[j] > mx) mx = pr[j];
        }
        double z = 0;
        for (int64_t j = 0; j < T; j++) {
          pr[j] = mask[b * T + j] ? expf(pr[j] - mx) : 0.0f; // masked keys: exactly 0
          z += pr[j];
        }
        float *cx = c->ctx + (b * T + i) * D + hh * DH;
        memset(cx, 0, (size_t)DH * sizeof(float));
        for (int64_t j = 0; j < T; j++) {
          pr[j] = (float)(pr[j] / z);
          if (!mask[b * T + j]) continue;
          const float *v = c->qkv + (b * T + j) * 3 * D + 2 * D + hh * DH;
          for (int64_t e = 0; e < DH; e++) cx[e] += pr[j] * v[e];
        }
      }
  ps_nn_linear_forward(c->r1, NULL, c->ctx, p->wo, p->bo, N, D, D, PS_NN_ACT_NONE);
  for (int64_t i = 0; i < N * D; i++) c->r1[i] += x[i];
  ps_nn_layernorm_forward(c->y1, c->mean1, c->rstd1, c->r1, p->ln1_g, p->ln1_b, N, D, 1e-5f);
  ps_nn_linear_forward(c->h, c->hpre, c->y1, p->w1, p->b1, N, D, s->df, PS_NN_ACT_GELU);
  ps_nn_linear_forward(c->r2, NULL, c->h, p->w2, p->b2, N, s->df, D, PS_NN_ACT_NONE);
  for (int64_t i = 0; i < N * D; i++) c->r2[i] += c->y1[i];
  ps_nn_layernorm_forward(y, c->mean2, c->rstd2, c->r2, p->ln2_g, p->ln2_b, N, D, 1e-5f);
}

void ps_nn_mhsa_backward(float *dx, ps_nn_mhsa_grads *g, float *dy, const ps_nn_mhsa_cache *c, const float *x,
                         const uint8_t *mask, const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s, float *scratch) {
  const int64_t B = s->b, T = s->t, D = s->d, NH = s->nh, DH = D / NH, N = B * T, DF = s->df;
  const float scale = 1.0f / sqrtf((float)DH);
  float *dr2 = scratch, *dy1 = dr2 + N * D, *dh = dy1 + N * D, *dr1 = dh + N * DF, *dctx = dr1 + N * D,
        *dqkv = dctx + N * D;
  memset(scratch, 0, (size_t)ps_nn_mhsa_scratch_floats(s) * sizeof(float));
  ps_nn_layernorm_backward(dr2, g->ln2_g, g->ln2_b, dy, c->r2, c->mean2, c->rstd2, p->ln2_g, N, D);
  memcpy(dy1, dr2, (size_t)(N * D) * sizeof(float)); // residual
  ps_nn_linear_backward(dh, g->w2, g->b2, dr2, c->h, p->w2, NULL, NULL, N, DF, D, PS_NN_ACT_NONE);
  ps_nn_linear_backward(dy1, g->w1, g->b1, dh, c->y1, p->w1, c->h, c->hpre, N, D, DF, PS_NN_ACT_GELU);
  ps_nn_layernorm_backward(dr1, g->ln1_g, g->ln1_b, dy1, c->r1, c->mean1, c->rstd1, p->ln1_g, N, D);
  for (int64_t i = 0; i < N * D; i++) dx[i] += dr1[i]; // residual
  ps_nn_linear_backward(dctx, g->wo, g->bo, dr1, c->ctx, p->wo, NULL, NULL, N, D, D, PS_NN_ACT_NONE);
  for (int64_t b = 0; b < B; b++)
    for (int64_t hh = 0; hh < NH; hh++)
      for (int64_t i = 0; i < T; i++) {
        const float *pr = c->prob + ((b * NH + hh) * T + i) * T;
        const float *dc = dctx + (b * T + i) * D + hh * DH;
        float dp[64]; // T <= 64 (checked by the model)
        double dot = 0;
        for (int64_t j = 0; j < T; j++) {
          dp[j] = 0;
          if (!mask[b * T + j]) continue;
          const float *v = c->qkv + (b * T + j) * 3 * D + 2 * D + hh * DH;
          float *dv = dqkv + (b * T + j) * 3 * D + 2 * D + hh * DH;
          for (int64_t e = 0; e < DH; e++) {
            dp[j] += dc[e] * v[e];
            dv[e] += pr[j] * dc[e];
          }
          dot += (double)pr[j] * dp[j];
        }
        const float *q = c->qkv + (b * T + i) * 3 * D + hh * DH;
        float *dq = dqkv + (b * T + i) * 3 * D + hh * DH;
        for (int64_t j = 0; j < T; j++) {
          if (!mask[b * T + j]) continue;
          float dsc = pr[j] * (dp[j] - (float)dot) * scale;
          const float *k = c->qkv + (b * T + j) * 3 * D + D + hh * DH;
          float *dk = dqkv + (b * T + j) * 3 * D + D + hh * DH;
          for (int64_t e = 0; e < DH; e++) {
            dq[e] += dsc * k[e];
            dk[e] += dsc * q[e];
          }
        }
      }
  ps_nn_linear_backward(dx, g->wqkv, g->bqkv, dqkv, x, p->wqkv, NULL, NULL, N, D, 3 * D, PS_NN_ACT_NONE);
}
