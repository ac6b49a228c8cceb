// The device-style conv block (ps_nn_convblock_*_ex: whole-batch conv, two-stage statistics,
// epilogue and backward as kernel bodies; what runs on CUDA) executed by the HOST executor on
// CPU buffers, against the fused CPU block on the same inputs: pooled outputs, argmax, mean/rstd,
// running statistics and every gradient (din, dw, dgamma, dbeta). Normalized error <= 1e-5:
// the two differ only in summation order (float lanes vs double per plane in the statistics,
// per-thread vs per-tile partials), ~1e-7 relative. Also a SyncBN reducer that doubles every
// total (a stand-in for a 2-rank all-reduce) must act the same on both paths.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_layers.h"

#include "convblock_scratch.h"
#include "testutil.h"


#define TOL 1e-5

static ps_status double_sum(void *ctx, double *buf, int64_t n) {
  (void)ctx;
  for (int64_t i = 0; i < n; i++) buf[i] *= 2.0;
  return PS_OK;
}

static void *zalloc(size_t n) { return calloc(n ? n : 1, 1); }

static void cmpf(const char *what, const char *name, const float *a, const float *b, int64_t n) {
  double e = ps_tu_rel_err(a, b, n);
  printf("  %-28s %-8s rel err %.2e\n", what, name, e);
  TU_CHECK(e <= TOL, "%s %s: normalized error %.3e > %.0e", what, name, e, TOL);
}

static int run_case(const char *what, bool training, int groups, bool reducer, uint64_t seed) {
  const ps_nn_convblock_dims d = {5, 3, 8, 8, 8}; // N C OC H W
  const int64_t n = d.n, c = d.c, oc = d.oc, hw = d.h * d.w, np = n * oc * (hw / 4), nstat = groups ? n * groups : oc;
  ps_nn_bn_opts o = {1e-5f, 0.1f, training, {reducer ? double_sum : NULL, NULL}, groups};
  float *x = zalloc(n * c * hw * 4), *w = zalloc(oc * c * 9 * 4), *g = zalloc(oc * 4), *b = zalloc(oc * 4),
        *dp = zalloc(np * 4);
  ps_tu_fill_uniform(x, n * c * hw, -1, 1, seed, 1);
  ps_tu_fill_uniform(w, oc * c * 9, -0.5f, 0.5f, seed, 2);
  ps_tu_fill_uniform(g, oc, 0.5f, 1.5f, seed, 3);
  ps_tu_fill_uniform(b, oc, -0.2f, 0.2f, seed, 4);
  ps_tu_fill_uniform(dp, np, -1, 1, seed, 5);
  // outputs per path: [0] fused, [1] device-style
  float *po[2], *z[2], *mean[2], *rstd[2], *rm[2], *rv[2], *dx[2], *dw[2], *dg[2], *db[2];
  uint8_t *am[2];
  for (int k = 0; k < 2; k++) {
    po[k] = zalloc(np * 4), z[k] = zalloc(n * oc * hw * 4), am[k] = zalloc(np);
    mean[k] = zalloc(nstat * 4), rstd[k] = zalloc(nstat * 4), rm[k] = zalloc(oc * 4), rv[k] = zalloc(oc * 4);
    dx[k] = zalloc(n * c * hw * 4), dw[k] = zalloc(oc * c * 9 * 4), dg[k] = zalloc(oc * 4), db[k] = zalloc(oc * 4);
    ps_tu_fill_uniform(rm[k], oc, -0.1f, 0.1f, seed, 6); // same running statistics on both
    ps_tu_fill_uniform(rv[k], oc, 0.5f, 1.5f, seed, 7);
  }
  float *rmp[2] = {groups ? NULL : rm[0], groups ? NULL : rm[1]}, *rvp[2] = {groups ? NULL : rv[0], groups ? NULL : rv[1]};
  // fused
  ps_nn_convblock_scratch fs = convblock_scratch_alloc(&d);
  float *zw = zalloc(np * 4);
  TU_OK(ps_nn_convblock_forward(po[0], am[0], z[0], zw, mean[0], rstd[0], x, w, g, b, rmp[0], rvp[0], &d, &o, &fs));
  TU_OK(ps_nn_convblock_backward(dx[0], dw[0], dg[0], db[0], fs.gz, dp, am[0], z[0], zw, mean[0], rstd[0], x, w, g, b,
                                 &d, &o, &fs));
  // device-style on the host executor
  const ps_nn_exec ex = {PS_CPU};
  ps_nn_convblock_dev_scratch ds = {0};
  ds.gz = zalloc(n * oc * hw * 4);
  ds.ws_floats = ps_nn_convblock_dev_ws_floats(PS_CPU, &d);
  ds.ws = zalloc(ds.ws_floats * 4);
  ds.part = zalloc(2 * n * oc * 8);
  ds.stats = zalloc((2 * oc + 1) * 8);
  ds.stats_h = ds.stats;
  ds.chan_h = zalloc(4 * oc * 4);
  ds.gn_ab = zalloc(2 * n * (groups ? groups : 1) * 4);
  TU_OK(ps_nn_convblock_forward_ex(&ex, po[1], am[1], z[1], mean[1], rstd[1], x, w, g, b, rmp[1], rvp[1], &d, &o, &ds));
  TU_OK(ps_nn_convblock_backward_ex(&ex, dx[1], dw[1], dg[1], db[1], dp, am[1], z[1], mean[1], rstd[1], x, w, g, b, &d,
                                    &o, &ds));
  printf("%s\n", what);
  int64_t amiss = 0;
  for (int64_t i = 0; i < np; i++) amiss += am[0][i] != am[1][i];
  printf("  %-28s argmax   %lld of %lld differ\n", what, (long long)amiss, (long long)np);
  TU_CHECK(amiss == 0, "%s: %lld argmax differ", what, (long long)amiss);
  cmpf(what, "z", z[1], z[0], n * oc * hw);
  cmpf(what, "pool", po[1], po[0], np);
  cmpf(what, "mean", mean[1], mean[0], nstat);
  cmpf(what, "rstd", rstd[1], rstd[0], nstat);
  if (!groups) {
    cmpf(what, "run_mean", rm[1], rm[0], oc);
    cmpf(what, "run_var", rv[1], rv[0], oc);
  }
  cmpf(what, "din", dx[1], dx[0], n * c * hw);
  cmpf(what, "dw", dw[1], dw[0], oc * c * 9);
  cmpf(what, "dgamma", dg[1], dg[0], oc);
  cmpf(what, "dbeta", db[1], db[0], oc);
  // The gradients are not all zero (the comparison would be vacuous).
  double sdx = 0;
  for (int64_t i = 0; i < n * c * hw; i++) sdx += fabs(dx[0][i]);
  TU_CHECK(sdx > 0, "%s: din is all zero", what);
  for (int k = 0; k < 2; k++) {
    free(po[k]), free(z[k]), free(am[k]), free(mean[k]), free(rstd[k]), free(rm[k]), free(rv[k]);
    free(dx[k]), free(dw[k]), free(dg[k]), free(db[k]);
  }
  convblock_scratch_free(&fs);
  free(zw);
  free(ds.gz), free(ds.ws), free(ds.part), free(ds.stats), free(ds.chan_h), free(ds.gn_ab);
  free(x), free(w), free(g), free(b), free(dp);
  return 0;
}

int main(void) {
  uint64_t seed = ps_tu_seed("nn_convblock_dev", 11);
  if (run_case("batchnorm training", true, 0, false, seed)) return 1;
  if (run_case("batchnorm training syncbn", true, 0, true, seed + 1)) return 1;
  if (run_case("batchnorm eval", false, 0, false, seed + 2)) return 1;
  if (run_case("groupnorm(2) training", true, 2, false, seed + 3)) return 1;
  if (run_case("groupnorm(4) eval", false, 4, false, seed + 4)) return 1;
  return ps_tu_finish("nn_convblock_dev");
}
