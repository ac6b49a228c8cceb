// Whole-model finite-difference gradient check (tiles mode and features mode), with a batch where
// patients miss omics, slides or clinical data and bags differ in size; plus the backward hook
// order and the "no modality present" data error. The tiles cases run again with the device-style
// conv blocks (ps_model_set_device_block: the CUDA path's orchestration on the host executor).
//
// Tolerance: the model runs in float; the loss is accumulated in double and central differences
// use h ~ 1e-2 on O(1) parameters, so truncation error is O(h^2 * f''') ~ 1e-4 and rounding
// ~ 1e-7 / 1e-3 = 1e-4 relative. ReLU/max-pool kinks (many in 8x8 tiles) crossed by the +-h
// probe make single-h checks flaky, see kink_tolerant_check. Tolerance: relative-norm error per
// tensor < 1e-2 (a wrong gradient, e.g. a missing term or a transposed weight, gives errors of
// order 1 at every step size). Tensors with tiny gradients (|fd| ~ 1e-3) hit the float rounding
// floor of the differences (~1e-7 |L| / h ~ 1e-5 absolute), so an absolute error norm < 5e-5
// also passes; a wrong gradient there still gives |err| ~ |fd| >> 5e-5.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_model.h"
#include "testutil.h"

enum { B = 5, K = 3 };

typedef struct {
  ps_model *m;
  ps_model_batch in;
  float r[B];
  float lambda;
} ctx_t;

static double loss_fn(void *p) {
  ctx_t *c = p;
  float eta[B];
  double rec;
  if (ps_model_forward(c->m, eta, &rec, &c->in, true, 7) != PS_OK) return NAN;
  double l = c->lambda * rec;
  for (int b = 0; b < B; b++) l += (double)c->r[b] * eta[b];
  return l;
}

static int64_t hook_last;
static int hook_calls, hook_bad;
static void hook(void *ctx, int64_t off) {
  (void)ctx;
  if (off > hook_last) hook_bad++;
  hook_last = off;
  hook_calls++;
}

// Central differences at h = 1e-2, 2e-3, 5e-4 per probed element; the step that agrees best with
// the analytic value counts. A smooth, correct gradient agrees at every h; a ReLU/max-pool kink
// crossed by a large step is avoided by a smaller one; a wrong gradient disagrees at all three.
static double abs_err_last; // |err| of the last check
static double kink_tolerant_check(const char *name, float *x, const float *an, int64_t n, ctx_t *c) {
  const float hs[3] = {1e-2f, 2e-3f, 5e-4f};
  int64_t stride = n > 16 ? (n + 15) / 16 : 1;
  double num = 0, den = 0;
  for (int64_t j = 0; j < n; j += stride) {
    float sv = x[j];
    double best = INFINITY, bestfd = 0;
    for (int q = 0; q < 3; q++) {
      x[j] = sv + hs[q];
      double fp = loss_fn(c);
      x[j] = sv - hs[q];
      double fm = loss_fn(c);
      x[j] = sv;
      double fd = (fp - fm) / ((double)(sv + hs[q]) - (double)(sv - hs[q]));
      if (fabs(fd - an[j]) < best) best = fabs(fd - an[j]), bestfd = fd;
    }
    num += best * best;
    den += bestfd * bestfd;
  }
  double rel = sqrt(num) / fmax(sqrt(den), 1e-6);
  printf("  gradcheck %-28s n=%-6lld rel_err=%.3e |fd|=%.2e |err|=%.2e\n", name, (long long)n, rel, sqrt(den), sqrt(num));
  abs_err_last = sqrt(num);
  return rel;
}

static double ps_optim_grad_norm_ref(const float *g, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
  return sqrt(s);
}

static int run(ps_slide_mode mode, int groups, uint64_t seed, bool device_block) {
  ps_model_config cfg;
  ps_model_config_default(&cfg);
  cfg.d = 8, cfg.genes = 10, cfg.ae_hidden = 8, cfg.ae_dropout = 0.25f, cfg.ae_input_noise = 0.1f;
  cfg.slide_mode = mode, cfg.tile_size = 8, cfg.max_tiles = K;
  cfg.cnn_ch[0] = 4, cfg.cnn_ch[1] = 6, cfg.cnn_ch[2] = 8, cfg.feat_dim = 7, cfg.attn_hidden = 5;
  cfg.clinical = 4, cfg.clinical_hidden = 6, cfg.fusion_layers = 2, cfg.heads = 2, cfg.ff_hidden = 12;
  cfg.seed = seed;
  cfg.cnn_norm_groups = groups;
  ps_model *m;
  TU_OK(ps_model_create(&m, &cfg));
  ps_model_set_device_block(m, device_block); // the GPU's conv-block path, on the host executor
  TU_OK(ps_model_plan(m, B));
  const int64_t S = cfg.tile_size, tsz = mode == PS_SLIDE_TILES ? 3 * S * S : cfg.feat_dim;
  static float omics[B * 10], clin[B * 4], tiles[B * K * 3 * 8 * 8];
  ps_tu_fill_uniform(omics, B * 10, -1, 1, seed, 1);
  ps_tu_fill_uniform(clin, B * 4, -1, 1, seed, 2);
  ps_tu_fill_uniform(tiles, B * K * tsz, -1, 1, seed, 3);
  omics[1 * 10 + 3] = NAN; // absent rows must never be read
  int64_t pid[B] = {101, 7, 55, 3, 900};
  uint8_t op[B] = {1, 0, 1, 0, 0}, cp[B] = {1, 1, 1, 1, 0};
  int32_t tc[B] = {3, 2, 0, 0, 1};
  ctx_t c = {m, {B, pid, omics, op, clin, cp, mode == PS_SLIDE_TILES ? tiles : NULL,
                 mode == PS_SLIDE_FEATURES ? tiles : NULL, tc, 0}, {0}, 0.7f};
  ps_tu_fill_uniform(c.r, B, -1, 1, seed, 4);
  ps_param_table *pt = ps_model_params(m);
  // Keep BN away from the degenerate case: scale up its affine parameters a bit.
  ps_param_zero_grad(pt);
  float eta[B];
  double rec;
  TU_OK(ps_model_forward(m, eta, &rec, &c.in, true, 7));
  for (int b = 0; b < B; b++) TU_CHECK(isfinite(eta[b]), "eta[%d] = %g", b, eta[b]);
  hook_last = INT64_MAX, hook_calls = 0, hook_bad = 0;
  TU_OK(ps_model_backward(m, c.r, c.lambda, hook, NULL));
  TU_CHECK(hook_bad == 0 && hook_last == 0 && hook_calls > 5, "hook order: %d bad, last %lld, %d calls", hook_bad,
           (long long)hook_last, hook_calls);
  float *analytic = malloc((size_t)pt->total * sizeof(float));
  memcpy(analytic, pt->grad, (size_t)pt->total * sizeof(float));
  for (int i = 0; i < pt->count; i++) {
    ps_param_info *e = &pt->p[i];
    double err = kink_tolerant_check(e->name, pt->data + e->offset, analytic + e->offset, e->numel, &c);
    TU_CHECK(err < 1e-2 || abs_err_last < 5e-5, "%s: gradient relative error %.3e", e->name, err);
  }
  // Tile attention: sums to 1 over valid tiles, exactly 0 beyond the bag.
  TU_OK(ps_model_forward(m, eta, &rec, &c.in, true, 7));
  const float *ta = ps_model_tile_attention(m);
  for (int b = 0; b < B; b++) {
    double s = 0;
    for (int k = 0; k < K; k++) {
      if (k >= tc[b]) TU_CHECK(ta[b * K + k] == 0.0f, "tile attention (%d,%d) = %g past the bag", b, k, ta[b * K + k]);
      s += ta[b * K + k];
    }
    TU_CHECK(tc[b] ? fabs(s - 1) < 1e-5 : s == 0, "tile attention of bag %d sums to %g", b, s);
  }
  const float *ma = ps_model_modality_attention(m);
  int M = ps_model_tokens(m);
  for (int b = 0; b < B; b++) {
    double s = 0;
    for (int t = 0; t < M; t++) s += ma[b * M + t];
    TU_CHECK(fabs(s - 1) < 1e-5, "modality attention of patient %d sums to %g", b, s);
  }
  TU_CHECK(ma[1 * M + 0] == 0.0f, "missing omics of patient 1 got attention %g", ma[1 * M + 0]);
  TU_CHECK(ma[2 * M + 1] == 0.0f, "missing slide of patient 2 got attention %g", ma[2 * M + 1]);
  // A batch where no patient has a slide (SyncBN sees zero elements): finite, slide attention 0.
  {
    int32_t none[B] = {0, 0, 0, 0, 0};
    uint8_t all[B] = {1, 1, 1, 1, 1};
    ps_model_batch nb = c.in;
    nb.tile_count = none, nb.clinical_present = all;
    TU_OK(ps_model_forward(m, eta, &rec, &nb, true, 8));
    for (int b = 0; b < B; b++) TU_CHECK(isfinite(eta[b]), "no-slide batch: eta[%d] = %g", b, eta[b]);
    ps_param_zero_grad(pt);
    TU_OK(ps_model_backward(m, c.r, c.lambda, NULL, NULL));
    TU_CHECK(isfinite(ps_optim_grad_norm_ref(pt->grad, pt->total)), "no-slide batch: gradient not finite");
  }
  // A patient with nothing present is a data error naming the patient, not a NaN.
  uint8_t cp2[B] = {1, 1, 1, 0, 0};
  c.in.clinical_present = cp2;
  ps_status s = ps_model_forward(m, eta, &rec, &c.in, true, 7);
  TU_CHECK(s == PS_ERR_DATA && strstr(ps_error_message(), "patient 3 "), "no-modality patient: %s (%s)",
           ps_status_name(s), ps_error_message());
  printf("  no-modality message: %s\n", ps_error_message());
  free(analytic);
  ps_model_destroy(m);
  return 0;
}

int main(void) {
  uint64_t seed = ps_tu_seed("nn_model_grad", 42);
  // Bad configurations are configuration errors with a message, and create nothing.
  ps_model_config bad;
  ps_model *bm = NULL;
  ps_model_config_default(&bad);
  bad.heads = 3; // 128 % 3 != 0
  TU_CHECK(ps_model_create(&bm, &bad) == PS_ERR_CONFIG && !bm && strstr(ps_error_message(), "heads=3"), "heads: %s",
           ps_error_message());
  ps_model_config_default(&bad);
  bad.cnn_ch[2] = 64; // must equal d
  TU_CHECK(ps_model_create(&bm, &bad) == PS_ERR_CONFIG && !bm, "cnn width: %s", ps_error_message());
  ps_model_config_default(&bad);
  bad.use[PS_NN_OMICS] = bad.use[PS_NN_SLIDE] = bad.use[PS_NN_CLINICAL] = false;
  TU_CHECK(ps_model_create(&bm, &bad) == PS_ERR_CONFIG && !bm, "no modality: %s", ps_error_message());
  // Unimodal baselines: each single modality trains on patients that have it; a patient
  // without it is the data error.
  for (int mod = 0; mod < PS_NN_MODALITY_COUNT; mod++) {
    ps_model_config u;
    ps_model_config_default(&u);
    u.d = 8, u.genes = 10, u.ae_hidden = 8, u.tile_size = 8, u.max_tiles = K, u.cnn_ch[0] = 4, u.cnn_ch[1] = 6;
    u.cnn_ch[2] = 8, u.attn_hidden = 5, u.clinical = 4, u.clinical_hidden = 6, u.heads = 2, u.ff_hidden = 12;
    for (int q = 0; q < PS_NN_MODALITY_COUNT; q++) u.use[q] = q == mod;
    ps_model *um;
    TU_OK(ps_model_create(&um, &u));
    TU_OK(ps_model_plan(um, 2));
    static float om[2 * 10], cl[2 * 4], ti[2 * K * 192];
    ps_tu_fill_uniform(om, 20, -1, 1, seed, 11);
    ps_tu_fill_uniform(cl, 8, -1, 1, seed, 12);
    ps_tu_fill_uniform(ti, 2 * K * 192, 0, 1, seed, 13);
    int64_t id[2] = {5, 6};
    uint8_t yes[2] = {1, 1}, half[2] = {1, 0};
    int32_t tcs[2] = {2, 1}, tch[2] = {2, 0};
    ps_model_batch ub = {2, id, om, yes, cl, yes, ti, NULL, tcs, 0};
    float e2[2], de[2] = {1, -1};
    double r2;
    TU_OK(ps_model_forward(um, e2, &r2, &ub, true, 1));
    TU_CHECK(isfinite(e2[0]) && isfinite(e2[1]) && ps_model_tokens(um) == 1, "unimodal %s", ps_nn_modality_name(mod));
    TU_OK(ps_model_backward(um, de, 0.1f, NULL, NULL));
    if (mod == PS_NN_OMICS) ub.omics_present = half;
    if (mod == PS_NN_CLINICAL) ub.clinical_present = half;
    if (mod == PS_NN_SLIDE) ub.tile_count = tch;
    ps_status st = ps_model_forward(um, e2, &r2, &ub, true, 1);
    TU_CHECK(st == PS_ERR_DATA && strstr(ps_error_message(), "patient 6 "), "unimodal %s without it: %s",
             ps_nn_modality_name(mod), ps_error_message());
    ps_model_destroy(um);
  }
  if (run(PS_SLIDE_TILES, 0, seed, false)) return 1;
  if (run(PS_SLIDE_TILES, 2, seed + 2, false)) return 1; // GroupNorm in the tile CNN
  if (run(PS_SLIDE_FEATURES, 0, seed + 1, false)) return 1;
  printf("device-style conv blocks (the CUDA path) on the host executor:\n");
  if (run(PS_SLIDE_TILES, 0, seed + 3, true)) return 1;
  if (run(PS_SLIDE_TILES, 2, seed + 4, true)) return 1;
  return ps_tu_finish("nn_model_grad");
}
