// Element-wise passes of the fused CPU conv block, portable and AVX-512 (see ps_convblock_cpu.h).
// Why AVX-512 by hand: the project builds for plain x86-64, where these loops (strided 2x2
// windows, byte argmax, data-dependent ReLU masks) compile to scalar code; at the reference
// model's sizes they took ~0.6 s of a 3.2 s training step, more than the memory traffic needs.
// The AVX-512 code holds 16 pooled columns per vector: the two z rows of a window row are loaded
// as 32 floats each and split into even/odd columns, so v0..v3 of 16 windows are 4 vectors.
// Arithmetic is the portable code's, operation for operation (mul then add, never fused), so
// both give the same floats.
#include "ps_convblock_cpu.h"

#include "ps_nn_kernels.h"

enum { LANES = 16, SUM_BLOCK = 1024 };

// ---- portable (reference) --------------------------------------------------------------------
static void sum_sumsq_portable(const float *x, int64_t n, double *s, double *ss) {
  double ds[LANES] = {0}, dq[LANES] = {0};
  for (int64_t b0 = 0; b0 < n; b0 += SUM_BLOCK) {
    const int64_t b1 = b0 + SUM_BLOCK < n ? b0 + SUM_BLOCK : n;
    float a[LANES] = {0}, q[LANES] = {0};
    for (int64_t i = b0; i < b1; i++) {
      const int l = (int)((i - b0) % LANES);
      a[l] += x[i];
      q[l] += x[i] * x[i];
    }
    for (int l = 0; l < LANES; l++) ds[l] += a[l], dq[l] += q[l];
  }
  double ts = 0, tq = 0;
  for (int l = 0; l < LANES; l++) ts += ds[l], tq += dq[l];
  *s = ts;
  *ss = tq;
}

static inline const float *winner(const float *z, const uint8_t *am, int64_t oy, int64_t ox, int64_t w,
                                  int64_t ow) {
  const int bi = am[oy * ow + ox];
  return z + (2 * oy + (bi >> 1)) * w + 2 * ox + (bi & 1);
}

static void norm_relu_pool_portable(float *po, uint8_t *am, float *zw, const float *z, float sc, float sh, int64_t h,
                                    int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t oy = 0; oy < oh; oy++)
    for (int64_t ox = 0; ox < ow; ox++) {
      am[oy * ow + ox] = (uint8_t)k_pool2x2_relu(&po[oy * ow + ox], z + 2 * oy * w + 2 * ox, w, sc, sh);
      zw[oy * ow + ox] = *winner(z, am, oy, ox, w, ow);
    }
}

static void bwd_sums_portable(double *sdy, double *sdz, const float *zw, const float *dp, float sc, float sh,
                              int64_t oh, int64_t ow) {
  double dy[LANES] = {0}, dz[LANES] = {0};
  for (int64_t oy = 0; oy < oh; oy++) {
    float ry[LANES] = {0}, rz[LANES] = {0};
    for (int64_t ox = 0; ox < ow; ox++) {
      const float zv = zw[oy * ow + ox], gv = dp[oy * ow + ox];
      if (zv * sc + sh > 0.0f) {
        ry[ox % LANES] += gv;
        rz[ox % LANES] += gv * zv;
      }
    }
    for (int l = 0; l < LANES; l++) dy[l] += ry[l], dz[l] += rz[l];
  }
  double ty = 0, tz = 0;
  for (int l = 0; l < LANES; l++) ty += dy[l], tz += dz[l];
  *sdy = ty;
  *sdz = tz;
}

static void bwd_dz_portable(float *gg, const float *z, const float *dp, const uint8_t *am, float sc, float sh, float g,
                            float c0, float c1, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t k = 0; k < h * w; k++) gg[k] = c0 + c1 * z[k];
  for (int64_t oy = 0; oy < oh; oy++)
    for (int64_t ox = 0; ox < ow; ox++) {
      const float *zw = winner(z, am, oy, ox, w, ow);
      if (*zw * sc + sh > 0.0f) gg[zw - z] += g * dp[oy * ow + ox];
    }
}

// ---- AVX-512 ---------------------------------------------------------------------------------
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CB_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define CB_HAVE_AVX512_CODE 1

static inline __mmask16 CB_AVX512 tail16(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (left > 0 ? left : 0)) - 1u);
}

// Lanes 0..7 and 8..15 of a float vector added to two double vectors (the per-lane flush).
static inline void CB_AVX512 flush_lanes(__m512d *lo, __m512d *hi, __m512 v) {
  *lo = _mm512_add_pd(*lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
  *hi = _mm512_add_pd(*hi, _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(v), 1))));
}

static inline double CB_AVX512 sum_lanes_in_order(__m512d lo, __m512d hi) {
  double d[LANES], t = 0;
  _mm512_storeu_pd(d, lo);
  _mm512_storeu_pd(d + 8, hi);
  for (int l = 0; l < LANES; l++) t += d[l];
  return t;
}

static void CB_AVX512 sum_sumsq_avx512(const float *x, int64_t n, double *s, double *ss) {
  __m512d slo = _mm512_setzero_pd(), shi = slo, qlo = slo, qhi = slo;
  for (int64_t b0 = 0; b0 < n; b0 += SUM_BLOCK) {
    const int64_t b1 = b0 + SUM_BLOCK < n ? b0 + SUM_BLOCK : n;
    __m512 a = _mm512_setzero_ps(), q = a;
    for (int64_t i = b0; i < b1; i += LANES) {
      const __mmask16 m = tail16(b1 - i);
      const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
      a = _mm512_mask_add_ps(a, m, a, v);
      q = _mm512_mask_add_ps(q, m, q, _mm512_mul_ps(v, v));
    }
    flush_lanes(&slo, &shi, a);
    flush_lanes(&qlo, &qhi, q);
  }
  *s = sum_lanes_in_order(slo, shi);
  *ss = sum_lanes_in_order(qlo, qhi);
}

// The 2x2 windows of pooled columns [ox, ox + 16) of pooled row oy (m: valid lanes): e0/o0 =
// even/odd columns of the top row (window slots 0 and 1), e1/o1 of the bottom row (2 and 3).
typedef struct {
  __m512 e0, o0, e1, o1;
  __mmask16 mlo, mhi; // valid floats of the 32 loaded per row: columns 0..15 and 16..31
} windows16;

static inline windows16 CB_AVX512 load_windows(const float *z, int64_t w, int64_t oy, int64_t ox, __mmask16 m) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const int cnt = __builtin_popcount(m); // valid windows: 2 * cnt floats per row
  const __mmask16 mlo = tail16(2 * cnt), mhi = tail16(2 * cnt - 16);
  const float *r0 = z + 2 * oy * w + 2 * ox, *r1 = r0 + w;
  const __m512 a0 = _mm512_maskz_loadu_ps(mlo, r0), a1 = _mm512_maskz_loadu_ps(mhi, r0 + 16);
  const __m512 b0 = _mm512_maskz_loadu_ps(mlo, r1), b1 = _mm512_maskz_loadu_ps(mhi, r1 + 16);
  windows16 r = {_mm512_permutex2var_ps(a0, even, a1), _mm512_permutex2var_ps(a0, odd, a1),
                 _mm512_permutex2var_ps(b0, even, b1), _mm512_permutex2var_ps(b0, odd, b1), mlo, mhi};
  return r;
}

static inline __m512 CB_AVX512 affine(__m512 v, __m512 sc, __m512 sh) {
  return _mm512_add_ps(_mm512_mul_ps(v, sc), sh); // mul then add: the portable rounding
}

static void CB_AVX512 norm_relu_pool_avx512(float *po, uint8_t *am, float *zw, const float *z, float scf, float shf,
                                            int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  const __m512 sc = _mm512_set1_ps(scf), sh = _mm512_set1_ps(shf), zero = _mm512_setzero_ps();
  for (int64_t oy = 0; oy < oh; oy++)
    for (int64_t ox = 0; ox < ow; ox += LANES) {
      const __mmask16 m = tail16(ow - ox);
      const windows16 q = load_windows(z, w, oy, ox, m);
      const __m512 v0 = affine(q.e0, sc, sh), v1 = affine(q.o0, sc, sh), v2 = affine(q.e1, sc, sh),
                   v3 = affine(q.o1, sc, sh);
      __m512 best = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v0, zero, _CMP_GT_OQ), v0);
      __m512i bi = _mm512_setzero_si512();
      __m512 win = q.e0; // the winner's z
      __mmask16 k = _mm512_cmp_ps_mask(v1, best, _CMP_GT_OQ);
      best = _mm512_mask_mov_ps(best, k, v1), bi = _mm512_mask_mov_epi32(bi, k, _mm512_set1_epi32(1));
      win = _mm512_mask_mov_ps(win, k, q.o0);
      k = _mm512_cmp_ps_mask(v2, best, _CMP_GT_OQ);
      best = _mm512_mask_mov_ps(best, k, v2), bi = _mm512_mask_mov_epi32(bi, k, _mm512_set1_epi32(2));
      win = _mm512_mask_mov_ps(win, k, q.e1);
      k = _mm512_cmp_ps_mask(v3, best, _CMP_GT_OQ);
      best = _mm512_mask_mov_ps(best, k, v3), bi = _mm512_mask_mov_epi32(bi, k, _mm512_set1_epi32(3));
      win = _mm512_mask_mov_ps(win, k, q.o1);
      _mm512_mask_storeu_ps(po + oy * ow + ox, m, best);
      _mm512_mask_storeu_ps(zw + oy * ow + ox, m, win);
      _mm512_mask_cvtepi32_storeu_epi8(am + oy * ow + ox, m, bi);
    }
}

// The winner's z of each window (per argmax) and the masks of which window slot won.
typedef struct {
  __m512 zv;
  __mmask16 k0, k1, k2, k3;
} winners16;

static inline winners16 CB_AVX512 pick_winners(const windows16 *q, const uint8_t *am, __mmask16 m) {
  const __m512i bi = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, am));
  winners16 r;
  r.k0 = _mm512_mask_cmpeq_epi32_mask(m, bi, _mm512_setzero_si512());
  r.k1 = _mm512_mask_cmpeq_epi32_mask(m, bi, _mm512_set1_epi32(1));
  r.k2 = _mm512_mask_cmpeq_epi32_mask(m, bi, _mm512_set1_epi32(2));
  r.k3 = _mm512_mask_cmpeq_epi32_mask(m, bi, _mm512_set1_epi32(3));
  __m512 zv = _mm512_mask_mov_ps(q->e0, r.k1, q->o0);
  zv = _mm512_mask_mov_ps(zv, r.k2, q->e1);
  r.zv = _mm512_mask_mov_ps(zv, r.k3, q->o1);
  return r;
}

static void CB_AVX512 bwd_sums_avx512(double *sdy, double *sdz, const float *zw, const float *dp, float scf,
                                      float shf, int64_t oh, int64_t ow) {
  const __m512 sc = _mm512_set1_ps(scf), sh = _mm512_set1_ps(shf), zero = _mm512_setzero_ps();
  __m512d ylo = _mm512_setzero_pd(), yhi = ylo, zlo = ylo, zhi = ylo;
  for (int64_t oy = 0; oy < oh; oy++) {
    __m512 ry = zero, rz = zero;
    for (int64_t ox = 0; ox < ow; ox += LANES) {
      const __mmask16 m = tail16(ow - ox);
      const __m512 zv = _mm512_maskz_loadu_ps(m, zw + oy * ow + ox);
      const __mmask16 pass = _mm512_mask_cmp_ps_mask(m, affine(zv, sc, sh), zero, _CMP_GT_OQ);
      const __m512 gv = _mm512_maskz_loadu_ps(m, dp + oy * ow + ox);
      ry = _mm512_mask_add_ps(ry, pass, ry, gv);
      rz = _mm512_mask_add_ps(rz, pass, rz, _mm512_mul_ps(gv, zv));
    }
    flush_lanes(&ylo, &yhi, ry);
    flush_lanes(&zlo, &zhi, rz);
  }
  *sdy = sum_lanes_in_order(ylo, yhi);
  *sdz = sum_lanes_in_order(zlo, zhi);
}

static void CB_AVX512 bwd_dz_avx512(float *gg, const float *z, const float *dp, const uint8_t *am, float scf,
                                    float shf, float gf, float c0f, float c1f, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  const __m512 sc = _mm512_set1_ps(scf), sh = _mm512_set1_ps(shf), g = _mm512_set1_ps(gf), c0 = _mm512_set1_ps(c0f),
               c1 = _mm512_set1_ps(c1f), zero = _mm512_setzero_ps();
  // even/odd columns back to memory order: lo = columns 0..15 of the 32, hi = 16..31
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t oy = 0; oy < oh; oy++)
    for (int64_t ox = 0; ox < ow; ox += LANES) {
      const __mmask16 m = tail16(ow - ox);
      const windows16 q = load_windows(z, w, oy, ox, m);
      const winners16 wn = pick_winners(&q, am + oy * ow + ox, m);
      const __mmask16 pass = _mm512_mask_cmp_ps_mask(m, affine(wn.zv, sc, sh), zero, _CMP_GT_OQ);
      const __m512 t = _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, dp + oy * ow + ox));
      __m512 e0 = _mm512_add_ps(c0, _mm512_mul_ps(c1, q.e0)), o0 = _mm512_add_ps(c0, _mm512_mul_ps(c1, q.o0));
      __m512 e1 = _mm512_add_ps(c0, _mm512_mul_ps(c1, q.e1)), o1 = _mm512_add_ps(c0, _mm512_mul_ps(c1, q.o1));
      e0 = _mm512_mask_add_ps(e0, pass & wn.k0, e0, t);
      o0 = _mm512_mask_add_ps(o0, pass & wn.k1, o0, t);
      e1 = _mm512_mask_add_ps(e1, pass & wn.k2, e1, t);
      o1 = _mm512_mask_add_ps(o1, pass & wn.k3, o1, t);
      float *r0 = gg + 2 * oy * w + 2 * ox, *r1 = r0 + w;
      _mm512_mask_storeu_ps(r0, q.mlo, _mm512_permutex2var_ps(e0, lo, o0));
      _mm512_mask_storeu_ps(r0 + 16, q.mhi, _mm512_permutex2var_ps(e0, hi, o0));
      _mm512_mask_storeu_ps(r1, q.mlo, _mm512_permutex2var_ps(e1, lo, o1));
      _mm512_mask_storeu_ps(r1 + 16, q.mhi, _mm512_permutex2var_ps(e1, hi, o1));
    }
}
#endif

// ---- dispatch --------------------------------------------------------------------------------
static bool force_portable;

void ps_cb_force_portable(bool portable) { force_portable = portable; }

bool ps_cb_have_avx512(void) {
#ifdef CB_HAVE_AVX512_CODE
  static int have = -1; // benign race: every thread computes the same answer
  if (have < 0) {
    __builtin_cpu_init();
    have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl")
               ? 1
               : 0;
  }
  return have == 1 && !force_portable;
#else
  return false;
#endif
}

#ifdef CB_HAVE_AVX512_CODE
#define CB_DISPATCH(name, ...)                                                                                   \
  do {                                                                                                           \
    if (ps_cb_have_avx512()) name##_avx512(__VA_ARGS__);                                                         \
    else name##_portable(__VA_ARGS__);                                                                           \
  } while (0)
#else
#define CB_DISPATCH(name, ...) name##_portable(__VA_ARGS__)
#endif

void ps_cb_sum_sumsq(const float *x, int64_t n, double *s, double *ss) { CB_DISPATCH(sum_sumsq, x, n, s, ss); }

void ps_cb_norm_relu_pool(float *pool, uint8_t *argmax, float *zwin, const float *z, float sc, float sh, int64_t h,
                          int64_t w) {
  CB_DISPATCH(norm_relu_pool, pool, argmax, zwin, z, sc, sh, h, w);
}

void ps_cb_bwd_sums(double *sdy, double *sdz, const float *zwin, const float *dpool, float sc, float sh, int64_t oh,
                    int64_t ow) {
  CB_DISPATCH(bwd_sums, sdy, sdz, zwin, dpool, sc, sh, oh, ow);
}

void ps_cb_bwd_dz(float *dz, const float *z, const float *dpool, const uint8_t *argmax, float sc, float sh, float g,
                  float c0, float c1, int64_t h, int64_t w) {
  CB_DISPATCH(bwd_dz, dz, z, dpool, argmax, sc, sh, g, c0, c1, h, w);
}
