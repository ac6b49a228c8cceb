// The CUDA translation unit of tensor/: device allocator, copies and the first
// elementwise kernels. Compiled only when CUDA is found (PANSURV_HAVE_CUDA=1).
#include <cuda_runtime.h>

#include "ps_cuda.h"

#define PS_CUDA_CHECK(call) \
  PS_CHECK_GEN(call, cudaError_t, r == cudaSuccess, PS_ERR_CUDA, cudaGetErrorString(r))

extern "C" int ps_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

extern "C" ps_status ps_cuda_set_device(int device) {
  PS_CUDA_CHECK(cudaSetDevice(device));
  return PS_OK;
}

extern "C" ps_status ps_cuda_malloc(void **ptr, size_t nbytes) {
  PS_CUDA_CHECK(cudaMalloc(ptr, nbytes));
  return PS_OK;
}

extern "C" void ps_cuda_free(void *ptr) { cudaFree(ptr); }

extern "C" ps_status ps_cuda_memset_zero(void *ptr, size_t nbytes) {
  PS_CUDA_CHECK(cudaMemset(ptr, 0, nbytes));
  return PS_OK;
}

extern "C" ps_status ps_cuda_copy_h2d(void *dst, const void *src, size_t nbytes) {
  PS_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyHostToDevice));
  return PS_OK;
}

extern "C" ps_status ps_cuda_copy_d2h(void *dst, const void *src, size_t nbytes) {
  PS_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDeviceToHost));
  return PS_OK;
}

extern "C" ps_status ps_cuda_synchronize(void) {
  PS_CUDA_CHECK(cudaDeviceSynchronize());
  return PS_OK;
}

__global__ static void relu_kernel(float *out, const float *in, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

__global__ static void axpby_kernel(float *out, float alpha, const float *x, const float *y, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = alpha * x[i] + y[i];
}

static unsigned grid_for(size_t n, unsigned block) {
  size_t g = (n + block - 1) / block;
  return (unsigned)(g > 65535 ? 65535 : (g ? g : 1));
}

extern "C" ps_status ps_cuda_relu_f32(float *out, const float *in, size_t n) {
  relu_kernel<<<grid_for(n, 256), 256>>>(out, in, n);
  PS_CUDA_CHECK(cudaGetLastError());
  return PS_OK;
}

extern "C" ps_status ps_cuda_axpby_f32(float *out, float alpha, const float *x, const float *y, size_t n) {
  axpby_kernel<<<grid_for(n, 256), 256>>>(out, alpha, x, y, n);
  PS_CUDA_CHECK(cudaGetLastError());
  return PS_OK;
}
