// The conv block's element-wise plane kernels (nn/ps_convblock_cpu.c):
//  1. the portable kernels against brute force: pooled values and argmax exactly (the same float
//     operations, first-max rule written out again), the sums against double-precision sums
//     (relative 1e-5: float lanes vs double);
//  2. where the CPU has AVX-512: the AVX-512 kernels against the portable ones, equal as floats
//     (==) on every output, over shapes with tail lanes (pooled widths 1..40), tied window values,
//     exact zeros, negative and zero scales;
//  3. the whole fused block (forward + backward) with AVX-512 against forced-portable: every
//     output equal, so the choice of kernels never changes a training run.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_convblock_cpu.h"
#include "ps_layers.h"

#include "convblock_scratch.h"
#include "testutil.h"

static void *zalloc(size_t n) { return calloc(n ? n : 1, 1); }

// z with ties and exact zeros: values on a grid of 1/8 in [-2, 2].
static void fill_tied(float *z, int64_t n, uint64_t seed, uint64_t stream) {
  ps_tu_fill_uniform(z, n, -2.0f, 2.0f, seed, stream);
  for (int64_t i = 0; i < n; i++) z[i] = roundf(z[i] * 8.0f) / 8.0f;
}

static int64_t count_ne(const float *a, const float *b, int64_t n) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++) k += !(a[i] == b[i]);
  return k;
}

typedef struct {
  float *pool, *zwin, *dz;
  uint8_t *am;
  double s, ss, sdy, sdz;
} plane_out;

static void run_plane(plane_out *o, const float *z, const float *dp, int64_t h, int64_t w, float sc, float sh) {
  ps_cb_sum_sumsq(z, h * w, &o->s, &o->ss);
  ps_cb_norm_relu_pool(o->pool, o->am, o->zwin, z, sc, sh, h, w);
  ps_cb_bwd_sums(&o->sdy, &o->sdz, o->zwin, dp, sc, sh, h / 2, w / 2);
  ps_cb_bwd_dz(o->dz, z, dp, o->am, sc, sh, 0.75f * sc, -0.125f, 0.0625f * sc, h, w);
}

static int check_plane(int64_t h, int64_t w, float sc, float sh, uint64_t seed, bool have_avx512) {
  const int64_t n = h * w, np = n / 4, ow = w / 2;
  float *z = zalloc(n * 4), *dp = zalloc(np * 4);
  fill_tied(z, n, seed, 1);
  ps_tu_fill_uniform(dp, np, -1.0f, 1.0f, seed, 2);
  plane_out r[2];
  for (int k = 0; k < 2; k++)
    r[k].pool = zalloc(np * 4), r[k].zwin = zalloc(np * 4), r[k].dz = zalloc(n * 4), r[k].am = zalloc(np);
  ps_cb_force_portable(true);
  run_plane(&r[0], z, dp, h, w, sc, sh);
  // 1. portable against brute force
  double bs = 0, bss = 0, bdy = 0, bdz = 0;
  for (int64_t i = 0; i < n; i++) bs += z[i], bss += (double)z[i] * z[i];
  int64_t bad_pool = 0, bad_dz = 0;
  for (int64_t oy = 0; oy < h / 2; oy++)
    for (int64_t ox = 0; ox < ow; ox++) {
      float best = 0.0f;
      int bi = 0;
      for (int k = 0; k < 4; k++) {
        float v = z[(2 * oy + k / 2) * w + 2 * ox + k % 2] * sc + sh;
        if (k == 0 ? v > 0.0f : v > best) best = v, bi = k;
      }
      const float zv = z[(2 * oy + bi / 2) * w + 2 * ox + bi % 2];
      bad_pool += r[0].pool[oy * ow + ox] != best || r[0].am[oy * ow + ox] != bi || r[0].zwin[oy * ow + ox] != zv;
      if (zv * sc + sh > 0.0f) bdy += dp[oy * ow + ox], bdz += (double)dp[oy * ow + ox] * zv;
    }
  for (int64_t y = 0; y < h; y++)
    for (int64_t x = 0; x < w; x++) {
      const int64_t oy = y / 2, ox = x / 2, k = (y % 2) * 2 + x % 2;
      float want = -0.125f + 0.0625f * sc * z[y * w + x];
      if (r[0].am[oy * ow + ox] == k && z[y * w + x] * sc + sh > 0.0f) want += 0.75f * sc * dp[oy * ow + ox];
      bad_dz += r[0].dz[y * w + x] != want;
    }
  const double tol = 1e-5;
#define NEAR(a, b, scale) (fabs((a) - (b)) <= tol * (scale) + 1e-12)
  TU_CHECK(bad_pool == 0, "%lldx%lld sc %g: %lld pooled values/argmax/winner z differ from brute force", (long long)h,
           (long long)w, sc, (long long)bad_pool);
  TU_CHECK(bad_dz == 0, "%lldx%lld sc %g: %lld dz values differ from brute force", (long long)h, (long long)w, sc,
           (long long)bad_dz);
  TU_CHECK(NEAR(r[0].s, bs, bss + 1) && NEAR(r[0].ss, bss, bss + 1), "%lldx%lld: sums %.9g %.9g vs %.9g %.9g",
           (long long)h, (long long)w, r[0].s, r[0].ss, bs, bss);
  TU_CHECK(NEAR(r[0].sdy, bdy, np + 1.0) && NEAR(r[0].sdz, bdz, 2.0 * np + 1.0),
           "%lldx%lld sc %g: backward sums %.9g %.9g vs %.9g %.9g", (long long)h, (long long)w, sc, r[0].sdy, r[0].sdz,
           bdy, bdz);
  // 2. AVX-512 against portable: equal as floats
  if (have_avx512) {
    ps_cb_force_portable(false);
    run_plane(&r[1], z, dp, h, w, sc, sh);
    const int64_t ne = count_ne(r[0].pool, r[1].pool, np) + count_ne(r[0].zwin, r[1].zwin, np) +
                       count_ne(r[0].dz, r[1].dz, n) + (memcmp(r[0].am, r[1].am, (size_t)np) != 0);
    TU_CHECK(ne == 0, "%lldx%lld sc %g: %lld outputs of AVX-512 differ from portable", (long long)h, (long long)w,
             sc, (long long)ne);
    TU_CHECK(r[0].s == r[1].s && r[0].ss == r[1].ss && r[0].sdy == r[1].sdy && r[0].sdz == r[1].sdz,
             "%lldx%lld sc %g: sums differ (AVX-512 %.17g %.17g %.17g %.17g, portable %.17g %.17g %.17g %.17g)",
             (long long)h, (long long)w, sc, r[1].s, r[1].ss, r[1].sdy, r[1].sdz, r[0].s, r[0].ss, r[0].sdy,
             r[0].sdz);
  }
  for (int k = 0; k < 2; k++) free(r[k].pool), free(r[k].zwin), free(r[k].dz), free(r[k].am);
  free(z), free(dp);
  return 0;
}

static int check_block(const ps_nn_convblock_dims d, bool training, uint64_t seed) {
  const int64_t n = d.n, c = d.c, oc = d.oc, hw = d.h * d.w, np = n * oc * (hw / 4);
  ps_nn_bn_opts o = {1e-5f, 0.1f, training, {NULL, NULL}, 0};
  float *x = zalloc(n * c * hw * 4), *w = zalloc(oc * c * 9 * 4), *g = zalloc(oc * 4), *b = zalloc(oc * 4),
        *dp = zalloc(np * 4);
  ps_tu_fill_uniform(x, n * c * hw, -1, 1, seed, 1);
  ps_tu_fill_uniform(w, oc * c * 9, -0.5f, 0.5f, seed, 2);
  ps_tu_fill_uniform(g, oc, -1.5f, 1.5f, seed, 3); // negative scales too
  ps_tu_fill_uniform(b, oc, -0.2f, 0.2f, seed, 4);
  ps_tu_fill_uniform(dp, np, -1, 1, seed, 5);
  float *po[2], *z[2], *zw[2], *mean[2], *rstd[2], *rm[2], *rv[2], *dx[2], *dw[2], *dg[2], *db[2];
  uint8_t *am[2];
  ps_nn_convblock_scratch s = convblock_scratch_alloc(&d);
  for (int k = 0; k < 2; k++) { // [0] portable, [1] AVX-512
    po[k] = zalloc(np * 4), z[k] = zalloc(n * oc * hw * 4), zw[k] = zalloc(np * 4), am[k] = zalloc(np);
    mean[k] = zalloc(oc * 4), rstd[k] = zalloc(oc * 4), rm[k] = zalloc(oc * 4), rv[k] = zalloc(oc * 4);
    dx[k] = zalloc(n * c * hw * 4), dw[k] = zalloc(oc * c * 9 * 4), dg[k] = zalloc(oc * 4), db[k] = zalloc(oc * 4);
    ps_tu_fill_uniform(rm[k], oc, -0.1f, 0.1f, seed, 6);
    ps_tu_fill_uniform(rv[k], oc, 0.5f, 1.5f, seed, 7);
    ps_cb_force_portable(k == 0);
    TU_OK(ps_nn_convblock_forward(po[k], am[k], z[k], zw[k], mean[k], rstd[k], x, w, g, b, rm[k], rv[k], &d, &o,
                                  &s));
    TU_OK(ps_nn_convblock_backward(dx[k], dw[k], dg[k], db[k], s.gz, dp, am[k], z[k], zw[k], mean[k], rstd[k], x, w,
                                   g, b, &d, &o, &s));
  }
  ps_cb_force_portable(false);
  const int64_t ne[] = {count_ne(po[0], po[1], np), memcmp(am[0], am[1], (size_t)np) != 0,
                        count_ne(mean[0], mean[1], oc), count_ne(rstd[0], rstd[1], oc),
                        count_ne(rm[0], rm[1], oc), count_ne(rv[0], rv[1], oc),
                        count_ne(dx[0], dx[1], n * c * hw), count_ne(dw[0], dw[1], oc * c * 9),
                        count_ne(dg[0], dg[1], oc), count_ne(db[0], db[1], oc)};
  const char *names[] = {"pool", "argmax", "mean", "rstd", "run_mean", "run_var", "din", "dw", "dgamma", "dbeta"};
  printf("block %lldx%lldx%lld->%lld %lldx%lld %s: ", (long long)n, (long long)c, (long long)d.h, (long long)oc,
         (long long)d.h, (long long)d.w, training ? "train" : "eval");
  for (int k = 0; k < 10; k++) {
    printf("%s %lld%s", names[k], (long long)ne[k], k < 9 ? ", " : " differ\n");
    TU_CHECK(ne[k] == 0, "block: %lld values of %s differ between AVX-512 and portable", (long long)ne[k], names[k]);
  }
  double sdx = 0;
  for (int64_t i = 0; i < n * c * hw; i++) sdx += fabs(dx[0][i]);
  TU_CHECK(sdx > 0, "block: din is all zero (the comparison would be vacuous)");
  for (int k = 0; k < 2; k++) {
    free(po[k]), free(z[k]), free(zw[k]), free(am[k]), free(mean[k]), free(rstd[k]), free(rm[k]), free(rv[k]);
    free(dx[k]), free(dw[k]), free(dg[k]), free(db[k]);
  }
  convblock_scratch_free(&s);
  free(x), free(w), free(g), free(b), free(dp);
  return 0;
}

int main(void) {
  ps_cb_force_portable(false);
  const bool have = ps_cb_have_avx512();
  printf("AVX-512 kernels: %s\n", have ? "yes (compared with portable)" : "no (portable against brute force only)");
  const uint64_t seed = ps_tu_seed("nn_convblock_simd", 20261122);
  const float scales[][2] = {{1.25f, 0.1f}, {-0.7f, 0.3f}, {0.0f, 0.5f}, {0.0f, -0.5f}, {1.0f, 0.0f}};
  int64_t planes = 0;
  for (int64_t w = 2; w <= 80; w += 2)
    for (int64_t h = 2; h <= 8; h += 6)
      for (size_t k = 0; k < sizeof scales / sizeof *scales; k++, planes++)
        if (check_plane(h, w, scales[k][0], scales[k][1], seed + (uint64_t)planes, have)) return 1;
  if (check_plane(64, 64, 0.9f, -0.05f, seed, have) || check_plane(224, 224, 1.1f, 0.02f, seed, have)) return 1;
  printf("%lld planes: portable = brute force%s\n", (long long)planes + 2, have ? ", AVX-512 = portable" : "");
  if (have) {
    const ps_nn_convblock_dims d1 = {3, 2, 4, 6, 6}, d2 = {2, 3, 8, 64, 64}, d3 = {3, 5, 16, 10, 34};
    if (check_block(d1, true, seed) || check_block(d2, true, seed + 1) || check_block(d3, true, seed + 2) ||
        check_block(d3, false, seed + 3))
      return 1;
  }
  return ps_tu_finish("nn_convblock_simd");
}
