// ps_model: the multimodal survival model.
//   omics    (G)          -> AE encoder G -> HA (ReLU, dropout) -> D      [decoder D -> HA -> G, MSE]
//   slide    tiles mode:  (K, 3, S, S) -> 3 x [conv3x3 + BN + ReLU + 2x2 max-pool] -> global avg -> D
//            features mode: (K, F) -> Linear F -> D + ReLU
//            then gated attention pooling over the bag's valid tiles -> D
//   clinical (C)          -> C -> HC (ReLU) -> D
//   fusion: one token per enabled modality (+ learned modality embedding), key-padding mask for
//           missing ones, L post-LN transformer layers (NH heads), mean over present tokens,
//           Linear D -> 1 = eta (log-risk).
// Parameters live in one arena in forward order, so backward finalizes them from the end of
// the arena toward the start (the gradient all-reduce hook relies on this).
//
// Dimension letters: B patients in the (local) batch, K max tiles per bag, NT valid tiles,
// S tile side, G genes, F tile-feature width, C clinical features, D model width,
// HA AE hidden, HC clinical hidden, A attention hidden, M enabled modalities (tokens),
// NH heads, DF feed-forward width.
#ifndef PS_MODEL_H
#define PS_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "ps_layers.h"
#include "ps_param.h"
#include "ps_status.h"

// Token order of the fusion (omics, slide, clinical). Named apart from data/'s ps_modality
// (different order) so that both headers can be included together.
typedef enum { PS_NN_OMICS = 0, PS_NN_SLIDE, PS_NN_CLINICAL, PS_NN_MODALITY_COUNT } ps_nn_modality;
const char *ps_nn_modality_name(ps_nn_modality m);

typedef enum { PS_SLIDE_TILES = 0, PS_SLIDE_FEATURES, PS_SLIDE_MODE_COUNT } ps_slide_mode;
const char *ps_slide_mode_name(ps_slide_mode m);

typedef struct {
  bool use[PS_NN_MODALITY_COUNT]; // which modalities are enabled
  int64_t d;              // D model width (128)
  // omics autoencoder
  int64_t genes;       // G
  int64_t ae_hidden;   // HA (512)
  float ae_dropout;    // after the encoder's hidden layer (0.1)
  float ae_input_noise; // std of Gaussian input noise in training (0 = plain AE)
  // slide
  ps_slide_mode slide_mode;
  int64_t tile_size;   // S (64)
  int64_t max_tiles;   // K (16)
  int64_t cnn_ch[3];   // (32, 64, 128); cnn_ch[2] must equal D
  int cnn_norm_groups; // 0: BatchNorm (SyncBN across ranks); > 0: GroupNorm with this many groups
  int64_t feat_dim;    // F, features mode
  int64_t attn_hidden; // A (64)
  // clinical
  int64_t clinical;       // C (12)
  int64_t clinical_hidden; // HC (64)
  // fusion
  int fusion_layers; // L (1)
  int heads;         // NH (4)
  int64_t ff_hidden; // DF (256)
  float bn_momentum, bn_eps;
  uint64_t seed; // init and dropout/noise keys
} ps_model_config;

// The reference model of docs/model.md: all modalities, G=2000, tiles 16 x 64x64, C=12.
void ps_model_config_default(ps_model_config *cfg);
// Writes "key: value" lines (the resolved config, stored in checkpoints).
int ps_model_config_text(const ps_model_config *cfg, char *buf, size_t len);

// One batch of patients, dense and padded (the loader fills it). Rows of an absent
// modality are never read (they may hold anything, NaN included).
typedef struct {
  int64_t b;                       // B
  const int64_t *patient_id;       // (B) global ids: key dropout/noise independent of rank
  const float *omics;              // (B, G)
  const uint8_t *omics_present;    // (B)
  const float *clinical;           // (B, C)
  const uint8_t *clinical_present; // (B)
  const float *tiles;              // (B, K, 3, S, S) tiles mode
  const float *features;           // (B, K, F) features mode
  const int32_t *tile_count;       // (B) valid tiles per bag, 0 = no slide; first tile_count[b] are valid
  // Flags of patient b are *_present[b * present_stride]; 0 means 1 (contiguous). data/'s loader
  // keeps (B, modalities) interleaved: pass present + its modality index and stride = modality count.
  int64_t present_stride;
} ps_model_batch;

// Per-module timers (seconds, forward/backward) and FLOP counts of the last step.
typedef enum {
  PS_MT_OMICS = 0,
  PS_MT_CONV1,
  PS_MT_CONV2,
  PS_MT_CONV3,
  PS_MT_TILE_HEAD, // avg pool / feature projection + gated attention
  PS_MT_CLINICAL,
  PS_MT_FUSION, // tokens + transformer + pooling + eta head
  PS_MT_COUNT
} ps_model_timer;
const char *ps_model_timer_name(ps_model_timer t);

typedef struct ps_model ps_model;

typedef void (*ps_grad_ready_fn)(void *ctx, int64_t first_final_offset);

// ps_model_create(out, cfg) == ps_model_create_on(out, cfg, PS_CPU). On PS_CUDA the parameter,
// gradient and buffer arenas live on the current device (bind it first); initial values are
// the CPU model's (computed on the host, uploaded).
ps_status ps_model_create(ps_model **out, const ps_model_config *cfg);
ps_status ps_model_create_on(ps_model **out, const ps_model_config *cfg, ps_device dev);
ps_device ps_model_device(const ps_model *m);
void ps_model_destroy(ps_model *m);
const ps_model_config *ps_model_config_of(const ps_model *m);
ps_param_table *ps_model_params(ps_model *m);  // trainable (with gradient arena)
ps_param_table *ps_model_buffers(ps_model *m); // BatchNorm running statistics
// SyncBN: statistics are summed through this reducer (NULL fn: single rank).
void ps_model_set_reducer(ps_model *m, ps_nn_reducer r);
// The reducer over a ps_comm (all-reduce of doubles, sum). Every rank of c must run the
// same forward/backward sequence (a rank without tiles still calls it).
typedef struct ps_comm ps_comm;
ps_nn_reducer ps_nn_reducer_comm(ps_comm *c);
// Plans the activation arena for up to max_b patients with bags of up to cfg.max_tiles. Once.
ps_status ps_model_plan(ps_model *m, int64_t max_b);
size_t ps_model_activation_bytes(const ps_model *m);

// Forward. eta (B) and recon_loss are host pointers on every device, as are the batch arrays
// (gathered on the host into pinned staging and copied once per array on CUDA). recon_loss: mean squared error over present omics rows (0 if none).
// training: batch statistics, dropout, input noise; step keys dropout and noise.
ps_status ps_model_forward(ps_model *m, float *eta, double *recon_loss, const ps_model_batch *in, bool training,
                           int64_t step);
// Next-batch prefetch (CUDA): gathers `in`'s rows on the host into the spare pinned staging
// and queues their copies to the device on the model's own stream, after the work queued so far,
// so they overlap the current step. The next ps_model_forward with the same batch (same
// pointers and b) uses them without waiting on the host; any other batch is gathered and copied
// synchronously as usual (the staging is dropped). The arrays behind `in` must not change until
// that forward. A no-op on the CPU (the forward gathers straight into the activations).
ps_status ps_model_stage(ps_model *m, const ps_model_batch *in);
// Divisor of the reconstruction sum of squares in backward (default: local present rows * G).
// Distributed training passes the global count so that 1 rank == N ranks.
void ps_model_set_recon_norm(ps_model *m, double norm);
// Backward of L = f(eta) + lambda * recon: deta (B) = dL/deta, a host pointer on every device. Accumulates into the gradient
// arena (zero it first with ps_param_zero_grad). hook (may be NULL) is called after each
// layer group's gradients are final with the offset of its first parameter; offsets decrease.
// On CUDA the hook fires when the group's kernels are queued on the default stream, not when
// they have run: a consumer on another stream (NCCL) must order itself after them (an event).
ps_status ps_model_backward(ps_model *m, const float *deta, float lambda_recon, ps_grad_ready_fn hook, void *hook_ctx);

// Conv blocks through the device-style path (whole-batch conv + kernel bodies; the only path on
// CUDA) instead of the fused CPU block. On the CPU this runs the GPU's orchestration and bodies on
// the host executor, with host staging/index/result buffers separate from the "device" activations
// and every host<->device copy done as a memcpy (tests compare it with the default path, so a
// missing copy shows). Set it before ps_model_plan; changing it later drops the plan (plan again).
void ps_model_set_device_block(ps_model *m, bool on);
// CUDA: synchronize the device around each module timer so ps_model_timers reports execution
// times (costs the overlap of host work with the queue). Off: CUDA module times are the launch
// times of asynchronous work (the step total stays right: backward ends with device-to-host
// copies or the optimizer's norm, which wait). No effect on the CPU.
void ps_model_set_timing_sync(ps_model *m, bool on);

// Attention of the last forward: tiles (B, K) per-tile weights (0 past the bag's count);
// modalities (B, M) mean over heads and present queries of the last fusion layer's weights
// (0 for missing modalities). Host pointers on every device (copied down after forward on CUDA),
// valid until the next forward.
const float *ps_model_tile_attention(const ps_model *m);
const float *ps_model_modality_attention(const ps_model *m);
int ps_model_tokens(const ps_model *m); // M

// Timing of the last forward+backward and FLOPs per module (multiply-add = 2).
void ps_model_timers(const ps_model *m, double fwd_s[PS_MT_COUNT], double bwd_s[PS_MT_COUNT],
                     double flops_fwd[PS_MT_COUNT], double flops_bwd[PS_MT_COUNT]);

#endif
