// Device dispatch for the tensor ops: decides whether a call runs on the CPU or
// through the CUDA launchers (ps_cuda_ops.h). Compiled in every build.
#include "ops_internal.h"
#include "ps_cuda.h"

#if PANSURV_HAVE_CUDA
// Cached: the visible device count does not change within a process.
static int cuda_devices(void) {
  static int n = -1;
  int v = __atomic_load_n(&n, __ATOMIC_RELAXED);
  if (v < 0) {
    v = ps_cuda_device_count();
    __atomic_store_n(&n, v, __ATOMIC_RELAXED);
  }
  return v;
}
#endif

ps_status ps_ops_device_of(const char *op, const char *file, int line, int n, const ps_tensor *const *ts,
                           ps_device *dev) {
  *dev = PS_CPU;
  bool any = false, all = true;
  for (int i = 0; i < n; i++) {
    if (!ts[i]) continue;
    any |= ts[i]->device == PS_CUDA;
    all &= ts[i]->device == PS_CUDA;
  }
  if (!any || !all) return ps_ops_device_check(op, file, line, n, ts); // CPU, or mixed devices named there
#if PANSURV_HAVE_CUDA
  if (cuda_devices() == 0)
    return ps_error_set(PS_ERR_UNSUPPORTED, file, line,
                        "%s: tensors are on cuda but the CUDA backend sees no device (no GPU or driver visible)", op);
  // A tensor tagged cuda over host memory would fault inside a kernel: refuse it here.
  for (int i = 0; i < n; i++)
    if (ts[i] && ts[i]->data && ps_tensor_numel(ts[i]) > 0 && !ps_cuda_is_device_pointer(ts[i]->data))
      return ps_error_set(PS_ERR_ARG, file, line, "%s: tensor #%d is tagged cuda but holds host memory", op, i);
  *dev = PS_CUDA;
  return PS_OK;
#else
  return ps_error_set(PS_ERR_UNSUPPORTED, file, line,
                      "%s: tensors are on cuda but this build has no CUDA backend (configure with -DPANSURV_CUDA=ON)",
                      op);
#endif
}
