#include "ps_nn_exec.h"

#include <string.h>

#include "ps_cuda.h"
#include "ps_nn_kernels.h"

// Host executor: OpenMP over items, serial below 2^18 items. The model's small loops (tokens,
// head, attention cores, row gathers: thousands of items of a few flops) cost less than a
// parallel region's fork and barrier, which on a loaded or shared core can take milliseconds
// (measured: fusion 0.5 -> 60 ms per step with a 256-item threshold, 2 threads on 2 busy cores).
// Every item is independent, so the thread count never changes a result.
#define PS_NN_DEFINE_LAUNCH(name, params, args)                                                               \
  ps_status ps_nn_launch_##name(const ps_nn_exec *ex, int64_t n, PS_NN_UNPACK params) {                       \
    if (n <= 0) return PS_OK;                                                                                  \
    if (ex->device == PS_CUDA) return ps_nn_cuda_##name(n, PS_NN_UNPACK args);                                 \
    _Pragma("omp parallel for schedule(static) if (n >= (1 << 18))")                          \
    for (int64_t i = 0; i < n; i++) k_##name(i, PS_NN_UNPACK args);                                            \
    return PS_OK;                                                                                              \
  }
PS_NN_KERNEL_LIST(PS_NN_DEFINE_LAUNCH)

#if !PANSURV_HAVE_CUDA
#pragma GCC diagnostic ignored "-Wunused-parameter" // without CUDA these entry points only return an error
#define PS_NN_DEFINE_NO_CUDA(name, params, args)                                                              \
  ps_status ps_nn_cuda_##name(int64_t n, PS_NN_UNPACK params) {                                                \
    (void)n;                                                                                                   \
    PS_FAIL(PS_ERR_UNSUPPORTED, "nn kernel %s: this build has no CUDA (reconfigure with PANSURV_CUDA=ON)", #name); \
  }
PS_NN_KERNEL_LIST(PS_NN_DEFINE_NO_CUDA)
#endif

ps_status ps_nn_exec_zero(const ps_nn_exec *ex, void *p, size_t nbytes) {
  if (!nbytes) return PS_OK;
  if (ex->device == PS_CUDA) return ps_cuda_memset_zero(p, nbytes);
  memset(p, 0, nbytes);
  return PS_OK;
}
ps_status ps_nn_exec_copy(const ps_nn_exec *ex, void *dst, const void *src, size_t nbytes) {
  if (!nbytes || dst == src) return PS_OK;
  if (ex->device == PS_CUDA) return ps_cuda_copy_d2d(dst, src, nbytes);
  memmove(dst, src, nbytes);
  return PS_OK;
}
ps_status ps_nn_exec_upload(const ps_nn_exec *ex, void *dst, const void *host, size_t nbytes) {
  if (!nbytes || dst == host) return PS_OK;
  if (ex->device == PS_CUDA) return ps_cuda_copy_h2d(dst, host, nbytes);
  memmove(dst, host, nbytes);
  return PS_OK;
}
ps_status ps_nn_exec_download(const ps_nn_exec *ex, void *host, const void *src, size_t nbytes) {
  if (!nbytes || host == src) return PS_OK;
  if (ex->device == PS_CUDA) return ps_cuda_copy_d2h(host, src, nbytes);
  memmove(host, src, nbytes);
  return PS_OK;
}
ps_status ps_nn_exec_sync(const ps_nn_exec *ex) { return ex->device == PS_CUDA ? ps_cuda_synchronize() : PS_OK; }
