// The model workload (train.workload: model): the multimodal network of nn/,
// the exact distributed Cox loss of survival/, bucketed overlapped gradient
// all-reduce of comm/, and the data loader (through ps_wl_data).
//
// One optimizer step over a window of A = train.accumulation micro-batches:
//   A = 1: forward -> global Cox loss (all-gather of eta) + lambda * recon -> backward with
//          the bucket all-reduce overlapping it -> clip + optimizer.
//   A > 1: pass 1 forwards every micro-batch (dropout keyed by the optimizer step
//          and patient id) to collect eta; the Cox loss and dL/deta are computed
//          over the whole window at once (exact coupling); pass 2 re-runs
//          forward + backward per micro-batch with those dL/deta; the all-reduce
//          overlaps the last micro-batch's backward. Cost: one extra forward.
//          BatchNorm batch statistics are per micro-batch (as with any
//          accumulation); running statistics are restored after pass 1, so
//          only pass 2 updates them. GroupNorm (model.norm_groups) is exact.
//
// On a GPU (plan.device cuda) the parameter, gradient and buffer arenas live
// on the device and the model copies its host inputs in and eta out; the Cox
// loss, SyncBN statistics and status agreement stay on the host communicator
// (MPI, doubles). Gradients: NCCL (plan.grad_backend nccl) all-reduces the
// device gradient arena in buckets on its own communicator and stream,
// overlapped with backward through the same hook as the CPU path; MPI with a
// GPU model downloads the arena into pinned host memory after backward,
// all-reduces it there (the CPU path's deterministic ring, not overlapped) and
// uploads it. The optimizer steps on the device. Timers are read after the
// device has finished the work they measure.
// Letters: b local patients of a micro-batch, W = A * b_max local window capacity,
// P parameter arena floats (incl. padding).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_checkpoint.h"
#include "ps_cox_dist.h"
#include "ps_cuda.h"
#include "ps_metrics.h"
#include "ps_model.h"
#include "ps_optim.h"
#include "ps_train.h"
#include "ps_wl_data.h"
#include "ps_wl_model.h"

typedef struct ps_wl_model ps_wl_model;
struct ps_wl_model {
  const ps_config *cfg;
  ps_run_plan plan;
  ps_comm *comm;
  ps_wl_data *data;
  ps_wl_shape shape;
  ps_model *model;
  ps_optim optim;
  int optim_ok;
  ps_grad_sync *sync;
  ps_comm *gcomm;             // NCCL communicator of the gradient all-reduce (grad_backend nccl), else NULL
  float *grad_host;           // (P) pinned staging of the gradient arena (cuda model + mpi), else NULL
  float *attn_host;           // (eval_b_max * (K + M)) host copies of device attention (eval, cuda)
  ps_cox_dist *cox;
  int64_t spe, total_steps;
  // window of micro-batches (A > 1: copies, since loader buffers live one call)
  int A;
  int64_t bm;                 // b_max
  int64_t *w_index;           // (W)
  double *w_time;             // (W)
  uint8_t *w_event;           // (W)
  int32_t *w_cohort;          // (W)
  float *w_omics;             // (W, Gs)
  uint8_t *w_op, *w_cp;       // (W)
  float *w_clin;              // (W, C)
  float *w_slide;             // (W, K * 3 * S * S) or (W, K * F)
  int32_t *w_ntiles;          // (W)
  int64_t *w_b;               // (A) patients in micro-batch m
  int64_t slide_row;          // floats per patient of w_slide
  float *eta;                 // (eval_b_max or b_max)
  double *eta_d, *grad_d;     // (W)
  float *deta;                // (b_max)
  // validation / prediction gather (global sizes)
  double *v_time, *v_eta;     // (N)
  uint8_t *v_event;           // (N)
  int32_t *v_cohort;          // (N)
  int64_t *v_index;           // (N)
  int64_t *counts;            // (ranks)
  float *bn_saved;            // (buffer total) running statistics before pass 1 (A > 1)
};

static bool uses(const ps_config *cfg, int m) {
  for (int i = 0; i < cfg->data.n_modalities; i++)
    if (cfg->data.modalities[i] == m) return true;
  return false;
}

// Model and optimizer: local work (no collectives), so a failure on one rank
// (e.g. out of device memory) is agreed on before the collective set-up below.
static ps_status build_local(ps_wl_model *w) {
  const ps_config *cfg = w->cfg;
  ps_model_config mc;
  ps_model_config_default(&mc);
  mc.use[PS_NN_OMICS] = uses(cfg, PS_CFG_MOD_OMICS);
  mc.use[PS_NN_SLIDE] = uses(cfg, PS_CFG_MOD_SLIDES);
  mc.use[PS_NN_CLINICAL] = uses(cfg, PS_CFG_MOD_CLINICAL);
  mc.d = cfg->model.embed_dim;
  mc.genes = w->shape.genes > 0 ? w->shape.genes : 1;
  mc.ae_hidden = cfg->model.omics_hidden;
  mc.ae_dropout = (float)cfg->model.omics_dropout;
  mc.ae_input_noise = (float)cfg->model.omics_noise;
  mc.slide_mode = cfg->data.slide_input == PS_CFG_SLIDE_FEATURES ? PS_SLIDE_FEATURES : PS_SLIDE_TILES;
  mc.tile_size = cfg->model.tile_size;
  mc.max_tiles = cfg->data.tiles;
  if (cfg->model.n_cnn_channels != 3 || cfg->model.cnn_channels[2] != cfg->model.embed_dim)
    PS_FAIL(PS_ERR_CONFIG, "model.cnn_channels must list 3 widths and end with model.embed_dim = %d",
            cfg->model.embed_dim);
  for (int i = 0; i < 3; i++) mc.cnn_ch[i] = cfg->model.cnn_channels[i];
  mc.cnn_norm_groups = cfg->model.norm_groups;
  mc.feat_dim = cfg->model.feature_dim;
  mc.attn_hidden = cfg->model.attn_hidden;
  mc.clinical = w->shape.clinical > 0 ? w->shape.clinical : 1;
  mc.clinical_hidden = cfg->model.clinical_hidden;
  mc.fusion_layers = cfg->model.fusion_layers;
  mc.heads = cfg->model.fusion_heads;
  mc.seed = (uint64_t)cfg->train.seed;
  PS_TRY(ps_model_create_on(&w->model, &mc, w->plan.device));
  ps_model_set_reducer(w->model, ps_nn_reducer_comm(w->comm)); // SyncBN sums (no-op reducer on 1 rank)
  int64_t plan_b = w->shape.b_max > w->shape.eval_b_max ? w->shape.b_max : w->shape.eval_b_max;
  PS_TRY(ps_model_plan(w->model, plan_b));

  ps_optim_config oc;
  ps_optim_config_default(&oc);
  oc.kind = cfg->optim.name == PS_CFG_OPTIM_SGD ? PS_OPTIM_SGD : PS_OPTIM_ADAMW;
  oc.lr = (float)cfg->optim.lr;
  oc.beta1 = (float)cfg->optim.beta1;
  oc.beta2 = (float)cfg->optim.beta2;
  oc.eps = (float)cfg->optim.eps;
  oc.weight_decay = (float)cfg->optim.weight_decay;
  oc.momentum = (float)cfg->optim.momentum;
  oc.nesterov = cfg->optim.nesterov;
  oc.schedule = cfg->optim.schedule == PS_CFG_SCHED_COSINE ? PS_LR_WARMUP_COSINE : PS_LR_CONSTANT;
  oc.warmup_steps = cfg->optim.warmup_steps;
  oc.total_steps = w->total_steps;
  oc.min_lr_ratio = cfg->optim.lr > 0 ? (float)(cfg->optim.min_lr / cfg->optim.lr) : 0.f;
  oc.clip_norm = (float)cfg->train.clip_norm;
  ps_param_table *pt = ps_model_params(w->model);
  PS_TRY(ps_optim_create(&w->optim, &oc, pt));
  w->optim_ok = 1;
  if (w->plan.device == PS_CUDA && w->plan.grad_backend == PS_COMM_MPI) // gradients staged through the host
    PS_TRY(ps_cuda_host_alloc((void **)&w->grad_host, sizeof(float) * (size_t)(pt->total > 0 ? pt->total : 1)));
  return PS_OK;
}

static ps_status build_model(ps_wl_model *w) {
  const ps_config *cfg = w->cfg;
  PS_TRY(ps_train_agree(w->comm, build_local(w)));
  ps_param_table *pt = ps_model_params(w->model);
  const int64_t bucket_bytes = (int64_t)(cfg->comm.bucket_mb * 1048576.0);
  if (w->plan.device == PS_CUDA && w->plan.grad_backend == PS_COMM_NCCL) {
    // Its own communicator (bootstrapped over the MPI one, same ranks and GPU): the host one stays MPI.
    ps_comm_options go = {PS_COMM_NCCL, PS_CUDA, cfg->train.threads};
    PS_TRY(ps_comm_init(&w->gcomm, NULL, NULL, &go));
    PS_TRY(ps_grad_sync_create(&w->sync, w->gcomm, pt->grad, pt->total, bucket_bytes));
  } else if (w->grad_host) {
    PS_TRY(ps_grad_sync_create(&w->sync, w->comm, w->grad_host, pt->total, bucket_bytes));
  } else {
    PS_TRY(ps_grad_sync_create(&w->sync, w->comm, pt->grad, pt->total, bucket_bytes));
  }
  int64_t global_cap = (int64_t)cfg->train.global_batch;
  if (w->shape.n_total > global_cap) global_cap = w->shape.n_total;
  PS_TRY(ps_cox_dist_create(&w->cox, w->comm, global_cap));
  ps_param_table *bt = ps_model_buffers(w->model);
  if (w->A > 1 && bt && bt->total > 0) {
    w->bn_saved = calloc((size_t)bt->total, sizeof(float));
    if (!w->bn_saved) PS_FAIL(PS_ERR_MEM, "copy of %lld BatchNorm statistics", (long long)bt->total);
  }
  return PS_OK;
}

#define ALLOC(p, n)                                                                                \
  do {                                                                                             \
    (p) = calloc((size_t)((n) > 0 ? (n) : 1), sizeof *(p));                                        \
    if (!(p)) PS_FAIL(PS_ERR_MEM, "model workload buffer " #p);                                    \
  } while (0)

static ps_status alloc_buffers(ps_wl_model *w) {
  const ps_wl_shape *s = &w->shape;
  int64_t W = (int64_t)w->A * w->bm, N = s->n_total, E = s->eval_b_max > w->bm ? s->eval_b_max : w->bm;
  w->slide_row = s->slides == 1 ? s->max_tiles * 3 * s->tile_size * s->tile_size
                                : (s->slides == 2 ? s->max_tiles * s->feat_dim : 0);
  ALLOC(w->w_b, w->A);
  ALLOC(w->eta, E);
  ALLOC(w->eta_d, W > E ? W : E);
  ALLOC(w->grad_d, W);
  ALLOC(w->deta, w->bm);
  ALLOC(w->v_time, N);
  ALLOC(w->v_eta, N);
  ALLOC(w->v_event, N);
  ALLOC(w->v_cohort, N);
  ALLOC(w->v_index, N);
  ALLOC(w->counts, ps_comm_size(w->comm));
  ALLOC(w->w_index, W);
  ALLOC(w->w_time, W);
  ALLOC(w->w_event, W);
  ALLOC(w->w_cohort, W);
  if (w->A > 1) { // pass 2 needs the inputs again
    ALLOC(w->w_omics, W * s->genes);
    ALLOC(w->w_op, W);
    ALLOC(w->w_cp, W);
    ALLOC(w->w_clin, W * s->clinical);
    ALLOC(w->w_slide, W * w->slide_row);
    ALLOC(w->w_ntiles, W);
  }
  return PS_OK;
}

static ps_model_batch model_batch(const ps_wl_batch *b) {
  ps_model_batch mb = {b->b, b->index, b->omics, b->omics_present, b->clinical, b->clinical_present,
                       b->tiles, b->features, b->n_tiles, 1}; // presence flags are contiguous (ps_wl_data)
  return mb;
}

// Copies micro-batch m into the window (A > 1) and records its patient table.
static void keep_micro(ps_wl_model *w, int m, const ps_wl_batch *b) {
  int64_t o = (int64_t)m * w->bm, n = b->b;
  w->w_b[m] = n;
  memcpy(w->w_index + o, b->index, sizeof(int64_t) * (size_t)n);
  memcpy(w->w_time + o, b->time, sizeof(double) * (size_t)n);
  memcpy(w->w_event + o, b->event, (size_t)n);
  memcpy(w->w_cohort + o, b->cohort, sizeof(int32_t) * (size_t)n);
  if (w->A == 1) return;
  const ps_wl_shape *s = &w->shape;
  memcpy(w->w_omics + o * s->genes, b->omics, sizeof(float) * (size_t)(n * s->genes));
  memcpy(w->w_op + o, b->omics_present, (size_t)n);
  memcpy(w->w_cp + o, b->clinical_present, (size_t)n);
  memcpy(w->w_clin + o * s->clinical, b->clinical, sizeof(float) * (size_t)(n * s->clinical));
  const float *src = b->tiles ? b->tiles : b->features;
  if (src && w->slide_row) memcpy(w->w_slide + o * w->slide_row, src, sizeof(float) * (size_t)(n * w->slide_row));
  memcpy(w->w_ntiles + o, b->n_tiles, sizeof(int32_t) * (size_t)n);
}

static ps_wl_batch window_micro(const ps_wl_model *w, int m) {
  int64_t o = (int64_t)m * w->bm;
  const ps_wl_shape *s = &w->shape;
  ps_wl_batch b = {0};
  b.b = w->w_b[m];
  b.index = w->w_index + o;
  b.time = w->w_time + o;
  b.event = w->w_event + o;
  b.cohort = w->w_cohort + o;
  b.omics = w->w_omics + o * s->genes;
  b.omics_present = w->w_op + o;
  b.clinical = w->w_clin + o * s->clinical;
  b.clinical_present = w->w_cp + o;
  if (s->slides == 1) b.tiles = w->w_slide + o * w->slide_row;
  if (s->slides == 2) b.features = w->w_slide + o * w->slide_row;
  b.n_tiles = w->w_ntiles + o;
  return b;
}

typedef struct {
  ps_grad_sync *sync;
  ps_status s;
} hook_ctx;

static void grad_hook(void *ctx, int64_t first_final) {
  hook_ctx *h = ctx;
  if (h->s == PS_OK) h->s = ps_grad_sync_ready(h->sync, first_final);
}

static ps_status wl_step(void *vw, const ps_train_state *ts, ps_step_stats *out) {
  ps_wl_model *w = vw;
  const ps_config *cfg = w->cfg;
  const int A = w->A;
  const int64_t G = w->shape.genes;
  double t0 = ps_train_now_s(), io = 0;
  if (ts->step_in_epoch == 0) PS_TRY(ps_wl_data_train_begin(w->data, ts->epoch, 0));
  const bool gpu = w->plan.device == PS_CUDA;
  ps_param_table *pt = ps_model_params(w->model);
  PS_TRY(ps_param_zero_grad(pt));
  // BatchNorm running statistics are updated by the second pass only: keep them across pass 1.
  ps_param_table *bt = ps_model_buffers(w->model);
  if (w->bn_saved) PS_TRY(ps_param_table_download(bt, w->bn_saved, false));
  // Pass 1 (A > 1) or the only forward (A = 1): eta of every micro-batch of the window.
  ps_wl_batch cur = {0};
  int64_t present_local = 0, window_n = 0;
  double sse_local = 0;
  for (int m = 0; m < A; m++) {
    double ti = ps_train_now_s();
    PS_TRY(ps_wl_data_train_next(w->data, &cur));
    io += ps_train_now_s() - ti;
    keep_micro(w, m, &cur);
    for (int64_t i = 0; i < cur.b; i++) present_local += cur.omics_present[i] != 0;
    double recon = 0;
    ps_model_batch mb = model_batch(&cur);
    PS_TRY(ps_train_agree(w->comm, ps_model_forward(w->model, w->eta, &recon, &mb, true, ts->step)));
    int64_t np = 0;
    for (int64_t i = 0; i < cur.b; i++) np += cur.omics_present[i] != 0;
    sse_local += recon * (double)np * (double)G;
    for (int64_t i = 0; i < cur.b; i++) w->eta_d[window_n + i] = w->eta[i];
    window_n += cur.b;
  }
  if (w->bn_saved) PS_TRY(ps_param_table_upload(bt, w->bn_saved));
  // Cox loss over the global window: contiguous local arrays (time/event/cohort/index).
  double *lt = w->v_time, *leta = w->eta_d;
  uint8_t *le = w->v_event;
  int32_t *lc = w->v_cohort;
  int64_t *li = w->v_index, k = 0;
  for (int m = 0; m < A; m++)
    for (int64_t i = 0; i < w->w_b[m]; i++, k++) {
      int64_t o = (int64_t)m * w->bm + i;
      lt[k] = w->w_time[o];
      le[k] = w->w_event[o];
      lc[k] = w->w_cohort[o];
      li[k] = w->w_index[o];
    }
  ps_cox_batch cb = {window_n, lt, le, cfg->loss.strata == PS_CFG_STRATA_COHORT ? lc : NULL, li};
  ps_cox_result cr;
  double tc0 = ps_train_now_s();
  PS_TRY(ps_cox_dist_loss(w->cox, &cb, leta, cfg->loss.ties == PS_CFG_TIES_BRESLOW ? PS_COX_BRESLOW : PS_COX_EFRON, &cr,
                          w->grad_d));
  double red[2] = {sse_local, (double)present_local};
  PS_TRY(ps_comm_allreduce(w->comm, PS_IN_PLACE, red, 2, PS_F64, PS_OP_SUM));
  double comm_s = ps_train_now_s() - tc0;
  double recon = red[1] > 0 ? red[0] / (red[1] * (double)G) : 0;
  ps_model_set_recon_norm(w->model, red[1] > 0 ? red[1] * (double)G : 1.0);
  // Backward (A > 1: pass 2 re-forwards each micro-batch first). The hook starts
  // bucket all-reduces while backward runs, except when a GPU model's gradients
  // go through host memory (they are staged after backward).
  const bool staged = w->grad_host != NULL;
  hook_ctx h = {w->sync, PS_OK};
  int64_t off = 0;
  for (int m = 0; m < A; m++) {
    ps_wl_batch b = A > 1 ? window_micro(w, m) : cur;
    if (A > 1) {
      double r2 = 0;
      ps_model_batch mb = model_batch(&b);
      PS_TRY(ps_train_agree(w->comm, ps_model_forward(w->model, w->eta, &r2, &mb, true, ts->step)));
    }
    for (int64_t i = 0; i < b.b; i++) w->deta[i] = (float)w->grad_d[off + i];
    off += b.b;
    bool last = m == A - 1;
    if (last && !staged) PS_TRY(ps_grad_sync_begin(w->sync));
    bool hooked = last && !staged;
    ps_status bs = ps_model_backward(w->model, w->deta, (float)cfg->loss.lambda_recon, hooked ? grad_hook : NULL,
                                     hooked ? &h : NULL);
    if (bs != PS_OK && hooked) {
      ps_grad_sync_timing dummy;
      ps_grad_sync_finish(w->sync, &dummy); // let started buckets complete before agreeing
    }
    PS_TRY(ps_train_agree(w->comm, bs));
  }
  PS_TRY(ps_train_agree(w->comm, h.s));
  // Backward's kernels are compute: wait for them (the compute stream only, not
  // NCCL's) so that the time blocked in finish() is communication alone.
  if (gpu) PS_TRY(ps_cuda_stream_synchronize(NULL));
  ps_grad_sync_timing gt;
  double stage_s = 0;
  if (staged) { // device -> pinned host, ring all-reduce on the host, host -> device
    double ts0 = ps_train_now_s();
    PS_TRY(ps_train_agree(w->comm, ps_param_table_download(pt, w->grad_host, true))); // before the ring's first message
    PS_TRY(ps_grad_sync_begin(w->sync));
    ps_status fs = ps_grad_sync_finish(w->sync, &gt);
    if (fs == PS_OK) fs = ps_cuda_copy_h2d(pt->grad, w->grad_host, sizeof(float) * (size_t)pt->total);
    PS_TRY(ps_train_agree(w->comm, fs));
    stage_s = ps_train_now_s() - ts0 - gt.comm_wait_s; // copies; the all-reduce itself is in comm_wait_s
  } else {
    PS_TRY(ps_grad_sync_finish(w->sync, &gt));
  }
  double gn = 0;
  float lr = ps_optim_lr(&w->optim.cfg, w->optim.step);
  PS_TRY(ps_optim_step(&w->optim, pt->data, pt->grad, &gn));
  if (gpu) PS_TRY(ps_cuda_synchronize()); // the optimizer's kernels belong to this step's time
  out->cox = cr.loss;
  out->recon = recon;
  out->loss = cr.loss + cfg->loss.lambda_recon * recon;
  out->lr = lr;
  out->grad_norm = gn;
  out->io_s = io;
  out->comm_s = comm_s + gt.comm_wait_s + stage_s;
  out->compute_s = ps_train_now_s() - t0 - out->io_s - out->comm_s;
  out->patients = cfg->train.global_batch;
  return PS_OK;
}

// Attention of the last forward as host arrays (a GPU model's live on the device):
// tiles (b, K), modalities (b, M), copied into attn_host (allocated at the first call).
static ps_status host_attention(ps_wl_model *w, int64_t b, const float **tiles, const float **mods) {
  const int64_t K = w->shape.max_tiles > 0 ? w->shape.max_tiles : 1, M = ps_model_tokens(w->model);
  const int64_t E = w->shape.eval_b_max > w->bm ? w->shape.eval_b_max : w->bm;
  if (!w->attn_host) {
    w->attn_host = calloc((size_t)(E * (K + M) + 1), sizeof(float));
    if (!w->attn_host) PS_FAIL(PS_ERR_MEM, "host copy of %lld x %lld attention weights", (long long)E, (long long)(K + M));
  }
  PS_REQUIRE(b <= E, "attention of %lld patients > planned %lld", (long long)b, (long long)E);
  float *th = w->attn_host, *mh = w->attn_host + E * K;
  if (*tiles && ps_cuda_is_device_pointer(*tiles)) {
    PS_TRY(ps_cuda_copy_d2h(th, *tiles, sizeof(float) * (size_t)(b * K)));
    *tiles = th;
  }
  if (*mods && ps_cuda_is_device_pointer(*mods)) {
    PS_TRY(ps_cuda_copy_d2h(mh, *mods, sizeof(float) * (size_t)(b * M)));
    *mods = mh;
  }
  return PS_OK;
}

// Forward over one split; every rank ends with the whole split's (time, event,
// cohort, index, eta) in v_* (rank order) and returns its size.
static ps_status predict_part(ps_wl_model *w, ps_wl_part part, int64_t step, int64_t *n_out,
                              ps_wl_predict_fn each, void *each_ctx) {
  PS_TRY(ps_wl_data_eval_begin(w->data, part));
  int64_t n = 0;
  for (;;) {
    ps_wl_batch b;
    int end = 0;
    PS_TRY(ps_wl_data_eval_next(w->data, &b, &end));
    int32_t any = !end;
    // The sequential loader gives every rank the same number of batches; guard anyway.
    PS_TRY(ps_comm_allreduce(w->comm, PS_IN_PLACE, &any, 1, PS_I32, PS_OP_MAX));
    if (!any) break;
    double recon = 0;
    if (!end) {
      ps_model_batch mb = model_batch(&b);
      PS_TRY(ps_train_agree(w->comm, ps_model_forward(w->model, w->eta, &recon, &mb, false, step)));
      if (each) {
        const float *ta = ps_model_tile_attention(w->model), *ma = ps_model_modality_attention(w->model);
        if (w->plan.device == PS_CUDA) PS_TRY(host_attention(w, b.b, &ta, &ma));
        each(each_ctx, &b, w->eta, ta, ma, ps_model_tokens(w->model));
      }
      for (int64_t i = 0; i < b.b; i++, n++) {
        w->v_time[n] = b.time[i];
        w->v_event[n] = b.event[i];
        w->v_cohort[n] = b.cohort[i];
        w->v_index[n] = b.index[i];
        w->v_eta[n] = w->eta[i];
      }
    } else {
      // keep SyncBN-free eval collectives aligned: eval forward has none, nothing to do
    }
  }
  // all-gather-v into the same arrays (in place: copy local block out first)
  const int R = ps_comm_size(w->comm);
  int64_t mine = n;
  PS_TRY(ps_comm_allgather(w->comm, &mine, w->counts, 1, PS_I64));
  int64_t total = 0;
  for (int r = 0; r < R; r++) total += w->counts[r];
  if (total > w->shape.n_total) PS_FAIL(PS_ERR_INTERNAL, "gathered %lld patients > %lld", (long long)total, (long long)w->shape.n_total);
  double *tmp = malloc(sizeof(double) * (size_t)(mine > 0 ? mine : 1) * 2);
  int64_t *tmpi = malloc(sizeof(int64_t) * (size_t)(mine > 0 ? mine : 1));
  uint8_t *tmpe = malloc((size_t)(mine > 0 ? mine : 1));
  int32_t *tmpc = malloc(sizeof(int32_t) * (size_t)(mine > 0 ? mine : 1));
  if (!tmp || !tmpi || !tmpe || !tmpc) {
    free(tmp), free(tmpi), free(tmpe), free(tmpc);
    PS_FAIL(PS_ERR_MEM, "prediction gather");
  }
  memcpy(tmp, w->v_time, sizeof(double) * (size_t)mine);
  memcpy(tmp + mine, w->v_eta, sizeof(double) * (size_t)mine);
  memcpy(tmpi, w->v_index, sizeof(int64_t) * (size_t)mine);
  memcpy(tmpe, w->v_event, (size_t)mine);
  memcpy(tmpc, w->v_cohort, sizeof(int32_t) * (size_t)mine);
  ps_status s = ps_comm_allgatherv(w->comm, tmp, mine, w->v_time, w->counts, PS_F64);
  if (s == PS_OK) s = ps_comm_allgatherv(w->comm, tmp + mine, mine, w->v_eta, w->counts, PS_F64);
  if (s == PS_OK) s = ps_comm_allgatherv(w->comm, tmpi, mine, w->v_index, w->counts, PS_I64);
  if (s == PS_OK) s = ps_comm_allgatherv(w->comm, tmpe, mine, w->v_event, w->counts, PS_U8);
  if (s == PS_OK) s = ps_comm_allgatherv(w->comm, tmpc, mine, w->v_cohort, w->counts, PS_I32);
  free(tmp), free(tmpi), free(tmpe), free(tmpc);
  *n_out = total;
  return s;
}

static ps_status wl_validate(void *vw, const ps_train_state *ts, double *val_c) {
  ps_wl_model *w = vw;
  *val_c = NAN;
  if (w->shape.n_val == 0) return PS_OK;
  int64_t n = 0;
  PS_TRY(predict_part(w, PS_WL_VAL, ts->step, &n, NULL, NULL));
  ps_cindex ci;
  PS_TRY(ps_cindex_compute(PS_CINDEX_HARRELL, n, w->v_time, w->v_event, w->v_eta, NULL, 0, &ci));
  *val_c = ci.c;
  return PS_OK;
}

// Doubles kept exactly in float blobs: hi + lo.
static void split_double(double x, float *hi, float *lo) {
  *hi = (float)x;
  *lo = isfinite(x) ? (float)(x - (double)*hi) : 0.f;
}

static ps_status wl_save(void *vw, const ps_train_state *ts, const char *config_text, const char *path) {
  ps_wl_model *w = vw;
  PS_TRY(ps_wl_data_quiesce(w->data)); // HDF5 is not thread-safe: no prefetch during the write
  float st[8];
  split_double(ts->best_val_c, &st[0], &st[1]);
  split_double(ts->last_val_c, &st[2], &st[3]);
  st[4] = (float)ts->best_epoch;
  st[5] = (float)ts->bad_epochs;
  st[6] = (float)ts->step_in_epoch;
  st[7] = 0;
  int64_t nb = ps_wl_data_norm_blob_len(w->data);
  float *norm = malloc(sizeof(float) * (size_t)nb);
  if (!norm) PS_FAIL(PS_ERR_MEM, "normalization blob");
  ps_status s = ps_wl_data_norm_blob(w->data, norm, nb);
  ps_ckpt_blob blobs[2] = {{"launch_state", st, 8}, {"normalization", norm, nb}};
  ps_ckpt_state cs = {ts->step, ts->epoch, (uint64_t)w->cfg->train.seed, ts->step_in_epoch};
  if (s == PS_OK) s = ps_checkpoint_write(path, w->model, &w->optim, &cs, blobs, 2, config_text);
  free(norm);
  return s;
}

static ps_status wl_load(void *vw, ps_train_state *ts, const char *path) {
  ps_wl_model *w = vw;
  PS_TRY(ps_wl_data_quiesce(w->data));
  ps_ckpt_state cs;
  PS_TRY(ps_checkpoint_read(path, w->model, &w->optim, &cs));
  float st[8];
  PS_TRY(ps_checkpoint_read_blob(path, "launch_state", st, 8));
  ts->step = cs.step;
  ts->epoch = cs.epoch;
  ts->step_in_epoch = cs.loader_position;
  ts->best_val_c = (double)st[0] + (double)st[1];
  ts->last_val_c = (double)st[2] + (double)st[3];
  ts->best_epoch = (int64_t)st[4];
  ts->bad_epochs = (int64_t)st[5];
  // Position the loader inside the epoch (the next step continues from here).
  if (ts->step_in_epoch > 0) PS_TRY(ps_wl_data_train_begin(w->data, ts->epoch, ts->step_in_epoch));
  return PS_OK;
}

static ps_status wl_verify(const char *path, void *vw) {
  ps_wl_model *w = vw;
  if (w) PS_TRY(ps_wl_data_quiesce(w->data));
  uint32_t crc;
  return ps_checkpoint_verify(path, &crc);
}

static uint32_t wl_crc(void *vw) {
  ps_wl_model *w = vw;
  return ps_checkpoint_param_crc(ps_model_params(w->model));
}

static int64_t wl_spe(void *vw) { return ((ps_wl_model *)vw)->spe; }

void ps_wl_model_destroy(void *vw) {
  ps_wl_model *w = vw;
  if (!w) return;
  if (w->cox) ps_cox_dist_destroy(w->cox);
  if (w->sync) ps_grad_sync_destroy(w->sync);
  if (w->gcomm) ps_comm_finalize(w->gcomm); // before the host communicator (which finalizes MPI)
  ps_cuda_host_free(w->grad_host);
  if (w->optim_ok) ps_optim_free(&w->optim);
  if (w->model) ps_model_destroy(w->model);
  if (w->data) ps_wl_data_close(w->data);
  void *bufs[] = {w->w_b, w->eta, w->eta_d, w->grad_d, w->deta, w->v_time, w->v_eta, w->v_event, w->v_cohort,
                  w->v_index, w->counts, w->w_index, w->w_time, w->w_event, w->w_cohort, w->w_omics, w->w_op,
                  w->w_cp, w->w_clin, w->w_slide, w->w_ntiles, w->bn_saved, w->attn_host};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  free(w);
}

static void wl_card(void *vw, FILE *f) {
  ps_wl_model *w = vw;
  const ps_wl_shape *s = &w->shape;
  fprintf(f, "- patients: %lld (train %lld, validation %lld, test %lld; patient-level split, no patient in two splits)\n",
          (long long)s->n_total, (long long)s->n_train, (long long)s->n_val, (long long)s->n_test);
  fprintf(f, "- cohorts (%d):", s->n_cohorts);
  for (int c = 0; c < s->n_cohorts; c++) fprintf(f, " %.64s", ps_wl_data_cohort_name(w->data, c));
  fprintf(f, "\n- inputs: %lld genes (top-variance on the training split), %lld clinical columns, slides as %s\n",
          (long long)s->genes, (long long)s->clinical, s->slides == 1 ? "tiles" : s->slides == 2 ? "features" : "none");
  fprintf(f, "- normalization statistics from the training split only\n");
}

static const ps_workload_ops model_ops = {
    "model", wl_spe, wl_step, wl_validate, wl_save, wl_load, wl_verify, wl_crc, ps_wl_model_destroy, wl_card,
};

ps_status ps_wl_model_create(void **out, const ps_workload_ops **ops, const ps_config *cfg, const ps_run_plan *plan,
                             ps_comm *comm) {
  *out = NULL;
  ps_wl_model *w = calloc(1, sizeof *w);
  if (!w) PS_FAIL(PS_ERR_MEM, "model workload");
  w->cfg = cfg;
  w->comm = comm;
  w->A = cfg->train.accumulation;
  w->plan = *plan;
  ps_status s = PS_OK;
  s = ps_wl_data_open(&w->data, cfg, comm, &w->shape);
  if (s == PS_OK) {
    w->bm = w->shape.b_max;
    w->spe = ps_wl_data_steps_per_epoch(w->data);
    if (w->spe < 1)
      s = ps_error_set(PS_ERR_CONFIG, __FILE__, __LINE__, "train.global_batch = %d leaves no full step in the "
                       "training split (%lld patients)", cfg->train.global_batch, (long long)w->shape.n_train);
    // The schedule spans train.epochs; train.max_steps only stops early, so a
    // run cut by max_steps and resumed follows the same learning rates.
    w->total_steps = (int64_t)cfg->train.epochs * w->spe;
  }
  if (s == PS_OK) s = alloc_buffers(w);
  if (s == PS_OK) s = build_model(w);
  if (s != PS_OK) {
    ps_wl_model_destroy(w);
    return s;
  }
  *out = w;
  *ops = &model_ops;
  return PS_OK;
}

const ps_wl_shape *ps_wl_model_shape(const void *vw) { return &((const ps_wl_model *)vw)->shape; }
ps_wl_data *ps_wl_model_data(void *vw) { return ((ps_wl_model *)vw)->data; }

ps_status ps_wl_model_load_params(void *vw, const char *path) {
  ps_wl_model *w = vw;
  ps_ckpt_state cs;
  PS_TRY(ps_checkpoint_read(path, w->model, NULL, &cs));
  // The model's own normalization (fitted on its training split), not one refitted on this file.
  int64_t nb = ps_wl_data_norm_blob_len(w->data);
  float *norm = malloc(sizeof(float) * (size_t)nb);
  if (!norm) PS_FAIL(PS_ERR_MEM, "normalization blob");
  ps_status s = ps_checkpoint_read_blob(path, "normalization", norm, nb);
  if (s != PS_OK) ps_error_wrap(s, "%s: normalization statistics (other genes or clinical columns than %s?)", path,
                                w->cfg->data.path);
  else s = ps_wl_data_use_norm(w->data, norm, nb, path);
  free(norm);
  return s;
}

ps_status ps_wl_model_predict(void *vw, ps_wl_part part, ps_wl_predict_fn each, void *ctx, int64_t *n,
                              const double **time, const uint8_t **event, const int32_t **cohort,
                              const int64_t **index, const double **eta) {
  ps_wl_model *w = vw;
  PS_TRY(predict_part(w, part, 0, n, each, ctx));
  *time = w->v_time;
  *event = w->v_event;
  *cohort = w->v_cohort;
  *index = w->v_index;
  *eta = w->v_eta;
  return PS_OK;
}
