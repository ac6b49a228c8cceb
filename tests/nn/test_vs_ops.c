// nn's fused float kernels against tensor/'s ps_ops (an independent implementation of the
// same definitions): linear forward/backward, conv2d forward/backward, layer norm, max-pool,
// and the dropout mask (bit-identical: both follow the row-stream definition of ps_ops.h).
// Tolerance: relative-norm 1e-5 (float sums in different orders; a wrong index gives O(1)).
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ps_layers.h"
#include "ps_ops.h"
#include "testutil.h"

static uint64_t seed;
static float *rnd(int64_t n, uint64_t stream) {
  float *x = malloc((size_t)n * sizeof(float));
  ps_tu_fill_uniform(x, n, -1, 1, seed, stream);
  return x;
}
static float *zeros(int64_t n) { return calloc((size_t)n, sizeof(float)); }
#define T(ptr, ...) ps_tensor_wrap((ptr), PS_F32, PS_CPU, PS_SHAPE(__VA_ARGS__))

static void cmp(const char *what, const float *a, const float *b, int64_t n) {
  double e = ps_tu_rel_err(a, b, n);
  printf("  %-22s rel err %.2e\n", what, e);
  TU_CHECK(e < 1e-5, "%s: nn vs ps_ops relative error %.3e", what, e);
}

int main(void) {
  seed = ps_tu_seed("nn_vs_ops", 3);
  ps_ops_set_threads(1);
  { // linear
    enum { N = 6, DI = 9, DO = 5 };
    float *x = rnd(N * DI, 1), *w = rnd(DO * DI, 2), *b = rnd(DO, 3), *dy = rnd(N * DO, 4);
    float *o1 = zeros(N * DO), *o2 = zeros(N * DO), *g1 = zeros(N * DO);
    float *dx1 = zeros(N * DI), *dx2 = zeros(N * DI), *dw1 = zeros(DO * DI), *dw2 = zeros(DO * DI), *db1 = zeros(DO),
          *db2 = zeros(DO);
    ps_nn_linear_forward(o1, NULL, x, w, b, N, DI, DO, PS_NN_ACT_NONE);
    ps_tensor to = T(o2, N, DO), tx = T(x, N, DI), tw = T(w, DO, DI), tb = T(b, DO), tdy = T(dy, N, DO);
    ps_tensor tdx = T(dx2, N, DI), tdw = T(dw2, DO, DI), tdb = T(db2, DO);
    TU_OK(ps_linear_forward(&to, &tx, &tw, &tb));
    cmp("linear forward", o1, o2, N * DO);
    memcpy(g1, dy, sizeof(float) * N * DO);
    ps_nn_linear_backward(dx1, dw1, db1, g1, x, w, o1, NULL, N, DI, DO, PS_NN_ACT_NONE);
    TU_OK(ps_linear_backward(&tdx, &tdw, &tdb, &tdy, &tx, &tw));
    cmp("linear backward dx", dx1, dx2, N * DI);
    cmp("linear backward dw", dw1, dw2, DO * DI);
    cmp("linear backward db", db1, db2, DO);
    free(x), free(w), free(b), free(dy), free(o1), free(o2), free(g1), free(dx1), free(dx2), free(dw1), free(dw2);
    free(db1), free(db2);
  }
  { // conv2d 3x3, pad 1
    enum { N = 2, C = 3, OC = 4, H = 6, W = 5 };
    const int64_t nx = N * C * H * W, nw = OC * C * 9, no = N * OC * H * W;
    float *x = rnd(nx, 5), *w = rnd(nw, 6), *b = rnd(OC, 7), *dy = rnd(no, 8), *o1 = zeros(no), *o2 = zeros(no);
    float *col = zeros(omp_get_max_threads() * ps_nn_conv_col_floats(C, H, W, 3)), *dws = zeros(omp_get_max_threads() * nw);
    float *dx1 = zeros(nx), *dx2 = zeros(nx), *dw1 = zeros(nw), *dw2 = zeros(nw), *db1 = zeros(OC), *db2 = zeros(OC);
    ps_nn_conv2d_forward(o1, x, w, b, N, C, OC, H, W, 3, col);
    ps_nn_conv2d_backward(dx1, dw1, db1, dy, x, w, N, C, OC, H, W, 3, col, dws);
    ps_tensor tx = T(x, N, C, H, W), tw = T(w, OC, C, 3, 3), tb = T(b, OC), to = T(o2, N, OC, H, W), tdy = T(dy, N, OC, H, W);
    ps_tensor tdx = T(dx2, N, C, H, W), tdw = T(dw2, OC, C, 3, 3), tdb = T(db2, OC);
    ps_conv2d_params p = {1, 1, 1, 1};
    int64_t wsn = ps_conv2d_workspace_floats(&tx, &tw, &p);
    float *ws = zeros(wsn);
    ps_tensor tws = T(ws, wsn);
    TU_OK(ps_conv2d_forward(&to, &tx, &tw, &tb, &p, &tws));
    TU_OK(ps_conv2d_backward(&tdx, &tdw, &tdb, &tdy, &tx, &tw, &p, &tws));
    cmp("conv2d forward", o1, o2, no);
    cmp("conv2d backward dx", dx1, dx2, nx);
    cmp("conv2d backward dw", dw1, dw2, nw);
    cmp("conv2d backward db", db1, db2, OC);
    free(x), free(w), free(b), free(dy), free(o1), free(o2), free(col), free(dws), free(dx1), free(dx2), free(dw1);
    free(dw2), free(db1), free(db2), free(ws);
  }
  { // layer norm
    enum { N = 5, D = 12 };
    float *x = rnd(N * D, 9), *g = rnd(D, 10), *b = rnd(D, 11), *o1 = zeros(N * D), *o2 = zeros(N * D);
    float m1[N], r1[N], m2[N], r2[N];
    ps_nn_layernorm_forward(o1, m1, r1, x, g, b, N, D, 1e-5f);
    ps_tensor to = T(o2, N, D), tm = T(m2, N), tr = T(r2, N), tx = T(x, N, D), tg = T(g, D), tb = T(b, D);
    TU_OK(ps_layernorm_forward(&to, &tm, &tr, &tx, &tg, &tb, 1e-5f));
    cmp("layernorm forward", o1, o2, N * D);
    free(x), free(g), free(b), free(o1), free(o2);
  }
  { // max-pool 2x2
    enum { N = 2, C = 3, H = 6, W = 4 };
    float *x = rnd(N * C * H * W, 12), *o1 = zeros(N * C * 6), *o2 = zeros(N * C * 6);
    uint8_t am1[N * C * 6];
    int32_t am2[N * C * 6];
    ps_nn_maxpool2d_forward(o1, am1, x, N, C, H, W, 2);
    ps_tensor to = T(o2, N, C, 3, 2), tx = T(x, N, C, H, W);
    ps_tensor ta = ps_tensor_wrap(am2, PS_I32, PS_CPU, PS_SHAPE(N, C, 3, 2));
    TU_OK(ps_maxpool2d_forward(&to, &ta, &tx, 2, 2));
    TU_CHECK(!memcmp(o1, o2, sizeof(float) * N * C * 6), "max-pool outputs differ");
    free(x), free(o1), free(o2);
  }
  { // dropout: identical masks and outputs
    enum { N = 3, D = 40 };
    float *x = rnd(N * D, 13), *o1 = zeros(N * D), *o2 = zeros(N * D);
    uint8_t m1[N * D], m2[N * D];
    uint64_t streams[N];
    for (int i = 0; i < N; i++) streams[i] = ps_rng_stream(PS_RNG_DROPOUT, 9, (uint64_t)(40 + i), 1);
    ps_nn_dropout_forward(o1, m1, x, 0.25f, seed, streams, N, D);
    ps_tensor to = T(o2, N, D), tx = T(x, N, D), tm = ps_tensor_wrap(m2, PS_U8, PS_CPU, PS_SHAPE(N, D));
    TU_OK(ps_dropout_forward(&to, &tm, &tx, 0.25f, seed, streams));
    TU_CHECK(!memcmp(m1, m2, sizeof m1), "dropout masks differ between nn and ps_ops");
    cmp("dropout forward", o1, o2, N * D);
    free(x), free(o1), free(o2);
  }
  return ps_tu_finish("nn_vs_ops");
}
