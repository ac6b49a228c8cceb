// Whole-model finite-difference gradient check (tiles mode and features mode), with a batch where
// patients miss omics, slides or clinical data and bags differ in size; plus the backward hook
// order and the "no modality present" data error.
//
// Tolerance: the model runs in float; the loss is accumulated in double and central differences
// use h ~ 1e-2 on O(1) parameters, so truncation error is O(h^2 * f''') ~ 1e-4 and rounding
// ~ 1e-7 / 1e-3 = 1e-4 relative. ReLU/max-pool kinks (many in 8x8 tiles) crossed by the +-h
// probe make single-h checks flaky, see kink_tolerant_check. Tolerance: relative-norm error per
// tensor < 1e-2 (a wrong gradient, e.g. a missing term or a transposed weight, gives errors of
// order 1 at every step size; the denominator floor 1e-6 keeps tiny-gradient tensors honest).
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
  printf("  gradcheck %-28s n=%-6lld rel_err=%.3e\n", name, (long long)n, rel);
  return rel;
}

static int run(ps_slide_mode mode, uint64_t seed) {
  ps_model_config cfg;
  ps_model_config_default(&cfg);
  cfg.d = 8, cfg.genes = 10, cfg.ae_hidden = 8, cfg.ae_dropout = 0.25f, cfg.ae_input_noise = 0.1f;
  cfg.slide_mode = mode, cfg.tile_size = 8, cfg.max_tiles = K;
  cfg.cnn_ch[0] = 4, cfg.cnn_ch[1] = 6, cfg.cnn_ch[2] = 8, cfg.feat_dim = 7, cfg.attn_hidden = 5;
  cfg.clinical = 4, cfg.clinical_hidden = 6, cfg.fusion_layers = 2, cfg.heads = 2, cfg.ff_hidden = 12;
  cfg.seed = seed;
  ps_model *m;
  TU_OK(ps_model_create(&m, &cfg));
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
                 mode == PS_SLIDE_FEATURES ? tiles : NULL, tc}, {0}, 0.7f};
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
    TU_CHECK(err < 1e-2, "%s: gradient relative error %.3e", e->name, err);
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
  if (run(PS_SLIDE_TILES, seed)) return 1;
  if (run(PS_SLIDE_FEATURES, seed + 1)) return 1;
  return ps_tu_finish("nn_model_grad");
}
