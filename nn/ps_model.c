#include "ps_model.h"
#include "ps_ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_comm.h"
#include "ps_cuda.h"
#include "ps_rng.h"

static const char *const modality_names[] = {"omics", "slide", "clinical"};
_Static_assert(sizeof(modality_names) / sizeof(modality_names[0]) == PS_NN_MODALITY_COUNT, "modality name table");
const char *ps_nn_modality_name(ps_nn_modality m) { return (unsigned)m < PS_NN_MODALITY_COUNT ? modality_names[m] : "?"; }

static const char *const slide_mode_names[] = {"tiles", "features"};
_Static_assert(sizeof(slide_mode_names) / sizeof(slide_mode_names[0]) == PS_SLIDE_MODE_COUNT, "slide mode table");
const char *ps_slide_mode_name(ps_slide_mode m) { return (unsigned)m < PS_SLIDE_MODE_COUNT ? slide_mode_names[m] : "?"; }

static const char *const timer_names[] = {"omics_ae", "conv1", "conv2", "conv3", "tile_attn", "clinical", "fusion"};
_Static_assert(sizeof(timer_names) / sizeof(timer_names[0]) == PS_MT_COUNT, "timer name table");
const char *ps_model_timer_name(ps_model_timer t) { return (unsigned)t < PS_MT_COUNT ? timer_names[t] : "?"; }

enum { DROPOUT_LAYER_AE = 1 }; // layer ids keying dropout streams

void ps_model_config_default(ps_model_config *c) {
  memset(c, 0, sizeof(*c));
  for (int i = 0; i < PS_NN_MODALITY_COUNT; i++) c->use[i] = true;
  c->d = 128;
  c->genes = 2000;
  c->ae_hidden = 512;
  c->ae_dropout = 0.1f;
  c->ae_input_noise = 0.0f;
  c->slide_mode = PS_SLIDE_TILES;
  c->tile_size = 64;
  c->max_tiles = 16;
  c->cnn_ch[0] = 32, c->cnn_ch[1] = 64, c->cnn_ch[2] = 128;
  c->feat_dim = 1024;
  c->attn_hidden = 64;
  c->clinical = 12;
  c->clinical_hidden = 64;
  c->fusion_layers = 1;
  c->heads = 4;
  c->ff_hidden = 256;
  c->bn_momentum = 0.1f;
  c->bn_eps = 1e-5f;
  c->seed = 1234;
}

int ps_model_config_text(const ps_model_config *c, char *buf, size_t len) {
  return snprintf(buf, len,
                  "use_omics: %d\nuse_slide: %d\nuse_clinical: %d\nd: %lld\ngenes: %lld\nae_hidden: %lld\n"
                  "ae_dropout: %g\nae_input_noise: %g\nslide_mode: %s\ntile_size: %lld\nmax_tiles: %lld\n"
                  "cnn_channels: [%lld, %lld, %lld]\ncnn_norm_groups: %d\nfeat_dim: %lld\nattn_hidden: %lld\nclinical: %lld\n"
                  "clinical_hidden: %lld\nfusion_layers: %d\nheads: %d\nff_hidden: %lld\nbn_momentum: %g\n"
                  "bn_eps: %g\nseed: %llu\n",
                  c->use[PS_NN_OMICS], c->use[PS_NN_SLIDE], c->use[PS_NN_CLINICAL], (long long)c->d, (long long)c->genes, (long long)c->ae_hidden,
                  c->ae_dropout, c->ae_input_noise, ps_slide_mode_name(c->slide_mode), (long long)c->tile_size,
                  (long long)c->max_tiles, (long long)c->cnn_ch[0], (long long)c->cnn_ch[1], (long long)c->cnn_ch[2],
                  c->cnn_norm_groups, (long long)c->feat_dim, (long long)c->attn_hidden, (long long)c->clinical,
                  (long long)c->clinical_hidden, c->fusion_layers, c->heads, (long long)c->ff_hidden, c->bn_momentum,
                  c->bn_eps, (unsigned long long)c->seed);
}

#define MAX_LAYERS 8

typedef struct {
  int wqkv, bqkv, wo, bo, ln1g, ln1b, w1, b1, w2, b2, ln2g, ln2b;
} mhsa_idx;

struct ps_model {
  ps_model_config cfg;
  ps_device device; // of the parameter, gradient, buffer and activation arenas
  ps_param_table params, buffers;
  ps_nn_reducer reducer;
  int M;                  // tokens
  int tok[PS_NN_MODALITY_COUNT];  // token index of a modality, -1 disabled
  int nth;                // OpenMP threads planned for
  // parameter indices (forward order)
  int enc1w, enc1b, enc2w, enc2b, dec1w, dec1b, dec2w, dec2b;
  int convw[3], bng[3], bnb[3], bnrm[3], bnrv[3];
  int projw, projb;
  int gv, gbv, gu, gbu, gw;
  int c1w, c1b, c2w, c2b;
  int emb;
  mhsa_idx fl[MAX_LAYERS];
  int headw, headb;
  // first parameter index of each backward group
  int grp_omics_enc, grp_omics_dec, grp_conv[3], grp_proj, grp_gattn, grp_clin, grp_emb, grp_fusion[MAX_LAYERS],
      grp_head;
  // activations (planned once): `act` on the model's device; `hst` holds host-side index data,
  // input staging and result copies (pinned on CUDA; on the CPU every *_h twin IS its device
  // array, so staging writes the activation itself and uploads/downloads are no-ops).
  ps_arena act;
  uint8_t *hst;           // host arena (CUDA only), hst_cap bytes
  size_t hst_cap;
  bool planned;
  bool device_block;      // conv blocks through the device-style path (always on CUDA)
  bool sync_timers;       // CUDA: synchronize around module timers
  int64_t max_b;
  ps_nn_exec ex;
  // Batch inputs (o_x, c_x, s_x0 and their host staging) come in two sets on CUDA: the forward
  // computes on set in_cur while ps_model_stage fills the other on its own stream.
  struct {
    float *o_x, *o_x_h, *c_x, *c_x_h, *s_x0, *s_x0_h;
  } in_set[2];
  int in_cur, n_sets;
  bool staged;                  // set 1 - in_cur holds staged_batch (copies queued on copy_stream)
  ps_model_batch staged_batch;
  ps_cuda_stream copy_stream;
  ps_cuda_event ev_copied[2];   // the set's H2D copies are done (recorded on copy_stream)
  ps_cuda_event ev_free;        // recorded on the default stream when a stage starts
  // omics
  int64_t *o_rows, *o_rows_h;      // (B) batch rows with omics
  uint64_t *o_streams_h;           // (B) dropout row streams (host: tensor's dropout uploads them)
  uint64_t *o_nstreams, *o_nstreams_h; // (B) input-noise streams
  float *o_x, *o_x_h, *o_xn;       // (B, G) clean target (+ staging), noisy input
  float *o_h1, *o_h1d, *o_z;       // (B, HA), (B, HA), (B, D)
  uint8_t *o_mask;                 // (B, HA)
  float *o_hd, *o_rec;             // (B, HA), (B, G)
  double *o_part, *o_part_h;       // (B) per-row squared reconstruction error
  float *o_grec, *o_ghd, *o_gz, *o_gh1d, *o_gh1; // grads
  // slide
  int64_t *s_off, *s_off_h;        // (B+1) tile offsets
  float *s_x0, *s_x0_h;            // (B*K, 3, S, S) or (B*K, F) gathered valid tiles (+ staging)
  float *s_z[3], *s_p[3];          // block pre-BN maps and pooled outputs
  float *s_zw[3];                  // fused CPU block: the pooling winners' pre-BN values
  uint8_t *s_am[3];
  float *s_mean[3], *s_rstd[3];    // (OC) BatchNorm, (NT, groups) GroupNorm
  float *s_h;                      // (B*K, D) tile embeddings
  ps_nn_gattn_cache s_att;
  float *s_out;                    // (B, D)
  float *s_gout, *s_gh, *s_gattn_scratch, *s_gz, *s_gpa, *s_gpb;
  ps_nn_convblock_scratch s_scr;       // fused CPU block
  ps_nn_convblock_dev_scratch s_dscr;  // device-style block
  // clinical
  int64_t *c_rows, *c_rows_h;
  float *c_x, *c_x_h, *c_h, *c_z, *c_gh, *c_gz; // (B,C), (B,HC), (B,D)
  // fusion
  uint8_t *f_mask, *f_mask_h;      // (B, M)
  int64_t *f_src, *f_src_h;        // (B, M) source row of token (b, t) in its modality's output, -1 absent
  float *f_x[MAX_LAYERS + 1];      // (B*M, D) layer inputs/outputs
  ps_nn_mhsa_cache f_cache[MAX_LAYERS];
  float *f_pool;                   // (B, D)
  float *f_eta, *f_deta;           // (B) device copies of eta / deta (CUDA)
  float *f_ga, *f_gb, *f_scratch;  // (B*M, D) x2, mhsa scratch
  float *tile_att, *tile_att_h;    // (B, K)
  float *mod_att, *mod_att_h;      // (B, M)
  // last forward
  int64_t B, n_o, n_c, n_t;
  bool training;
  double recon_norm;
  bool recon_norm_set;
  double t_fwd[PS_MT_COUNT], t_bwd[PS_MT_COUNT], fl_fwd[PS_MT_COUNT], fl_bwd[PS_MT_COUNT];
};

// ---- creation ------------------------------------------------------------------------------------
static ps_status add_linear(ps_param_table *t, int *w, int *b, const char *name, int64_t dout, int64_t din,
                            ps_init_kind init) {
  char nm[PS_PARAM_NAME_MAX + 16]; // over-long names are rejected by ps_param_add
  snprintf(nm, sizeof nm, "%s.weight", name);
  PS_TRY(ps_param_add(t, w, nm, PS_SHAPE(dout, din), true, init, din, dout));
  snprintf(nm, sizeof nm, "%s.bias", name);
  return ps_param_add(t, b, nm, PS_SHAPE(dout), false, PS_INIT_ZERO, din, dout);
}

static ps_status validate_config(const ps_model_config *c) {
  int n = 0;
  for (int i = 0; i < PS_NN_MODALITY_COUNT; i++) n += c->use[i];
  if (!n) PS_FAIL(PS_ERR_CONFIG, "model: no modality enabled (enable at least one of omics, slide, clinical)");
  if (c->d <= 0 || c->heads <= 0 || c->d % c->heads)
    PS_FAIL(PS_ERR_CONFIG, "model: width d=%lld must be a positive multiple of heads=%d", (long long)c->d, c->heads);
  if (c->fusion_layers < 0 || c->fusion_layers > MAX_LAYERS)
    PS_FAIL(PS_ERR_CONFIG, "model: fusion_layers=%d not in 0..%d", c->fusion_layers, MAX_LAYERS);
  if (c->use[PS_NN_OMICS] && (c->genes <= 0 || c->ae_hidden <= 0))
    PS_FAIL(PS_ERR_CONFIG, "model: omics needs genes > 0 and ae_hidden > 0 (got %lld, %lld)", (long long)c->genes,
            (long long)c->ae_hidden);
  if (c->ae_dropout < 0 || c->ae_dropout >= 1)
    PS_FAIL(PS_ERR_CONFIG, "model: ae_dropout=%g not in [0, 1)", c->ae_dropout);
  if (c->use[PS_NN_SLIDE]) {
    if (c->max_tiles <= 0 || c->attn_hidden <= 0)
      PS_FAIL(PS_ERR_CONFIG, "model: slide needs max_tiles > 0 and attn_hidden > 0");
    if (c->slide_mode == PS_SLIDE_TILES) {
      if (c->tile_size <= 0 || c->tile_size % 8)
        PS_FAIL(PS_ERR_CONFIG, "model: tile_size=%lld must be a positive multiple of 8 (three 2x2 pools)",
                (long long)c->tile_size);
      if (c->cnn_ch[2] != c->d)
        PS_FAIL(PS_ERR_CONFIG, "model: last CNN width %lld must equal d=%lld (global avg pool gives the tile embedding)",
                (long long)c->cnn_ch[2], (long long)c->d);
      for (int i = 0; i < 3; i++) {
        if (c->cnn_ch[i] <= 0) PS_FAIL(PS_ERR_CONFIG, "model: cnn channel %d is %lld", i, (long long)c->cnn_ch[i]);
        if (c->cnn_norm_groups < 0 || (c->cnn_norm_groups > 0 && c->cnn_ch[i] % c->cnn_norm_groups))
          PS_FAIL(PS_ERR_CONFIG, "model: cnn_norm_groups=%d must be >= 0 and divide every CNN width (%lld)",
                  c->cnn_norm_groups, (long long)c->cnn_ch[i]);
      }
    } else if (c->slide_mode == PS_SLIDE_FEATURES) {
      if (c->feat_dim <= 0) PS_FAIL(PS_ERR_CONFIG, "model: features mode needs feat_dim > 0");
    } else {
      PS_FAIL(PS_ERR_CONFIG, "model: unknown slide mode %d", (int)c->slide_mode);
    }
  }
  if (c->use[PS_NN_CLINICAL] && (c->clinical <= 0 || c->clinical_hidden <= 0))
    PS_FAIL(PS_ERR_CONFIG, "model: clinical needs clinical > 0 and clinical_hidden > 0");
  if (c->fusion_layers > 0 && c->ff_hidden <= 0) PS_FAIL(PS_ERR_CONFIG, "model: ff_hidden must be > 0");
  return PS_OK;
}

static ps_status build(ps_model *m) {
  const ps_model_config *c = &m->cfg;
  ps_param_table *t = &m->params;
  const int64_t D = c->d;
  char nm[PS_PARAM_NAME_MAX];
  if (c->use[PS_NN_OMICS]) {
    m->grp_omics_enc = t->count;
    PS_TRY(add_linear(t, &m->enc1w, &m->enc1b, "omics.enc1", c->ae_hidden, c->genes, PS_INIT_KAIMING_UNIFORM));
    PS_TRY(add_linear(t, &m->enc2w, &m->enc2b, "omics.enc2", D, c->ae_hidden, PS_INIT_XAVIER_UNIFORM));
    m->grp_omics_dec = t->count;
    PS_TRY(add_linear(t, &m->dec1w, &m->dec1b, "omics.dec1", c->ae_hidden, D, PS_INIT_KAIMING_UNIFORM));
    PS_TRY(add_linear(t, &m->dec2w, &m->dec2b, "omics.dec2", c->genes, c->ae_hidden, PS_INIT_XAVIER_UNIFORM));
  }
  if (c->use[PS_NN_SLIDE]) {
    if (c->slide_mode == PS_SLIDE_TILES) {
      int64_t cin = 3;
      for (int i = 0; i < 3; i++) {
        m->grp_conv[i] = t->count;
        snprintf(nm, sizeof nm, "slide.conv%d.weight", i + 1);
        PS_TRY(ps_param_add(t, &m->convw[i], nm, PS_SHAPE(c->cnn_ch[i], cin, 3, 3), true, PS_INIT_KAIMING_UNIFORM,
                            cin * 9, c->cnn_ch[i] * 9));
        const char *nk = c->cnn_norm_groups > 0 ? "gn" : "bn";
        snprintf(nm, sizeof nm, "slide.%s%d.weight", nk, i + 1);
        PS_TRY(ps_param_add(t, &m->bng[i], nm, PS_SHAPE(c->cnn_ch[i]), false, PS_INIT_ONE, 1, 1));
        snprintf(nm, sizeof nm, "slide.%s%d.bias", nk, i + 1);
        PS_TRY(ps_param_add(t, &m->bnb[i], nm, PS_SHAPE(c->cnn_ch[i]), false, PS_INIT_ZERO, 1, 1));
        m->bnrm[i] = m->bnrv[i] = -1;
        if (c->cnn_norm_groups == 0) {
          snprintf(nm, sizeof nm, "slide.bn%d.running_mean", i + 1);
          PS_TRY(ps_param_add(&m->buffers, &m->bnrm[i], nm, PS_SHAPE(c->cnn_ch[i]), false, PS_INIT_ZERO, 1, 1));
          snprintf(nm, sizeof nm, "slide.bn%d.running_var", i + 1);
          PS_TRY(ps_param_add(&m->buffers, &m->bnrv[i], nm, PS_SHAPE(c->cnn_ch[i]), false, PS_INIT_ONE, 1, 1));
        }
        cin = c->cnn_ch[i];
      }
    } else {
      m->grp_proj = t->count;
      PS_TRY(add_linear(t, &m->projw, &m->projb, "slide.proj", D, c->feat_dim, PS_INIT_KAIMING_UNIFORM));
    }
    m->grp_gattn = t->count;
    PS_TRY(add_linear(t, &m->gv, &m->gbv, "slide.attn.V", c->attn_hidden, D, PS_INIT_XAVIER_UNIFORM));
    PS_TRY(add_linear(t, &m->gu, &m->gbu, "slide.attn.U", c->attn_hidden, D, PS_INIT_XAVIER_UNIFORM));
    PS_TRY(ps_param_add(t, &m->gw, "slide.attn.w.weight", PS_SHAPE(1, c->attn_hidden), true, PS_INIT_XAVIER_UNIFORM,
                        c->attn_hidden, 1));
  }
  if (c->use[PS_NN_CLINICAL]) {
    m->grp_clin = t->count;
    PS_TRY(add_linear(t, &m->c1w, &m->c1b, "clinical.fc1", c->clinical_hidden, c->clinical, PS_INIT_KAIMING_UNIFORM));
    PS_TRY(add_linear(t, &m->c2w, &m->c2b, "clinical.fc2", D, c->clinical_hidden, PS_INIT_XAVIER_UNIFORM));
  }
  m->grp_emb = t->count;
  PS_TRY(ps_param_add(t, &m->emb, "fusion.modality_embedding", PS_SHAPE(m->M, D), false, PS_INIT_NORMAL_002, D, D));
  for (int l = 0; l < c->fusion_layers; l++) {
    mhsa_idx *f = &m->fl[l];
    m->grp_fusion[l] = t->count;
    snprintf(nm, sizeof nm, "fusion.%d.attn.qkv", l);
    PS_TRY(add_linear(t, &f->wqkv, &f->bqkv, nm, 3 * D, D, PS_INIT_XAVIER_UNIFORM));
    snprintf(nm, sizeof nm, "fusion.%d.attn.out", l);
    PS_TRY(add_linear(t, &f->wo, &f->bo, nm, D, D, PS_INIT_XAVIER_UNIFORM));
    snprintf(nm, sizeof nm, "fusion.%d.ln1.weight", l);
    PS_TRY(ps_param_add(t, &f->ln1g, nm, PS_SHAPE(D), false, PS_INIT_ONE, 1, 1));
    snprintf(nm, sizeof nm, "fusion.%d.ln1.bias", l);
    PS_TRY(ps_param_add(t, &f->ln1b, nm, PS_SHAPE(D), false, PS_INIT_ZERO, 1, 1));
    snprintf(nm, sizeof nm, "fusion.%d.ff1", l);
    PS_TRY(add_linear(t, &f->w1, &f->b1, nm, c->ff_hidden, D, PS_INIT_KAIMING_UNIFORM));
    snprintf(nm, sizeof nm, "fusion.%d.ff2", l);
    PS_TRY(add_linear(t, &f->w2, &f->b2, nm, D, c->ff_hidden, PS_INIT_XAVIER_UNIFORM));
    snprintf(nm, sizeof nm, "fusion.%d.ln2.weight", l);
    PS_TRY(ps_param_add(t, &f->ln2g, nm, PS_SHAPE(D), false, PS_INIT_ONE, 1, 1));
    snprintf(nm, sizeof nm, "fusion.%d.ln2.bias", l);
    PS_TRY(ps_param_add(t, &f->ln2b, nm, PS_SHAPE(D), false, PS_INIT_ZERO, 1, 1));
  }
  m->grp_head = t->count;
  PS_TRY(add_linear(t, &m->headw, &m->headb, "head", 1, D, PS_INIT_XAVIER_UNIFORM));
  return PS_OK;
}

ps_status ps_model_create(ps_model **out, const ps_model_config *cfg) { return ps_model_create_on(out, cfg, PS_CPU); }

ps_status ps_model_create_on(ps_model **out, const ps_model_config *cfg, ps_device dev) {
  *out = NULL;
  PS_TRY(validate_config(cfg));
  PS_REQUIRE(dev == PS_CPU || dev == PS_CUDA, "model: unknown device %d", (int)dev);
  if (dev == PS_CUDA && ps_cuda_device_count() == 0)
    PS_FAIL(PS_ERR_UNSUPPORTED, "model: device cuda requested but no CUDA device is visible%s",
            PANSURV_HAVE_CUDA ? "" : " (this build has no CUDA)");
  ps_model *m = calloc(1, sizeof(*m));
  if (!m) PS_FAIL(PS_ERR_MEM, "model: out of memory");
  m->cfg = *cfg;
  m->device = dev;
  m->ex.device = dev;
  m->device_block = dev == PS_CUDA;
  ps_param_table_init(&m->params, "parameters", true);
  ps_param_table_init(&m->buffers, "buffers", false);
  m->M = 0;
  for (int i = 0; i < PS_NN_MODALITY_COUNT; i++) m->tok[i] = cfg->use[i] ? m->M++ : -1;
  ps_status s = build(m);
  if (s == PS_OK) s = ps_param_table_set_device(&m->params, dev);
  if (s == PS_OK) s = ps_param_table_set_device(&m->buffers, dev);
  if (s == PS_OK) s = ps_param_table_alloc(&m->params);
  if (s == PS_OK) s = ps_param_table_alloc(&m->buffers); // may be empty (no BatchNorm)
  if (s == PS_OK) s = ps_param_table_init_values(&m->params, cfg->seed);
  if (s == PS_OK) s = ps_param_table_init_values(&m->buffers, cfg->seed);
  if (s != PS_OK) {
    ps_model_destroy(m);
    return s;
  }
  *out = m;
  return PS_OK;
}

ps_device ps_model_device(const ps_model *m) { return m->device; }

void ps_model_destroy(ps_model *m) {
  if (!m) return;
  ps_param_table_free(&m->params);
  ps_param_table_free(&m->buffers);
  if (m->planned) ps_arena_free(&m->act);
  if (m->hst) ps_cuda_host_free(m->hst);
  if (m->copy_stream) ps_cuda_stream_destroy(m->copy_stream);
  for (int i = 0; i < 2; i++)
    if (m->ev_copied[i]) ps_cuda_event_destroy(m->ev_copied[i]);
  if (m->ev_free) ps_cuda_event_destroy(m->ev_free);
  free(m);
}

const ps_model_config *ps_model_config_of(const ps_model *m) { return &m->cfg; }
ps_param_table *ps_model_params(ps_model *m) { return &m->params; }
ps_param_table *ps_model_buffers(ps_model *m) { return &m->buffers; }
void ps_model_set_reducer(ps_model *m, ps_nn_reducer r) { m->reducer = r; }

static ps_status comm_sum_f64(void *ctx, double *buf, int64_t n) {
  return ps_comm_allreduce((ps_comm *)ctx, PS_IN_PLACE, buf, n, PS_F64, PS_OP_SUM);
}
ps_nn_reducer ps_nn_reducer_comm(ps_comm *c) { return (ps_nn_reducer){c && ps_comm_size(c) > 1 ? comm_sum_f64 : NULL, c}; }
void ps_model_set_recon_norm(ps_model *m, double norm) {
  m->recon_norm = norm;
  m->recon_norm_set = norm > 0;
}
const float *ps_model_tile_attention(const ps_model *m) { return m->tile_att_h; }
const float *ps_model_modality_attention(const ps_model *m) { return m->mod_att_h; }
int ps_model_tokens(const ps_model *m) { return m->M; }
size_t ps_model_activation_bytes(const ps_model *m) { return m->planned ? m->act.capacity : 0; }

void ps_model_timers(const ps_model *m, double fwd_s[PS_MT_COUNT], double bwd_s[PS_MT_COUNT],
                     double flops_fwd[PS_MT_COUNT], double flops_bwd[PS_MT_COUNT]) {
  for (int i = 0; i < PS_MT_COUNT; i++) {
    if (fwd_s) fwd_s[i] = m->t_fwd[i];
    if (bwd_s) bwd_s[i] = m->t_bwd[i];
    if (flops_fwd) flops_fwd[i] = m->fl_fwd[i];
    if (flops_bwd) flops_bwd[i] = m->fl_bwd[i];
  }
}


void ps_model_set_device_block(ps_model *m, bool on) {
  on = on || m->device == PS_CUDA; // CUDA has no fused block
  if (on != m->device_block && m->planned) { // the scratch differs: plan again at the next ps_model_plan
    ps_arena_free(&m->act);
    m->planned = false;
  }
  m->device_block = on;
}
void ps_model_set_timing_sync(ps_model *m, bool on) { m->sync_timers = on; }

// Module timer clock: on CUDA with timing sync, waits for the queued kernels first so that a
// module's time is its execution; otherwise launches are asynchronous and CUDA times are
// launch times (the step's total is right at the end of backward, which synchronizes).
static double mclock(const ps_model *m) {
  if (m->device == PS_CUDA && m->sync_timers) ps_nn_exec_sync(&m->ex); // a failure shows up at the next call
  return omp_get_wtime();
}

// ---- planning: pass 0 sizes the arenas, pass 1 carves them -----------------------------------------
typedef struct {
  ps_model *m;
  size_t need, need_h, used_h;
  int pass;
  ps_status st;
} planner;

static void *take(planner *p, size_t bytes) {
  if (p->pass == 0) {
    p->need += ps_arena_footprint(bytes ? bytes : 1);
    return NULL;
  }
  void *ptr = NULL;
  if (p->st == PS_OK) p->st = ps_arena_alloc_bytes(&p->m->act, bytes ? bytes : 1, &ptr);
  return ptr;
}
// Host memory: the activation arena itself on the CPU, the pinned host arena on CUDA.
static void *take_h(planner *p, size_t bytes) {
  if (p->m->device == PS_CPU) return take(p, bytes);
  size_t fp = ps_arena_footprint(bytes ? bytes : 1);
  if (p->pass == 0) {
    p->need_h += fp;
    return NULL;
  }
  void *ptr = p->m->hst + p->used_h;
  p->used_h += fp;
  return ptr;
}
// The host twin of device array d: d itself on the CPU, except with the device-style path, where
// the CPU model keeps separate twins and really copies (memcpy), so a missing upload or download
// shows up in the CPU tests as a wrong result.
static void *twin(planner *p, void *d, size_t bytes) {
  return p->m->device == PS_CPU && !p->m->device_block ? d : take_h(p, bytes);
}
#define TAKE_F(p, n) ((float *)take((p), (size_t)(n) * sizeof(float)))
#define TWIN(p, d, n) ((__typeof__(d))twin((p), (d), (size_t)(n) * sizeof(*(d))))

static void plan_pass(ps_model *m, planner *p) {
  const ps_model_config *c = &m->cfg;
  const int64_t B = m->max_b, D = c->d, K = c->max_tiles, M = m->M, HA = c->ae_hidden, G = c->genes;
  const int nth = m->nth;
  if (c->use[PS_NN_OMICS]) {
    m->o_rows = take(p, (size_t)B * sizeof(int64_t));
    m->o_rows_h = TWIN(p, m->o_rows, B);
    m->o_streams_h = take_h(p, (size_t)B * sizeof(uint64_t));
    m->o_nstreams = take(p, (size_t)B * sizeof(uint64_t));
    m->o_nstreams_h = TWIN(p, m->o_nstreams, B);
    for (int k = 0; k < m->n_sets; k++) {
      m->in_set[k].o_x = TAKE_F(p, B * G);
      m->in_set[k].o_x_h = TWIN(p, m->in_set[k].o_x, B * G);
    }
    m->o_xn = TAKE_F(p, B * G);
    m->o_h1 = TAKE_F(p, B * HA);
    m->o_h1d = TAKE_F(p, B * HA);
    m->o_mask = take(p, (size_t)(B * HA));
    m->o_z = TAKE_F(p, B * D);
    m->o_hd = TAKE_F(p, B * HA);
    m->o_rec = TAKE_F(p, B * G);
    m->o_part = take(p, (size_t)B * sizeof(double));
    m->o_part_h = TWIN(p, m->o_part, B);
    m->o_grec = TAKE_F(p, B * G);
    m->o_ghd = TAKE_F(p, B * HA);
    m->o_gz = TAKE_F(p, B * D);
    m->o_gh1d = TAKE_F(p, B * HA);
    m->o_gh1 = TAKE_F(p, B * HA);
  }
  if (c->use[PS_NN_SLIDE]) {
    const int64_t NT = B * K, A = c->attn_hidden;
    m->s_off = take(p, (size_t)(B + 1) * sizeof(int64_t));
    m->s_off_h = TWIN(p, m->s_off, B + 1);
    if (c->slide_mode == PS_SLIDE_TILES) {
      const int64_t S = c->tile_size;
      for (int k = 0; k < m->n_sets; k++) {
        m->in_set[k].s_x0 = TAKE_F(p, NT * 3 * S * S);
        m->in_set[k].s_x0_h = TWIN(p, m->in_set[k].s_x0, NT * 3 * S * S);
      }
      const int64_t chunk = ps_nn_convblock_chunk();
      const int64_t groups = c->cnn_norm_groups;
      int64_t cin = 3, h = S, maxz = 0, maxp = 0, maxws = 0, maxoc = 0;
      for (int i = 0; i < 3; i++) {
        int64_t oc = c->cnn_ch[i];
        m->s_z[i] = TAKE_F(p, NT * oc * h * h);
        m->s_p[i] = TAKE_F(p, NT * oc * (h / 2) * (h / 2));
        m->s_am[i] = take(p, (size_t)(NT * oc * (h / 2) * (h / 2)));
        m->s_zw[i] = m->device_block ? NULL : TAKE_F(p, NT * oc * (h / 2) * (h / 2));
        int64_t nstat = groups > 0 ? NT * groups : oc; // GN: per tile and group
        m->s_mean[i] = TAKE_F(p, nstat);
        m->s_rstd[i] = TAKE_F(p, nstat);
        if (oc * h * h > maxz) maxz = oc * h * h;
        if (oc * (h / 2) * (h / 2) > maxp) maxp = oc * (h / 2) * (h / 2);
        ps_nn_convblock_dims cd = {m->device_block ? NT : chunk, cin, oc, h, h};
        int64_t ws = m->device_block ? ps_nn_convblock_dev_ws_floats(m->device, &cd)
                                      : ps_nn_convblock_ws_floats(&cd, chunk);
        if (ws < 0 && p->st == PS_OK)
          p->st = ps_error_set(PS_ERR_CONFIG, __FILE__, __LINE__, "conv block %d: no convolution workspace size for "
                               "%lld tiles of %lldx%lld", i + 1, (long long)cd.n, (long long)h, (long long)h);
        if (ws > maxws) maxws = ws;
        if (oc > maxoc) maxoc = oc;
        cin = oc;
        h /= 2;
      }
      m->s_gpa = TAKE_F(p, NT * maxp);
      m->s_gpb = TAKE_F(p, NT * maxp);
      if (m->device_block) { // whole-batch dz, partial sums per (tile, channel), totals
        ps_nn_convblock_dev_scratch *ds = &m->s_dscr;
        ds->gz = TAKE_F(p, NT * maxz);
        ds->ws_floats = maxws;
        ds->ws = TAKE_F(p, maxws);
        ds->part = take(p, (size_t)(2 * NT * maxoc) * sizeof(double));
        ds->stats = take(p, (size_t)(2 * maxoc + 1) * sizeof(double));
        ds->stats_h = TWIN(p, ds->stats, 2 * maxoc + 1);
        ds->chan_h = take_h(p, (size_t)(4 * maxoc) * sizeof(float));
        ds->gn_ab = TAKE_F(p, 2 * NT * (groups > 0 ? groups : 1));
        m->s_gz = ds->gz;
      } else {
        m->s_gz = TAKE_F(p, chunk * maxz); // dz of one chunk of tiles
        m->s_scr.chunk = chunk;
        m->s_scr.gz = m->s_gz;
        m->s_scr.gz_floats = chunk * maxz;
        m->s_scr.ws_floats = maxws;
        m->s_scr.ws = TAKE_F(p, maxws);
        m->s_scr.stats = take(p, (size_t)(nth * (2 * maxoc + 1)) * sizeof(double));
      }
    } else {
      for (int k = 0; k < m->n_sets; k++) {
        m->in_set[k].s_x0 = TAKE_F(p, NT * c->feat_dim);
        m->in_set[k].s_x0_h = TWIN(p, m->in_set[k].s_x0, NT * c->feat_dim);
      }
    }
    m->s_h = TAKE_F(p, NT * D);
    m->s_att.a = TAKE_F(p, NT * A);
    m->s_att.g = TAKE_F(p, NT * A);
    m->s_att.alpha = TAKE_F(p, NT);
    m->s_out = TAKE_F(p, B * D);
    m->s_gout = TAKE_F(p, B * D);
    m->s_gh = TAKE_F(p, NT * D);
    m->s_gattn_scratch = TAKE_F(p, 2 * NT * A + 2 * NT);
  }
  if (c->use[PS_NN_CLINICAL]) {
    m->c_rows = take(p, (size_t)B * sizeof(int64_t));
    m->c_rows_h = TWIN(p, m->c_rows, B);
    for (int k = 0; k < m->n_sets; k++) {
      m->in_set[k].c_x = TAKE_F(p, B * c->clinical);
      m->in_set[k].c_x_h = TWIN(p, m->in_set[k].c_x, B * c->clinical);
    }
    m->c_h = TAKE_F(p, B * c->clinical_hidden);
    m->c_z = TAKE_F(p, B * D);
    m->c_gh = TAKE_F(p, B * c->clinical_hidden);
    m->c_gz = TAKE_F(p, B * D);
  }
  ps_nn_mhsa_dims md = {B, M, D, c->heads, c->ff_hidden};
  m->f_mask = take(p, (size_t)(B * M));
  m->f_mask_h = TWIN(p, m->f_mask, B * M);
  m->f_src = take(p, (size_t)(B * M) * sizeof(int64_t));
  m->f_src_h = TWIN(p, m->f_src, B * M);
  for (int l = 0; l <= c->fusion_layers; l++) m->f_x[l] = TAKE_F(p, B * M * D);
  for (int l = 0; l < c->fusion_layers; l++) {
    float *mem = TAKE_F(p, ps_nn_mhsa_cache_floats(&md));
    if (mem) ps_nn_mhsa_cache_bind(&m->f_cache[l], mem, &md);
  }
  m->f_pool = TAKE_F(p, B * D);
  m->f_eta = TAKE_F(p, B);
  m->f_deta = TAKE_F(p, B);
  m->f_ga = TAKE_F(p, B * M * D);
  m->f_gb = TAKE_F(p, B * M * D);
  m->f_scratch = TAKE_F(p, ps_nn_mhsa_scratch_floats(&md));
  m->tile_att = TAKE_F(p, B * K);
  m->tile_att_h = TWIN(p, m->tile_att, B * K);
  m->mod_att = TAKE_F(p, B * M);
  m->mod_att_h = TWIN(p, m->mod_att, B * M);
}

ps_status ps_model_plan(ps_model *m, int64_t max_b) {
  PS_REQUIRE(max_b > 0, "model plan: batch %lld must be > 0", (long long)max_b);
  if (m->planned) {
    if (max_b <= m->max_b && m->nth == omp_get_max_threads()) return PS_OK;
    ps_arena_free(&m->act);
    m->planned = false;
  }
  if (m->hst) {
    ps_cuda_host_free(m->hst);
    m->hst = NULL;
  }
  m->max_b = max_b;
  m->nth = omp_get_max_threads();
  m->n_sets = m->device == PS_CUDA ? 2 : 1;
  m->in_cur = 0;
  m->staged = false;
  if (m->device == PS_CUDA && !m->copy_stream) {
    PS_TRY(ps_cuda_stream_create(&m->copy_stream));
    for (int i = 0; i < 2; i++) PS_TRY(ps_cuda_event_create(&m->ev_copied[i]));
    PS_TRY(ps_cuda_event_create(&m->ev_free));
  }
  planner p = {m, 0, 0, 0, 0, PS_OK};
  plan_pass(m, &p);
  if (p.st != PS_OK) return p.st;
  PS_TRY(ps_arena_init(&m->act, "activations", m->device, p.need));
  if (m->device == PS_CUDA) {
    ps_status s = ps_cuda_host_alloc((void **)&m->hst, p.need_h ? p.need_h : 1);
    if (s != PS_OK) {
      ps_arena_free(&m->act);
      m->hst = NULL;
      return ps_error_wrap(s, "planning pinned host staging (%zu bytes): ", p.need_h);
    }
    m->hst_cap = p.need_h;
  }
  p.pass = 1;
  plan_pass(m, &p);
  if (p.st != PS_OK) {
    ps_arena_free(&m->act);
    return ps_error_wrap(p.st, "planning activations for batch %lld: ", (long long)max_b);
  }
  m->planned = true;
  return PS_OK;
}

#define EX (&m->ex)

// ---- batch inputs: host gather into a set's staging, one copy per array ---------------------------
static bool present(const ps_model_batch *in, const uint8_t *flags, int64_t b) {
  return flags && flags[b * (in->present_stride > 0 ? in->present_stride : 1)];
}

typedef struct {
  int64_t n_o, n_c, nt; // present omics rows, clinical rows, valid tiles
} input_counts;

// Validates the batch's inputs and gathers present rows / valid tiles (packed) into set k's
// host staging (on the CPU: the activations themselves).
static ps_status gather_inputs(ps_model *m, const ps_model_batch *in, int k, input_counts *cnt) {
  const ps_model_config *c = &m->cfg;
  memset(cnt, 0, sizeof(*cnt));
  if (c->use[PS_NN_OMICS]) {
    const int64_t G = c->genes;
    for (int64_t b = 0; b < in->b; b++)
      if (present(in, in->omics_present, b)) {
        PS_REQUIRE(in->omics, "model forward: omics_present is set but the omics matrix is NULL");
        memcpy(m->in_set[k].o_x_h + cnt->n_o * G, in->omics + b * G, (size_t)G * sizeof(float));
        cnt->n_o++;
      }
  }
  if (c->use[PS_NN_SLIDE]) {
    const int64_t K = c->max_tiles;
    const int64_t isz = c->slide_mode == PS_SLIDE_TILES ? 3 * c->tile_size * c->tile_size : c->feat_dim;
    const float *src = c->slide_mode == PS_SLIDE_TILES ? in->tiles : in->features;
    for (int64_t b = 0; b < in->b; b++) {
      int32_t nk = in->tile_count ? in->tile_count[b] : 0;
      if (nk < 0 || nk > K)
        PS_FAIL(PS_ERR_DATA, "model forward: patient %lld (batch row %lld) has tile count %d, expected 0..%lld",
                (long long)in->patient_id[b], (long long)b, (int)nk, (long long)K);
      if (nk > 0) {
        PS_REQUIRE(src, "model forward: tile counts are set but the %s array is NULL",
                   c->slide_mode == PS_SLIDE_TILES ? "tiles" : "features");
        memcpy(m->in_set[k].s_x0_h + cnt->nt * isz, src + b * K * isz, (size_t)(nk * isz) * sizeof(float));
      }
      cnt->nt += nk;
    }
  }
  if (c->use[PS_NN_CLINICAL]) {
    const int64_t C = c->clinical;
    for (int64_t b = 0; b < in->b; b++)
      if (present(in, in->clinical_present, b)) {
        memcpy(m->in_set[k].c_x_h + cnt->n_c * C, in->clinical + b * C, (size_t)C * sizeof(float));
        cnt->n_c++;
      }
  }
  return PS_OK;
}

// Copies set k's staging to the device: synchronously (s NULL) or queued on stream s.
static ps_status upload_inputs(ps_model *m, int k, const input_counts *cnt, ps_cuda_stream s) {
  const ps_model_config *c = &m->cfg;
  const int64_t isz = c->slide_mode == PS_SLIDE_TILES ? 3 * c->tile_size * c->tile_size : c->feat_dim;
  struct {
    bool use;
    float *d, *h;
    int64_t n;
  } arr[3] = {{c->use[PS_NN_OMICS], m->in_set[k].o_x, m->in_set[k].o_x_h, cnt->n_o * c->genes},
              {c->use[PS_NN_SLIDE], m->in_set[k].s_x0, m->in_set[k].s_x0_h, cnt->nt * isz},
              {c->use[PS_NN_CLINICAL], m->in_set[k].c_x, m->in_set[k].c_x_h, cnt->n_c * c->clinical}};
  for (int i = 0; i < 3; i++) {
    if (!arr[i].use || arr[i].n == 0) continue;
    size_t nb = (size_t)arr[i].n * sizeof(float);
    // CPU: a no-op when the staging is the activation, a memcpy with separate twins.
    PS_TRY(s ? ps_cuda_copy_h2d_async(arr[i].d, arr[i].h, nb, s) : ps_nn_exec_upload(EX, arr[i].d, arr[i].h, nb));
  }
  return PS_OK;
}

static bool same_batch(const ps_model_batch *a, const ps_model_batch *b) {
  return a->b == b->b && a->patient_id == b->patient_id && a->omics == b->omics &&
         a->omics_present == b->omics_present && a->clinical == b->clinical &&
         a->clinical_present == b->clinical_present && a->tiles == b->tiles && a->features == b->features &&
         a->tile_count == b->tile_count && a->present_stride == b->present_stride;
}

ps_status ps_model_stage(ps_model *m, const ps_model_batch *in) {
  PS_REQUIRE(m->planned, "model stage: call ps_model_plan first");
  PS_REQUIRE(in->b >= 0 && in->b <= m->max_b, "model stage: batch %lld exceeds the planned %lld", (long long)in->b,
             (long long)m->max_b);
  if (m->device == PS_CPU) return PS_OK; // nothing to overlap: forward gathers into the activations
  const int k = 1 - m->in_cur;
  m->staged = false;
  // The set's previous copies are long done (a forward waited for them); its host staging may be
  // rewritten once they are. The new copies start after everything queued so far on the default
  // stream, i.e. after the last step that computed on this set.
  PS_TRY(ps_cuda_event_synchronize(m->ev_copied[k]));
  input_counts cnt;
  PS_TRY(gather_inputs(m, in, k, &cnt));
  PS_TRY(ps_cuda_event_record(m->ev_free, NULL));
  PS_TRY(ps_cuda_stream_wait_event(m->copy_stream, m->ev_free));
  PS_TRY(upload_inputs(m, k, &cnt, m->copy_stream));
  PS_TRY(ps_cuda_event_record(m->ev_copied[k], m->copy_stream));
  m->staged_batch = *in;
  m->staged = true;
  return PS_OK;
}

// Makes the batch's inputs current: the staged set if it holds this batch (the default stream
// waits for its copies, the host does not), else a synchronous gather + copy into the current set.
static ps_status inputs_for_forward(ps_model *m, const ps_model_batch *in) {
  if (m->staged && same_batch(&m->staged_batch, in)) {
    m->in_cur = 1 - m->in_cur;
    PS_TRY(ps_cuda_stream_wait_event(NULL, m->ev_copied[m->in_cur]));
  } else {
    input_counts cnt;
    if (m->device == PS_CUDA) PS_TRY(ps_cuda_event_synchronize(m->ev_copied[m->in_cur]));
    PS_TRY(gather_inputs(m, in, m->in_cur, &cnt));
    PS_TRY(upload_inputs(m, m->in_cur, &cnt, NULL));
  }
  m->staged = false;
  m->o_x = m->in_set[m->in_cur].o_x, m->o_x_h = m->in_set[m->in_cur].o_x_h;
  m->c_x = m->in_set[m->in_cur].c_x, m->c_x_h = m->in_set[m->in_cur].c_x_h;
  m->s_x0 = m->in_set[m->in_cur].s_x0, m->s_x0_h = m->in_set[m->in_cur].s_x0_h;
  return PS_OK;
}

// ---- forward ---------------------------------------------------------------------------------------
#define PD(i) ps_param_data(&m->params, (i))
#define PG(i) ps_param_grad(&m->params, (i))
#define BD(i) ps_param_data(&m->buffers, (i))

static ps_status forward_omics(ps_model *m, const ps_model_batch *in, int64_t step, double *recon) {
  const ps_model_config *c = &m->cfg;
  const int64_t G = c->genes, HA = c->ae_hidden, D = c->d;
  int64_t n = 0;
  for (int64_t b = 0; b < in->b; b++)
    if (present(in, in->omics_present, b)) m->o_rows_h[n++] = b;
  m->n_o = n;
  *recon = 0;
  if (!n) return PS_OK;
  // Host: stream keys of the present rows (o_x holds them, gathered by inputs_for_forward).
  for (int64_t r = 0; r < n; r++) {
    int64_t b = m->o_rows_h[r];
    m->o_nstreams_h[r] = ps_rng_stream(PS_RNG_NOISE, (uint64_t)step, (uint64_t)in->patient_id[b], 0);
    m->o_streams_h[r] = ps_rng_stream(PS_RNG_DROPOUT, (uint64_t)step, (uint64_t)in->patient_id[b], DROPOUT_LAYER_AE);
  }
  PS_TRY(ps_nn_exec_upload(EX, m->o_rows, m->o_rows_h, (size_t)n * sizeof(int64_t)));
  PS_TRY(ps_nn_exec_copy(EX, m->o_xn, m->o_x, (size_t)(n * G) * sizeof(float)));
  if (m->training && c->ae_input_noise > 0) {
    PS_TRY(ps_nn_exec_upload(EX, m->o_nstreams, m->o_nstreams_h, (size_t)n * sizeof(uint64_t)));
    ps_rng key = ps_rng_make(c->seed, 0); // the key depends on the seed only
    PS_TRY(ps_nn_launch_input_noise(EX, n * G, m->o_xn, c->ae_input_noise, key.key[0], key.key[1], m->o_nstreams, G));
  }
  PS_TRY(ps_nn_linear_forward_ex(EX, m->o_h1, NULL, m->o_xn, PD(m->enc1w), PD(m->enc1b), n, G, HA, PS_NN_ACT_RELU));
  if (m->training && c->ae_dropout > 0) {
    PS_TRY(ps_nn_dropout_forward_ex(EX, m->o_h1d, m->o_mask, m->o_h1, c->ae_dropout, c->seed, m->o_streams_h, n, HA));
  } else {
    PS_TRY(ps_nn_exec_copy(EX, m->o_h1d, m->o_h1, (size_t)(n * HA) * sizeof(float)));
    PS_TRY(ps_nn_launch_fill_u8(EX, n * HA, m->o_mask, 1));
  }
  PS_TRY(ps_nn_linear_forward_ex(EX, m->o_z, NULL, m->o_h1d, PD(m->enc2w), PD(m->enc2b), n, HA, D, PS_NN_ACT_NONE));
  PS_TRY(ps_nn_linear_forward_ex(EX, m->o_hd, NULL, m->o_z, PD(m->dec1w), PD(m->dec1b), n, D, HA, PS_NN_ACT_RELU));
  PS_TRY(ps_nn_linear_forward_ex(EX, m->o_rec, NULL, m->o_hd, PD(m->dec2w), PD(m->dec2b), n, HA, G, PS_NN_ACT_NONE));
  // MSE: per-row sums on the device, rows summed in order on the host.
  PS_TRY(ps_nn_launch_sse_rows(EX, n, m->o_part, m->o_rec, m->o_x, G));
  PS_TRY(ps_nn_exec_download(EX, m->o_part_h, m->o_part, (size_t)n * sizeof(double)));
  double sse = 0;
  for (int64_t r = 0; r < n; r++) sse += m->o_part_h[r];
  *recon = sse / (double)(n * G);
  double fl = 2.0 * n * (G * HA + HA * D + D * HA + HA * G);
  m->fl_fwd[PS_MT_OMICS] = fl;
  m->fl_bwd[PS_MT_OMICS] = 2 * fl - 2.0 * n * G * HA; // no input gradient for the first layer
  return PS_OK;
}

static ps_status forward_slide(ps_model *m, const ps_model_batch *in) {
  const ps_model_config *c = &m->cfg;
  const int64_t K = c->max_tiles, D = c->d, A = c->attn_hidden;
  m->s_off_h[0] = 0; // tile counts were validated by gather_inputs
  for (int64_t b = 0; b < in->b; b++) m->s_off_h[b + 1] = m->s_off_h[b] + (in->tile_count ? in->tile_count[b] : 0);
  const int64_t nt = m->s_off_h[in->b];
  m->n_t = nt;
  PS_TRY(ps_nn_exec_upload(EX, m->s_off, m->s_off_h, (size_t)(in->b + 1) * sizeof(int64_t)));
  ps_nn_bn_opts bo = {c->bn_eps, c->bn_momentum, m->training, m->reducer, c->cnn_norm_groups};
  if (c->slide_mode == PS_SLIDE_TILES) {
    // SyncBN: a rank with no tiles still joins the statistics all-reduce (count 0).
    const float *x = m->s_x0;
    int64_t cin = 3, h = c->tile_size;
    for (int i = 0; i < 3; i++) {
      double t0 = mclock(m);
      ps_nn_convblock_dims d = {nt, cin, c->cnn_ch[i], h, h};
      float *rm = m->bnrm[i] >= 0 ? BD(m->bnrm[i]) : NULL, *rv = m->bnrv[i] >= 0 ? BD(m->bnrv[i]) : NULL;
      if (m->device_block)
        PS_TRY(ps_nn_convblock_forward_ex(EX, m->s_p[i], m->s_am[i], m->s_z[i], m->s_mean[i], m->s_rstd[i], x,
                                          PD(m->convw[i]), PD(m->bng[i]), PD(m->bnb[i]), rm, rv, &d, &bo, &m->s_dscr));
      else
        PS_TRY(ps_nn_convblock_forward(m->s_p[i], m->s_am[i], m->s_z[i], m->s_zw[i], m->s_mean[i], m->s_rstd[i],
                                       x, PD(m->convw[i]), PD(m->bng[i]), PD(m->bnb[i]), rm, rv, &d, &bo,
                                       &m->s_scr));
      double fl = 2.0 * nt * c->cnn_ch[i] * cin * 9 * h * h;
      m->fl_fwd[PS_MT_CONV1 + i] = fl;
      m->fl_bwd[PS_MT_CONV1 + i] = i == 0 ? fl : 2 * fl;
      m->t_fwd[PS_MT_CONV1 + i] = mclock(m) - t0;
      x = m->s_p[i];
      cin = c->cnn_ch[i];
      h /= 2;
    }
    ps_tensor tp = ps_tensor_wrap(m->s_p[2], PS_F32, EX->device, PS_SHAPE(nt, D, h, h)),
              th = ps_tensor_wrap(m->s_h, PS_F32, EX->device, PS_SHAPE(nt, D));
    PS_TRY(ps_global_avgpool_forward(&th, &tp));
  } else {
    PS_TRY(ps_nn_linear_forward_ex(EX, m->s_h, NULL, m->s_x0, PD(m->projw), PD(m->projb), nt, c->feat_dim, D,
                                   PS_NN_ACT_RELU));
  }
  PS_TRY(ps_nn_gattn_forward_ex(EX, m->s_out, &m->s_att, m->s_h, PD(m->gv), PD(m->gbv), PD(m->gu), PD(m->gbu),
                                PD(m->gw), m->s_off, nt, in->b, D, A));
  PS_TRY(ps_nn_launch_tile_attention(EX, in->b * K, m->tile_att, m->s_att.alpha, m->s_off, K));
  PS_TRY(ps_nn_exec_download(EX, m->tile_att_h, m->tile_att, (size_t)(in->b * K) * sizeof(float)));
  double fl = 2.0 * nt * D * A * 2 + 4.0 * nt * D;
  if (c->slide_mode == PS_SLIDE_FEATURES) fl += 2.0 * nt * c->feat_dim * D;
  m->fl_fwd[PS_MT_TILE_HEAD] = fl;
  m->fl_bwd[PS_MT_TILE_HEAD] = 2 * fl;
  return PS_OK;
}

static ps_status forward_clinical(ps_model *m, const ps_model_batch *in) {
  const ps_model_config *c = &m->cfg;
  const int64_t C = c->clinical, HC = c->clinical_hidden, D = c->d;
  int64_t n = 0;
  for (int64_t b = 0; b < in->b; b++)
    if (present(in, in->clinical_present, b)) m->c_rows_h[n++] = b;
  m->n_c = n;
  PS_TRY(ps_nn_exec_upload(EX, m->c_rows, m->c_rows_h, (size_t)n * sizeof(int64_t)));
  PS_TRY(ps_nn_linear_forward_ex(EX, m->c_h, NULL, m->c_x, PD(m->c1w), PD(m->c1b), n, C, HC, PS_NN_ACT_RELU));
  PS_TRY(ps_nn_linear_forward_ex(EX, m->c_z, NULL, m->c_h, PD(m->c2w), PD(m->c2b), n, HC, D, PS_NN_ACT_NONE));
  m->fl_fwd[PS_MT_CLINICAL] = 2.0 * n * (C * HC + HC * D);
  m->fl_bwd[PS_MT_CLINICAL] = 2.0 * n * (C * HC + 2 * HC * D);
  return PS_OK;
}

static void mhsa_params_of(const ps_model *m, int l, ps_nn_mhsa_params *p) {
  const mhsa_idx *f = &m->fl[l];
  *p = (ps_nn_mhsa_params){PD(f->wqkv), PD(f->bqkv), PD(f->wo), PD(f->bo), PD(f->ln1g), PD(f->ln1b),
                           PD(f->ln2g), PD(f->ln2b), PD(f->w1), PD(f->b1), PD(f->w2), PD(f->b2)};
}

static void mhsa_grads_of(const ps_model *m, int l, ps_nn_mhsa_grads *g) {
  const mhsa_idx *f = &m->fl[l];
  *g = (ps_nn_mhsa_grads){PG(f->wqkv), PG(f->bqkv), PG(f->wo), PG(f->bo), PG(f->ln1g), PG(f->ln1b),
                          PG(f->ln2g), PG(f->ln2b), PG(f->w1), PG(f->b1), PG(f->w2), PG(f->b2)};
}

static ps_status forward_fusion(ps_model *m, const ps_model_batch *in, float *eta) {
  const ps_model_config *c = &m->cfg;
  const int64_t B = in->b, M = m->M, D = c->d;
  // Host: which source row feeds token (b, t) (-1: absent, masked), uploaded with the mask.
  for (int64_t i = 0; i < B * M; i++) m->f_src_h[i] = -1;
  for (int mod = 0; mod < PS_NN_MODALITY_COUNT; mod++) {
    int t = m->tok[mod];
    if (t < 0) continue;
    if (mod == PS_NN_SLIDE) {
      for (int64_t b = 0; b < B; b++)
        if (m->s_off_h[b + 1] > m->s_off_h[b]) m->f_src_h[b * M + t] = b;
    } else {
      const int64_t *rows = mod == PS_NN_OMICS ? m->o_rows_h : m->c_rows_h;
      const int64_t nr = mod == PS_NN_OMICS ? m->n_o : m->n_c;
      for (int64_t r = 0; r < nr; r++) m->f_src_h[rows[r] * M + t] = r;
    }
  }
  for (int64_t i = 0; i < B * M; i++) m->f_mask_h[i] = m->f_src_h[i] >= 0;
  PS_TRY(ps_nn_exec_upload(EX, m->f_src, m->f_src_h, (size_t)(B * M) * sizeof(int64_t)));
  PS_TRY(ps_nn_exec_upload(EX, m->f_mask, m->f_mask_h, (size_t)(B * M)));
  const float *src[3] = {NULL, NULL, NULL}; // by token index
  if (m->tok[PS_NN_OMICS] >= 0) src[m->tok[PS_NN_OMICS]] = m->o_z;
  if (m->tok[PS_NN_SLIDE] >= 0) src[m->tok[PS_NN_SLIDE]] = m->s_out;
  if (m->tok[PS_NN_CLINICAL] >= 0) src[m->tok[PS_NN_CLINICAL]] = m->c_z;
  PS_TRY(ps_nn_launch_tokens_forward(EX, B * M * D, m->f_x[0], src[0], src[1], src[2], m->f_src, PD(m->emb), M, D));
  ps_nn_mhsa_dims md = {B, M, D, c->heads, c->ff_hidden};
  for (int l = 0; l < c->fusion_layers; l++) {
    ps_nn_mhsa_params p;
    mhsa_params_of(m, l, &p);
    PS_TRY(ps_nn_mhsa_forward_ex(EX, m->f_x[l + 1], &m->f_cache[l], m->f_x[l], m->f_mask, &p, &md));
  }
  // eta: written in place on the CPU, through the device copy on CUDA.
  float *eta_d = m->device == PS_CPU ? eta : m->f_eta;
  PS_TRY(ps_nn_launch_head_forward(EX, B, m->f_pool, eta_d, m->f_x[c->fusion_layers], m->f_mask, PD(m->headw),
                                   PD(m->headb), M, D));
  PS_TRY(ps_nn_exec_download(EX, eta, eta_d, (size_t)B * sizeof(float)));
  // Modality attention: last layer's weights, mean over heads and present queries.
  const float *prob = c->fusion_layers > 0 ? m->f_cache[c->fusion_layers - 1].prob : NULL;
  PS_TRY(ps_nn_launch_modality_attention(EX, B, m->mod_att, prob, m->f_mask, c->heads, M));
  PS_TRY(ps_nn_exec_download(EX, m->mod_att_h, m->mod_att, (size_t)(B * M) * sizeof(float)));
  double n = (double)(B * M);
  m->fl_fwd[PS_MT_FUSION] = c->fusion_layers * 2.0 * n * (3 * D * D + D * D + 2 * D * c->ff_hidden) + 2.0 * B * D;
  m->fl_bwd[PS_MT_FUSION] = 2 * m->fl_fwd[PS_MT_FUSION];
  return PS_OK;
}

ps_status ps_model_forward(ps_model *m, float *eta, double *recon_loss, const ps_model_batch *in, bool training,
                           int64_t step) {
  const ps_model_config *c = &m->cfg;
  PS_REQUIRE(m->planned, "model forward: call ps_model_plan first");
  PS_REQUIRE(in->b >= 0 && in->b <= m->max_b, "model forward: batch %lld exceeds the planned %lld",
             (long long)in->b, (long long)m->max_b);
  PS_REQUIRE(in->b == 0 || in->patient_id, "model forward: patient_id is NULL");
  PS_REQUIRE(omp_get_max_threads() <= m->nth, "model forward: %d threads but planned for %d (plan again)",
             omp_get_max_threads(), m->nth);
  // A patient must have at least one enabled modality present: report it, never produce NaN.
  for (int64_t b = 0; b < in->b; b++) {
    bool any = (c->use[PS_NN_OMICS] && present(in, in->omics_present, b)) ||
               (c->use[PS_NN_CLINICAL] && present(in, in->clinical_present, b)) ||
               (c->use[PS_NN_SLIDE] && in->tile_count && in->tile_count[b] > 0);
    if (!any) {
      char en[64] = "";
      for (int i = 0; i < PS_NN_MODALITY_COUNT; i++)
        if (c->use[i]) snprintf(en + strlen(en), sizeof en - strlen(en), "%s%s", *en ? ", " : "", ps_nn_modality_name(i));
      PS_FAIL(PS_ERR_DATA, "patient %lld (batch row %lld) has none of the enabled modalities (%s) present",
              (long long)in->patient_id[b], (long long)b, en);
    }
  }
  PS_TRY(inputs_for_forward(m, in));
  m->B = in->b;
  m->training = training;
  memset(m->t_fwd, 0, sizeof m->t_fwd);
  memset(m->fl_fwd, 0, sizeof m->fl_fwd);
  memset(m->fl_bwd, 0, sizeof m->fl_bwd);
  m->n_o = m->n_c = m->n_t = 0;
  *recon_loss = 0;
  double t0 = mclock(m);
  if (c->use[PS_NN_OMICS]) PS_TRY(forward_omics(m, in, step, recon_loss));
  double t1 = mclock(m);
  m->t_fwd[PS_MT_OMICS] = t1 - t0;
  if (c->use[PS_NN_SLIDE]) {
    PS_TRY(forward_slide(m, in));
    m->t_fwd[PS_MT_TILE_HEAD] = mclock(m) - t1 - m->t_fwd[PS_MT_CONV1] - m->t_fwd[PS_MT_CONV2] -
                                m->t_fwd[PS_MT_CONV3];
  } else {
    memset(m->tile_att_h, 0, (size_t)(in->b * c->max_tiles) * sizeof(float));
  }
  double t2 = mclock(m);
  if (c->use[PS_NN_CLINICAL]) PS_TRY(forward_clinical(m, in));
  double t3 = mclock(m);
  m->t_fwd[PS_MT_CLINICAL] = t3 - t2;
  PS_TRY(forward_fusion(m, in, eta));
  m->t_fwd[PS_MT_FUSION] = mclock(m) - t3;
  return PS_OK;
}

// ---- backward ---------------------------------------------------------------------------------------
static void ready(ps_model *m, ps_grad_ready_fn hook, void *ctx, int first_param) {
  if (hook) hook(ctx, m->params.p[first_param].offset);
}

static ps_status backward_slide(ps_model *m, ps_grad_ready_fn hook, void *hctx) {
  const ps_model_config *c = &m->cfg;
  const int64_t B = m->B, D = c->d, A = c->attn_hidden, nt = m->n_t;
  double t0 = mclock(m);
  PS_TRY(ps_nn_exec_zero(EX, m->s_gh, (size_t)(nt * D) * sizeof(float)));
  PS_TRY(ps_nn_gattn_backward_ex(EX, m->s_gh, PG(m->gv), PG(m->gbv), PG(m->gu), PG(m->gbu), PG(m->gw), m->s_gout,
                                 &m->s_att, m->s_h, PD(m->gv), PD(m->gu), PD(m->gw), m->s_off, nt, B, D, A,
                                 m->s_gattn_scratch));
  ready(m, hook, hctx, m->grp_gattn);
  if (c->slide_mode == PS_SLIDE_FEATURES) {
    PS_TRY(ps_nn_linear_backward_ex(EX, NULL, PG(m->projw), PG(m->projb), m->s_gh, m->s_x0, PD(m->projw), m->s_h,
                                    NULL, nt, c->feat_dim, D, PS_NN_ACT_RELU));
    ready(m, hook, hctx, m->grp_proj);
    m->t_bwd[PS_MT_TILE_HEAD] = mclock(m) - t0;
    return PS_OK;
  }
  const int64_t S = c->tile_size;
  int64_t hs[3] = {S, S / 2, S / 4};
  int64_t cins[3] = {3, c->cnn_ch[0], c->cnn_ch[1]};
  // dpool of block 3 from the global average pool.
  float *dp = m->s_gpa, *dnext = m->s_gpb;
  PS_TRY(ps_nn_exec_zero(EX, dp, (size_t)(nt * D * (S / 8) * (S / 8)) * sizeof(float)));
  ps_tensor tdp = ps_tensor_wrap(dp, PS_F32, EX->device, PS_SHAPE(nt, D, S / 8, S / 8)),
            tgh = ps_tensor_wrap(m->s_gh, PS_F32, EX->device, PS_SHAPE(nt, D));
  PS_TRY(ps_global_avgpool_backward(&tdp, &tgh));
  m->t_bwd[PS_MT_TILE_HEAD] = mclock(m) - t0;
  ps_nn_bn_opts bo = {c->bn_eps, c->bn_momentum, m->training, m->reducer, c->cnn_norm_groups};
  for (int i = 2; i >= 0; i--) {
    double t1 = mclock(m);
    ps_nn_convblock_dims d = {nt, cins[i], c->cnn_ch[i], hs[i], hs[i]};
    float *din = NULL;
    if (i > 0) {
      din = dnext;
      PS_TRY(ps_nn_exec_zero(EX, din, (size_t)(nt * cins[i] * hs[i] * hs[i]) * sizeof(float)));
    }
    const float *bin = i ? m->s_p[i - 1] : m->s_x0;
    if (m->device_block)
      PS_TRY(ps_nn_convblock_backward_ex(EX, din, PG(m->convw[i]), PG(m->bng[i]), PG(m->bnb[i]), dp, m->s_am[i],
                                         m->s_z[i], m->s_mean[i], m->s_rstd[i], bin, PD(m->convw[i]), PD(m->bng[i]),
                                         PD(m->bnb[i]), &d, &bo, &m->s_dscr));
    else
      PS_TRY(ps_nn_convblock_backward(din, PG(m->convw[i]), PG(m->bng[i]), PG(m->bnb[i]), m->s_gz, dp, m->s_am[i],
                                      m->s_z[i], m->s_zw[i], m->s_mean[i], m->s_rstd[i], bin, PD(m->convw[i]),
                                      PD(m->bng[i]), PD(m->bnb[i]), &d, &bo, &m->s_scr));
    ready(m, hook, hctx, m->grp_conv[i]);
    float *tmp = dp;
    dp = dnext;
    dnext = tmp;
    m->t_bwd[PS_MT_CONV1 + i] = mclock(m) - t1;
  }
  return PS_OK;
}

static ps_status backward_omics(ps_model *m, float lambda, ps_grad_ready_fn hook, void *hctx) {
  const ps_model_config *c = &m->cfg;
  const int64_t n = m->n_o, G = c->genes, HA = c->ae_hidden, D = c->d;
  if (n > 0) {
    double norm = m->recon_norm_set ? m->recon_norm : (double)(n * G);
    float s = (float)(2.0 * lambda / norm);
    PS_TRY(ps_nn_launch_recon_grad(EX, n * G, m->o_grec, m->o_rec, m->o_x, s));
    PS_TRY(ps_nn_exec_zero(EX, m->o_ghd, (size_t)(n * HA) * sizeof(float)));
    PS_TRY(ps_nn_linear_backward_ex(EX, m->o_ghd, PG(m->dec2w), PG(m->dec2b), m->o_grec, m->o_hd, PD(m->dec2w), NULL,
                                    NULL, n, HA, G, PS_NN_ACT_NONE));
    PS_TRY(ps_nn_linear_backward_ex(EX, m->o_gz, PG(m->dec1w), PG(m->dec1b), m->o_ghd, m->o_z, PD(m->dec1w), m->o_hd,
                                    NULL, n, D, HA, PS_NN_ACT_RELU));
  }
  ready(m, hook, hctx, m->grp_omics_dec);
  if (n > 0) {
    PS_TRY(ps_nn_exec_zero(EX, m->o_gh1d, (size_t)(n * HA) * sizeof(float)));
    PS_TRY(ps_nn_linear_backward_ex(EX, m->o_gh1d, PG(m->enc2w), PG(m->enc2b), m->o_gz, m->o_h1d, PD(m->enc2w), NULL,
                                    NULL, n, HA, D, PS_NN_ACT_NONE));
    PS_TRY(ps_nn_exec_zero(EX, m->o_gh1, (size_t)(n * HA) * sizeof(float)));
    float p = (m->training && c->ae_dropout > 0) ? c->ae_dropout : 0.0f;
    PS_TRY(ps_nn_dropout_backward_ex(EX, m->o_gh1, m->o_gh1d, m->o_mask, p, n, HA));
    PS_TRY(ps_nn_linear_backward_ex(EX, NULL, PG(m->enc1w), PG(m->enc1b), m->o_gh1, m->o_xn, PD(m->enc1w), m->o_h1,
                                    NULL, n, G, HA, PS_NN_ACT_RELU));
  }
  ready(m, hook, hctx, m->grp_omics_enc);
  return PS_OK;
}

ps_status ps_model_backward(ps_model *m, const float *deta, float lambda_recon, ps_grad_ready_fn hook, void *hctx) {
  const ps_model_config *c = &m->cfg;
  const int64_t B = m->B, M = m->M, D = c->d;
  memset(m->t_bwd, 0, sizeof m->t_bwd);
  double t0 = mclock(m);
  // head + mean pool
  const float *deta_d = deta;
  if (m->device == PS_CUDA) {
    PS_TRY(ps_nn_exec_upload(EX, m->f_deta, deta, (size_t)B * sizeof(float)));
    deta_d = m->f_deta;
  }
  float *gy = m->f_ga, *gx = m->f_gb;
  PS_TRY(ps_nn_launch_head_backward_params(EX, D + 1, PG(m->headw), PG(m->headb), deta_d, m->f_pool, B, D));
  PS_TRY(ps_nn_launch_head_backward_tokens(EX, B * M * D, gy, deta_d, PD(m->headw), m->f_mask, M, D));
  ready(m, hook, hctx, m->grp_head);
  ps_nn_mhsa_dims md = {B, M, D, c->heads, c->ff_hidden};
  for (int l = c->fusion_layers - 1; l >= 0; l--) {
    ps_nn_mhsa_params p;
    ps_nn_mhsa_grads g;
    mhsa_params_of(m, l, &p);
    mhsa_grads_of(m, l, &g);
    PS_TRY(ps_nn_exec_zero(EX, gx, (size_t)(B * M * D) * sizeof(float)));
    PS_TRY(ps_nn_mhsa_backward_ex(EX, gx, &g, gy, &m->f_cache[l], m->f_x[l], m->f_mask, &p, &md, m->f_scratch));
    ready(m, hook, hctx, m->grp_fusion[l]);
    float *tmp = gy;
    gy = gx;
    gx = tmp;
  }
  // gy now holds d(tokens): modality embedding and the per-modality embeddings.
  PS_TRY(ps_nn_launch_embedding_backward(EX, M * D, PG(m->emb), gy, m->f_mask, B, M, D));
  ready(m, hook, hctx, m->grp_emb);
  m->t_bwd[PS_MT_FUSION] = mclock(m) - t0;
  if (c->use[PS_NN_CLINICAL]) {
    double t1 = mclock(m);
    const int64_t n = m->n_c, HC = c->clinical_hidden;
    PS_TRY(ps_nn_launch_gather_rows(EX, n * D, m->c_gz, gy, m->c_rows, M, m->tok[PS_NN_CLINICAL], D));
    PS_TRY(ps_nn_exec_zero(EX, m->c_gh, (size_t)(n * HC) * sizeof(float)));
    PS_TRY(ps_nn_linear_backward_ex(EX, m->c_gh, PG(m->c2w), PG(m->c2b), m->c_gz, m->c_h, PD(m->c2w), NULL, NULL, n,
                                    HC, D, PS_NN_ACT_NONE));
    PS_TRY(ps_nn_linear_backward_ex(EX, NULL, PG(m->c1w), PG(m->c1b), m->c_gh, m->c_x, PD(m->c1w), m->c_h, NULL, n,
                                    c->clinical, HC, PS_NN_ACT_RELU));
    ready(m, hook, hctx, m->grp_clin);
    m->t_bwd[PS_MT_CLINICAL] = mclock(m) - t1;
  }
  if (c->use[PS_NN_SLIDE]) {
    PS_TRY(ps_nn_launch_gather_rows(EX, B * D, m->s_gout, gy, NULL, M, m->tok[PS_NN_SLIDE], D));
    PS_TRY(backward_slide(m, hook, hctx));
  }
  if (c->use[PS_NN_OMICS]) {
    double t1 = mclock(m);
    PS_TRY(ps_nn_launch_gather_rows(EX, m->n_o * D, m->o_gz, gy, m->o_rows, M, m->tok[PS_NN_OMICS], D));
    PS_TRY(backward_omics(m, lambda_recon, hook, hctx));
    m->t_bwd[PS_MT_OMICS] = mclock(m) - t1;
  }
  return PS_OK;
}
