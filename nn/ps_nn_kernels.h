// ps_nn_kernels: the model's own loops as per-item kernel bodies, compiled for the host
// (plain C, run by ps_nn_exec's OpenMP executor) and for CUDA (nvcc, run by a grid-stride
// __global__ wrapper in ps_nn_exec_cuda.cu). One code path: the CPU model runs the same
// bodies the GPU runs, so the CPU tests (gradchecks, 1-vs-N ranks, resume) test them.
//
// Rules for a kernel body k_<name>(i, ...): item i writes only its own outputs (no atomics, no
// shared memory, no warp shuffles), inner loops run in a fixed order, so a result has the
// same bits on every run and on every executor up to the compilers' float contraction.
// Items are listed next to each body ("items: B*D" = one per (b, j)).
//
// Dimension letters: B patients, M tokens, D width, NT valid tiles over all bags, K max
// tiles per bag, A attention hidden, NH heads, T tokens per item, DH head width, G genes.
#ifndef PS_NN_KERNELS_H
#define PS_NN_KERNELS_H

#include <math.h>
#include <stdint.h>

#include "ps_philox.h"

#ifdef __CUDACC__
#define PS_NN_KERNEL static inline __host__ __device__
#else
#define PS_NN_KERNEL static inline
#endif

// ---- copies, gathers, residuals -------------------------------------------------------------
// dst (n, D) row r = src row (rows ? rows[r] : r) * mul + add. items: n*D
PS_NN_KERNEL void k_gather_rows(int64_t i, float *dst, const float *src, const int64_t *rows, int64_t mul,
                                int64_t add, int64_t d) {
  int64_t r = i / d, j = i - r * d;
  dst[i] = src[((rows ? rows[r] : r) * mul + add) * d + j];
}
// x = v (u8). items: n
PS_NN_KERNEL void k_fill_u8(int64_t i, uint8_t *x, int v) { x[i] = (uint8_t)v; }
// y += x. items: n
PS_NN_KERNEL void k_add_inplace(int64_t i, float *y, const float *x) { y[i] += x[i]; }

// ---- activations (in place; pre keeps the GELU input) ----------------------------------------
// act codes are ps_nn_act values (NONE 0, RELU 1, GELU 2, TANH 3, SIGMOID 4). items: n
#define PS_NN_GELU_K 0.7978845608028654f // sqrt(2/pi)
#define PS_NN_GELU_C 0.044715f
PS_NN_KERNEL void k_act_forward(int64_t i, float *x, float *pre, int act) {
  float v = x[i];
  switch (act) {
  case 1: x[i] = v > 0.0f ? v : 0.0f; break;
  case 2:
    pre[i] = v;
    x[i] = 0.5f * v * (1.0f + tanhf(PS_NN_GELU_K * (v + PS_NN_GELU_C * v * v * v)));
    break;
  case 3: x[i] = tanhf(v); break;
  case 4: x[i] = 1.0f / (1.0f + expf(-v)); break;
  default: break;
  }
}
PS_NN_KERNEL void k_act_backward(int64_t i, float *dy, const float *out, const float *pre, int act) {
  switch (act) {
  case 1:
    if (!(out[i] > 0.0f)) dy[i] = 0.0f;
    break;
  case 2: {
    float x = pre[i], t = tanhf(PS_NN_GELU_K * (x + PS_NN_GELU_C * x * x * x));
    dy[i] *= 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * PS_NN_GELU_K * (1.0f + 3.0f * PS_NN_GELU_C * x * x);
    break;
  }
  case 3: dy[i] *= 1.0f - out[i] * out[i]; break;
  case 4: dy[i] *= out[i] * (1.0f - out[i]); break;
  default: break;
  }
}

// ---- omics: input noise, reconstruction ------------------------------------------------------
// xn (n, G) += std * N(0,1) of row r's stream (streams (n)), element j. items: n*G
PS_NN_KERNEL void k_input_noise(int64_t i, float *xn, float std, uint32_t key0, uint32_t key1,
                                const uint64_t *streams, int64_t g) {
  const uint32_t key[2] = {key0, key1};
  int64_t r = i / g, j = i - r * g;
  xn[i] += std * (float)ps_philox_normal(key, streams[r], (uint64_t)j); // = ps_rng_normal (ps_philox.h)
}
// part[r] = sum_j (rec - x)^2 over row r of (n, G), in double (stage 1 of the MSE). items: n
PS_NN_KERNEL void k_sse_rows(int64_t r, double *part, const float *rec, const float *x, int64_t g) {
  double s = 0;
  for (int64_t j = r * g; j < (r + 1) * g; j++) {
    double d = (double)rec[j] - x[j];
    s += d * d;
  }
  part[r] = s;
}
// grec = s (rec - x). items: n*G
PS_NN_KERNEL void k_recon_grad(int64_t i, float *grec, const float *rec, const float *x, float s) {
  grec[i] = s * (rec[i] - x[i]);
}

// ---- fusion tokens, mean-pool head -------------------------------------------------------------
// x (B*M, D): token (b, t) = src_t[row] + emb[t] where row = src_row[b*M + t] >= 0, else 0.
// items: B*M*D
PS_NN_KERNEL void k_tokens_forward(int64_t i, float *x, const float *s0, const float *s1, const float *s2,
                                   const int64_t *src_row, const float *emb, int64_t m, int64_t d) {
  int64_t bt = i / d, j = i - bt * d, t = bt % m, r = src_row[bt];
  const float *s = t == 0 ? s0 : (t == 1 ? s1 : s2);
  x[i] = r >= 0 ? s[r * d + j] + emb[t * d + j] : 0.0f;
}
// pool (B, D) = mean over present tokens of y; eta[b] = hb + hw . pool (double). items: B
PS_NN_KERNEL void k_head_forward(int64_t b, float *pool, float *eta, const float *y, const uint8_t *mask,
                                 const float *hw, const float *hb, int64_t m, int64_t d) {
  int np = 0;
  float *p = pool + b * d;
  for (int64_t j = 0; j < d; j++) p[j] = 0.0f;
  for (int64_t t = 0; t < m; t++)
    if (mask[b * m + t]) {
      np++;
      for (int64_t j = 0; j < d; j++) p[j] += y[(b * m + t) * d + j];
    }
  double e = hb[0];
  for (int64_t j = 0; j < d; j++) {
    p[j] /= (float)np;
    e += (double)hw[j] * p[j];
  }
  eta[b] = (float)e;
}
// Modality attention ma (B, M): mean over heads and present queries of prob (B, NH, M, M),
// or 1/np over present tokens without a fusion layer (prob NULL). items: B
PS_NN_KERNEL void k_modality_attention(int64_t b, float *ma, const float *prob, const uint8_t *mask, int64_t nh,
                                       int64_t m) {
  int np = 0;
  for (int64_t t = 0; t < m; t++) np += mask[b * m + t];
  float *a = ma + b * m;
  for (int64_t j = 0; j < m; j++) a[j] = 0.0f;
  if (prob) {
    for (int64_t h = 0; h < nh; h++)
      for (int64_t i = 0; i < m; i++)
        if (mask[b * m + i])
          for (int64_t j = 0; j < m; j++) a[j] += prob[((b * nh + h) * m + i) * m + j];
    for (int64_t j = 0; j < m; j++) a[j] /= (float)(nh * np);
  } else {
    for (int64_t j = 0; j < m; j++) a[j] = mask[b * m + j] ? 1.0f / (float)np : 0.0f;
  }
}
// Head parameter gradients: ghw[j] += sum_b deta[b] pool[b, j] (j < D), ghb[0] += sum_b deta[b]
// (j == D). items: D+1
PS_NN_KERNEL void k_head_backward_params(int64_t j, float *ghw, float *ghb, const float *deta, const float *pool,
                                         int64_t bsz, int64_t d) {
  float acc = j < d ? ghw[j] : ghb[0];
  for (int64_t b = 0; b < bsz; b++) acc += deta[b] * (j < d ? pool[b * d + j] : 1.0f);
  if (j < d)
    ghw[j] = acc;
  else
    ghb[0] = acc;
}
// gy (B*M, D) = deta[b] hw[j] / np on present tokens, 0 elsewhere. items: B*M*D
PS_NN_KERNEL void k_head_backward_tokens(int64_t i, float *gy, const float *deta, const float *hw,
                                         const uint8_t *mask, int64_t m, int64_t d) {
  int64_t bt = i / d, j = i - bt * d, b = bt / m;
  int np = 0;
  for (int64_t t = 0; t < m; t++) np += mask[b * m + t];
  gy[i] = mask[bt] ? deta[b] * hw[j] / (float)np : 0.0f;
}
// gemb (M, D) += sum over batch rows with the token present of gy. items: M*D
PS_NN_KERNEL void k_embedding_backward(int64_t i, float *gemb, const float *gy, const uint8_t *mask, int64_t bsz,
                                       int64_t m, int64_t d) {
  int64_t t = i / d, j = i - t * d;
  float acc = gemb[i];
  for (int64_t b = 0; b < bsz; b++)
    if (mask[b * m + t]) acc += gy[(b * m + t) * d + j];
  gemb[i] = acc;
}

// ---- bags of tiles: gated attention, tile attention, average pool ------------------------------
// score[k] = sum_j wv[j] a[k, j] g[k, j]. items: NT
PS_NN_KERNEL void k_gattn_scores(int64_t k, float *alpha, const float *a, const float *g, const float *wv,
                                 int64_t na) {
  float s = 0;
  for (int64_t j = 0; j < na; j++) s += wv[j] * a[k * na + j] * g[k * na + j];
  alpha[k] = s;
}
// In-place softmax of the scores over each bag [off[b], off[b+1]). items: B
PS_NN_KERNEL void k_gattn_softmax(int64_t b, float *alpha, const int64_t *off) {
  if (off[b + 1] == off[b]) return;
  float mx = -INFINITY;
  for (int64_t k = off[b]; k < off[b + 1]; k++)
    if (alpha[k] > mx) mx = alpha[k];
  double z = 0;
  for (int64_t k = off[b]; k < off[b + 1]; k++) z += (alpha[k] = expf(alpha[k] - mx));
  for (int64_t k = off[b]; k < off[b + 1]; k++) alpha[k] = (float)(alpha[k] / z);
}
// out (B, D) = sum over the bag of alpha[k] h[k]; 0 for an empty bag. items: B*D
PS_NN_KERNEL void k_gattn_pool(int64_t i, float *out, const float *alpha, const float *h, const int64_t *off,
                               int64_t d) {
  int64_t b = i / d, j = i - b * d;
  float o = 0.0f;
  for (int64_t k = off[b]; k < off[b + 1]; k++) o += alpha[k] * h[k * d + j];
  out[i] = o;
}
// The bag holding tile k: the last b with off[b] <= k (binary search over off (B+1)).
PS_NN_KERNEL int64_t k_bag_of(int64_t k, const int64_t *off, int64_t nbags) {
  int64_t lo = 0, hi = nbags; // off[lo] <= k < off[hi]
  while (hi - lo > 1) {
    int64_t mid = (lo + hi) / 2;
    if (off[mid] <= k)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}
// dal[k] = dout[bag(k)] . h[k]. items: NT
PS_NN_KERNEL void k_gattn_backward_dal(int64_t k, float *dal, const float *dout, const float *h, const int64_t *off,
                                       int64_t nbags, int64_t d) {
  const float *go = dout + k_bag_of(k, off, nbags) * d;
  float s = 0;
  for (int64_t j = 0; j < d; j++) s += go[j] * h[k * d + j];
  dal[k] = s;
}
// ds[k] = alpha[k] (dal[k] - sum_bag alpha dal) (softmax backward). items: B
PS_NN_KERNEL void k_gattn_backward_ds(int64_t b, float *ds, const float *dal, const float *alpha,
                                      const int64_t *off) {
  double dot = 0;
  for (int64_t k = off[b]; k < off[b + 1]; k++) dot += (double)alpha[k] * dal[k];
  for (int64_t k = off[b]; k < off[b + 1]; k++) ds[k] = alpha[k] * (dal[k] - (float)dot);
}
// dh (NT, D) += alpha[k] dout[bag(k)]. items: NT*D
PS_NN_KERNEL void k_gattn_backward_dh(int64_t i, float *dh, const float *alpha, const float *dout,
                                      const int64_t *off, int64_t nbags, int64_t d) {
  int64_t k = i / d, j = i - k * d;
  dh[i] += alpha[k] * dout[k_bag_of(k, off, nbags) * d + j];
}
// da = ds wv g, dg = ds wv a (NT, A). items: NT*A
PS_NN_KERNEL void k_gattn_backward_dadg(int64_t i, float *da, float *dg, const float *ds, const float *a,
                                        const float *g, const float *wv, int64_t na) {
  int64_t k = i / na, j = i - k * na;
  da[i] = ds[k] * wv[j] * g[i];
  dg[i] = ds[k] * wv[j] * a[i];
}
// dwv[j] += sum_k ds[k] a[k, j] g[k, j]. items: A
PS_NN_KERNEL void k_gattn_backward_dwv(int64_t j, float *dwv, const float *ds, const float *a, const float *g,
                                       int64_t nt, int64_t na) {
  float acc = dwv[j];
  for (int64_t k = 0; k < nt; k++) acc += ds[k] * a[k * na + j] * g[k * na + j];
  dwv[j] = acc;
}
// ta (B, K) = alpha of the bag's tiles, 0 past its count. items: B*K
PS_NN_KERNEL void k_tile_attention(int64_t i, float *ta, const float *alpha, const int64_t *off, int64_t kmax) {
  int64_t b = i / kmax, k = i - b * kmax;
  ta[i] = k < off[b + 1] - off[b] ? alpha[off[b] + k] : 0.0f;
}

// ---- multi-head self-attention core (qkv (B*T, 3D) -> prob, ctx) ------------------------------
// Query (b, h, i): masked softmax of q.k * scale over valid keys, ctx = prob . v. items: B*NH*T
PS_NN_KERNEL void k_mhsa_forward(int64_t idx, float *prob, float *ctx, const float *qkv, const uint8_t *mask,
                                 int64_t t, int64_t d, int64_t nh, float scale) {
  const int64_t dh = d / nh, i = idx % t, hh = (idx / t) % nh, b = idx / (t * nh);
  float *pr = prob + idx * t;
  const float *q = qkv + (b * t + i) * 3 * d + hh * dh;
  float mx = -INFINITY;
  for (int64_t j = 0; j < t; j++) {
    if (!mask[b * t + j]) continue;
    const float *k = qkv + (b * t + j) * 3 * d + d + hh * dh;
    float sc = 0;
    for (int64_t e = 0; e < dh; e++) sc += q[e] * k[e];
    pr[j] = sc * scale;
    if (pr[j] > mx) mx = pr[j];
  }
  double z = 0;
  for (int64_t j = 0; j < t; j++) {
    pr[j] = mask[b * t + j] ? expf(pr[j] - mx) : 0.0f; // masked keys: exactly 0
    z += pr[j];
  }
  float *cx = ctx + (b * t + i) * d + hh * dh;
  for (int64_t e = 0; e < dh; e++) cx[e] = 0.0f;
  for (int64_t j = 0; j < t; j++) {
    pr[j] = (float)(pr[j] / z);
    if (!mask[b * t + j]) continue;
    const float *v = qkv + (b * t + j) * 3 * d + 2 * d + hh * dh;
    for (int64_t e = 0; e < dh; e++) cx[e] += pr[j] * v[e];
  }
}
// Score gradients dsc (B, NH, T, T) = prob (dctx.v - sum prob dctx.v) * scale, 0 on masked
// keys. items: B*NH*T
PS_NN_KERNEL void k_mhsa_backward_scores(int64_t idx, float *dsc, const float *prob, const float *dctx,
                                         const float *qkv, const uint8_t *mask, int64_t t, int64_t d, int64_t nh,
                                         float scale) {
  const int64_t dh = d / nh, i = idx % t, hh = (idx / t) % nh, b = idx / (t * nh);
  const float *pr = prob + idx * t;
  const float *dc = dctx + (b * t + i) * d + hh * dh;
  float *ds = dsc + idx * t;
  double dot = 0;
  for (int64_t j = 0; j < t; j++) {
    float dp = 0;
    if (mask[b * t + j]) {
      const float *v = qkv + (b * t + j) * 3 * d + 2 * d + hh * dh;
      for (int64_t e = 0; e < dh; e++) dp += dc[e] * v[e];
    }
    ds[j] = dp; // dp for now; scaled below
    dot += (double)pr[j] * dp;
  }
  for (int64_t j = 0; j < t; j++) ds[j] = mask[b * t + j] ? pr[j] * (ds[j] - (float)dot) * scale : 0.0f;
}
// dqkv (B*T, 3D) for element (b, row, part, h, e): dq = sum_j dsc[i, j] k_j, dk = sum_i dsc[i, j] q_i,
// dv = sum_i prob[i, j] dctx_i (rows with a masked key get no dk, dv). items: B*T*3D
PS_NN_KERNEL void k_mhsa_backward_dqkv(int64_t idx, float *dqkv, const float *dsc, const float *prob,
                                       const float *dctx, const float *qkv, const uint8_t *mask, int64_t t,
                                       int64_t d, int64_t nh) {
  const int64_t dh = d / nh, row = idx / (3 * d), col = idx - row * 3 * d, part = col / d, hh = (col - part * d) / dh,
                e = col - part * d - hh * dh, b = row / t, r = row - b * t;
  const float *base_s = dsc + (b * nh + hh) * t * t, *base_p = prob + (b * nh + hh) * t * t;
  float acc = 0;
  if (part == 0) { // dq of query r
    for (int64_t j = 0; j < t; j++)
      if (mask[b * t + j]) acc += base_s[r * t + j] * qkv[(b * t + j) * 3 * d + d + hh * dh + e];
  } else if (mask[b * t + r]) {
    for (int64_t i = 0; i < t; i++) {
      if (part == 1)
        acc += base_s[i * t + r] * qkv[(b * t + i) * 3 * d + hh * dh + e];
      else
        acc += base_p[i * t + r] * dctx[(b * t + i) * d + hh * dh + e];
    }
  }
  dqkv[idx] += acc;
}

// ---- device-style conv block: BN/GN statistics, norm + ReLU + 2x2 max-pool epilogue, backward ----
// Maps z (N, OC, H, W), pooled (N, OC, H/2, W/2); groups 0 = BatchNorm (statistics per channel),
// > 0 = GroupNorm (per (tile, group)). Two-stage reductions: per (tile, channel) partials, then
// per channel over tiles, both in double.
// Statistics index of (tile i, channel j).
PS_NN_KERNEL int64_t k_stat_index(int64_t i, int64_t j, int64_t oc, int groups) {
  return groups > 0 ? i * groups + j / (oc / groups) : j;
}
// part[2p], part[2p+1] = sum, sum of squares of z plane p = (i, j) over HW. items: N*OC
PS_NN_KERNEL void k_bn_partials(int64_t p, double *part, const float *z, int64_t hw) {
  double s = 0, ss = 0;
  for (int64_t k = p * hw; k < (p + 1) * hw; k++) {
    s += z[k];
    ss += (double)z[k] * z[k];
  }
  part[2 * p] = s;
  part[2 * p + 1] = ss;
}
// stats (2*OC + 1): sum over tiles of the partials per channel; stats[2 OC] = count. items: OC
PS_NN_KERNEL void k_channel_totals(int64_t j, double *stats, const double *part, int64_t n, int64_t oc,
                                   double count) {
  double a = 0, b = 0;
  for (int64_t i = 0; i < n; i++) {
    a += part[2 * (i * oc + j)];
    b += part[2 * (i * oc + j) + 1];
  }
  stats[j] = a;
  stats[oc + j] = b;
  if (j == 0) stats[2 * oc] = count;
}
// GroupNorm statistics of (tile i, group g) over (OC/groups channels, HW). items: N*groups
PS_NN_KERNEL void k_gn_stats(int64_t q, float *mean, float *rstd, const float *z, int64_t oc, int groups,
                             int64_t hw, float eps) {
  const int64_t cg = oc / groups, i = q / groups, g = q - i * groups;
  const float *x = z + (i * oc + g * cg) * hw;
  double s = 0, ss = 0;
  for (int64_t k = 0; k < cg * hw; k++) {
    s += x[k];
    ss += (double)x[k] * x[k];
  }
  double m = s / (double)(cg * hw), var = ss / (double)(cg * hw) - m * m;
  mean[q] = (float)m;
  rstd[q] = (float)(1.0 / sqrt((var > 0 ? var : 0) + eps));
}
// One 2x2 window of z (row stride w, top-left q) normalized as z * sc + sh: *best = max(relu(v0),
// v1, v2, v3); returns the first winner's slot (0..3, row-major), 0 when every value is <= 0. The
// rule of the device epilogue below and of the CPU block's portable kernel (nn/ps_convblock_cpu.c;
// its AVX-512 version applies it to 16 windows per vector).
PS_NN_KERNEL int k_pool2x2_relu(float *best, const float *q, int64_t w, float sc, float sh) {
  float v0 = q[0] * sc + sh, v1 = q[1] * sc + sh, v2 = q[w] * sc + sh, v3 = q[w + 1] * sc + sh;
  float b = v0 > 0.0f ? v0 : 0.0f;
  int bi = 0;
  if (v1 > b) b = v1, bi = 1;
  if (v2 > b) b = v2, bi = 2;
  if (v3 > b) b = v3, bi = 3;
  *best = b;
  return bi;
}
// Pooled output (i, j, oy, ox) = max(relu(v0), v1, v2, v3) of the window's normalized values,
// argmax = first winner (as the fused CPU block). items: N*OC*(H/2)*(W/2)
PS_NN_KERNEL void k_convblock_epilogue(int64_t o, float *pool_out, uint8_t *argmax, const float *z,
                                       const float *mean, const float *rstd, const float *gamma, const float *beta,
                                       int64_t oc, int groups, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2, p = o / (oh * ow), r = o - p * oh * ow, oy = r / ow, ox = r - oy * ow;
  const int64_t i = p / oc, j = p - i * oc, si = k_stat_index(i, j, oc, groups);
  float sc = gamma[j] * rstd[si], sh = beta[j] - mean[si] * sc;
  argmax[o] = (uint8_t)k_pool2x2_relu(&pool_out[o], z + p * h * w + 2 * oy * w + 2 * ox, w, sc, sh);
}
// Backward partials of plane p = (i, j) over the pooled winners that pass the ReLU:
// part[2p] = sum dy, part[2p+1] = sum dy * xhat (BatchNorm: float per output row, double
// across rows; the fused CPU block uses 16 float lanes per row instead, ~1e-7 apart). items: N*OC
PS_NN_KERNEL void k_convblock_backward_partials(int64_t p, double *part, const float *dpool, const uint8_t *argmax,
                                                const float *z, const float *mean, const float *rstd,
                                                const float *gamma, const float *beta, int64_t oc, int groups,
                                                int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2, i = p / oc, j = p - i * oc, si = k_stat_index(i, j, oc, groups);
  const float sc = gamma[j] * rstd[si], sh = beta[j] - mean[si] * sc;
  const float *zz = z + p * h * w, *dp = dpool + p * oh * ow;
  const uint8_t *am = argmax + p * oh * ow;
  double sdy = 0, sdz = 0;
  for (int64_t oy = 0; oy < oh; oy++) {
    float ry = 0.0f, rz = 0.0f;
    for (int64_t ox = 0; ox < ow; ox++) {
      int bi = am[oy * ow + ox];
      int64_t pos = (2 * oy + (bi >> 1)) * w + 2 * ox + (bi & 1);
      float zv = zz[pos];
      if (groups > 0) {
        if (zv * sc + sh > 0.0f) {
          float gv = dp[oy * ow + ox];
          sdy += gv;
          sdz += (double)gv * ((zv - mean[si]) * rstd[si]);
        }
      } else {
        float gv = (float)(zv * sc + sh > 0.0f) * dp[oy * ow + ox];
        ry += gv;
        rz += gv * zv;
      }
    }
    sdy += ry;
    sdz += rz;
  }
  part[2 * p] = sdy;
  part[2 * p + 1] = groups > 0 ? sdz : (sdz - (double)mean[j] * sdy) * (double)rstd[j];
}
// dgamma += sum dy xhat, dbeta += sum dy from the per-channel totals. items: OC
PS_NN_KERNEL void k_norm_param_grads(int64_t j, float *dgamma, float *dbeta, const double *stats, int64_t oc) {
  dgamma[j] += (float)stats[oc + j];
  dbeta[j] += (float)stats[j];
}
// Whether element (y, x) of a map is its 2x2 window's pooled winner, and the window's index.
PS_NN_KERNEL int k_pool_winner(int64_t e, const uint8_t *argmax, int64_t h, int64_t w, int64_t *win) {
  const int64_t oh = h / 2, ow = w / 2, p = e / (h * w), r = e - p * h * w, y = r / w, x = r - y * w;
  *win = p * oh * ow + (y / 2) * ow + x / 2;
  return argmax[*win] == (uint8_t)((y & 1) * 2 + (x & 1));
}
// BatchNorm dz (N, OC, H, W) = c0 + c1 z (+ g dy at a winner passing the ReLU), the fused
// block's formula; stats (2 OC + 1) are the (reduced) totals. items: N*OC*H*W
PS_NN_KERNEL void k_convblock_backward_dz_bn(int64_t e, float *gz, const float *dpool, const uint8_t *argmax,
                                             const float *z, const float *mean, const float *rstd,
                                             const float *gamma, const float *beta, const double *stats, int64_t oc,
                                             int64_t h, int64_t w, int training) {
  const int64_t j = (e / (h * w)) % oc;
  const double cnt = stats[2 * oc] > 0 ? stats[2 * oc] : 1.0;
  const float sc = gamma[j] * rstd[j], sh = beta[j] - mean[j] * sc, g = sc;
  const float a = training ? (float)(stats[j] / cnt) : 0.0f, bq = training ? (float)(stats[oc + j] / cnt) : 0.0f;
  const float mj = mean[j], rj = rstd[j], c1 = -g * rj * bq, c0 = -g * a + g * mj * rj * bq;
  float v = c0 + c1 * z[e];
  int64_t win;
  if (k_pool_winner(e, argmax, h, w, &win)) v += (float)(z[e] * sc + sh > 0.0f) * g * dpool[win];
  gz[e] = v;
}
// GroupNorm per (tile, group): ab = (a, bq) = (sum gamma dy, sum gamma dy xhat) / (cg HW) from the
// per-channel partials. items: N*groups
PS_NN_KERNEL void k_gn_backward_group(int64_t q, float *ab, const double *part, const float *gamma, int64_t oc,
                                      int groups, int64_t hw) {
  const int64_t cg = oc / groups, i = q / groups, g = q - i * groups;
  double sa = 0, sb = 0;
  for (int64_t j = g * cg; j < (g + 1) * cg; j++) {
    sa += gamma[j] * part[2 * (i * oc + j)];
    sb += gamma[j] * part[2 * (i * oc + j) + 1];
  }
  ab[2 * q] = (float)(sa / (double)(cg * hw));
  ab[2 * q + 1] = (float)(sb / (double)(cg * hw));
}
// GroupNorm dz = rstd (gamma dy - a - xhat bq), dy = dpool at a winner passing the ReLU.
// items: N*OC*H*W
PS_NN_KERNEL void k_gn_backward_dz(int64_t e, float *gz, const float *dpool, const uint8_t *argmax, const float *z,
                                   const float *mean, const float *rstd, const float *gamma, const float *beta,
                                   const float *ab, int64_t oc, int groups, int64_t h, int64_t w) {
  const int64_t p = e / (h * w), i = p / oc, j = p - i * oc, q = k_stat_index(i, j, oc, groups);
  const float mg = mean[q], rg = rstd[q], sc = gamma[j] * rg, sh = beta[j] - mg * sc;
  int64_t win;
  float dy = 0.0f;
  if (k_pool_winner(e, argmax, h, w, &win) && z[e] * sc + sh > 0.0f) dy = dpool[win];
  gz[e] = rg * (gamma[j] * dy - ab[2 * q] - (z[e] - mg) * rg * ab[2 * q + 1]);
}

#endif
