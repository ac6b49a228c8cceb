// The process-wide matmul precision of CUDA tensors (ps_ops.h). CPU kernels
// never read it: they compute in fp32 whatever it says.
#include "ops_internal.h"
#include "ps_cuda.h"

static const char *const precision_names[] = {"fp32", "tf32", "bf16"};
_Static_assert(sizeof precision_names / sizeof precision_names[0] == PS_MATMUL_PRECISION_COUNT, "precision_names");

const char *ps_matmul_precision_name(ps_matmul_precision p) {
  return p >= 0 && p < PS_MATMUL_PRECISION_COUNT ? precision_names[p] : "?";
}

// Read by the CUDA GEMM on every call; set between steps, not during one.
static int g_precision = PS_MATMUL_FP32;

ps_status ps_ops_set_matmul_precision(ps_matmul_precision p) {
  PS_REQUIRE(p >= 0 && p < PS_MATMUL_PRECISION_COUNT, "matmul precision %d out of range (fp32, tf32, bf16)", (int)p);
#if PANSURV_HAVE_CUDA
  PS_TRY(ps_cuda_set_tf32(p == PS_MATMUL_TF32)); // the calling thread's cuBLAS handle; others read g_precision
#else
  if (p != PS_MATMUL_FP32)
    PS_FAIL(PS_ERR_UNSUPPORTED, "matmul precision %s needs the CUDA backend (this build has none; CPU ops compute in "
            "fp32)", precision_names[p]);
#endif
  __atomic_store_n(&g_precision, (int)p, __ATOMIC_RELAXED);
  return PS_OK;
}

ps_matmul_precision ps_ops_get_matmul_precision(void) {
  return (ps_matmul_precision)__atomic_load_n(&g_precision, __ATOMIC_RELAXED);
}
