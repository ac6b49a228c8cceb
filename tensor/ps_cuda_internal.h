// Shared by the CUDA translation units (*.cu): error checks, launch geometry,
// the per-thread cuBLAS handle and a per-thread device scratch buffer.
// CUDA C++ only; not a public header.
#ifndef PS_CUDA_INTERNAL_H
#define PS_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "ps_status.h"

#define PS_CUDA_CHECK(call) \
  PS_CHECK_GEN(call, cudaError_t, r == cudaSuccess, PS_ERR_CUDA, cudaGetErrorString(r))
#define PS_CUBLAS_CHECK(call) \
  PS_CHECK_GEN(call, cublasStatus_t, r == CUBLAS_STATUS_SUCCESS, PS_ERR_CUDA, cublasGetStatusString(r))
// After a kernel launch: launch-configuration errors (no device, bad grid).
#define PS_CUDA_LAUNCHED() PS_CUDA_CHECK(cudaGetLastError())

// Grid-stride loops: blocks capped so huge tensors reuse threads.
#define PS_CUDA_BLOCK 256
static inline unsigned ps_cuda_grid(int64_t n) {
  int64_t g = (n + PS_CUDA_BLOCK - 1) / PS_CUDA_BLOCK;
  return (unsigned)(g > 65535 ? 65535 : (g > 0 ? g : 1));
}
// One block per row, capped at the grid's x limit (kernels loop over rows).
static inline unsigned ps_cuda_rows_grid(int64_t rows) {
  return (unsigned)(rows > 2147483647 ? 2147483647 : (rows > 0 ? rows : 1));
}
#define PS_CUDA_FOR(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// The calling thread's cuBLAS handle, created once (on the current device).
ps_status ps_cuda_blas_handle(cublasHandle_t *h);
// Whether this thread's GEMMs/convolutions may use TF32 (ps_cuda_set_tf32).
bool ps_cuda_tf32_enabled(void);
// The calling thread's device scratch buffers, one per slot, each of at least
// nbytes (grows, never shrinks; cudaMalloc only on growth, i.e. on the first
// steps). Valid until the next call for the same slot from this thread that
// needs more; ops use them on the default stream in order. The BF16 slot holds
// a GEMM's bf16 inputs, separate because an op holding the OPS slot (conv's
// im2col) calls the GEMM.
typedef enum { PS_CUDA_SCRATCH_OPS = 0, PS_CUDA_SCRATCH_BF16, PS_CUDA_SCRATCH_COUNT } ps_cuda_scratch_slot;
ps_status ps_cuda_scratch_in(ps_cuda_scratch_slot slot, size_t nbytes, void **p);
size_t ps_cuda_scratch_capacity(ps_cuda_scratch_slot slot);
static inline ps_status ps_cuda_scratch(size_t nbytes, void **p) {
  return ps_cuda_scratch_in(PS_CUDA_SCRATCH_OPS, nbytes, p);
}

// Block-wide sums/max (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. sh: __shared__ scratch of 32 elements.
template <typename T> __device__ inline T ps_warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
template <typename T> __device__ inline T ps_block_sum(T v, T *sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = ps_warp_sum(v);
  __syncthreads(); // sh may still be read by a previous call
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : (T)0;
  if (w == 0) v = ps_warp_sum(v);
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  return sh[0];
}
__device__ inline float ps_block_max(float v, float *sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : -INFINITY;
  if (w == 0)
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  return sh[0];
}

#endif
