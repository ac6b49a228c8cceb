#define _DEFAULT_SOURCE // madvise
#include "ps_tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "ps_cuda.h"

static const size_t dtype_sizes[] = {4, 8, 4, 8, 1};
static const char *const dtype_names[] = {"f32", "f64", "i32", "i64", "u8"};
static const char *const device_names[] = {"cpu", "cuda"};
_Static_assert(sizeof(dtype_sizes) / sizeof(dtype_sizes[0]) == PS_DTYPE_COUNT, "dtype_sizes");
_Static_assert(sizeof(dtype_names) / sizeof(dtype_names[0]) == PS_DTYPE_COUNT, "dtype_names");
_Static_assert(sizeof(device_names) / sizeof(device_names[0]) == PS_DEVICE_COUNT, "device_names");

size_t ps_dtype_size(ps_dtype t) { return (t >= 0 && t < PS_DTYPE_COUNT) ? dtype_sizes[t] : 0; }
const char *ps_dtype_name(ps_dtype t) { return (t >= 0 && t < PS_DTYPE_COUNT) ? dtype_names[t] : "?"; }
const char *ps_device_name(ps_device d) { return (d >= 0 && d < PS_DEVICE_COUNT) ? device_names[d] : "?"; }

ps_tensor ps_tensor_wrap(void *data, ps_dtype dtype, ps_device device, int ndim, const int64_t *shape) {
  ps_tensor t = {.data = data, .dtype = dtype, .device = device, .ndim = ndim};
  for (int i = 0; i < PS_MAX_DIMS; i++) t.shape[i] = (i < ndim) ? shape[i] : 1;
  return t;
}

int64_t ps_tensor_numel(const ps_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

size_t ps_tensor_nbytes(const ps_tensor *t) { return (size_t)ps_tensor_numel(t) * ps_dtype_size(t->dtype); }

static int64_t shape_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

static ps_status check_shape(int ndim, const int64_t *shape) {
  PS_REQUIRE(ndim >= 0 && ndim <= PS_MAX_DIMS, "tensor rank %d outside 0..%d", ndim, PS_MAX_DIMS);
  for (int i = 0; i < ndim; i++) PS_REQUIRE(shape[i] >= 0, "negative extent %lld in dim %d", (long long)shape[i], i);
  return PS_OK;
}

ps_status ps_tensor_view(ps_tensor *out, const ps_tensor *t, int64_t offset, int ndim, const int64_t *shape) {
  PS_TRY(check_shape(ndim, shape));
  int64_t n = shape_numel(ndim, shape);
  PS_REQUIRE(offset >= 0 && offset + n <= ps_tensor_numel(t), "view [%lld, %lld) outside tensor of %lld elements",
             (long long)offset, (long long)(offset + n), (long long)ps_tensor_numel(t));
  *out = ps_tensor_wrap((uint8_t *)t->data + (size_t)offset * ps_dtype_size(t->dtype), t->dtype, t->device, ndim, shape);
  return PS_OK;
}

ps_status ps_tensor_reshape(ps_tensor *out, const ps_tensor *t, int ndim, const int64_t *shape) {
  PS_TRY(check_shape(ndim, shape));
  PS_REQUIRE(shape_numel(ndim, shape) == ps_tensor_numel(t), "reshape changes element count %lld -> %lld",
             (long long)ps_tensor_numel(t), (long long)shape_numel(ndim, shape));
  *out = ps_tensor_wrap(t->data, t->dtype, t->device, ndim, shape);
  return PS_OK;
}

bool ps_tensor_same_shape(const ps_tensor *a, const ps_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

const char *ps_tensor_describe(const ps_tensor *t, char *buf, size_t len) {
  size_t n = (size_t)snprintf(buf, len, "(");
  for (int i = 0; i < t->ndim && n < len; i++)
    n += (size_t)snprintf(buf + n, len - n, i ? ", %lld" : "%lld", (long long)t->shape[i]);
  if (n < len) snprintf(buf + n, len - n, ") %s %s", ps_dtype_name(t->dtype), ps_device_name(t->device));
  return buf;
}

ps_status ps_tensor_zero(ps_tensor *t) {
  if (t->device == PS_CUDA) return ps_cuda_memset_zero(t->data, ps_tensor_nbytes(t));
  memset(t->data, 0, ps_tensor_nbytes(t));
  return PS_OK;
}

// ---- arena ---------------------------------------------------------------

size_t ps_arena_footprint(size_t nbytes) { return (nbytes + PS_ARENA_ALIGN - 1) / PS_ARENA_ALIGN * PS_ARENA_ALIGN; }

ps_status ps_arena_init(ps_arena *a, const char *name, ps_device device, size_t capacity_bytes) {
  memset(a, 0, sizeof *a);
  a->name = name;
  a->device = device;
  capacity_bytes = ps_arena_footprint(capacity_bytes ? capacity_bytes : PS_ARENA_ALIGN);
  if (device == PS_CUDA) {
    PS_TRY(ps_cuda_malloc((void **)&a->base, capacity_bytes));
  } else {
    // Arenas of >= 4 MiB (activations, parameters, gradients) start on a 2 MiB boundary and ask
    // for transparent huge pages (the kernel's default policy is often "madvise": only on request):
    // the training step streams GBs through them, and 4 KiB pages cost a TLB miss per page.
    const size_t huge = (size_t)2 << 20, align = capacity_bytes >= 2 * huge ? huge : PS_ARENA_ALIGN;
    capacity_bytes = (capacity_bytes + align - 1) / align * align; // aligned_alloc: a multiple of align
    a->base = aligned_alloc(align, capacity_bytes);
    if (!a->base) PS_FAIL(PS_ERR_MEM, "arena '%s': cannot allocate %zu bytes", name, capacity_bytes);
#ifdef MADV_HUGEPAGE
    if (align == huge) (void)madvise(a->base, capacity_bytes, MADV_HUGEPAGE); // advice only: failure is harmless
#endif
  }
  a->capacity = capacity_bytes;
  return PS_OK;
}

void ps_arena_free(ps_arena *a) {
  if (a->base) {
    if (a->device == PS_CUDA) ps_cuda_free(a->base);
    else free(a->base);
  }
  memset(a, 0, sizeof *a);
}

ps_status ps_arena_alloc_bytes(ps_arena *a, size_t nbytes, void **out) {
  size_t need = ps_arena_footprint(nbytes);
  if (a->used + need > a->capacity)
    PS_FAIL(PS_ERR_MEM, "arena '%s' exhausted: %zu of %zu bytes used, %zu more requested", a->name ? a->name : "?",
            a->used, a->capacity, need);
  *out = a->base + a->used;
  a->used += need;
  if (a->used > a->peak) a->peak = a->used;
  return PS_OK;
}

ps_status ps_arena_alloc(ps_arena *a, ps_tensor *out, ps_dtype dtype, int ndim, const int64_t *shape) {
  PS_TRY(check_shape(ndim, shape));
  void *p = NULL;
  PS_TRY(ps_arena_alloc_bytes(a, (size_t)shape_numel(ndim, shape) * ps_dtype_size(dtype), &p));
  *out = ps_tensor_wrap(p, dtype, a->device, ndim, shape);
  return PS_OK;
}

void ps_arena_reset(ps_arena *a, size_t mark) {
  if (mark <= a->used) a->used = mark;
}
