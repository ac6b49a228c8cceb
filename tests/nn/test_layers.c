// Finite-difference gradient check of every layer on its own (loss = sum(out * R) with random R),
// plus mask semantics (masked keys/tiles: exactly zero weight and zero gradient) and dropout
// keying (a row's mask depends on its stream key only, not on its position in the batch).
// Tolerance: float layers, loss accumulated in double, central differences at h = 1e-2 / 2e-3 /
// 5e-4 taking the best-agreeing step per element (ReLU/max-pool kinks), relative-norm error per
// tensor < 5e-3; wrong formulas give O(1).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "ps_layers.h"
#include "ps_ops.h"
#include "testutil.h"

#define TU_OK_V(call)                                                                              \
  do {                                                                                             \
    if ((call) != PS_OK) {                                                                         \
      ps_tu_failures++;                                                                            \
      fprintf(stderr, "FAIL %s:%d: %s -> %s\n", __FILE__, __LINE__, #call, ps_error_message());     \
    }                                                                                              \
  } while (0)

static uint64_t seed;
typedef void (*fwd_fn)(void *ctx, float *out);
typedef struct {
  fwd_fn f;
  void *ctx;
  float *out;
  const float *r;
  int64_t n_out;
} lctx;

static double lossf(lctx *c) {
  c->f(c->ctx, c->out);
  double s = 0;
  for (int64_t i = 0; i < c->n_out; i++) s += (double)c->out[i] * c->r[i];
  return s;
}

static double check(const char *name, float *x, const float *an, int64_t n, lctx *c) {
  const float hs[3] = {1e-2f, 2e-3f, 5e-4f};
  int64_t stride = n > 40 ? (n + 39) / 40 : 1;
  double num = 0, den = 0;
  for (int64_t j = 0; j < n; j += stride) {
    float sv = x[j];
    double best = INFINITY, bfd = 0;
    for (int q = 0; q < 3; q++) {
      x[j] = sv + hs[q];
      double fp = lossf(c);
      x[j] = sv - hs[q];
      double fm = lossf(c);
      x[j] = sv;
      double fd = (fp - fm) / ((double)(sv + hs[q]) - (double)(sv - hs[q]));
      if (fabs(fd - an[j]) < best) best = fabs(fd - an[j]), bfd = fd;
    }
    num += best * best;
    den += bfd * bfd;
  }
  double rel = sqrt(num) / fmax(sqrt(den), 1e-6);
  printf("  gradcheck %-24s n=%-6lld rel_err=%.3e\n", name, (long long)n, rel);
  TU_CHECK(rel < 5e-3, "%s: relative error %.3e", name, rel);
  return rel;
}

static float *rnd(int64_t n, float lo, float hi, uint64_t stream) {
  float *x = malloc((size_t)n * sizeof(float));
  ps_tu_fill_uniform(x, n, lo, hi, seed, stream);
  return x;
}
static float *zeros(int64_t n) { return calloc((size_t)n, sizeof(float)); }

// ---- linear -------------------------------------------------------------------------------------
typedef struct {
  float *x, *w, *b, *pre;
  int64_t n, din, dout;
  ps_nn_act act;
} lin_t;
static void lin_f(void *p, float *out) {
  lin_t *c = p;
  TU_OK_V(ps_nn_linear_forward(out, c->pre, c->x, c->w, c->b, c->n, c->din, c->dout, c->act));
}
static void test_linear(ps_nn_act act) {
  lin_t c = {rnd(5 * 7, -1, 1, 1), rnd(4 * 7, -1, 1, 2), rnd(4, -1, 1, 3), zeros(20), 5, 7, 4, act};
  float *out = zeros(20), *r = rnd(20, -1, 1, 4), *dout = zeros(20);
  float *dx = zeros(35), *dw = zeros(28), *db = zeros(4);
  lin_f(&c, out);
  memcpy(dout, r, sizeof(float) * 20);
  TU_OK_V(ps_nn_linear_backward(dx, dw, db, dout, c.x, c.w, out, c.pre, 5, 7, 4, act));
  lctx l = {lin_f, &c, out, r, 20};
  char nm[64];
  snprintf(nm, sizeof nm, "linear_%s.x", ps_nn_act_name(act));
  check(nm, c.x, dx, 35, &l);
  snprintf(nm, sizeof nm, "linear_%s.w", ps_nn_act_name(act));
  check(nm, c.w, dw, 28, &l);
  snprintf(nm, sizeof nm, "linear_%s.b", ps_nn_act_name(act));
  check(nm, c.b, db, 4, &l);
  free(c.x), free(c.w), free(c.b), free(c.pre), free(out), free(r), free(dout), free(dx), free(dw), free(db);
}

// ---- batchnorm ------------------------------------------------------------------------------------
typedef struct {
  float *x, *g, *b, *mean, *rstd, *rm, *rv;
  int64_t n, c, hw;
  ps_nn_bn_opts o;
  double *st;
} bn_t;
static void bn_f(void *p, float *out) {
  bn_t *c = p;
  ps_nn_batchnorm_forward(out, c->mean, c->rstd, c->x, c->g, c->b, c->rm, c->rv, c->n, c->c, c->hw, &c->o, c->st);
}
static void test_bn(int64_t hw, bool training) {
  const int64_t n = 6, C = 3, nx = n * C * hw;
  bn_t c = {rnd(nx, -2, 2, 9), rnd(C, 0.5f, 1.5f, 10), rnd(C, -1, 1, 11), zeros(C), zeros(C), rnd(C, -0.5f, 0.5f, 12),
            rnd(C, 0.5f, 1.5f, 13), n, C, hw, {1e-5f, 0.0f, training, {NULL, NULL}, 0}, calloc(2 * C + 1, sizeof(double))};
  float *out = zeros(nx), *r = rnd(nx, -1, 1, 14), *dx = zeros(nx), *dg = zeros(C), *db = zeros(C);
  bn_f(&c, out);
  TU_OK_V(ps_nn_batchnorm_backward(dx, dg, db, r, c.x, c.mean, c.rstd, c.g, n, C, hw, &c.o, c.st));
  lctx l = {bn_f, &c, out, r, nx};
  char nm[64];
  snprintf(nm, sizeof nm, "batchnorm%s_%s.x", hw == 1 ? "1d" : "2d", training ? "train" : "eval");
  check(nm, c.x, dx, nx, &l);
  snprintf(nm, sizeof nm, "batchnorm%s_%s.gamma", hw == 1 ? "1d" : "2d", training ? "train" : "eval");
  check(nm, c.g, dg, C, &l);
  snprintf(nm, sizeof nm, "batchnorm%s_%s.beta", hw == 1 ? "1d" : "2d", training ? "train" : "eval");
  check(nm, c.b, db, C, &l);
  free(c.x), free(c.g), free(c.b), free(c.mean), free(c.rstd), free(c.rm), free(c.rv), free(c.st), free(out), free(r);
  free(dx), free(dg), free(db);
}

// ---- layernorm ------------------------------------------------------------------------------------
typedef struct {
  float *x, *g, *b, *mean, *rstd;
} ln_t;
static void ln_f(void *p, float *out) {
  ln_t *c = p;
  TU_OK_V(ps_nn_layernorm_forward(out, c->mean, c->rstd, c->x, c->g, c->b, 4, 7, 1e-5f));
}
static void test_ln(void) {
  ln_t c = {rnd(28, -2, 2, 15), rnd(7, 0.5f, 1.5f, 16), rnd(7, -1, 1, 17), zeros(4), zeros(4)};
  float *out = zeros(28), *r = rnd(28, -1, 1, 18), *dx = zeros(28), *dg = zeros(7), *db = zeros(7);
  ln_f(&c, out);
  TU_OK_V(ps_nn_layernorm_backward(dx, dg, db, r, c.x, c.mean, c.rstd, c.g, 4, 7));
  lctx l = {ln_f, &c, out, r, 28};
  check("layernorm.x", c.x, dx, 28, &l);
  check("layernorm.gamma", c.g, dg, 7, &l);
  check("layernorm.beta", c.b, db, 7, &l);
  free(c.x), free(c.g), free(c.b), free(c.mean), free(c.rstd), free(out), free(r), free(dx), free(dg), free(db);
}

// ---- pools --------------------------------------------------------------------------------------
typedef struct {
  float *x;
  uint8_t *am;
} pool_t;
static void maxpool_f(void *p, float *out) {
  pool_t *c = p;
  ps_nn_maxpool2d_forward(out, c->am, c->x, 2, 3, 6, 4, 2);
}
// The model's global average pool is tensor's op (CPU tensors here).
static void avgpool_f(void *p, float *out) {
  pool_t *c = p;
  ps_tensor to = ps_tensor_wrap(out, PS_F32, PS_CPU, PS_SHAPE(2, 3)),
            ti = ps_tensor_wrap(c->x, PS_F32, PS_CPU, PS_SHAPE(2, 3, 4, 6));
  if (ps_global_avgpool_forward(&to, &ti) != PS_OK) abort();
}
static void test_pools(void) {
  pool_t c = {rnd(144, -1, 1, 19), calloc(36, 1)};
  float *out = zeros(36), *r = rnd(36, -1, 1, 20), *dx = zeros(144);
  maxpool_f(&c, out);
  ps_nn_maxpool2d_backward(dx, r, c.am, 2, 3, 6, 4, 2);
  lctx l = {maxpool_f, &c, out, r, 36};
  check("maxpool2d.x", c.x, dx, 144, &l);
  memset(dx, 0, sizeof(float) * 144);
  avgpool_f(&c, out);
  ps_tensor tdx = ps_tensor_wrap(dx, PS_F32, PS_CPU, PS_SHAPE(2, 3, 4, 6)),
            tr = ps_tensor_wrap(r, PS_F32, PS_CPU, PS_SHAPE(2, 3));
  TU_OK_V(ps_global_avgpool_backward(&tdx, &tr));
  lctx l2 = {avgpool_f, &c, out, r, 6};
  check("avgpool.x", c.x, dx, 144, &l2);
  free(c.x), free(c.am), free(out), free(r), free(dx);
}

// ---- fused conv block ----------------------------------------------------------------------------
typedef struct {
  float *x, *w, *g, *b, *z, *zw, *mean, *rstd, *rm, *rv;
  uint8_t *am;
  ps_nn_convblock_dims d;
  ps_nn_bn_opts o;
  ps_nn_convblock_scratch s;
} cb_t;
static void cb_f(void *p, float *out) {
  cb_t *c = p;
  ps_nn_convblock_forward(out, c->am, c->z, c->zw, c->mean, c->rstd, c->x, c->w, c->g, c->b, c->rm, c->rv, &c->d,
                          &c->o, &c->s);
}
static void test_convblock(bool training, int groups) {
  ps_nn_convblock_dims d = {3, 2, 4, 6, 6};
  int64_t nx = 3 * 2 * 36, nw = 4 * 2 * 9, nz = 3 * 4 * 36, no = 3 * 4 * 9;
  cb_t c = {rnd(nx, -1, 1, 21),
            rnd(nw, -1, 1, 22),
            rnd(4, 0.5f, 1.5f, 23),
            rnd(4, -0.5f, 0.5f, 24),
            zeros(nz),
            zeros(no),
            zeros(16),
            zeros(16),
            rnd(4, -0.2f, 0.2f, 25),
            rnd(4, 0.5f, 1.5f, 26),
            calloc((size_t)no, 1),
            d,
            {1e-5f, 0.0f, training, {NULL, NULL}, groups},
            {0}};
  c.s.chunk = 2; // 3 tiles: a full chunk and a partial one
  c.s.gz_floats = c.s.chunk * 4 * 36;
  c.s.gz = zeros(c.s.gz_floats);
  c.s.ws_floats = ps_nn_convblock_ws_floats(&d, c.s.chunk);
  c.s.ws = zeros(c.s.ws_floats);
  c.s.stats = calloc((size_t)omp_get_max_threads() * 9, sizeof(double));
  float *out = zeros(no), *r = rnd(no, -1, 1, 27), *dx = zeros(nx), *dw = zeros(nw), *dg = zeros(4), *db = zeros(4);
  cb_f(&c, out);
  TU_OK_V(ps_nn_convblock_backward(dx, dw, dg, db, c.s.gz, r, c.am, c.z, c.zw, c.mean, c.rstd, c.x, c.w, c.g, c.b,
                                   &d, &c.o, &c.s));
  lctx l = {cb_f, &c, out, r, no};
  const char *m = groups ? "groupnorm" : training ? "train" : "eval";
  char nm[64];
  snprintf(nm, sizeof nm, "convblock_%s.x", m);
  check(nm, c.x, dx, nx, &l);
  snprintf(nm, sizeof nm, "convblock_%s.w", m);
  check(nm, c.w, dw, nw, &l);
  snprintf(nm, sizeof nm, "convblock_%s.gamma", m);
  check(nm, c.g, dg, 4, &l);
  snprintf(nm, sizeof nm, "convblock_%s.beta", m);
  check(nm, c.b, db, 4, &l);
  free(c.x), free(c.w), free(c.g), free(c.b), free(c.z), free(c.zw), free(c.mean), free(c.rstd), free(c.rm), free(c.rv), free(c.am);
  free(c.s.gz), free(c.s.ws), free(c.s.stats), free(out), free(r), free(dx), free(dw), free(dg), free(db);
}

// ---- gated attention -------------------------------------------------------------------------------
enum { GD = 5, GA = 4 };
typedef struct {
  float *h, *v, *bv, *u, *bu, *w;
  ps_nn_gattn_cache c;
  const int64_t *off;
  int64_t nb;
} ga_t;
static void ga_f(void *p, float *out) {
  ga_t *c = p;
  TU_OK_V(ps_nn_gattn_forward(out, &c->c, c->h, c->v, c->bv, c->u, c->bu, c->w, c->off, c->nb, GD, GA));
}
static void test_gattn(void) {
  static const int64_t off[4] = {0, 3, 3, 7}; // bags of 3, 0 (empty), 4
  const int64_t nt = 7;
  ga_t c = {rnd(nt * GD, -1, 1, 28), rnd(GA * GD, -1, 1, 29), rnd(GA, -1, 1, 30), rnd(GA * GD, -1, 1, 31),
            rnd(GA, -1, 1, 32), rnd(GA, -1, 1, 33), {zeros(nt * GA), zeros(nt * GA), zeros(nt)}, off, 3};
  float *out = zeros(3 * GD), *r = rnd(3 * GD, -1, 1, 34), *dh = zeros(nt * GD), *dv = zeros(GA * GD), *dbv = zeros(GA);
  float *du = zeros(GA * GD), *dbu = zeros(GA), *dw = zeros(GA), *scr = zeros(2 * nt * GA + 2 * nt);
  ga_f(&c, out);
  double s0 = 0, s2 = 0;
  for (int k = 0; k < 3; k++) s0 += c.c.alpha[k];
  for (int k = 3; k < 7; k++) s2 += c.c.alpha[k];
  TU_CHECK(fabs(s0 - 1) < 1e-6 && fabs(s2 - 1) < 1e-6, "bag attention sums %g %g", s0, s2);
  for (int j = 0; j < GD; j++) TU_CHECK(out[GD + j] == 0.0f, "empty bag output %g", out[GD + j]);
  TU_OK_V(ps_nn_gattn_backward(dh, dv, dbv, du, dbu, dw, r, &c.c, c.h, c.v, c.u, c.w, off, 3, GD, GA, scr));
  lctx l = {ga_f, &c, out, r, 3 * GD};
  check("gated_attn.h", c.h, dh, nt * GD, &l);
  check("gated_attn.V", c.v, dv, GA * GD, &l);
  check("gated_attn.bV", c.bv, dbv, GA, &l);
  check("gated_attn.U", c.u, du, GA * GD, &l);
  check("gated_attn.bU", c.bu, dbu, GA, &l);
  check("gated_attn.w", c.w, dw, GA, &l);
  free(c.h), free(c.v), free(c.bv), free(c.u), free(c.bu), free(c.w), free(c.c.a), free(c.c.g), free(c.c.alpha);
  free(out), free(r), free(dh), free(dv), free(dbv), free(du), free(dbu), free(dw), free(scr);
}

// ---- transformer layer -----------------------------------------------------------------------------
enum { MB = 3, MT = 3, MD = 8, MH = 2, MF = 10 };
typedef struct {
  float *x, *pw[12];
  ps_nn_mhsa_cache c;
  float *cmem;
  const uint8_t *mask;
  ps_nn_mhsa_dims s;
} mh_t;
static void mh_params(mh_t *c, ps_nn_mhsa_params *p) {
  *p = (ps_nn_mhsa_params){c->pw[0], c->pw[1], c->pw[2],  c->pw[3],  c->pw[4],  c->pw[5],
                           c->pw[6], c->pw[7], c->pw[8], c->pw[9], c->pw[10], c->pw[11]};
}
static void mh_f(void *p, float *out) {
  mh_t *c = p;
  ps_nn_mhsa_params pp;
  mh_params(c, &pp);
  TU_OK_V(ps_nn_mhsa_forward(out, &c->c, c->x, c->mask, &pp, &c->s));
}
static void test_mhsa(void) {
  static const uint8_t mask[MB * MT] = {1, 1, 1, 1, 0, 1, 0, 1, 0}; // item 1 misses token 1, item 2 has only token 1
  const int64_t N = MB * MT, sizes[12] = {3 * MD * MD, 3 * MD, MD * MD, MD, MD, MD, MD, MD, MF * MD, MF, MD * MF, MD};
  const char *names[12] = {"wqkv", "bqkv", "wo", "bo", "ln1_g", "ln1_b", "ln2_g", "ln2_b", "w1", "b1", "w2", "b2"};
  mh_t c;
  c.x = rnd(N * MD, -1, 1, 35);
  for (int i = 0; i < 12; i++) c.pw[i] = rnd(sizes[i], i >= 4 && i <= 7 && i % 2 == 0 ? 0.5f : -0.5f, i >= 4 && i <= 7 && i % 2 == 0 ? 1.5f : 0.5f, 36 + i);
  c.s = (ps_nn_mhsa_dims){MB, MT, MD, MH, MF};
  c.cmem = zeros(ps_nn_mhsa_cache_floats(&c.s));
  ps_nn_mhsa_cache_bind(&c.c, c.cmem, &c.s);
  c.mask = mask;
  float *out = zeros(N * MD), *r = rnd(N * MD, -1, 1, 50), *dy = zeros(N * MD), *dx = zeros(N * MD);
  // The loss only sees valid tokens (as the model's masked mean does).
  for (int i = 0; i < N; i++)
    if (!mask[i])
      for (int j = 0; j < MD; j++) r[i * MD + j] = 0;
  float *g[12];
  for (int i = 0; i < 12; i++) g[i] = zeros(sizes[i]);
  ps_nn_mhsa_grads gg = {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11]};
  float *scr = zeros(ps_nn_mhsa_scratch_floats(&c.s));
  mh_f(&c, out);
  // Masked keys: exactly zero probability.
  for (int b = 0; b < MB; b++)
    for (int h = 0; h < MH; h++)
      for (int i = 0; i < MT; i++) {
        double s = 0;
        for (int j = 0; j < MT; j++) {
          float pr = c.c.prob[((b * MH + h) * MT + i) * MT + j];
          if (!mask[b * MT + j]) TU_CHECK(pr == 0.0f, "masked key prob %g", pr);
          s += pr;
        }
        TU_CHECK(fabs(s - 1) < 1e-6, "attention row sums to %g", s);
      }
  memcpy(dy, r, sizeof(float) * N * MD);
  ps_nn_mhsa_params pp;
  mh_params(&c, &pp);
  TU_OK_V(ps_nn_mhsa_backward(dx, &gg, dy, &c.c, c.x, mask, &pp, &c.s, scr));
  for (int i = 0; i < N; i++)
    if (!mask[i])
      for (int j = 0; j < MD; j++) TU_CHECK(dx[i * MD + j] == 0.0f, "masked token gradient %g", dx[i * MD + j]);
  lctx l = {mh_f, &c, out, r, N * MD};
  check("mhsa.x", c.x, dx, N * MD, &l);
  for (int i = 0; i < 12; i++) {
    char nm[64];
    snprintf(nm, sizeof nm, "mhsa.%s", names[i]);
    check(nm, c.pw[i], g[i], sizes[i], &l);
  }
  free(c.x), free(c.cmem), free(out), free(r), free(dy), free(dx), free(scr);
  for (int i = 0; i < 12; i++) free(c.pw[i]), free(g[i]);
}

// ---- dropout ----------------------------------------------------------------------------------------
static void test_dropout(void) {
  enum { N = 4, D = 64 };
  float *x = rnd(N * D, -1, 1, 60), *y = zeros(N * D), *y2 = zeros(2 * D), *dx = zeros(N * D);
  uint8_t *mask = calloc(N * D, 1), *mask2 = calloc(2 * D, 1);
  uint64_t streams[N];
  for (int i = 0; i < N; i++) streams[i] = ps_rng_stream(PS_RNG_DROPOUT, 5, (uint64_t)(100 + i), 1);
  TU_OK_V(ps_nn_dropout_forward(y, mask, x, 0.3f, seed, streams, N, D));
  // "Another rank" holding rows 3 and 1 in a different order gets the same masks.
  uint64_t s2[2] = {streams[3], streams[1]};
  float x2[2 * D];
  memcpy(x2, x + 3 * D, sizeof(float) * D);
  memcpy(x2 + D, x + 1 * D, sizeof(float) * D);
  TU_OK_V(ps_nn_dropout_forward(y2, mask2, x2, 0.3f, seed, s2, 2, D));
  TU_CHECK(!memcmp(mask2, mask + 3 * D, D) && !memcmp(mask2 + D, mask + D, D), "dropout mask depends on row position");
  TU_CHECK(!memcmp(y2, y + 3 * D, sizeof(float) * D), "dropout output depends on row position");
  int kept = 0;
  for (int i = 0; i < N * D; i++) {
    kept += mask[i];
    TU_CHECK(y[i] == (mask[i] ? x[i] * (1.0f / (1.0f - 0.3f)) : 0.0f), "dropout value at %d", i);
  }
  TU_CHECK(kept > 0.55 * N * D && kept < 0.85 * N * D, "kept %d of %d at p=0.3", kept, N * D);
  TU_OK_V(ps_nn_dropout_backward(dx, y, mask, 0.3f, N, D));
  for (int i = 0; i < N * D; i++) TU_CHECK(dx[i] == (mask[i] ? y[i] * (1.0f / (1.0f - 0.3f)) : 0.0f), "dropout backward at %d", i);
  // A different step gives a different mask.
  uint64_t s3[1] = {ps_rng_stream(PS_RNG_DROPOUT, 6, 100, 1)};
  TU_OK_V(ps_nn_dropout_forward(y2, mask2, x, 0.3f, seed, s3, 1, D));
  TU_CHECK(memcmp(mask2, mask, D), "dropout mask did not change with the step");
  free(x), free(y), free(y2), free(dx), free(mask), free(mask2);
}

int main(void) {
  seed = ps_tu_seed("nn_layers", 7);
  for (int a = 0; a < PS_NN_ACT_COUNT; a++) test_linear((ps_nn_act)a);
  test_bn(1, true);
  test_bn(5, true);
  test_bn(5, false);
  test_ln();
  test_pools();
  test_convblock(true, 0);
  test_convblock(false, 0);
  test_convblock(true, 2);
  test_gattn();
  test_mhsa();
  test_dropout();
  return ps_tu_finish("nn_layers");
}
