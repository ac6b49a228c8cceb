// ps_param: the named parameter table over one flat arena (llm.c layout).
// Parameters are registered in forward order, then ps_param_table_alloc()
// places them contiguously (each aligned to 16 floats) in one parameter arena
// and a gradient arena of the same layout. Zeroing, the optimizer, the
// gradient all-reduce and checkpoints each become one pass over one buffer.
// The same table type (without gradients) holds non-trained buffers such as
// BatchNorm running statistics.
// On a CUDA table (ps_param_table_set_device before alloc) data and grad are
// device pointers: initial values are computed on the host and uploaded, and
// host code reads or writes the arena only through download/upload.
#ifndef PS_PARAM_H
#define PS_PARAM_H

#include <stdbool.h>
#include <stdint.h>

#include "ps_status.h"
#include "ps_tensor.h"

#define PS_PARAM_NAME_MAX 64

typedef enum {
  PS_INIT_ZERO = 0,
  PS_INIT_ONE,
  PS_INIT_KAIMING_UNIFORM, // U(-sqrt(6/fan_in), +): ReLU layers
  PS_INIT_XAVIER_UNIFORM,  // U(-sqrt(6/(fan_in+fan_out)), +): linear/tanh/sigmoid/attention
  PS_INIT_NORMAL_002,      // N(0, 0.02^2): embeddings
  PS_INIT_COUNT
} ps_init_kind;
const char *ps_init_name(ps_init_kind k);

typedef struct {
  char name[PS_PARAM_NAME_MAX]; // "omics.enc1.weight"
  int ndim;
  int64_t shape[PS_MAX_DIMS];
  int64_t offset; // elements from the arena start
  int64_t numel;
  bool decay; // AdamW weight decay applies (false: norms, biases, embeddings)
  ps_init_kind init;
  int64_t fan_in, fan_out;
} ps_param_info;

typedef struct {
  ps_param_info *p; // (count)
  int count, cap;
  int64_t total; // elements incl. alignment padding
  bool with_grad;
  ps_device device; // where data and grad live (PS_CPU unless set before alloc)
  float *data; // (total) parameter values
  float *grad; // (total) gradients, NULL without grads
  ps_arena data_arena, grad_arena;
  const char *what; // "parameter" / "buffer" for messages
} ps_param_table;

void ps_param_table_init(ps_param_table *t, const char *what, bool with_grad);
void ps_param_table_free(ps_param_table *t);
// Registers a parameter; *index receives its position in the table.
ps_status ps_param_add(ps_param_table *t, int *index, const char *name, int ndim, const int64_t *shape, bool decay,
                       ps_init_kind init, int64_t fan_in, int64_t fan_out);
// Where the arenas will live; only before ps_param_table_alloc.
ps_status ps_param_table_set_device(ps_param_table *t, ps_device dev);
// Places every registered parameter; no registration afterwards.
ps_status ps_param_table_alloc(ps_param_table *t);
// Deterministic init: parameter i draws from Philox stream (PS_RNG_INIT, i), so
// a value depends only on (seed, parameter index, element index). Computed on
// the host on every device (a CUDA table uploads it), so CPU and GPU start equal.
ps_status ps_param_table_init_values(ps_param_table *t, uint64_t seed);
// Whole-arena copies between the table (any device) and a host array of `total`
// floats: values, or gradients when grad is true (the table must have them).
ps_status ps_param_table_download(const ps_param_table *t, float *host, bool grad);
ps_status ps_param_table_upload(ps_param_table *t, const float *host);
// Element pointers into the arena: device pointers on a CUDA table.
static inline float *ps_param_data(const ps_param_table *t, int i) { return t->data + t->p[i].offset; }
static inline float *ps_param_grad(const ps_param_table *t, int i) { return t->grad ? t->grad + t->p[i].offset : 0; }
// Zeroes the gradient arena (memset or cudaMemset by the table's device).
ps_status ps_param_zero_grad(ps_param_table *t);
// Index by name, -1 when absent.
int ps_param_find(const ps_param_table *t, const char *name);
// Number of real (unpadded) elements.
int64_t ps_param_count_elements(const ps_param_table *t);
// "(2000, 512)" into buf.
const char *ps_param_shape_str(int ndim, const int64_t *shape, char *buf, size_t len);

#endif
