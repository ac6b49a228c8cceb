#include "ps_layers.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "ps_convblock_cpu.h"
#include "ps_nn_kernels.h"
#include "ps_ops.h"
#include "ps_rng.h"

static const char *const act_names[] = {"none", "relu", "gelu", "tanh", "sigmoid"};
_Static_assert(sizeof(act_names) / sizeof(act_names[0]) == PS_NN_ACT_COUNT, "activation name table");
const char *ps_nn_act_name(ps_nn_act a) { return (unsigned)a < PS_NN_ACT_COUNT ? act_names[a] : "?"; }

// Activations: the kernel bodies of ps_nn_kernels.h on the host executor (the codes match).
_Static_assert(PS_NN_ACT_RELU == 1 && PS_NN_ACT_GELU == 2 && PS_NN_ACT_TANH == 3 && PS_NN_ACT_SIGMOID == 4,
               "activation codes of k_act_forward");
static const ps_nn_exec host_ex = {PS_CPU};

void ps_nn_act_forward(float *x, float *pre, int64_t n, ps_nn_act act) {
  if (act != PS_NN_ACT_NONE) ps_nn_launch_act_forward(&host_ex, n, x, pre, (int)act); // host: cannot fail
}

void ps_nn_act_backward(float *dy, const float *out, const float *pre, int64_t n, ps_nn_act act) {
  if (act != PS_NN_ACT_NONE) ps_nn_launch_act_backward(&host_ex, n, dy, out, pre, (int)act);
}

// ---- Linear: tensor's ps_linear_* (threaded GEMM, CUDA dispatch) + nn's activation body --------
#define WRAP(ptr, ...) ps_tensor_wrap((void *)(ptr), PS_F32, PS_CPU, PS_SHAPE(__VA_ARGS__))
#define WRAPX(ptr, ...) ps_tensor_wrap((void *)(ptr), PS_F32, ex->device, PS_SHAPE(__VA_ARGS__))

ps_status ps_nn_linear_forward_ex(const ps_nn_exec *ex, float *out, float *pre, const float *in, const float *w,
                                  const float *b, int64_t n, int64_t din, int64_t dout, ps_nn_act act) {
  if (n == 0) return PS_OK;
  ps_tensor to = WRAPX(out, n, dout), ti = WRAPX(in, n, din), tw = WRAPX(w, dout, din), tb = WRAPX(b, dout);
  PS_TRY(ps_linear_forward(&to, &ti, &tw, b ? &tb : NULL));
  if (act == PS_NN_ACT_NONE) return PS_OK;
  return ps_nn_launch_act_forward(ex, n * dout, out, pre, (int)act);
}

ps_status ps_nn_linear_forward(float *out, float *pre, const float *in, const float *w, const float *b, int64_t n,
                               int64_t din, int64_t dout, ps_nn_act act) {
  return ps_nn_linear_forward_ex(&host_ex, out, pre, in, w, b, n, din, dout, act);
}

ps_status ps_nn_linear_backward_ex(const ps_nn_exec *ex, float *din, float *dw, float *db, float *dout,
                                   const float *in, const float *w, const float *out, const float *pre, int64_t n,
                                   int64_t din_, int64_t dout_, ps_nn_act act) {
  if (n == 0) return PS_OK;
  if (act != PS_NN_ACT_NONE) PS_TRY(ps_nn_launch_act_backward(ex, n * dout_, dout, out, pre, (int)act));
  ps_tensor tdi = WRAPX(din, n, din_), tdw = WRAPX(dw, dout_, din_), tdb = WRAPX(db, dout_),
            tdo = WRAPX(dout, n, dout_), ti = WRAPX(in, n, din_), tw = WRAPX(w, dout_, din_);
  return ps_linear_backward(din ? &tdi : NULL, dw ? &tdw : NULL, db ? &tdb : NULL, &tdo, &ti, &tw);
}

ps_status ps_nn_linear_backward(float *din, float *dw, float *db, float *dout, const float *in, const float *w,
                                const float *out, const float *pre, int64_t n, int64_t din_, int64_t dout_,
                                ps_nn_act act) {
  return ps_nn_linear_backward_ex(&host_ex, din, dw, db, dout, in, w, out, pre, n, din_, dout_, act);
}

static const ps_conv2d_params conv3x3 = {1, 1, 1, 1}; // stride 1, "same" padding

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
        ps_cb_sum_sumsq(in + (i * c + j) * hw, hw, &s, &ss);
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

// ---- LayerNorm, dropout: tensor's ops ---------------------------------------------------------
ps_status ps_nn_layernorm_forward_ex(const ps_nn_exec *ex, float *out, float *mean, float *rstd, const float *in,
                                     const float *gamma, const float *beta, int64_t n, int64_t d, float eps) {
  if (n == 0) return PS_OK;
  ps_tensor to = WRAPX(out, n, d), tm = WRAPX(mean, n), tr = WRAPX(rstd, n), ti = WRAPX(in, n, d),
            tg = WRAPX(gamma, d), tb = WRAPX(beta, d);
  return ps_layernorm_forward(&to, &tm, &tr, &ti, &tg, &tb, eps);
}
ps_status ps_nn_layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                                  const float *beta, int64_t n, int64_t d, float eps) {
  return ps_nn_layernorm_forward_ex(&host_ex, out, mean, rstd, in, gamma, beta, n, d, eps);
}

ps_status ps_nn_layernorm_backward_ex(const ps_nn_exec *ex, float *din, float *dgamma, float *dbeta,
                                      const float *dout, const float *in, const float *mean, const float *rstd,
                                      const float *gamma, int64_t n, int64_t d) {
  if (n == 0) return PS_OK;
  ps_tensor tdi = WRAPX(din, n, d), tdg = WRAPX(dgamma, d), tdb = WRAPX(dbeta, d), tdo = WRAPX(dout, n, d),
            ti = WRAPX(in, n, d), tm = WRAPX(mean, n), tr = WRAPX(rstd, n), tg = WRAPX(gamma, d);
  return ps_layernorm_backward(din ? &tdi : NULL, dgamma ? &tdg : NULL, dbeta ? &tdb : NULL, &tdo, &ti, &tm, &tr, &tg);
}
ps_status ps_nn_layernorm_backward(float *din, float *dgamma, float *dbeta, const float *dout, const float *in,
                                   const float *mean, const float *rstd, const float *gamma, int64_t n, int64_t d) {
  return ps_nn_layernorm_backward_ex(&host_ex, din, dgamma, dbeta, dout, in, mean, rstd, gamma, n, d);
}

ps_status ps_nn_dropout_forward_ex(const ps_nn_exec *ex, float *out, uint8_t *mask, const float *in, float p,
                                   uint64_t seed, const uint64_t *row_streams, int64_t n, int64_t d) {
  if (n == 0) return PS_OK;
  ps_tensor to = WRAPX(out, n, d), ti = WRAPX(in, n, d), tm = ps_tensor_wrap(mask, PS_U8, ex->device, PS_SHAPE(n, d));
  return ps_dropout_forward(&to, &tm, &ti, p, seed, row_streams);
}
ps_status ps_nn_dropout_forward(float *out, uint8_t *mask, const float *in, float p, uint64_t seed,
                                const uint64_t *row_streams, int64_t n, int64_t d) {
  return ps_nn_dropout_forward_ex(&host_ex, out, mask, in, p, seed, row_streams, n, d);
}

ps_status ps_nn_dropout_backward_ex(const ps_nn_exec *ex, float *din, const float *dout, const uint8_t *mask, float p,
                                    int64_t n, int64_t d) {
  if (n == 0) return PS_OK;
  ps_tensor tdi = WRAPX(din, n, d), tdo = WRAPX(dout, n, d),
            tm = ps_tensor_wrap((void *)mask, PS_U8, ex->device, PS_SHAPE(n, d));
  return ps_dropout_backward(&tdi, &tdo, &tm, p);
}
ps_status ps_nn_dropout_backward(float *din, const float *dout, const uint8_t *mask, float p, int64_t n, int64_t d) {
  return ps_nn_dropout_backward_ex(&host_ex, din, dout, mask, p, n, d);
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

// ---- fused conv block ---------------------------------------------------------------------------
// Tiles per conv call in a block of tile size tile_floats (OC*H*W): as many as fill the dz buffer
// (planned for the largest block), at least s->chunk. Fewer, larger OpenMP regions: each region's
// barrier is costly when the threads share a core (launchers bind ranks; see docs/threads.md).
static int64_t block_chunk(const ps_nn_convblock_scratch *s, int64_t tile_floats) {
  int64_t ck = s->gz_floats / (tile_floats > 0 ? tile_floats : 1);
  return ck > s->chunk ? ck : s->chunk;
}

ps_status ps_nn_convblock_forward(float *pool_out, uint8_t *argmax, float *z, float *zwin, float *mean,
                                  float *rstd, const float *in, const float *w, const float *gamma, const float *beta,
                                  float *running_mean, float *running_var, const ps_nn_convblock_dims *d,
                                  const ps_nn_bn_opts *o, ps_nn_convblock_scratch *s) {
  const int64_t n = d->n, c = d->c, oc = d->oc, h = d->h, wd = d->w, hw = h * wd;
  PS_REQUIRE(h % 2 == 0 && wd % 2 == 0, "conv block: input %lldx%lld must be even for 2x2 pooling", (long long)h,
             (long long)wd);
  PS_REQUIRE(o->groups <= 0 || oc % o->groups == 0, "conv block: %lld channels not divisible into %d groups",
             (long long)oc, o->groups);
  PS_REQUIRE(s->chunk > 0 && s->gz && s->gz_floats >= s->chunk * oc * hw && s->ws,
             "conv block: scratch not planned for %lld-channel %lldx%lld tiles (chunk, gz, ws)", (long long)oc,
             (long long)h, (long long)wd);
  int nth = omp_get_max_threads();
  memset(s->stats, 0, (size_t)(nth * (2 * oc + 1)) * sizeof(double));
  ps_tensor tw = WRAP(w, oc, c, 3, 3), tws = WRAP(s->ws, s->ws_floats);
  // Chunks of tiles: tensor's conv (threaded, tuned lowering), then the statistics while the chunk's
  // output is still in cache.
  const int64_t chunk = block_chunk(s, oc * hw);
  for (int64_t i0 = 0; i0 < n; i0 += chunk) {
    const int64_t cn = n - i0 < chunk ? n - i0 : chunk;
    ps_tensor tin = WRAP(in + i0 * c * hw, cn, c, h, wd), tz = WRAP(z + i0 * oc * hw, cn, oc, h, wd);
    PS_TRY(ps_conv2d_forward(&tz, &tin, &tw, NULL, &conv3x3, &tws));
#pragma omp parallel for schedule(static)
    for (int64_t i = i0; i < i0 + cn; i++) {
      const float *zi = z + i * oc * hw;
      double *st = s->stats + omp_get_thread_num() * (2 * oc + 1);
      if (o->groups > 0) { // GroupNorm: per-tile statistics over (OC/groups channels, H, W)
        const int64_t cg = oc / o->groups;
        for (int64_t g = 0; g < o->groups; g++) {
          double sm, ss;
          ps_cb_sum_sumsq(zi + g * cg * hw, cg * hw, &sm, &ss);
          double m = sm / (double)(cg * hw), var = ss / (double)(cg * hw) - m * m;
          mean[i * o->groups + g] = (float)m;
          rstd[i * o->groups + g] = (float)(1.0 / sqrt((var > 0 ? var : 0) + o->eps));
        }
      } else if (o->training)
        for (int64_t j = 0; j < oc; j++) {
          double sm, ss;
          ps_cb_sum_sumsq(zi + j * hw, hw, &sm, &ss);
          st[j] += sm;
          st[oc + j] += ss;
        }
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
      const int64_t off = (i * oc + j) * hw;
      ps_cb_norm_relu_pool(pool_out + off / 4, argmax + off / 4, zwin + off / 4, z + off, sc, sh, h, wd);
    }
  return PS_OK;
}

int64_t ps_nn_convblock_chunk(void) {
  int t = omp_get_max_threads();
  return 16 * (int64_t)(t > 0 ? t : 1);
}

int64_t ps_nn_convblock_ws_floats(const ps_nn_convblock_dims *d, int64_t chunk) {
  ps_tensor tin = WRAP(NULL, chunk, d->c, d->h, d->w), tw = WRAP(NULL, d->oc, d->c, 3, 3);
  return ps_conv2d_workspace_floats(&tin, &tw, &conv3x3);
}

// dz of tiles [i0, i0 + cn) (in gz, chunk-major) through tensor's conv backward: dw accumulated, din
// accumulated when non-NULL (NULL for the first block, whose input is pixels).
static ps_status conv_chunk_backward(float *din, float *dw, const float *gz, const float *in, const float *w,
                                     int64_t i0, int64_t cn, const ps_nn_convblock_dims *d,
                                     const ps_nn_convblock_scratch *s) {
  const int64_t c = d->c, oc = d->oc, h = d->h, wd = d->w, hw = h * wd;
  ps_tensor tdi = WRAP(din ? din + i0 * c * hw : NULL, cn, c, h, wd), tdw = WRAP(dw, oc, c, 3, 3),
            tdo = WRAP(gz, cn, oc, h, wd), tin = WRAP(in + i0 * c * hw, cn, c, h, wd), tw = WRAP(w, oc, c, 3, 3),
            tws = WRAP(s->ws, s->ws_floats);
  return ps_conv2d_backward(din ? &tdi : NULL, &tdw, NULL, &tdo, &tin, &tw, &conv3x3, &tws);
}

// GroupNorm variant of the block backward: everything is per tile, so one pass per tile
// (unpool + ReLU mask, group sums, dz, conv GEMMs); gamma/beta gradients in per-thread doubles.
static ps_status groupnorm_block_backward(float *din, float *dw, float *dgamma, float *dbeta, float *gz,
                                          const float *dpool, const uint8_t *argmax, const float *z,
                                          const float *mean, const float *rstd, const float *in, const float *w,
                                          const float *gamma, const float *beta, const ps_nn_convblock_dims *d,
                                          const ps_nn_bn_opts *o, ps_nn_convblock_scratch *s) {
  const int64_t n = d->n, oc = d->oc, h = d->h, wd = d->w, hw = h * wd, G = o->groups, cg = oc / G;
  const int64_t oh = h / 2, ow = wd / 2;
  int nth = omp_get_max_threads();
  const int64_t chunk = block_chunk(s, oc * hw);
  for (int64_t i0 = 0; i0 < n; i0 += chunk) {
    const int64_t cn = n - i0 < chunk ? n - i0 : chunk;
#pragma omp parallel for schedule(static)
    for (int64_t i = i0; i < i0 + cn; i++) {
      int t = omp_get_thread_num();
      double *st = s->stats + t * (2 * oc + 1); // dbeta (OC), dgamma (OC)
      float *gt = gz + (i - i0) * oc * hw;
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
    }
    PS_TRY(conv_chunk_backward(din, dw, gz, in, w, i0, cn, d, s));
  }
  for (int t = 0; t < nth; t++)
    for (int64_t j = 0; j < oc; j++) {
      dbeta[j] += (float)s->stats[t * (2 * oc + 1) + j];
      dgamma[j] += (float)s->stats[t * (2 * oc + 1) + oc + j];
    }
  return PS_OK;
}

ps_status ps_nn_convblock_backward(float *din, float *dw, float *dgamma, float *dbeta, float *gz, const float *dpool,
                                   const uint8_t *argmax, const float *z, const float *zwin, const float *mean,
                                   const float *rstd, const float *in, const float *w, const float *gamma,
                                   const float *beta, const ps_nn_convblock_dims *d, const ps_nn_bn_opts *o,
                                   ps_nn_convblock_scratch *s) {
  const int64_t n = d->n, oc = d->oc, h = d->h, wd = d->w, hw = h * wd;
  int nth = omp_get_max_threads();
  memset(s->stats, 0, (size_t)(nth * (2 * oc + 1)) * sizeof(double));
  if (o->groups > 0) return groupnorm_block_backward(din, dw, dgamma, dbeta, gz, dpool, argmax, z, mean, rstd, in, w,
                                                     gamma, beta, d, o, s);
  // 1. Local BN sums of dy = unpool(dpool) * relu'(.): only the pooled winners carry gradient,
  //    so these read the winners' z (a quarter of the map) and write nothing of size (N, OC, H, W).
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    double *st = s->stats + omp_get_thread_num() * (2 * oc + 1);
    for (int64_t j = 0; j < oc; j++) {
      float sc = gamma[j] * rstd[j], sh = beta[j] - mean[j] * sc;
      const int64_t off = (i * oc + j) * hw;
      double sdy, sdz; // sum dy, sum dy * z
      ps_cb_bwd_sums(&sdy, &sdz, zwin + off / 4, dpool + off / 4, sc, sh, h / 2, wd / 2);
      st[j] += sdy;
      st[oc + j] += (sdz - (double)mean[j] * sdy) * (double)rstd[j]; // sum dy * xhat
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
  // 2. Per chunk of tiles, in a cache-sized buffer: dz = BN backward of the unpooled, ReLU-masked
  //    gradient, then tensor's conv backward on the chunk.
  const int64_t chunk = block_chunk(s, oc * hw);
  for (int64_t i0 = 0; i0 < n; i0 += chunk) {
    const int64_t cn = n - i0 < chunk ? n - i0 : chunk;
#pragma omp parallel for schedule(static)
    for (int64_t i = i0; i < i0 + cn; i++) {
      float *gt = gz + (i - i0) * oc * hw;
      for (int64_t j = 0; j < oc; j++) {
        float sc = gamma[j] * rstd[j], sh = beta[j] - mean[j] * sc, g = sc;
        float a = o->training ? (float)(stats[j] / cnt) : 0.0f, bq = o->training ? (float)(stats[oc + j] / cnt) : 0.0f;
        // dz = g (dy - a - xhat bq) = c0 + c1 z + g dy
        const float mj = mean[j], rj = rstd[j], c1 = -g * rj * bq, c0 = -g * a + g * mj * rj * bq;
        const int64_t off = (i * oc + j) * hw;
        ps_cb_bwd_dz(gt + j * hw, z + off, dpool + off / 4, argmax + off / 4, sc, sh, g, c0, c1, h, wd);
      }
    }
    PS_TRY(conv_chunk_backward(din, dw, gz, in, w, i0, cn, d, s));
  }
  return PS_OK;
}

// ---- device-style conv block ---------------------------------------------------------------------
int64_t ps_nn_convblock_dev_ws_floats(ps_device dev, const ps_nn_convblock_dims *d) {
  const int64_t n = d->n > 0 ? d->n : 1;
  ps_tensor tin = ps_tensor_wrap(NULL, PS_F32, dev, PS_SHAPE(n, d->c, d->h, d->w)),
            tw = ps_tensor_wrap(NULL, PS_F32, dev, PS_SHAPE(d->oc, d->c, 3, 3));
  return ps_conv2d_workspace_floats(&tin, &tw, &conv3x3);
}

// BatchNorm mean/rstd/running statistics from the totals in s->stats (reducer included), on the
// host: directly on the host executor; on CUDA through s->stats_h and s->chan_h (2*OC+1 doubles
// and 4*OC floats each way).
static ps_status bn_finish_ex(const ps_nn_exec *ex, float *mean, float *rstd, float *running_mean,
                              float *running_var, int64_t oc, const ps_nn_bn_opts *o, ps_nn_convblock_dev_scratch *s) {
  if (ex->device == PS_CPU) return ps_nn_bn_finish_stats(mean, rstd, running_mean, running_var, oc, o, s->stats);
  float *mh = s->chan_h, *rh = mh + oc, *rmh = rh + oc, *rvh = rmh + oc;
  const size_t cb = (size_t)oc * sizeof(float);
  if (o->training) PS_TRY(ps_nn_exec_download(ex, s->stats_h, s->stats, (size_t)(2 * oc + 1) * sizeof(double)));
  if (running_mean) {
    PS_TRY(ps_nn_exec_download(ex, rmh, running_mean, cb));
    PS_TRY(ps_nn_exec_download(ex, rvh, running_var, cb));
  }
  PS_TRY(ps_nn_bn_finish_stats(mh, rh, running_mean ? rmh : NULL, running_mean ? rvh : NULL, oc, o, s->stats_h));
  PS_TRY(ps_nn_exec_upload(ex, mean, mh, cb));
  PS_TRY(ps_nn_exec_upload(ex, rstd, rh, cb));
  if (running_mean && o->training) {
    PS_TRY(ps_nn_exec_upload(ex, running_mean, rmh, cb));
    PS_TRY(ps_nn_exec_upload(ex, running_var, rvh, cb));
  }
  return PS_OK;
}

ps_status ps_nn_convblock_forward_ex(const ps_nn_exec *ex, float *pool_out, uint8_t *argmax, float *z, float *mean,
                                     float *rstd, const float *in, const float *w, const float *gamma,
                                     const float *beta, float *running_mean, float *running_var,
                                     const ps_nn_convblock_dims *d, const ps_nn_bn_opts *o,
                                     ps_nn_convblock_dev_scratch *s) {
  const int64_t n = d->n, c = d->c, oc = d->oc, h = d->h, wd = d->w, hw = h * wd;
  PS_REQUIRE(h % 2 == 0 && wd % 2 == 0, "conv block: input %lldx%lld must be even for 2x2 pooling", (long long)h,
             (long long)wd);
  PS_REQUIRE(o->groups <= 0 || oc % o->groups == 0, "conv block: %lld channels not divisible into %d groups",
             (long long)oc, o->groups);
  if (n > 0) {
    ps_tensor tin = WRAPX(in, n, c, h, wd), tz = WRAPX(z, n, oc, h, wd), tw = WRAPX(w, oc, c, 3, 3),
              tws = WRAPX(s->ws, s->ws_floats > 0 ? s->ws_floats : 1);
    PS_TRY(ps_conv2d_forward(&tz, &tin, &tw, NULL, &conv3x3, &tws));
  }
  if (o->groups > 0) {
    PS_TRY(ps_nn_launch_gn_stats(ex, n * o->groups, mean, rstd, z, oc, o->groups, hw, o->eps));
  } else {
    if (o->training) { // SyncBN: a rank without tiles still joins the reduction (count 0)
      PS_TRY(ps_nn_launch_bn_partials(ex, n * oc, s->part, z, hw));
      PS_TRY(ps_nn_launch_channel_totals(ex, oc, s->stats, s->part, n, oc, (double)(n * hw)));
    }
    PS_TRY(bn_finish_ex(ex, mean, rstd, running_mean, running_var, oc, o, s));
  }
  return ps_nn_launch_convblock_epilogue(ex, n * oc * (h / 2) * (wd / 2), pool_out, argmax, z, mean, rstd, gamma, beta,
                                         oc, o->groups, h, wd);
}

ps_status ps_nn_convblock_backward_ex(const ps_nn_exec *ex, float *din, float *dw, float *dgamma, float *dbeta,
                                      const float *dpool, const uint8_t *argmax, const float *z, const float *mean,
                                      const float *rstd, const float *in, const float *w, const float *gamma,
                                      const float *beta, const ps_nn_convblock_dims *d, const ps_nn_bn_opts *o,
                                      ps_nn_convblock_dev_scratch *s) {
  const int64_t n = d->n, c = d->c, oc = d->oc, h = d->h, wd = d->w, hw = h * wd;
  PS_TRY(ps_nn_launch_convblock_backward_partials(ex, n * oc, s->part, dpool, argmax, z, mean, rstd, gamma, beta, oc,
                                                  o->groups, h, wd));
  PS_TRY(ps_nn_launch_channel_totals(ex, oc, s->stats, s->part, n, oc, (double)(n * hw)));
  // Local sums: parameter gradients are all-reduced later with the others.
  PS_TRY(ps_nn_launch_norm_param_grads(ex, oc, dgamma, dbeta, s->stats, oc));
  if (o->groups > 0) {
    PS_TRY(ps_nn_launch_gn_backward_group(ex, n * o->groups, s->gn_ab, s->part, gamma, oc, o->groups, hw));
    PS_TRY(ps_nn_launch_gn_backward_dz(ex, n * oc * hw, s->gz, dpool, argmax, z, mean, rstd, gamma, beta, s->gn_ab, oc,
                                       o->groups, h, wd));
  } else {
    if (o->training && o->reducer.fn) {
      const size_t sb = (size_t)(2 * oc + 1) * sizeof(double);
      PS_TRY(ps_nn_exec_download(ex, s->stats_h, s->stats, sb));
      PS_TRY(o->reducer.fn(o->reducer.ctx, s->stats_h, 2 * oc + 1));
      PS_TRY(ps_nn_exec_upload(ex, s->stats, s->stats_h, sb));
    }
    PS_TRY(ps_nn_launch_convblock_backward_dz_bn(ex, n * oc * hw, s->gz, dpool, argmax, z, mean, rstd, gamma, beta,
                                                 s->stats, oc, h, wd, o->training ? 1 : 0));
  }
  if (n == 0) return PS_OK;
  ps_tensor tdi = WRAPX(din, n, c, h, wd), tdw = WRAPX(dw, oc, c, 3, 3), tdo = WRAPX(s->gz, n, oc, h, wd),
            tin = WRAPX(in, n, c, h, wd), tw = WRAPX(w, oc, c, 3, 3),
            tws = WRAPX(s->ws, s->ws_floats > 0 ? s->ws_floats : 1);
  return ps_conv2d_backward(din ? &tdi : NULL, &tdw, NULL, &tdo, &tin, &tw, &conv3x3, &tws);
}

// ---- gated attention (kernel bodies; GEMMs through the linear layer) -----------------------------
ps_status ps_nn_gattn_forward_ex(const ps_nn_exec *ex, float *out, ps_nn_gattn_cache *c, const float *h,
                                 const float *v, const float *bv, const float *u, const float *bu, const float *wv,
                                 const int64_t *off, int64_t nt, int64_t nbags, int64_t d, int64_t a) {
  PS_TRY(ps_nn_linear_forward_ex(ex, c->a, NULL, h, v, bv, nt, d, a, PS_NN_ACT_TANH));
  PS_TRY(ps_nn_linear_forward_ex(ex, c->g, NULL, h, u, bu, nt, d, a, PS_NN_ACT_SIGMOID));
  PS_TRY(ps_nn_launch_gattn_scores(ex, nt, c->alpha, c->a, c->g, wv, a));
  PS_TRY(ps_nn_launch_gattn_softmax(ex, nbags, c->alpha, off));
  return ps_nn_launch_gattn_pool(ex, nbags * d, out, c->alpha, h, off, d);
}

ps_status ps_nn_gattn_forward(float *out, ps_nn_gattn_cache *c, const float *h, const float *v, const float *bv,
                              const float *u, const float *bu, const float *wv, const int64_t *off, int64_t nbags,
                              int64_t d, int64_t a) {
  return ps_nn_gattn_forward_ex(&host_ex, out, c, h, v, bv, u, bu, wv, off, off[nbags], nbags, d, a);
}

ps_status ps_nn_gattn_backward_ex(const ps_nn_exec *ex, float *dh, float *dv, float *dbv, float *du, float *dbu,
                                  float *dwv, const float *dout, const ps_nn_gattn_cache *c, const float *h,
                                  const float *v, const float *u, const float *wv, const int64_t *off,
                                  int64_t nt, int64_t nbags, int64_t d, int64_t a, float *scratch) {
  float *da = scratch, *dg = da + nt * a, *ds = dg + nt * a, *dal = ds + nt;
  PS_TRY(ps_nn_launch_gattn_backward_dal(ex, nt, dal, dout, h, off, nbags, d));
  PS_TRY(ps_nn_launch_gattn_backward_dh(ex, nt * d, dh, c->alpha, dout, off, nbags, d));
  PS_TRY(ps_nn_launch_gattn_backward_ds(ex, nbags, ds, dal, c->alpha, off));
  PS_TRY(ps_nn_launch_gattn_backward_dadg(ex, nt * a, da, dg, ds, c->a, c->g, wv, a));
  PS_TRY(ps_nn_launch_gattn_backward_dwv(ex, a, dwv, ds, c->a, c->g, nt, a));
  PS_TRY(ps_nn_linear_backward_ex(ex, dh, dv, dbv, da, h, v, c->a, NULL, nt, d, a, PS_NN_ACT_TANH));
  return ps_nn_linear_backward_ex(ex, dh, du, dbu, dg, h, u, c->g, NULL, nt, d, a, PS_NN_ACT_SIGMOID);
}

ps_status ps_nn_gattn_backward(float *dh, float *dv, float *dbv, float *du, float *dbu, float *dwv, const float *dout,
                               const ps_nn_gattn_cache *c, const float *h, const float *v, const float *u,
                               const float *wv, const int64_t *off, int64_t nbags, int64_t d, int64_t a,
                               float *scratch) {
  return ps_nn_gattn_backward_ex(&host_ex, dh, dv, dbv, du, dbu, dwv, dout, c, h, v, u, wv, off, off[nbags], nbags, d,
                                 a, scratch);
}

// ---- transformer encoder layer ---------------------------------------------------------------------
int64_t ps_nn_mhsa_cache_floats(const ps_nn_mhsa_dims *s) {
  int64_t n = s->b * s->t;
  return n * (3 * s->d + 4 * s->d + 4 + 2 * s->df) + s->b * s->nh * s->t * s->t;
}
// dr2, dy1, dr1, dctx (N, D), dh (N, DF), dqkv (N, 3D), score gradients (B, NH, T, T).
int64_t ps_nn_mhsa_scratch_floats(const ps_nn_mhsa_dims *s) {
  return s->b * s->t * (7 * s->d + s->df) + s->b * s->nh * s->t * s->t;
}

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

ps_status ps_nn_mhsa_forward_ex(const ps_nn_exec *ex, float *y, ps_nn_mhsa_cache *c, const float *x,
                                const uint8_t *mask, const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s) {
  const int64_t B = s->b, T = s->t, D = s->d, NH = s->nh, DH = D / NH, N = B * T;
  const float scale = 1.0f / sqrtf((float)DH);
  PS_TRY(ps_nn_linear_forward_ex(ex, c->qkv, NULL, x, p->wqkv, p->bqkv, N, D, 3 * D, PS_NN_ACT_NONE));
  PS_TRY(ps_nn_launch_mhsa_forward(ex, B * NH * T, c->prob, c->ctx, c->qkv, mask, T, D, NH, scale));
  PS_TRY(ps_nn_linear_forward_ex(ex, c->r1, NULL, c->ctx, p->wo, p->bo, N, D, D, PS_NN_ACT_NONE));
  PS_TRY(ps_nn_launch_add_inplace(ex, N * D, c->r1, x));
  PS_TRY(ps_nn_layernorm_forward_ex(ex, c->y1, c->mean1, c->rstd1, c->r1, p->ln1_g, p->ln1_b, N, D, 1e-5f));
  PS_TRY(ps_nn_linear_forward_ex(ex, c->h, c->hpre, c->y1, p->w1, p->b1, N, D, s->df, PS_NN_ACT_GELU));
  PS_TRY(ps_nn_linear_forward_ex(ex, c->r2, NULL, c->h, p->w2, p->b2, N, s->df, D, PS_NN_ACT_NONE));
  PS_TRY(ps_nn_launch_add_inplace(ex, N * D, c->r2, c->y1));
  return ps_nn_layernorm_forward_ex(ex, y, c->mean2, c->rstd2, c->r2, p->ln2_g, p->ln2_b, N, D, 1e-5f);
}

ps_status ps_nn_mhsa_forward(float *y, ps_nn_mhsa_cache *c, const float *x, const uint8_t *mask,
                             const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s) {
  return ps_nn_mhsa_forward_ex(&host_ex, y, c, x, mask, p, s);
}

ps_status ps_nn_mhsa_backward_ex(const ps_nn_exec *ex, float *dx, ps_nn_mhsa_grads *g, float *dy,
                                 const ps_nn_mhsa_cache *c, const float *x, const uint8_t *mask,
                                 const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s, float *scratch) {
  const int64_t B = s->b, T = s->t, D = s->d, NH = s->nh, DH = D / NH, N = B * T, DF = s->df;
  const float scale = 1.0f / sqrtf((float)DH);
  float *dr2 = scratch, *dy1 = dr2 + N * D, *dh = dy1 + N * D, *dr1 = dh + N * DF, *dctx = dr1 + N * D,
        *dqkv = dctx + N * D, *dsc = dqkv + N * 3 * D;
  PS_TRY(ps_nn_exec_zero(ex, scratch, (size_t)ps_nn_mhsa_scratch_floats(s) * sizeof(float)));
  PS_TRY(ps_nn_layernorm_backward_ex(ex, dr2, g->ln2_g, g->ln2_b, dy, c->r2, c->mean2, c->rstd2, p->ln2_g, N, D));
  PS_TRY(ps_nn_exec_copy(ex, dy1, dr2, (size_t)(N * D) * sizeof(float))); // residual
  PS_TRY(ps_nn_linear_backward_ex(ex, dh, g->w2, g->b2, dr2, c->h, p->w2, NULL, NULL, N, DF, D, PS_NN_ACT_NONE));
  PS_TRY(ps_nn_linear_backward_ex(ex, dy1, g->w1, g->b1, dh, c->y1, p->w1, c->h, c->hpre, N, D, DF, PS_NN_ACT_GELU));
  PS_TRY(ps_nn_layernorm_backward_ex(ex, dr1, g->ln1_g, g->ln1_b, dy1, c->r1, c->mean1, c->rstd1, p->ln1_g, N, D));
  PS_TRY(ps_nn_launch_add_inplace(ex, N * D, dx, dr1)); // residual
  PS_TRY(ps_nn_linear_backward_ex(ex, dctx, g->wo, g->bo, dr1, c->ctx, p->wo, NULL, NULL, N, D, D, PS_NN_ACT_NONE));
  PS_TRY(ps_nn_launch_mhsa_backward_scores(ex, B * NH * T, dsc, c->prob, dctx, c->qkv, mask, T, D, NH, scale));
  PS_TRY(ps_nn_launch_mhsa_backward_dqkv(ex, N * 3 * D, dqkv, dsc, c->prob, dctx, c->qkv, mask, T, D, NH));
  return ps_nn_linear_backward_ex(ex, dx, g->wqkv, g->bqkv, dqkv, x, p->wqkv, NULL, NULL, N, D, 3 * D,
                                  PS_NN_ACT_NONE);
}

ps_status ps_nn_mhsa_backward(float *dx, ps_nn_mhsa_grads *g, float *dy, const ps_nn_mhsa_cache *c, const float *x,
                              const uint8_t *mask, const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s,
                              float *scratch) {
  return ps_nn_mhsa_backward_ex(&host_ex, dx, g, dy, c, x, mask, p, s, scratch);
}
