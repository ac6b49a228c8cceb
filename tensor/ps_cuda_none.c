// Built when CUDA is not found or PANSURV_CUDA=OFF: the CUDA entry points say so.
#include "ps_cuda.h"

#define NOT_BUILT PS_FAIL(PS_ERR_UNSUPPORTED, "pansurv was built without CUDA (configure with -DPANSURV_CUDA=ON)")

int ps_cuda_device_count(void) { return 0; }
ps_status ps_cuda_set_device(int device) { NOT_BUILT; }
ps_status ps_cuda_malloc(void **ptr, size_t nbytes) { NOT_BUILT; }
void ps_cuda_free(void *ptr) { (void)ptr; }
ps_status ps_cuda_memset_zero(void *ptr, size_t nbytes) { NOT_BUILT; }
ps_status ps_cuda_copy_h2d(void *dst, const void *src, size_t nbytes) { NOT_BUILT; }
ps_status ps_cuda_copy_d2h(void *dst, const void *src, size_t nbytes) { NOT_BUILT; }
ps_status ps_cuda_synchronize(void) { NOT_BUILT; }
ps_status ps_cuda_relu_f32(float *out, const float *in, size_t n) { NOT_BUILT; }
ps_status ps_cuda_axpby_f32(float *out, float alpha, const float *x, const float *y, size_t n) { NOT_BUILT; }
