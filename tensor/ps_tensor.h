// ps_tensor: a contiguous view (up to 4 dims) into memory owned by an arena.
// Tensors never own memory; arenas do. A training step allocates nothing:
// activations are planned once per (batch, bag size) into an arena and the
// arena is reset (not freed) between steps.
#ifndef PS_TENSOR_H
#define PS_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ps_status.h"

#define PS_MAX_DIMS 4

typedef enum { PS_F32 = 0, PS_F64, PS_I32, PS_I64, PS_U8, PS_DTYPE_COUNT } ps_dtype;
typedef enum { PS_CPU = 0, PS_CUDA, PS_DEVICE_COUNT } ps_device;

size_t ps_dtype_size(ps_dtype t);
const char *ps_dtype_name(ps_dtype t);
const char *ps_device_name(ps_device d);

typedef struct {
  void *data;                 // first element (host or device pointer per `device`)
  ps_dtype dtype;
  ps_device device;
  int ndim;                   // 0..4; unused trailing dims are 1
  int64_t shape[PS_MAX_DIMS]; // row-major, contiguous
} ps_tensor;

// Builds a view over caller memory; shape has ndim entries.
ps_tensor ps_tensor_wrap(void *data, ps_dtype dtype, ps_device device, int ndim, const int64_t *shape);
int64_t ps_tensor_numel(const ps_tensor *t);
size_t ps_tensor_nbytes(const ps_tensor *t);
static inline float *ps_f32(const ps_tensor *t) { return (float *)t->data; }
static inline uint8_t *ps_u8(const ps_tensor *t) { return (uint8_t *)t->data; }
// A sub-view: `offset` elements in, with a new shape (must fit inside t).
ps_status ps_tensor_view(ps_tensor *out, const ps_tensor *t, int64_t offset, int ndim, const int64_t *shape);
// Same memory, new shape of equal element count.
ps_status ps_tensor_reshape(ps_tensor *out, const ps_tensor *t, int ndim, const int64_t *shape);
bool ps_tensor_same_shape(const ps_tensor *a, const ps_tensor *b);
// "(64, 3, 32, 32) f32 cpu" into buf.
const char *ps_tensor_describe(const ps_tensor *t, char *buf, size_t len);
// Zero-fills t (host memset or cudaMemset by device tag).
ps_status ps_tensor_zero(ps_tensor *t);

// ---- arena ---------------------------------------------------------------
// One allocation; bump-pointer sub-allocation aligned to PS_ARENA_ALIGN bytes.
// ps_arena_reset() rewinds to a mark so per-step scratch is reused.
#define PS_ARENA_ALIGN 64
typedef struct {
  uint8_t *base;
  size_t capacity; // bytes
  size_t used;     // bytes
  size_t peak;     // high-water mark, bytes
  ps_device device;
  const char *name; // for error messages ("activations", "params", ...)
} ps_arena;

ps_status ps_arena_init(ps_arena *a, const char *name, ps_device device, size_t capacity_bytes);
void ps_arena_free(ps_arena *a);
ps_status ps_arena_alloc_bytes(ps_arena *a, size_t nbytes, void **out);
ps_status ps_arena_alloc(ps_arena *a, ps_tensor *out, ps_dtype dtype, int ndim, const int64_t *shape);
static inline size_t ps_arena_mark(const ps_arena *a) { return a->used; }
void ps_arena_reset(ps_arena *a, size_t mark);
// Bytes an allocation of this size takes inside an arena (for planning capacity).
size_t ps_arena_footprint(size_t nbytes);

// Shape literal for (ndim, shape) argument pairs: PS_SHAPE(2, 3) -> 2, (const int64_t[]){2, 3}
#define PS_SHAPE(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t))), ((const int64_t[]){__VA_ARGS__})

#endif
