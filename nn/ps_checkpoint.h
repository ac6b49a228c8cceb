// ps_checkpoint: one HDF5 file per checkpoint, readable by h5py.
//   /                       attrs: magic "PANSURV-CHECKPOINT", format_version, param_crc32 (CRC-32 of
//                           every parameter's float bytes in table order), pansurv_version
//   /params/<name>          one float dataset per parameter, in its shape; attr "order" on /params
//                           lists the names (newline-separated) in arena order
//   /buffers/<name>         BatchNorm running statistics
//   /optimizer              attrs kind, step; datasets m, v (flat, arena layout)
//   /state                  attrs step, epoch, rng_seed, loader_position
//   /normalization/<name>   opaque float blobs from the caller (e.g. feature means/stds)
//   /config                 the resolved configuration text
// Writing goes straight to `path` (the caller adds temp file + fsync + rename); on failure the
// partial file is removed. Loading checks the magic, version, every shape against the
// configured model (naming the first difference) and the CRC.
#ifndef PS_CHECKPOINT_H
#define PS_CHECKPOINT_H

#include <stdint.h>

#include "ps_model.h"
#include "ps_optim.h"
#include "ps_status.h"

#define PS_CHECKPOINT_MAGIC "PANSURV-CHECKPOINT"
#define PS_CHECKPOINT_VERSION 1

typedef struct {
  const char *name;
  const float *data;
  int64_t n;
} ps_ckpt_blob;

typedef struct {
  int64_t step, epoch;
  uint64_t rng_seed;
  int64_t loader_position;
} ps_ckpt_state;

// CRC-32 (IEEE 802.3, as zlib's crc32), continuing from crc (start with 0).
uint32_t ps_crc32(uint32_t crc, const void *data, size_t n);
uint32_t ps_checkpoint_param_crc(const ps_param_table *t);

// opt, blobs and config_text may be NULL/0.
ps_status ps_checkpoint_write(const char *path, ps_model *m, const ps_optim *opt, const ps_ckpt_state *state,
                              const ps_ckpt_blob *blobs, int nblobs, const char *config_text);
// Checks magic, version and the CRC of the stored parameters without a model.
ps_status ps_checkpoint_verify(const char *path, uint32_t *crc_out);
// Loads parameters and buffers into m (shapes must match exactly), optimizer moments and step
// into opt (if non-NULL) and the state (if non-NULL). Nothing in m is changed on failure.
ps_status ps_checkpoint_read(const char *path, ps_model *m, ps_optim *opt, ps_ckpt_state *state);
// One normalization blob by name into out (n floats expected).
ps_status ps_checkpoint_read_blob(const char *path, const char *name, float *out, int64_t n);
// The stored configuration text (malloc'd, caller frees).
ps_status ps_checkpoint_read_config(const char *path, char **text);

#endif
