// ps_cuda: the host-side interface to the CUDA backend. Callable from plain C
// in every build; without CUDA (PANSURV_HAVE_CUDA=0) every call reports
// PS_ERR_UNSUPPORTED and ps_cuda_device_count() reports 0 devices.
#ifndef PS_CUDA_H
#define PS_CUDA_H

#include <stddef.h>

#include "ps_status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Number of visible devices. Any CUDA error (no driver, no device:
// cudaErrorInsufficientDriver=35 on GPU-less machines) counts as 0 devices.
int ps_cuda_device_count(void);
ps_status ps_cuda_set_device(int device);
ps_status ps_cuda_malloc(void **ptr, size_t nbytes);
void ps_cuda_free(void *ptr);
ps_status ps_cuda_memset_zero(void *ptr, size_t nbytes);
ps_status ps_cuda_copy_h2d(void *dst, const void *src, size_t nbytes);
ps_status ps_cuda_copy_d2h(void *dst, const void *src, size_t nbytes);
ps_status ps_cuda_synchronize(void);
// out[i] = max(in[i], 0) on device buffers of n floats (the first elementwise kernel).
ps_status ps_cuda_relu_f32(float *out, const float *in, size_t n);
// out[i] = alpha * x[i] + y[i] on device buffers of n floats.
ps_status ps_cuda_axpby_f32(float *out, float alpha, const float *x, const float *y, size_t n);

#ifdef __cplusplus
}
#endif
#endif
