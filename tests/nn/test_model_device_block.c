// The GPU's orchestration of the model step on the CPU: a model whose conv blocks take the
// device-style path (whole-batch conv, kernel-body statistics/epilogue/backward, BN totals
// through host copies) against the default model (fused CPU block), same seed and batch:
// eta, recon loss, the whole gradient arena, BN running statistics, attention, parameters
// after one AdamW step (on the same gradient) and an eval forward, for BatchNorm and GroupNorm. Normalized error
// <= 1e-5: the paths differ only in the statistics' summation order (~1e-7 relative).
// (The input noise body and ps_rng_normal are one function, ps_philox_normal, so noise is the
// same on CPU and GPU by construction.) And the device API's CPU side:
// table download/upload round trip; without a device, a CUDA model or kernel launch is a clear
// error, not a crash.
#include <math.h>

#include "model_step.h"
#include "ps_cuda.h"
#include "ps_nn_exec.h"
#include "ps_nn_kernels.h"
#include "ps_rng.h"

#define TOL 1e-5

int main(void) {
  uint64_t seed = ps_tu_seed("nn_model_device_block", 5);
  if (ms_check_device_block(PS_CPU, "device-style block vs fused block", seed, TOL)) return 1;
  // Download/upload round trip of a parameter table (whole arena, values and gradients).
  {
    ps_model_config cfg;
    ms_config(&cfg, 0, seed);
    ps_model *m;
    TU_OK(ps_model_create(&m, &cfg));
    TU_CHECK(ps_model_device(m) == PS_CPU, "default device is %s", ps_device_name(ps_model_device(m)));
    ps_param_table *pt = ps_model_params(m);
    float *h = malloc((size_t)pt->total * sizeof(float)), *h2 = malloc((size_t)pt->total * sizeof(float));
    TU_OK(ps_param_table_download(pt, h, false));
    TU_CHECK(!memcmp(h, pt->data, (size_t)pt->total * sizeof(float)), "download differs from the arena");
    for (int64_t i = 0; i < pt->total; i++) h[i] += 1.0f;
    TU_OK(ps_param_table_upload(pt, h));
    TU_OK(ps_param_table_download(pt, h2, false));
    TU_CHECK(!memcmp(h, h2, (size_t)pt->total * sizeof(float)), "upload/download round trip differs");
    TU_OK(ps_param_table_download(pt, h2, true)); // fresh gradients are zero
    int64_t nz = 0;
    for (int64_t i = 0; i < pt->total; i++) nz += h2[i] != 0.0f;
    TU_CHECK(nz == 0, "%lld nonzero fresh gradients", (long long)nz);
    TU_CHECK(ps_param_table_set_device(pt, PS_CUDA) != PS_OK, "set_device after alloc accepted");
    // ps_model_stage: refused before planning / beyond the plan, a no-op on the CPU.
    ps_model_batch none = {0};
    TU_CHECK(ps_model_stage(m, &none) != PS_OK, "stage before plan accepted");
    TU_OK(ps_model_plan(m, 2));
    TU_OK(ps_model_stage(m, &none));
    none.b = 3;
    TU_CHECK(ps_model_stage(m, &none) != PS_OK && strstr(ps_error_message(), "exceeds the planned 2"), "stage: %s",
             ps_error_message());
    free(h), free(h2);
    ps_model_destroy(m);
  }
  if (ps_cuda_device_count() == 0) {
    ps_model_config cfg;
    ms_config(&cfg, 0, seed);
    ps_model *m = (ps_model *)&cfg; // must be reset to NULL
    ps_status s = ps_model_create_on(&m, &cfg, PS_CUDA);
    printf("cuda model without a device: %s: %s\n", ps_status_name(s), ps_error_message());
    TU_CHECK(s == PS_ERR_UNSUPPORTED && !m && strstr(ps_error_message(), "no CUDA device"), "cuda model: %s",
             ps_error_message());
    const ps_nn_exec cx = {PS_CUDA};
    float y = 0, x = 1;
    s = ps_nn_launch_add_inplace(&cx, 1, &y, &x);
    printf("cuda kernel launch without a device: %s: %s\n", ps_status_name(s), ps_error_message());
    TU_CHECK(s != PS_OK && strstr(ps_error_message(), "add_inplace"),
             "cuda launch: %s", ps_error_message());
  }
  return ps_tu_finish("nn_model_device_block");
}
