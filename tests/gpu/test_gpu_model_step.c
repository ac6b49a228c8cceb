// The whole model step on CUDA against the CPU model: same config (all modalities, one patient
// missing each modality), seed, batch and deta; eta, recon loss, the whole gradient arena, BN
// running statistics, tile/modality attention, the eval forward after one AdamW step, and the
// AdamW step itself (both run on the CPU run's gradient, so it tests the optimizer alone), for
// BatchNorm and GroupNorm. Normalized error ||gpu - cpu|| / ||cpu||.
// Also: checkpoints written from the CUDA model load bit-identically on the CPU and back;
// next-batch prefetch (ps_model_stage) gives bit-identical eta to an unstaged forward, and
// a staged batch that is not the one forwarded is ignored; a checkpoint of the CUDA model has the bytes of the CPU model's (same parameter CRC).
// Without a visible device (or without CUDA) it prints SKIP and exits 77 (CTest: skipped).
#include <math.h>
#include <string.h>
#include <unistd.h>

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
  if (ms_check_device_block(PS_CUDA, "cuda vs cpu", seed, TOL_F32)) return 1;
  // Prefetch: stage(B) while "computing" A, then forward(B) == unstaged forward(B), bit for bit.
  {
    ps_model_config cfg;
    ms_config(&cfg, 0, seed);
    static float om[2][MS_B * MS_G], cl[2][MS_B * MS_C], ti[2][MS_B * MS_K * 3 * MS_S * MS_S];
    static const int64_t pid[MS_B] = {1, 2, 3, 4};
    static const uint8_t yes[MS_B] = {1, 1, 1, 1};
    static const int32_t tc[2][MS_B] = {{3, 1, 2, 0}, {1, 3, 0, 2}};
    ps_model_batch bt[2];
    for (int k = 0; k < 2; k++) {
      ps_tu_fill_uniform(om[k], MS_B * MS_G, -1, 1, seed, 30 + k);
      ps_tu_fill_uniform(cl[k], MS_B * MS_C, -1, 1, seed, 40 + k);
      ps_tu_fill_uniform(ti[k], MS_B * MS_K * 3 * MS_S * MS_S, -1, 1, seed, 50 + k);
      bt[k] = (ps_model_batch){MS_B, pid, om[k], yes, cl[k], yes, ti[k], NULL, tc[k], 0};
    }
    ps_model *m;
    TU_OK(ps_model_create_on(&m, &cfg, PS_CUDA));
    TU_OK(ps_model_plan(m, MS_B));
    float ref[2][MS_B], got[MS_B];
    double rec;
    for (int k = 0; k < 2; k++) TU_OK(ps_model_forward(m, ref[k], &rec, &bt[k], false, 0));
    TU_OK(ps_model_forward(m, got, &rec, &bt[0], false, 0));
    TU_OK(ps_model_stage(m, &bt[1])); // overlaps the (already queued) work of batch 0
    TU_OK(ps_model_forward(m, got, &rec, &bt[1], false, 0));
    TU_CHECK(!memcmp(got, ref[1], sizeof got), "staged forward differs from the unstaged one");
    TU_OK(ps_model_stage(m, &bt[1])); // staged, but batch 0 comes: the staging is ignored
    TU_OK(ps_model_forward(m, got, &rec, &bt[0], false, 0));
    TU_CHECK(!memcmp(got, ref[0], sizeof got), "forward after a mismatched stage differs");
    TU_OK(ps_model_stage(m, &bt[0])); // twice in a row: the second wins
    TU_OK(ps_model_stage(m, &bt[1]));
    TU_OK(ps_model_forward(m, got, &rec, &bt[1], false, 0));
    TU_CHECK(!memcmp(got, ref[1], sizeof got), "forward after two stages differs");
    printf("prefetch: staged forwards match the unstaged ones bit for bit\n");
    ps_model_destroy(m);
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
  // Checkpoints cross devices: CUDA model (with moved parameters) -> file -> CPU model, bit for bit.
  {
    ps_param_table *pb = ps_model_params(b), *pa = ps_model_params(a);
    float *h = malloc((size_t)pb->total * sizeof(float));
    TU_OK(ps_param_table_download(pb, h, false));
    for (int64_t i = 0; i < pb->total; i++) h[i] = 0.5f * h[i] + 0.25f;
    TU_OK(ps_param_table_upload(pb, h));
    char path[128];
    snprintf(path, sizeof path, "/tmp/ps_gpu_ckpt_%d.h5", (int)getpid());
    TU_OK(ps_checkpoint_write(path, b, NULL, NULL, NULL, 0, NULL));
    TU_OK(ps_checkpoint_read(path, a, NULL, NULL));
    TU_CHECK(!memcmp(pa->data, h, (size_t)pa->total * sizeof(float)), "cuda checkpoint read on the cpu differs");
    TU_OK(ps_checkpoint_read(path, b, NULL, NULL)); // and back onto the device
    float *h2 = malloc((size_t)pb->total * sizeof(float));
    TU_OK(ps_param_table_download(pb, h2, false));
    TU_CHECK(!memcmp(h2, h, (size_t)pb->total * sizeof(float)), "checkpoint read onto cuda differs");
    remove(path);
    free(h), free(h2);
  }
  ps_model_destroy(a);
  ps_model_destroy(b);
  return ps_tu_finish("gpu_model_step");
}
