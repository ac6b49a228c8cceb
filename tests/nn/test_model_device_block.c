// The GPU's orchestration of the model step on the CPU: a model whose conv blocks take the
// device-style path (whole-batch conv, kernel-body statistics/epilogue/backward, BN totals
// through host copies) against the default model (fused CPU block), same seed and batch:
// eta, recon loss, the whole gradient arena, BN running statistics, attention, parameters
// after one AdamW step (on the same gradient) and an eval forward, for BatchNorm and GroupNorm. Normalized error
// <= 1e-5: the paths differ only in the statistics' summation order (~1e-7 relative).
// Also: the kernels' Philox normal (used for the input noise on the device) is bit-identical
// to tensor's ps_rng_normal, so noise is the same on CPU and GPU.
#include <math.h>

#include "model_step.h"
#include "ps_nn_kernels.h"
#include "ps_rng.h"

#define TOL 1e-5

int main(void) {
  uint64_t seed = ps_tu_seed("nn_model_device_block", 5);
  int64_t bad = 0;
  ps_rng r = ps_rng_make(seed, 1234567);
  for (uint64_t j = 0; j < 4096; j++) {
    double a = ps_rng_normal(&r, j), b = k_philox_normal(r.key, r.stream, j);
    bad += memcmp(&a, &b, sizeof a) != 0;
  }
  printf("philox normal: %lld of 4096 differ from ps_rng_normal\n", (long long)bad);
  TU_CHECK(bad == 0, "k_philox_normal differs from ps_rng_normal at %lld indices", (long long)bad);
  for (int groups = 0; groups <= 2; groups += 2) {
    ms_result fused, dev;
    const char *what = groups ? "groupnorm(2)" : "batchnorm";
    TU_OK(ms_run(PS_CPU, false, groups, seed, NULL, &fused));
    TU_OK(ms_run(PS_CPU, true, groups, seed, fused.grad, &dev)); // AdamW on the same gradient
    printf("%s: device-style block vs fused block\n", what);
    ms_compare(what, &dev, &fused, TOL);
    ms_free(&fused);
    ms_free(&dev);
  }
  return ps_tu_finish("nn_model_device_block");
}
