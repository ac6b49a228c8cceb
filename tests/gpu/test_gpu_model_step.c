// The whole model step on CUDA against the CPU model: same config (all modalities, one patient
// missing each modality), seed, batch and deta; eta, recon loss, the whole gradient arena, BN
// running statistics, tile/modality attention, the eval forward after one AdamW step, and the
// AdamW step itself (both run on the CPU run's gradient, so it tests the optimizer alone), for
// BatchNorm and GroupNorm. Normalized error ||gpu - cpu|| / ||cpu||.
// Also: a checkpoint of the CUDA model has the bytes of the CPU model's (same parameter CRC).
// Without a visible device (or without CUDA) it prints SKIP and exits 77 (CTest: skipped).
#include <math.h>

#include "model_step.h"
#include "ps_checkpoint.h"
#include "ps_cuda.h"

// fp32 with TF32 off (cuBLAS plain fp32, cuDNN FMA math): same formulas, different summation
// order (cuBLAS/cuDNN blocking and algorithms) and FMA contraction in the bodies, ~1e-7 per op
// through ~30 ops and three BatchNorms: 1e-5 is the bar.
#define TOL_F32 1e-5

int main(void) {
  if (ps_cuda_device_count() == 0) {
    printf("SKIP gpu_model_step: %s\n",
           PANSURV_HAVE_CUDA ? "no CUDA device visible (no GPU or driver)" : "built without CUDA");
    return 77;
  }
  uint64_t seed = ps_tu_seed("gpu_model_step", 21);
  for (int groups = 0; groups <= 2; groups += 2) {
    const char *what = groups ? "groupnorm(2)" : "batchnorm";
    ms_result cpu, gpu;
    TU_OK(ms_run(PS_CPU, false, groups, seed, NULL, &cpu));
    TU_OK(ms_run(PS_CUDA, true, groups, seed, cpu.grad, &gpu));
    printf("%s: cuda vs cpu\n", what);
    ms_compare(what, &gpu, &cpu, TOL_F32);
    ms_free(&cpu);
    ms_free(&gpu);
  }
  // Same initial values on both devices: the checkpoint CRC of the fresh models agrees.
  ps_model_config cfg;
  ms_config(&cfg, 0, seed);
  ps_model *a = NULL, *b = NULL;
  TU_OK(ps_model_create_on(&a, &cfg, PS_CPU));
  TU_OK(ps_model_create_on(&b, &cfg, PS_CUDA));
  uint32_t ca = ps_checkpoint_param_crc(ps_model_params(a)), cb = ps_checkpoint_param_crc(ps_model_params(b));
  printf("initial parameter CRC cpu %08x cuda %08x\n", ca, cb);
  TU_CHECK(ca == cb && ca != 0, "initial parameters differ: crc %08x vs %08x", ca, cb);
  ps_model_destroy(a);
  ps_model_destroy(b);
  return ps_tu_finish("gpu_model_step");
}
