// AVX-512 kernels of the CPU convolution (tensor/ops_conv.c decides when each runs):
//   direct: the 3x3 "same" convolution of few input channels without a
//       lowered matrix, forward and weight gradient (ops_conv_direct.c has the
//       layouts and the portable versions).
// and a GEMM kernel for a shape of the lowering where OpenBLAS does poorly:
//   nt: C (M, N) += A (M, K) · B (N, K)^T - small M x N, long K: the weight
//       gradient dw (OC, CKK) = dout (OC, P) · col^T of the 3-channel first
//       layer (N = CKK = 27), where OpenBLAS runs its N-edge kernels.
// The project builds for plain x86-64: this code is compiled for
// AVX-512F through the target attribute and only called after
// ps_conv_have_avx512() said so at run time. Summation order depends on the
// shapes only (never on threads), so results are deterministic.
//
// Dimension letters: M, N, K GEMM sizes; MR x NR the register tile.
#include "ops_conv_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define PS_AVX512 __attribute__((target("avx512f")))

bool ps_conv_have_avx512(void) {
  static int have = -1; // benign race: every thread computes the same answer
  if (have < 0) {
    __builtin_cpu_init();
    have = __builtin_cpu_supports("avx512f") ? 1 : 0;
  }
  return have == 1;
}

static inline __mmask16 PS_AVX512 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (left > 0 ? left : 0)) - 1u);
}

// ---- nt: dot products along K ---------------------------------------------------------
// Register tile: NT_MR rows of A x NT_NR rows of B, each accumulator holding
// 16 partial sums along K; 11 loads per 24 FMAs. K runs in chunks of NT_KC so
// the NT_MR rows of A (8 x 4 KB) stay in L1 while B's rows stream from L2;
// each chunk's lanes are reduced in a fixed order and added to C. The chunk
// shrinks (to >= 256) so that B's chunk (N x KC) stays within ~512 KB of L2.
enum { NT_MR = 8, NT_NR = 3, NT_KC_MAX = 1024, NT_KC_MIN = 256, NT_B_BYTES = 512 * 1024 };

static inline float PS_AVX512 lanes_sum(__m512 v) {
  // Fixed pairwise tree: 16 -> 8 -> 4 -> 2 -> 1.
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
  return _mm_cvtss_f32(q);
}

static inline void PS_AVX512 nt_tile(int64_t M, int64_t N, int64_t k0, int64_t kl, const float *A, int64_t lda,
                                     const float *B, int64_t ldb, float *C, int64_t ldc, int64_t i0, int64_t j0) {
  __m512 acc[NT_MR][NT_NR];
  const float *ar[NT_MR], *br[NT_NR];
  for (int r = 0; r < NT_MR; r++) {
    ar[r] = A + (i0 + r < M ? i0 + r : M - 1) * lda + k0;
    for (int c = 0; c < NT_NR; c++) acc[r][c] = _mm512_setzero_ps();
  }
  for (int c = 0; c < NT_NR; c++) br[c] = B + (j0 + c < N ? j0 + c : N - 1) * ldb + k0;
  int64_t k = 0;
  for (; k + 16 <= kl; k += 16) {
    __m512 b[NT_NR];
    for (int c = 0; c < NT_NR; c++) b[c] = _mm512_loadu_ps(br[c] + k);
    for (int r = 0; r < NT_MR; r++) {
      __m512 a = _mm512_loadu_ps(ar[r] + k);
      for (int c = 0; c < NT_NR; c++) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
  if (k < kl) {
    __mmask16 m = tail_mask(kl - k);
    __m512 b[NT_NR];
    for (int c = 0; c < NT_NR; c++) b[c] = _mm512_maskz_loadu_ps(m, br[c] + k);
    for (int r = 0; r < NT_MR; r++) {
      __m512 a = _mm512_maskz_loadu_ps(m, ar[r] + k);
      for (int c = 0; c < NT_NR; c++) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < NT_MR && i0 + r < M; r++)
    for (int c = 0; c < NT_NR && j0 + c < N; c++) C[(i0 + r) * ldc + j0 + c] += lanes_sum(acc[r][c]);
}

PS_AVX512 void ps_conv_gemm_nt_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                                      int64_t ldb, float *C, int64_t ldc) {
  int64_t kc = NT_B_BYTES / ((int64_t)sizeof(float) * (N > 0 ? N : 1)) / 16 * 16;
  kc = kc > NT_KC_MAX ? NT_KC_MAX : kc < NT_KC_MIN ? NT_KC_MIN : kc;
  for (int64_t k0 = 0; k0 < K; k0 += kc) {
    int64_t kl = K - k0 < kc ? K - k0 : kc;
    for (int64_t i0 = 0; i0 < M; i0 += NT_MR)
      for (int64_t j0 = 0; j0 < N; j0 += NT_NR) nt_tile(M, N, k0, kl, A, lda, B, ldb, C, ldc, i0, j0);
  }
}

// ---- direct 3x3 "same" convolution, few input channels (layouts: ops_conv_direct.c) --------------
// Forward register tile: R = 3 16-pixel output vectors (consecutive in the
// image's row-major order, so a tile may span rows) x OB output channels = 24
// accumulators; per tap R unaligned loads of the padded input, OB weight
// broadcasts from the packed weights, 24 FMAs. Output vectors outer and
// channel tiles inner: the few padded input rows a tile reads stay in L1.
// When the image's vector count is not a multiple of 3, the last 2 or 4
// vectors go in tiles of 2 (a 16x16 image has 16 vectors: 4 tiles of 3 and 2
// of 2, instead of 6 of 3 of which 2 slots compute nothing). Each output's
// sum runs over (c, kh, kw) in the same order in every tile size.
enum { FD_R = 3, DOB = PS_CONV_DIRECT_OB };

// `accumulate` and R are constants in each instance: a run-time test in the tile set-up made GCC
// spill the accumulators (the forward fell from ~100 to ~76 GFLOP/s with the image in L2).
static inline __attribute__((always_inline)) PS_AVX512 void
forward_tiles(float *y, const float *xp, const float *wp, const float *b, const bool accumulate,
              const ps_conv_direct_dims *d, int64_t v_begin, int64_t v_end, const int R) {
  const int64_t CKK = d->C * 9, plane = d->HP * d->WP, P = d->H * d->W, WP = d->WP;
  for (int64_t v0 = v_begin; v0 + R <= v_end; v0 += R) {
    const float *xs[FD_R];
    int64_t yo[FD_R];
    __mmask16 m[FD_R];
    for (int r = 0; r < R; r++) {
      int64_t v = v0 + r, oh = v / d->NV, s = v % d->NV;
      xs[r] = xp + oh * WP + s * 16;
      yo[r] = oh * d->W + s * 16;
      m[r] = tail_mask(d->W - s * 16);
    }
    for (int64_t ob = 0; ob < d->OCP / DOB; ob++) {
      __m512 acc[FD_R][DOB];
      if (accumulate) // output channels past OC: 0 (never stored)
        for (int j = 0; j < DOB; j++) {
          const int64_t o = ob * DOB + j < d->OC ? ob * DOB + j : d->OC - 1;
          const __mmask16 in = ob * DOB + j < d->OC ? 0xFFFF : 0;
          for (int r = 0; r < R; r++) acc[r][j] = _mm512_maskz_loadu_ps(m[r] & in, y + o * P + yo[r]);
        }
      else
        for (int j = 0; j < DOB; j++) {
          int64_t o = ob * DOB + j;
          __m512 bj = b && o < d->OC ? _mm512_set1_ps(b[o]) : _mm512_setzero_ps();
          for (int r = 0; r < R; r++) acc[r][j] = bj;
        }
      const float *wt = wp + ob * CKK * DOB;
      for (int64_t c = 0; c < d->C; c++) {
#pragma GCC unroll 3
        for (int kh = 0; kh < 3; kh++)
#pragma GCC unroll 3
          for (int kw = 0; kw < 3; kw++) {
            const int64_t off = c * plane + kh * WP + kw;
            __m512 x[FD_R];
            for (int r = 0; r < R; r++) x[r] = _mm512_loadu_ps(xs[r] + off);
            for (int j = 0; j < DOB; j++) {
              __m512 wj = _mm512_set1_ps(wt[j]);
              for (int r = 0; r < R; r++) acc[r][j] = _mm512_fmadd_ps(x[r], wj, acc[r][j]);
            }
            wt += DOB;
          }
      }
      for (int j = 0; j < DOB && ob * DOB + j < d->OC; j++)
        for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(y + (ob * DOB + j) * P + yo[r], m[r], acc[r][j]);
    }
  }
}

static inline __attribute__((always_inline)) PS_AVX512 void
direct_forward(float *y, const float *xp, const float *wp, const float *b, const bool accumulate,
               const ps_conv_direct_dims *d) {
  const int64_t nvec = d->H * d->NV, left = nvec % FD_R == 1 && nvec > 1 ? 4 : nvec % FD_R; // in tiles of 2
  forward_tiles(y, xp, wp, b, accumulate, d, 0, nvec - left, FD_R);
  if (nvec == 1) forward_tiles(y, xp, wp, b, accumulate, d, 0, 1, 1);
  else forward_tiles(y, xp, wp, b, accumulate, d, nvec - left, nvec, 2);
}

PS_AVX512 void ps_conv_direct_forward_avx512(float *y, const float *xp, const float *wp, const float *b,
                                             bool accumulate, const ps_conv_direct_dims *d) {
  if (accumulate) direct_forward(y, xp, wp, NULL, true, d);
  else direct_forward(y, xp, wp, b, false, d);
}

// Weight-gradient tile: DWO output channels x all 9
// taps of one input channel = 27 lane accumulators. It walks the padded input
// rows r: the 3 shifted loads of row r serve the 3 kh taps (dout rows r - kh,
// which stay in L1 between consecutive r), so per 16 pixels of a full row it
// does 3 input loads, 3*DWO dout loads and 9*DWO FMAs, and each dout vector
// comes from L2 once per tile rather than once per (c, kh) tile. Each
// accumulator adds its terms in (image, oh, 16-pixel vector) order. The last
// OC % 3 channels go in a tile of that many (O, a constant per instance).
enum { DWO = 3 };

static inline __attribute__((always_inline)) PS_AVX512 void
dw_row(__m512 acc[DWO][3][3], const float *const gr[DWO], const float *xr, int64_t r, int64_t W, int64_t NV,
       const int kh_lo, const int kh_hi, const int O) {
  for (int64_t s = 0; s < NV; s++) {
    const __mmask16 m = tail_mask(W - s * 16); // dout lanes past W load as 0
    const __m512 x0 = _mm512_loadu_ps(xr + s * 16), x1 = _mm512_loadu_ps(xr + s * 16 + 1),
                 x2 = _mm512_loadu_ps(xr + s * 16 + 2);
#pragma GCC unroll 3
    for (int kh = kh_lo; kh <= kh_hi; kh++)
#pragma GCC unroll 3
      for (int j = 0; j < O; j++) {
        const __m512 gv = _mm512_maskz_loadu_ps(m, gr[j] + (r - kh) * W + s * 16);
        acc[j][kh][0] = _mm512_fmadd_ps(gv, x0, acc[j][kh][0]);
        acc[j][kh][1] = _mm512_fmadd_ps(gv, x1, acc[j][kh][1]);
        acc[j][kh][2] = _mm512_fmadd_ps(gv, x2, acc[j][kh][2]);
      }
  }
}

// Output channels [o_begin, o_end) in tiles of O.
static inline __attribute__((always_inline)) PS_AVX512 void
dw_channel_tiles(float *lanes, const float *const *gs, const float *const *xps, int ng, const ps_conv_direct_dims *d,
                 int64_t o_begin, int64_t o_end, const int O) {
  const int64_t plane = d->HP * d->WP, P = d->H * d->W, C3 = d->C * 3, WP = d->WP, H = d->H;
  for (int64_t o0 = o_begin; o0 + O <= o_end; o0 += O)
    for (int64_t c = 0; c < d->C; c++) {
      float *lt[DWO]; // this tile's lanes: (o, c*3 + kh, kw) at lt[j] + (kh * OB * 3 + kw) * 16
      __m512 acc[DWO][3][3];
      for (int j = 0; j < O; j++) {
        const int64_t o = o0 + j;
        lt[j] = lanes + (((o / DOB) * C3 + c * 3) * DOB + o % DOB) * 3 * 16;
        for (int kh = 0; kh < 3; kh++)
          for (int kw = 0; kw < 3; kw++) acc[j][kh][kw] = _mm512_loadu_ps(lt[j] + (kh * DOB * 3 + kw) * 16);
      }
      for (int im = 0; im < ng; im++) {
        const float *gr[DWO];
        for (int j = 0; j < O; j++) gr[j] = gs[im] + (o0 + j) * P;
        const float *xc = xps[im] + c * plane;
        // padded row r feeds dout rows r - kh in [0, H): kh in [max(0, r - H + 1), min(2, r)]
        if (H == 1) { // constant kh ranges keep the accumulators in registers
          dw_row(acc, gr, xc, 0, d->W, d->NV, 0, 0, O);
          dw_row(acc, gr, xc + WP, 1, d->W, d->NV, 1, 1, O);
          dw_row(acc, gr, xc + 2 * WP, 2, d->W, d->NV, 2, 2, O);
          continue;
        }
        dw_row(acc, gr, xc, 0, d->W, d->NV, 0, 0, O);
        dw_row(acc, gr, xc + WP, 1, d->W, d->NV, 0, 1, O);
        for (int64_t r = 2; r < H; r++) dw_row(acc, gr, xc + r * WP, r, d->W, d->NV, 0, 2, O);
        dw_row(acc, gr, xc + H * WP, H, d->W, d->NV, 1, 2, O);
        dw_row(acc, gr, xc + (H + 1) * WP, H + 1, d->W, d->NV, 2, 2, O);
      }
      for (int j = 0; j < O; j++)
        for (int kh = 0; kh < 3; kh++)
          for (int kw = 0; kw < 3; kw++) _mm512_storeu_ps(lt[j] + (kh * DOB * 3 + kw) * 16, acc[j][kh][kw]);
    }
}

PS_AVX512 void ps_conv_direct_dw_avx512(float *lanes, const float *const *gs, const float *const *xps, int ng,
                                        const ps_conv_direct_dims *d) {
  const int64_t tail = d->OC % DWO;
  dw_channel_tiles(lanes, gs, xps, ng, d, 0, d->OC - tail, DWO);
  if (tail == 2) dw_channel_tiles(lanes, gs, xps, ng, d, d->OC - 2, d->OC, 2);
  if (tail == 1) dw_channel_tiles(lanes, gs, xps, ng, d, d->OC - 1, d->OC, 1);
}

#else // not x86-64 GCC/Clang: never selected

void ps_conv_gemm_nt_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                            float *C, int64_t ldc) {
  (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)C, (void)ldc;
}
bool ps_conv_have_avx512(void) { return false; }
void ps_conv_direct_forward_avx512(float *y, const float *xp, const float *wp, const float *b, bool accumulate,
                                   const ps_conv_direct_dims *d) {
  ps_conv_direct_forward_c(y, xp, wp, b, accumulate, d);
}
void ps_conv_direct_dw_avx512(float *lanes, const float *const *gs, const float *const *xps, int ng,
                              const ps_conv_direct_dims *d) {
  for (int i = 0; i < ng; i++) ps_conv_direct_dw_c(lanes, gs[i], xps[i], d);
}

#endif
