// One model step on a tiny configuration (all modalities, BatchNorm or GroupNorm, one patient
// missing omics, one missing the slide, one missing clinical), results copied to the host:
// eta, recon loss, the whole gradient arena, BN running statistics, attention, and the
// parameters after one AdamW step. Shared by nn_model_device_block (fused vs device-style
// conv block on the CPU) and gpu_model_step (CPU vs CUDA). Header-only test helper.
#ifndef PS_TEST_MODEL_STEP_H
#define PS_TEST_MODEL_STEP_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_cuda.h"
#include "ps_model.h"
#include "ps_optim.h"
#include "testutil.h"

enum { MS_B = 4, MS_K = 3, MS_G = 12, MS_C = 5, MS_S = 16 };

typedef struct {
  float eta[MS_B], eta_eval[MS_B];
  double recon, recon_eval;
  float *grad, *param_after, *buffers; // (params total), (params total), (buffers total)
  int64_t nparam, nbuf;
  float tile_att[MS_B * MS_K], mod_att[MS_B * 3];
} ms_result;

static inline void ms_config(ps_model_config *cfg, int groups, uint64_t seed) {
  ps_model_config_default(cfg);
  cfg->d = 16, cfg->genes = MS_G, cfg->ae_hidden = 10, cfg->ae_dropout = 0.25f, cfg->ae_input_noise = 0.1f;
  cfg->slide_mode = PS_SLIDE_TILES, cfg->tile_size = MS_S, cfg->max_tiles = MS_K;
  cfg->cnn_ch[0] = 4, cfg->cnn_ch[1] = 8, cfg->cnn_ch[2] = 16, cfg->attn_hidden = 6;
  cfg->clinical = MS_C, cfg->clinical_hidden = 7, cfg->fusion_layers = 2, cfg->heads = 2, cfg->ff_hidden = 20;
  cfg->cnn_norm_groups = groups;
  cfg->seed = seed;
}

static inline void ms_free(ms_result *r) {
  free(r->grad);
  free(r->param_after);
  free(r->buffers);
  memset(r, 0, sizeof(*r));
}

// Runs training forward + backward (step 3), an AdamW step, then an eval forward, on device dev.
// step_grad (params total, host) or NULL: the gradient the AdamW step uses instead of this run's
// own. Comparing two runs' steps on the SAME gradient tests the optimizer alone: AdamW's first
// step is ~lr sign(g), so elements with a near-zero gradient (|g| at rounding level) would
// amplify 1e-7 gradient differences into lr-sized parameter differences.
static inline ps_status ms_run(ps_device dev, bool device_block, int groups, uint64_t seed, const float *step_grad,
                               ms_result *r) {
  memset(r, 0, sizeof(*r));
  ps_model_config cfg;
  ms_config(&cfg, groups, seed);
  static float omics[MS_B * MS_G], clin[MS_B * MS_C], tiles[MS_B * MS_K * 3 * MS_S * MS_S], deta[MS_B];
  ps_tu_fill_uniform(omics, MS_B * MS_G, -1, 1, seed, 1);
  ps_tu_fill_uniform(clin, MS_B * MS_C, -1, 1, seed, 2);
  ps_tu_fill_uniform(tiles, MS_B * MS_K * 3 * MS_S * MS_S, -1, 1, seed, 3);
  ps_tu_fill_uniform(deta, MS_B, -1, 1, seed, 4);
  static const int64_t pid[MS_B] = {11, 4, 90, 23};
  static const uint8_t op[MS_B] = {1, 0, 1, 1}, cp[MS_B] = {1, 1, 0, 1};
  static const int32_t tc[MS_B] = {3, 1, 2, 0};
  ps_model_batch in = {MS_B, pid, omics, op, clin, cp, tiles, NULL, tc, 0};
  ps_model *m = NULL;
  ps_optim opt = {0};
  ps_status s = ps_model_create_on(&m, &cfg, dev);
  if (s != PS_OK) return s;
  ps_model_set_device_block(m, device_block);
  ps_param_table *pt = ps_model_params(m), *bt = ps_model_buffers(m);
  r->nparam = pt->total, r->nbuf = bt->total;
  r->grad = malloc((size_t)(pt->total + 1) * sizeof(float));
  r->param_after = malloc((size_t)(pt->total + 1) * sizeof(float));
  r->buffers = malloc((size_t)(bt->total + 1) * sizeof(float));
  ps_optim_config oc;
  ps_optim_config_default(&oc);
  oc.clip_norm = 0.5f; // exercises the clipping path too
  if (!r->grad || !r->param_after || !r->buffers) s = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "out of memory");
  if (s == PS_OK) s = ps_model_plan(m, MS_B);
  if (s == PS_OK) s = ps_param_zero_grad(pt);
  if (s == PS_OK) s = ps_model_forward(m, r->eta, &r->recon, &in, true, 3);
  if (s == PS_OK) {
    memcpy(r->tile_att, ps_model_tile_attention(m), sizeof r->tile_att);
    memcpy(r->mod_att, ps_model_modality_attention(m), sizeof r->mod_att);
  }
  if (s == PS_OK) s = ps_model_backward(m, deta, 0.5f, NULL, NULL);
  if (s == PS_OK) s = ps_param_table_download(pt, r->grad, true);
  if (s == PS_OK) s = ps_param_table_download(bt, r->buffers, false);
  if (s == PS_OK && step_grad)
    s = dev == PS_CUDA ? ps_cuda_copy_h2d(pt->grad, step_grad, (size_t)pt->total * sizeof(float))
                       : (memcpy(pt->grad, step_grad, (size_t)pt->total * sizeof(float)), PS_OK);
  if (s == PS_OK) s = ps_optim_create(&opt, &oc, pt);
  if (s == PS_OK) s = ps_optim_step(&opt, pt->data, pt->grad, NULL);
  if (s == PS_OK) s = ps_param_table_download(pt, r->param_after, false);
  if (s == PS_OK) s = ps_model_forward(m, r->eta_eval, &r->recon_eval, &in, false, 4);
  ps_optim_free(&opt);
  ps_model_destroy(m);
  return s;
}

// ||a - b|| / ||b|| check with a printed line.
static inline void ms_cmp(const char *what, const char *name, const float *a, const float *b, int64_t n,
                          double tol) {
  double e = ps_tu_rel_err(a, b, n);
  printf("  %-22s %-12s n=%-6lld rel err %.2e (tol %.0e)\n", what, name, (long long)n, e, tol);
  TU_CHECK(e <= tol, "%s %s: normalized error %.3e > %.0e", what, name, e, tol);
}

static inline void ms_compare(const char *what, const ms_result *a, const ms_result *ref, double tol) {
  ms_cmp(what, "eta", a->eta, ref->eta, MS_B, tol);
  double re = fabs(a->recon - ref->recon) / fmax(fabs(ref->recon), 1e-30);
  printf("  %-22s %-12s recon %.9g vs %.9g rel %.2e\n", what, "recon", a->recon, ref->recon, re);
  TU_CHECK(re <= tol, "%s recon: %.3e", what, re);
  ms_cmp(what, "grad arena", a->grad, ref->grad, ref->nparam, tol);
  if (ref->nbuf) ms_cmp(what, "bn running", a->buffers, ref->buffers, ref->nbuf, tol);
  ms_cmp(what, "tile attn", a->tile_att, ref->tile_att, MS_B * MS_K, tol);
  ms_cmp(what, "modality attn", a->mod_att, ref->mod_att, MS_B * 3, tol);
  ms_cmp(what, "adamw params", a->param_after, ref->param_after, ref->nparam, tol);
  ms_cmp(what, "eta (eval)", a->eta_eval, ref->eta_eval, MS_B, tol);
}

// For BatchNorm and GroupNorm(2): the fused CPU step as reference, then the device-style step on
// dev (AdamW from the reference's gradient), compared within tol. 1 when a step fails.
static inline int ms_check_device_block(ps_device dev, const char *label, uint64_t seed, double tol) {
  for (int groups = 0; groups <= 2; groups += 2) {
    const char *what = groups ? "groupnorm(2)" : "batchnorm";
    ms_result ref, got;
    TU_OK(ms_run(PS_CPU, false, groups, seed, NULL, &ref));
    TU_OK(ms_run(dev, true, groups, seed, ref.grad, &got));
    printf("%s: %s\n", what, label);
    ms_compare(what, &got, &ref, tol);
    ms_free(&ref);
    ms_free(&got);
  }
  return 0;
}

#endif
