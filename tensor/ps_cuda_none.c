// Built when CUDA is not found or PANSURV_CUDA=OFF: the CUDA entry points say so
// (the device-binding logic is pure and works in every build).
#include <stdlib.h>

#include "ps_cuda.h"

#define NOT_BUILT PS_FAIL(PS_ERR_UNSUPPORTED, "pansurv was built without CUDA (configure with -DPANSURV_CUDA=ON)")

int ps_cuda_device_count(void) { return 0; }
ps_status ps_cuda_set_device(int device) { NOT_BUILT; }
ps_status ps_cuda_malloc(void **ptr, size_t nbytes) { NOT_BUILT; }
void ps_cuda_free(void *ptr) { (void)ptr; }
ps_status ps_cuda_memset_zero(void *ptr, size_t nbytes) { NOT_BUILT; }
ps_status ps_cuda_copy_h2d(void *dst, const void *src, size_t nbytes) { NOT_BUILT; }
ps_status ps_cuda_copy_d2h(void *dst, const void *src, size_t nbytes) { NOT_BUILT; }
ps_status ps_cuda_copy_d2d(void *dst, const void *src, size_t nbytes) { NOT_BUILT; }
ps_status ps_cuda_synchronize(void) { NOT_BUILT; }
bool ps_cuda_is_device_pointer(const void *ptr) { (void)ptr; return false; }
ps_status ps_cuda_relu_f32(float *out, const float *in, size_t n) { NOT_BUILT; }
ps_status ps_cuda_axpby_f32(float *out, float alpha, const float *x, const float *y, size_t n) { NOT_BUILT; }

ps_status ps_cuda_bind_local_rank(int local_rank, int local_size, int *device) {
  // Validates like the CUDA build, then reports that there is no device to bind.
  int dev = -1;
  PS_TRY(ps_cuda_pick_device(local_rank, local_size, 0, getenv("CUDA_VISIBLE_DEVICES"), getenv("SLURM_STEP_GPUS"),
                             getenv("SLURM_GPUS_PER_TASK"), &dev));
  (void)device;
  NOT_BUILT;
}

ps_status ps_cuda_host_alloc(void **ptr, size_t nbytes) { NOT_BUILT; }
void ps_cuda_host_free(void *ptr) { (void)ptr; }
ps_status ps_cuda_stream_create(ps_cuda_stream *s) { NOT_BUILT; }
void ps_cuda_stream_destroy(ps_cuda_stream s) { (void)s; }
ps_status ps_cuda_stream_synchronize(ps_cuda_stream s) { NOT_BUILT; }
ps_status ps_cuda_copy_h2d_async(void *dst, const void *src, size_t nbytes, ps_cuda_stream s) { NOT_BUILT; }
ps_status ps_cuda_event_create(ps_cuda_event *e) { NOT_BUILT; }
void ps_cuda_event_destroy(ps_cuda_event e) { (void)e; }
ps_status ps_cuda_event_record(ps_cuda_event e, ps_cuda_stream s) { NOT_BUILT; }
ps_status ps_cuda_stream_wait_event(ps_cuda_stream s, ps_cuda_event e) { NOT_BUILT; }
ps_status ps_cuda_event_synchronize(ps_cuda_event e) { NOT_BUILT; }
ps_status ps_cuda_adamw_step(float *params, const float *grads, float *m, float *v, const uint8_t *decay, int64_t n,
                             float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2) {
  NOT_BUILT;
}
ps_status ps_cuda_sumsq(double *sumsq, const float *g, int64_t n) { NOT_BUILT; }
ps_status ps_cuda_scale_inplace(float *x, float s, int64_t n) { NOT_BUILT; }
ps_status ps_cuda_f32_to_bf16(uint16_t *out, const float *in, int64_t n) { NOT_BUILT; }
ps_status ps_cuda_bf16_to_f32(float *out, const uint16_t *in, int64_t n) { NOT_BUILT; }
ps_status ps_cuda_gemm_bf16(float *C, const uint16_t *A, bool trans_a, const uint16_t *B, bool trans_b, int64_t M,
                            int64_t N, int64_t K, float alpha, float beta) {
  NOT_BUILT;
}
ps_status ps_cuda_set_tf32(bool enabled) { NOT_BUILT; }
size_t ps_cuda_bf16_scratch_bytes(void) { return 0; }
