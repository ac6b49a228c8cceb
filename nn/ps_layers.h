// ps_layers: the model's layers as forward/backward pairs on plain float
// buffers (llm.c style). Outputs first, then inputs, then sizes. Backward
// ACCUMULATES (+=) into parameter gradients and input gradients; a NULL
// gradient pointer means "not needed". Scratch comes from the caller (planned
// once per (batch, bag) in the activation arena): nothing here allocates.
// GEMMs go through OpenBLAS; loops over tiles use OpenMP.
//
// Dimension letters: N rows, Din/Dout features, C/OC channels, H/W spatial,
// HW = H*W, B bags (patients), NT tiles over all bags, A attention hidden,
// T tokens per item, NH heads, DH = D/NH head width, DF feed-forward width.
#ifndef PS_LAYERS_H
#define PS_LAYERS_H

#include <stdbool.h>
#include <stdint.h>

#include "ps_nn_exec.h"
#include "ps_status.h"

typedef enum { PS_NN_ACT_NONE = 0, PS_NN_ACT_RELU, PS_NN_ACT_GELU, PS_NN_ACT_TANH, PS_NN_ACT_SIGMOID, PS_NN_ACT_COUNT } ps_nn_act;
const char *ps_nn_act_name(ps_nn_act a);

// SyncBN hook: sums buf (n doubles) in place across the ranks sharing a batch.
// NULL reducer: single rank.
typedef ps_status (*ps_nn_allreduce_fn)(void *ctx, double *buf, int64_t n);
typedef struct {
  ps_nn_allreduce_fn fn;
  void *ctx;
} ps_nn_reducer;

// ---- Linear (+ fused bias and activation) -------------------------------------
// Thin layers over tensor's ops (ps_linear_*, ps_layernorm_*, ps_dropout_*): the GEMMs are split over
// the OpenMP threads and dispatch on device there; nn adds only the in-place activation pass.
// out (N, Dout) = act(in (N, Din) · w^T + b); w (Dout, Din), b (Dout) or NULL.
// pre (N, Dout) receives the pre-activation when act is GELU (needed by backward), else may be NULL.
ps_status ps_nn_linear_forward(float *out, float *pre, const float *in, const float *w, const float *b, int64_t n,
                               int64_t din, int64_t dout, ps_nn_act act);
// dout is consumed: overwritten in place with the pre-activation gradient.
// Gradients accumulate (+=); a NULL gradient is not computed.
ps_status ps_nn_linear_backward(float *din, float *dw, float *db, float *dout, const float *in, const float *w,
                                const float *out, const float *pre, int64_t n, int64_t din_, int64_t dout_,
                                ps_nn_act act);
// The same on the executor's device (every pointer there); the plain form is the host executor.
ps_status ps_nn_linear_forward_ex(const ps_nn_exec *ex, float *out, float *pre, const float *in, const float *w,
                                  const float *b, int64_t n, int64_t din, int64_t dout, ps_nn_act act);
ps_status ps_nn_linear_backward_ex(const ps_nn_exec *ex, float *din, float *dw, float *db, float *dout,
                                   const float *in, const float *w, const float *out, const float *pre, int64_t n,
                                   int64_t din_, int64_t dout_, ps_nn_act act);
// In-place activation and its backward (dx = dy * act'(.) in place on dy).
void ps_nn_act_forward(float *x, float *pre, int64_t n, ps_nn_act act);
void ps_nn_act_backward(float *dy, const float *out, const float *pre, int64_t n, ps_nn_act act);

// ---- BatchNorm over (N, C, HW) per channel (HW = 1: BatchNorm1d) -----------------
typedef struct {
  float eps, momentum; // PyTorch conventions (1e-5, 0.1)
  bool training;
  ps_nn_reducer reducer; // SyncBN: statistics are summed across ranks
  int groups;            // conv block only: 0 = BatchNorm; > 0 = GroupNorm with this many channel
                         // groups (per-tile statistics: no communication, no running statistics)
} ps_nn_bn_opts;
// out = gamma * (in - mean) * rstd + beta. mean, rstd (C) saved for backward.
// stats: scratch of 2*C+1 doubles. running_* (C) updated in training.
ps_status ps_nn_batchnorm_forward(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                                  const float *beta, float *running_mean, float *running_var, int64_t n, int64_t c,
                                  int64_t hw, const ps_nn_bn_opts *o, double *stats);
// stats: scratch of 2*C doubles.
ps_status ps_nn_batchnorm_backward(float *din, float *dgamma, float *dbeta, const float *dout, const float *in,
                                   const float *mean, const float *rstd, const float *gamma, int64_t n, int64_t c,
                                   int64_t hw, const ps_nn_bn_opts *o, double *stats);
// Batch statistics -> mean, rstd (with the reducer), running update. stats: (2C+1) doubles holding local
// sum (C), sumsq (C), count on entry.
ps_status ps_nn_bn_finish_stats(float *mean, float *rstd, float *running_mean, float *running_var, int64_t c,
                                const ps_nn_bn_opts *o, double *stats);

// ---- LayerNorm over the last dim of (N, D) ----------------------------------------
ps_status ps_nn_layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                                  const float *beta, int64_t n, int64_t d, float eps);
ps_status ps_nn_layernorm_backward(float *din, float *dgamma, float *dbeta, const float *dout, const float *in,
                                   const float *mean, const float *rstd, const float *gamma, int64_t n, int64_t d);

ps_status ps_nn_layernorm_forward_ex(const ps_nn_exec *ex, float *out, float *mean, float *rstd, const float *in,
                                     const float *gamma, const float *beta, int64_t n, int64_t d, float eps);
ps_status ps_nn_layernorm_backward_ex(const ps_nn_exec *ex, float *din, float *dgamma, float *dbeta,
                                      const float *dout, const float *in, const float *mean, const float *rstd,
                                      const float *gamma, int64_t n, int64_t d);

// ---- Dropout (inverted) over rows of (N, D) -----------------------------------------
// Element j of row r is kept iff ps_rng_uniform(ps_rng_make(seed, row_streams[r]), j) >= p,
// so a row's mask depends only on its stream key, never on rank or thread.
ps_status ps_nn_dropout_forward(float *out, uint8_t *mask, const float *in, float p, uint64_t seed,
                                const uint64_t *row_streams, int64_t n, int64_t d);
ps_status ps_nn_dropout_backward(float *din, const float *dout, const uint8_t *mask, float p, int64_t n, int64_t d);
// row_streams stays a host array on every device (tensor's op uploads it).
ps_status ps_nn_dropout_forward_ex(const ps_nn_exec *ex, float *out, uint8_t *mask, const float *in, float p,
                                   uint64_t seed, const uint64_t *row_streams, int64_t n, int64_t d);
ps_status ps_nn_dropout_backward_ex(const ps_nn_exec *ex, float *din, const float *dout, const uint8_t *mask, float p,
                                    int64_t n, int64_t d);

// ---- MaxPool2d (k x k, stride k, no padding) and global average pool -------------------
// argmax (N, C, OH, OW) u8: winner's position within its window (first max).
void ps_nn_maxpool2d_forward(float *out, uint8_t *argmax, const float *in, int64_t n, int64_t c, int64_t h,
                             int64_t w, int k);
void ps_nn_maxpool2d_backward(float *din, const float *dout, const uint8_t *argmax, int64_t n, int64_t c, int64_t h,
                              int64_t w, int k);

// ---- Conv block: conv3x3 (no bias) -> BatchNorm2d (sync) or GroupNorm -> ReLU -> 2x2 max-pool ----
// The tile CNN's unit, fused so that the normalized map is never stored:
// z (N, OC, H, W) is kept, and zwin (N, OC, H/2, W/2), the z of each pooling window's winner:
// backward recomputes the ReLU mask from them (the BatchNorm sums read zwin only).
// mean, rstd: (OC) for BatchNorm, (N, groups) for GroupNorm (running_* unused then).
typedef struct {
  int64_t n, c, oc, h, w; // input (N, C, H, W); output (N, OC, H/2, W/2)
} ps_nn_convblock_dims;
typedef struct {
  int64_t chunk; // tiles per conv call (ps_nn_convblock_chunk())
  float *gz;     // gz_floats >= chunk * OC*H*W: dz of one chunk of tiles (backward)
  int64_t gz_floats;
  float *ws;     // ps_conv2d workspace: max over the blocks of ps_nn_convblock_ws_floats()
  int64_t ws_floats;
  double *stats; // threads * (2*OC + 1)
} ps_nn_convblock_scratch;
// Tiles per conv call at the current OpenMP thread count (enough images for every thread).
int64_t ps_nn_convblock_chunk(void);
// ps_conv2d workspace floats for one chunk of a block; planned once into the activation arena.
int64_t ps_nn_convblock_ws_floats(const ps_nn_convblock_dims *d, int64_t chunk);
ps_status ps_nn_convblock_forward(float *pool_out, uint8_t *argmax, float *z, float *zwin, float *mean,
                                  float *rstd, const float *in, const float *w, const float *gamma, const float *beta,
                                  float *running_mean, float *running_var, const ps_nn_convblock_dims *d,
                                  const ps_nn_bn_opts *o, ps_nn_convblock_scratch *s);
// dpool (N, OC, H/2, W/2) in; gz: s->chunk * OC*H*W floats of scratch; din (N, C, H, W)
// accumulated when non-NULL.
ps_status ps_nn_convblock_backward(float *din, float *dw, float *dgamma, float *dbeta, float *gz, const float *dpool,
                                   const uint8_t *argmax, const float *z, const float *zwin, const float *mean,
                                   const float *rstd, const float *in, const float *w, const float *gamma,
                                   const float *beta, const ps_nn_convblock_dims *d, const ps_nn_bn_opts *o,
                                   ps_nn_convblock_scratch *s);

// ---- Device-style conv block (the CUDA path; runs on the host executor too, for tests) ----------
// Same math and outputs as the fused block, organised for a GPU: tensor's conv on the whole tile
// batch (cuDNN on CUDA), statistics as two-stage kernel bodies (per (tile, channel) partials,
// per-channel totals, double), the norm + ReLU + pool epilogue and the backward as bodies. All
// pointers on ex->device except the *_h scratch (host). SyncBN: the 2*OC+1 totals go through
// the reducer on the host (downloaded, reduced, uploaded).
typedef struct {
  float *gz;         // (N, OC, H, W) dz (backward)
  float *ws;         // conv workspace, ws_floats >= ps_nn_convblock_dev_ws_floats()
  int64_t ws_floats;
  double *part;      // (2 * N * OC) per (tile, channel) partial sums
  double *stats;     // (2 * OC + 1) per-channel totals
  double *stats_h;   // (2 * OC + 1) host copy (the same memory on the host executor)
  float *chan_h;     // (4 * OC) host scratch: mean, rstd, running mean, running var (CUDA BatchNorm)
  float *gn_ab;      // (2 * N * groups) GroupNorm backward coefficients
} ps_nn_convblock_dev_scratch;
// Conv workspace floats for the whole batch d->n on device dev (cuDNN's on CUDA); -1 on bad shapes.
int64_t ps_nn_convblock_dev_ws_floats(ps_device dev, const ps_nn_convblock_dims *d);
ps_status ps_nn_convblock_forward_ex(const ps_nn_exec *ex, float *pool_out, uint8_t *argmax, float *z, float *mean,
                                     float *rstd, const float *in, const float *w, const float *gamma,
                                     const float *beta, float *running_mean, float *running_var,
                                     const ps_nn_convblock_dims *d, const ps_nn_bn_opts *o,
                                     ps_nn_convblock_dev_scratch *s);
ps_status ps_nn_convblock_backward_ex(const ps_nn_exec *ex, float *din, float *dw, float *dgamma, float *dbeta,
                                      const float *dpool, const uint8_t *argmax, const float *z, const float *mean,
                                      const float *rstd, const float *in, const float *w, const float *gamma,
                                      const float *beta, const ps_nn_convblock_dims *d, const ps_nn_bn_opts *o,
                                      ps_nn_convblock_dev_scratch *s);

// ---- Gated attention pooling over bags (Ilse et al. 2018) ------------------------------
// Bag b holds rows [off[b], off[b+1]) of h (NT, D); an empty bag gives out = 0.
// score_k = w · (tanh(V h_k + bv) ⊙ sigmoid(U h_k + bu)); alpha = softmax over the bag;
// out_b = sum_k alpha_k h_k.
typedef struct {
  float *a;     // (NT, A) tanh branch
  float *g;     // (NT, A) sigmoid branch
  float *alpha; // (NT) attention per valid tile (sums to 1 per non-empty bag)
} ps_nn_gattn_cache;
ps_status ps_nn_gattn_forward(float *out, ps_nn_gattn_cache *c, const float *h, const float *v, const float *bv,
                              const float *u, const float *bu, const float *wv, const int64_t *off, int64_t nbags,
                              int64_t d, int64_t a);
// scratch: 2*NT*A + 2*NT floats.
ps_status ps_nn_gattn_backward(float *dh, float *dv, float *dbv, float *du, float *dbu, float *dwv, const float *dout,
                               const ps_nn_gattn_cache *c, const float *h, const float *v, const float *u,
                               const float *wv, const int64_t *off, int64_t nbags, int64_t d, int64_t a,
                               float *scratch);

// Executor form: off (B+1) on the executor's device, nt = off[B] given by the host.
ps_status ps_nn_gattn_forward_ex(const ps_nn_exec *ex, float *out, ps_nn_gattn_cache *c, const float *h,
                                 const float *v, const float *bv, const float *u, const float *bu, const float *wv,
                                 const int64_t *off, int64_t nt, int64_t nbags, int64_t d, int64_t a);
ps_status ps_nn_gattn_backward_ex(const ps_nn_exec *ex, float *dh, float *dv, float *dbv, float *du, float *dbu,
                                  float *dwv, const float *dout, const ps_nn_gattn_cache *c, const float *h,
                                  const float *v, const float *u, const float *wv, const int64_t *off,
                                  int64_t nt, int64_t nbags, int64_t d, int64_t a, float *scratch);

// ---- Transformer encoder layer (post-LN, like PyTorch's default) --------------------------
// x (B*T, D) -> y (B*T, D): y1 = LN1(x + MHSA(x)), y = LN2(y1 + W2 gelu(W1 y1 + b1) + b2).
// mask (B, T) u8: keys with 0 are never attended to (exactly 0 weight). Every item needs >= 1 valid key.
typedef struct {
  const float *wqkv, *bqkv; // (3D, D), (3D)
  const float *wo, *bo;     // (D, D), (D)
  const float *ln1_g, *ln1_b, *ln2_g, *ln2_b; // (D)
  const float *w1, *b1;     // (DF, D), (DF)
  const float *w2, *b2;     // (D, DF), (D)
} ps_nn_mhsa_params;
typedef struct {
  float *wqkv, *bqkv, *wo, *bo, *ln1_g, *ln1_b, *ln2_g, *ln2_b, *w1, *b1, *w2, *b2;
} ps_nn_mhsa_grads;
typedef struct {
  float *qkv;       // (B*T, 3D)
  float *prob;      // (B, NH, T, T)
  float *ctx;       // (B*T, D) heads concatenated
  float *r1;        // (B*T, D) x + attn
  float *y1;        // (B*T, D)
  float *mean1, *rstd1, *mean2, *rstd2; // (B*T)
  float *hpre, *h;  // (B*T, DF)
  float *r2;        // (B*T, D)
} ps_nn_mhsa_cache;
typedef struct {
  int64_t b, t, d, nh, df;
} ps_nn_mhsa_dims;
// Floats of cache per dims, and of backward scratch.
int64_t ps_nn_mhsa_cache_floats(const ps_nn_mhsa_dims *s);
int64_t ps_nn_mhsa_scratch_floats(const ps_nn_mhsa_dims *s);
void ps_nn_mhsa_cache_bind(ps_nn_mhsa_cache *c, float *mem, const ps_nn_mhsa_dims *s);
ps_status ps_nn_mhsa_forward(float *y, ps_nn_mhsa_cache *c, const float *x, const uint8_t *mask,
                             const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s);
// dy is consumed (used as scratch). dx accumulated.
ps_status ps_nn_mhsa_backward(float *dx, ps_nn_mhsa_grads *g, float *dy, const ps_nn_mhsa_cache *c, const float *x,
                              const uint8_t *mask, const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s,
                              float *scratch);
ps_status ps_nn_mhsa_forward_ex(const ps_nn_exec *ex, float *y, ps_nn_mhsa_cache *c, const float *x,
                                const uint8_t *mask, const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s);
ps_status ps_nn_mhsa_backward_ex(const ps_nn_exec *ex, float *dx, ps_nn_mhsa_grads *g, float *dy,
                                 const ps_nn_mhsa_cache *c, const float *x, const uint8_t *mask,
                                 const ps_nn_mhsa_params *p, const ps_nn_mhsa_dims *s, float *scratch);

#endif
