#include "ps_param.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_cuda.h"
#include "ps_rng.h"

static const char *const init_names[] = {"zero", "one", "kaiming_uniform", "xavier_uniform", "normal_0.02"};
_Static_assert(sizeof(init_names) / sizeof(init_names[0]) == PS_INIT_COUNT, "init name table");
const char *ps_init_name(ps_init_kind k) { return (unsigned)k < PS_INIT_COUNT ? init_names[k] : "?"; }

#define PS_PARAM_ALIGN_FLOATS 16 // 64 bytes: every parameter starts on a cache line

void ps_param_table_init(ps_param_table *t, const char *what, bool with_grad) {
  memset(t, 0, sizeof(*t));
  t->with_grad = with_grad;
  t->what = what;
}

void ps_param_table_free(ps_param_table *t) {
  free(t->p);
  if (t->data) ps_arena_free(&t->data_arena);
  if (t->grad) ps_arena_free(&t->grad_arena);
  memset(t, 0, sizeof(*t));
}

ps_status ps_param_add(ps_param_table *t, int *index, const char *name, int ndim, const int64_t *shape, bool decay,
                       ps_init_kind init, int64_t fan_in, int64_t fan_out) {
  PS_REQUIRE(!t->data, "%s table: cannot add '%s' after allocation", t->what, name);
  PS_REQUIRE(ndim >= 1 && ndim <= PS_MAX_DIMS, "%s '%s': ndim %d not in 1..%d", t->what, name, ndim, PS_MAX_DIMS);
  PS_REQUIRE(strlen(name) < PS_PARAM_NAME_MAX, "%s name '%s' longer than %d", t->what, name, PS_PARAM_NAME_MAX - 1);
  PS_REQUIRE(ps_param_find(t, name) < 0, "%s '%s' registered twice", t->what, name);
  if (t->count == t->cap) {
    int cap = t->cap ? 2 * t->cap : 32;
    ps_param_info *p = realloc(t->p, (size_t)cap * sizeof(*p));
    if (!p) PS_FAIL(PS_ERR_MEM, "%s table: out of memory at %d entries", t->what, cap);
    t->p = p;
    t->cap = cap;
  }
  ps_param_info *e = &t->p[t->count];
  memset(e, 0, sizeof(*e));
  snprintf(e->name, sizeof(e->name), "%s", name);
  e->ndim = ndim;
  e->numel = 1;
  for (int d = 0; d < PS_MAX_DIMS; d++) e->shape[d] = d < ndim ? shape[d] : 1;
  for (int d = 0; d < ndim; d++) {
    PS_REQUIRE(shape[d] > 0, "%s '%s': dim %d is %lld", t->what, name, d, (long long)shape[d]);
    e->numel *= shape[d];
  }
  e->offset = t->total;
  e->decay = decay;
  e->init = init;
  e->fan_in = fan_in;
  e->fan_out = fan_out;
  t->total += (e->numel + PS_PARAM_ALIGN_FLOATS - 1) / PS_PARAM_ALIGN_FLOATS * PS_PARAM_ALIGN_FLOATS;
  if (index) *index = t->count;
  t->count++;
  return PS_OK;
}

ps_status ps_param_table_set_device(ps_param_table *t, ps_device dev) {
  PS_REQUIRE(!t->data, "%s table: device must be set before allocation", t->what);
  PS_REQUIRE((unsigned)dev < PS_DEVICE_COUNT, "%s table: unknown device %d", t->what, (int)dev);
  t->device = dev;
  return PS_OK;
}

static ps_status zero_bytes(ps_device dev, void *p, size_t bytes) {
  if (dev == PS_CUDA) return ps_cuda_memset_zero(p, bytes);
  memset(p, 0, bytes);
  return PS_OK;
}

ps_status ps_param_table_alloc(ps_param_table *t) {
  PS_REQUIRE(!t->data, "%s table allocated twice", t->what);
  size_t bytes = (size_t)(t->total ? t->total : 1) * sizeof(float);
  PS_TRY(ps_arena_init(&t->data_arena, t->what, t->device, bytes));
  void *p;
  PS_TRY(ps_arena_alloc_bytes(&t->data_arena, bytes, &p));
  t->data = p;
  PS_TRY(zero_bytes(t->device, t->data, bytes));
  if (t->with_grad) {
    PS_TRY(ps_arena_init(&t->grad_arena, "gradients", t->device, bytes));
    PS_TRY(ps_arena_alloc_bytes(&t->grad_arena, bytes, &p));
    t->grad = p;
    PS_TRY(zero_bytes(t->device, t->grad, bytes));
  }
  return PS_OK;
}

ps_status ps_param_table_download(const ps_param_table *t, float *host, bool grad) {
  const float *src = grad ? t->grad : t->data;
  PS_REQUIRE(src, "%s table: no %s to download (not allocated)", t->what, grad ? "gradients" : "values");
  size_t bytes = (size_t)t->total * sizeof(float);
  if (!bytes) return PS_OK;
  if (t->device == PS_CUDA) return ps_cuda_copy_d2h(host, src, bytes);
  memcpy(host, src, bytes);
  return PS_OK;
}

ps_status ps_param_table_upload(ps_param_table *t, const float *host) {
  PS_REQUIRE(t->data, "%s table: upload before allocation", t->what);
  size_t bytes = (size_t)t->total * sizeof(float);
  if (!bytes) return PS_OK;
  if (t->device == PS_CUDA) return ps_cuda_copy_h2d(t->data, host, bytes);
  memcpy(t->data, host, bytes);
  return PS_OK;
}

static void init_host(ps_param_table *t, float *base, uint64_t seed) {
  for (int i = 0; i < t->count; i++) {
    ps_param_info *e = &t->p[i];
    float *x = base + e->offset;
    ps_rng r = ps_rng_make(seed, ps_rng_stream(PS_RNG_INIT, (uint64_t)i, 0, 0));
    double bound = 0;
    switch (e->init) {
    case PS_INIT_ZERO: memset(x, 0, (size_t)e->numel * sizeof(float)); continue;
    case PS_INIT_ONE:
      for (int64_t j = 0; j < e->numel; j++) x[j] = 1.0f;
      continue;
    case PS_INIT_NORMAL_002:
      for (int64_t j = 0; j < e->numel; j++) x[j] = (float)(0.02 * ps_rng_normal(&r, (uint64_t)j));
      continue;
    case PS_INIT_KAIMING_UNIFORM: bound = sqrt(6.0 / (double)e->fan_in); break;
    case PS_INIT_XAVIER_UNIFORM: bound = sqrt(6.0 / (double)(e->fan_in + e->fan_out)); break;
    default: break;
    }
    for (int64_t j = 0; j < e->numel; j++) x[j] = (float)(bound * (2.0 * ps_rng_uniform(&r, (uint64_t)j) - 1.0));
  }
}

ps_status ps_param_table_init_values(ps_param_table *t, uint64_t seed) {
  PS_REQUIRE(t->data, "%s table: init before allocation", t->what);
  if (t->device == PS_CPU) {
    init_host(t, t->data, seed);
    return PS_OK;
  }
  // Host staging with the padding zeroed, then one upload: same values as a CPU table.
  float *h = calloc((size_t)t->total + 1, sizeof(float));
  if (!h) PS_FAIL(PS_ERR_MEM, "%s table: out of memory staging %lld initial values", t->what, (long long)t->total);
  init_host(t, h, seed);
  ps_status s = ps_param_table_upload(t, h);
  free(h);
  return s;
}

ps_status ps_param_zero_grad(ps_param_table *t) {
  if (!t->grad) return PS_OK;
  return zero_bytes(t->device, t->grad, (size_t)t->total * sizeof(float));
}

int ps_param_find(const ps_param_table *t, const char *name) {
  for (int i = 0; i < t->count; i++)
    if (!strcmp(t->p[i].name, name)) return i;
  return -1;
}

int64_t ps_param_count_elements(const ps_param_table *t) {
  int64_t n = 0;
  for (int i = 0; i < t->count; i++) n += t->p[i].numel;
  return n;
}

const char *ps_param_shape_str(int ndim, const int64_t *shape, char *buf, size_t len) {
  size_t o = 0;
  o += (size_t)snprintf(buf + o, len - o, "(");
  for (int d = 0; d < ndim && o < len; d++)
    o += (size_t)snprintf(buf + o, len - o, d ? ", %lld" : "%lld", (long long)shape[d]);
  if (o < len) snprintf(buf + o, len - o, ")");
  return buf;
}
