// The fused conv block's scratch for one block of dims d, sized as ps_model_plan sizes it: dz of
// one chunk of tiles, the ps_conv2d workspace for a chunk, per-thread statistics. Zeroed; free with
// convblock_scratch_free. Header-only test helper (nn_convblock_dev, nn_convblock_simd).
#ifndef PS_TEST_CONVBLOCK_SCRATCH_H
#define PS_TEST_CONVBLOCK_SCRATCH_H

#include <omp.h>
#include <stdlib.h>

#include "ps_layers.h"

static inline ps_nn_convblock_scratch convblock_scratch_alloc(const ps_nn_convblock_dims *d) {
  ps_nn_convblock_scratch s = {0};
  s.chunk = ps_nn_convblock_chunk();
  s.gz_floats = s.chunk * d->oc * d->h * d->w;
  s.gz = calloc((size_t)s.gz_floats, sizeof(float));
  s.ws_floats = ps_nn_convblock_ws_floats(d, s.chunk);
  s.ws = calloc((size_t)(s.ws_floats ? s.ws_floats : 1), sizeof(float));
  s.stats = calloc((size_t)omp_get_max_threads() * (size_t)(2 * d->oc + 1), sizeof(double));
  return s;
}

static inline void convblock_scratch_free(ps_nn_convblock_scratch *s) {
  free(s->gz), free(s->ws), free(s->stats);
  s->gz = s->ws = NULL, s->stats = NULL;
}

#endif
