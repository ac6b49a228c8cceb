// CUDA executor for the kernel bodies: one grid-stride __global__ wrapper per body, launched
// on the legacy default stream (in order with the tensor ops), launch errors checked with
// file:line. Built only with PANSURV_HAVE_CUDA=1.
#include "ps_cuda_internal.h"
#include "ps_nn_exec.h"
#include "ps_nn_kernels.h"

#define PS_NN_DEFINE_CUDA(name, params, args)                                                                 \
  __global__ void g_##name(int64_t n, PS_NN_UNPACK params) {                                                   \
    PS_CUDA_FOR(i, n) k_##name(i, PS_NN_UNPACK args);                                                          \
  }                                                                                                            \
  extern "C" ps_status ps_nn_cuda_##name(int64_t n, PS_NN_UNPACK params) {                                     \
    if (n <= 0) return PS_OK;                                                                                  \
    g_##name<<<ps_cuda_grid(n), PS_CUDA_BLOCK>>>(n, PS_NN_UNPACK args);                                        \
    cudaError_t r = cudaGetLastError();                                                                        \
    if (r != cudaSuccess)                                                                                      \
      return ps_error_set(PS_ERR_CUDA, __FILE__, __LINE__, "nn kernel %s (%lld items): launch failed: %s", #name, \
                          (long long)n, cudaGetErrorString(r));                                                \
    return PS_OK;                                                                                              \
  }
PS_NN_KERNEL_LIST(PS_NN_DEFINE_CUDA)
