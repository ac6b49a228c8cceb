// ps_nn_exec: runs the kernel bodies of ps_nn_kernels.h over n items, on the host (OpenMP
// parallel for) or on CUDA (grid-stride kernel on the default stream the tensor ops use),
// chosen by the executor's device. ps_nn_launch_<name>(ex, n, args...) runs k_<name>(i, args...)
// for i in [0, n); pointers must live on the executor's device. Without CUDA in the build a
// CUDA executor reports PS_ERR_UNSUPPORTED.
#ifndef PS_NN_EXEC_H
#define PS_NN_EXEC_H

#include <stddef.h>
#include <stdint.h>

#include "ps_status.h"
#include "ps_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  ps_device device;
} ps_nn_exec;

#define PS_NN_UNPACK(...) __VA_ARGS__
// X(name, (parameters after the item index), (the same names as arguments))
#define PS_NN_KERNEL_LIST(X)                                                                                     \
  X(gather_rows, (float *dst, const float *src, const int64_t *rows, int64_t mul, int64_t add, int64_t d),        \
    (dst, src, rows, mul, add, d))                                                                               \
  X(fill_u8, (uint8_t *x, int v), (x, v))                                                                        \
  X(add_inplace, (float *y, const float *x), (y, x))                                                             \
  X(act_forward, (float *x, float *pre, int act), (x, pre, act))                                                  \
  X(act_backward, (float *dy, const float *out, const float *pre, int act), (dy, out, pre, act))                  \
  X(input_noise, (float *xn, float std, uint32_t key0, uint32_t key1, const uint64_t *streams, int64_t g),        \
    (xn, std, key0, key1, streams, g))                                                                           \
  X(sse_rows, (double *part, const float *rec, const float *x, int64_t g), (part, rec, x, g))                     \
  X(recon_grad, (float *grec, const float *rec, const float *x, float s), (grec, rec, x, s))                      \
  X(tokens_forward,                                                                                              \
    (float *x, const float *s0, const float *s1, const float *s2, const int64_t *src_row, const float *emb,       \
     int64_t m, int64_t d),                                                                                      \
    (x, s0, s1, s2, src_row, emb, m, d))                                                                         \
  X(head_forward,                                                                                                \
    (float *pool, float *eta, const float *y, const uint8_t *mask, const float *hw, const float *hb, int64_t m,   \
     int64_t d),                                                                                                 \
    (pool, eta, y, mask, hw, hb, m, d))                                                                          \
  X(modality_attention, (float *ma, const float *prob, const uint8_t *mask, int64_t nh, int64_t m),               \
    (ma, prob, mask, nh, m))                                                                                     \
  X(head_backward_params,                                                                                        \
    (float *ghw, float *ghb, const float *deta, const float *pool, int64_t bsz, int64_t d),                       \
    (ghw, ghb, deta, pool, bsz, d))                                                                              \
  X(head_backward_tokens, (float *gy, const float *deta, const float *hw, const uint8_t *mask, int64_t m, int64_t d), \
    (gy, deta, hw, mask, m, d))                                                                                  \
  X(embedding_backward, (float *gemb, const float *gy, const uint8_t *mask, int64_t bsz, int64_t m, int64_t d),   \
    (gemb, gy, mask, bsz, m, d))                                                                                 \
  X(gattn_scores, (float *alpha, const float *a, const float *g, const float *wv, int64_t na), (alpha, a, g, wv, na)) \
  X(gattn_softmax, (float *alpha, const int64_t *off), (alpha, off))                                              \
  X(gattn_pool, (float *out, const float *alpha, const float *h, const int64_t *off, int64_t d),                  \
    (out, alpha, h, off, d))                                                                                     \
  X(gattn_backward_dal, (float *dal, const float *dout, const float *h, const int64_t *off, int64_t nbags, int64_t d), \
    (dal, dout, h, off, nbags, d))                                                                                    \
  X(gattn_backward_ds, (float *ds, const float *dal, const float *alpha, const int64_t *off), (ds, dal, alpha, off)) \
  X(gattn_backward_dh, (float *dh, const float *alpha, const float *dout, const int64_t *off, int64_t nbags, int64_t d), \
    (dh, alpha, dout, off, nbags, d))                                                                                 \
  X(gattn_backward_dadg,                                                                                         \
    (float *da, float *dg, const float *ds, const float *a, const float *g, const float *wv, int64_t na),         \
    (da, dg, ds, a, g, wv, na))                                                                                  \
  X(gattn_backward_dwv, (float *dwv, const float *ds, const float *a, const float *g, int64_t nt, int64_t na),     \
    (dwv, ds, a, g, nt, na))                                                                                     \
  X(tile_attention, (float *ta, const float *alpha, const int64_t *off, int64_t kmax), (ta, alpha, off, kmax))    \
  X(mhsa_forward,                                                                                                \
    (float *prob, float *ctx, const float *qkv, const uint8_t *mask, int64_t t, int64_t d, int64_t nh,            \
     float scale),                                                                                               \
    (prob, ctx, qkv, mask, t, d, nh, scale))                                                                     \
  X(mhsa_backward_scores,                                                                                        \
    (float *dsc, const float *prob, const float *dctx, const float *qkv, const uint8_t *mask, int64_t t,          \
     int64_t d, int64_t nh, float scale),                                                                        \
    (dsc, prob, dctx, qkv, mask, t, d, nh, scale))                                                               \
  X(mhsa_backward_dqkv,                                                                                          \
    (float *dqkv, const float *dsc, const float *prob, const float *dctx, const float *qkv, const uint8_t *mask,  \
     int64_t t, int64_t d, int64_t nh),                                                                          \
    (dqkv, dsc, prob, dctx, qkv, mask, t, d, nh))                                                                \
  X(bn_partials, (double *part, const float *z, int64_t hw), (part, z, hw))                                      \
  X(channel_totals, (double *stats, const double *part, int64_t nn, int64_t oc, double count),                    \
    (stats, part, nn, oc, count))                                                                                \
  X(gn_stats, (float *mean, float *rstd, const float *z, int64_t oc, int groups, int64_t hw, float eps),          \
    (mean, rstd, z, oc, groups, hw, eps))                                                                        \
  X(convblock_epilogue,                                                                                          \
    (float *pool_out, uint8_t *argmax, const float *z, const float *mean, const float *rstd, const float *gamma,  \
     const float *beta, int64_t oc, int groups, int64_t h, int64_t w),                                           \
    (pool_out, argmax, z, mean, rstd, gamma, beta, oc, groups, h, w))                                            \
  X(convblock_backward_partials,                                                                                 \
    (double *part, const float *dpool, const uint8_t *argmax, const float *z, const float *mean,                 \
     const float *rstd, const float *gamma, const float *beta, int64_t oc, int groups, int64_t h, int64_t w),    \
    (part, dpool, argmax, z, mean, rstd, gamma, beta, oc, groups, h, w))                                         \
  X(norm_param_grads, (float *dgamma, float *dbeta, const double *stats, int64_t oc), (dgamma, dbeta, stats, oc))  \
  X(convblock_backward_dz_bn,                                                                                    \
    (float *gz, const float *dpool, const uint8_t *argmax, const float *z, const float *mean, const float *rstd,  \
     const float *gamma, const float *beta, const double *stats, int64_t oc, int64_t h, int64_t w, int training), \
    (gz, dpool, argmax, z, mean, rstd, gamma, beta, stats, oc, h, w, training))                                  \
  X(gn_backward_group, (float *ab, const double *part, const float *gamma, int64_t oc, int groups, int64_t hw),    \
    (ab, part, gamma, oc, groups, hw))                                                                           \
  X(gn_backward_dz,                                                                                              \
    (float *gz, const float *dpool, const uint8_t *argmax, const float *z, const float *mean, const float *rstd,  \
     const float *gamma, const float *beta, const float *ab, int64_t oc, int groups, int64_t h, int64_t w),       \
    (gz, dpool, argmax, z, mean, rstd, gamma, beta, ab, oc, groups, h, w))

#define PS_NN_DECLARE_LAUNCH(name, params, args)                                                               \
  ps_status ps_nn_launch_##name(const ps_nn_exec *ex, int64_t n, PS_NN_UNPACK params);                         \
  ps_status ps_nn_cuda_##name(int64_t n, PS_NN_UNPACK params);
PS_NN_KERNEL_LIST(PS_NN_DECLARE_LAUNCH)

// Memory helpers on the executor's device (bytes).
ps_status ps_nn_exec_zero(const ps_nn_exec *ex, void *p, size_t nbytes);
ps_status ps_nn_exec_copy(const ps_nn_exec *ex, void *dst, const void *src, size_t nbytes); // same device
ps_status ps_nn_exec_upload(const ps_nn_exec *ex, void *dst, const void *host, size_t nbytes);
ps_status ps_nn_exec_download(const ps_nn_exec *ex, void *host, const void *src, size_t nbytes);
// Waits for the executor's queued work (no-op on the host).
ps_status ps_nn_exec_sync(const ps_nn_exec *ex);

#ifdef __cplusplus
}
#endif
#endif
