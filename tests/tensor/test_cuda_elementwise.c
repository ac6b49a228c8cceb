// The CUDA translation unit's kernels (relu, axpby) against the CPU ops on the
// same inputs. Prints SKIP and exits 0 where no device is visible or the build
// has no CUDA; runs for real on a GPU machine.
#include "opstest.h"
#include "ps_cuda.h"

enum { N = 100003 }; // not a multiple of any block size: exercises the tail

static int run_on_device(void) {
  ps_tensor x = OT_RAND(-2, 2, N), y = OT_RAND(-2, 2, N), cpu = OT_ZEROS(N), gpu = OT_ZEROS(N);
  ps_f32(&x)[0] = 0.0f;
  ps_f32(&x)[1] = -0.0f;
  float *dx = NULL, *dy = NULL, *dout = NULL;
  const size_t nb = N * sizeof(float);
  ps_status s = ps_cuda_malloc((void **)&dx, nb);
  if (s == PS_OK) s = ps_cuda_malloc((void **)&dy, nb);
  if (s == PS_OK) s = ps_cuda_malloc((void **)&dout, nb);
  if (s == PS_OK) s = ps_cuda_copy_h2d(dx, x.data, nb);
  if (s == PS_OK) s = ps_cuda_copy_h2d(dy, y.data, nb);
  // relu: exact (a select, no arithmetic).
  if (s == PS_OK) s = ps_cuda_relu_f32(dout, dx, N);
  if (s == PS_OK) s = ps_cuda_synchronize();
  if (s == PS_OK) s = ps_cuda_copy_d2h(gpu.data, dout, nb);
  if (s == PS_OK) s = ps_act_forward(&cpu, &x, PS_ACT_RELU);
  if (s == PS_OK) {
    int64_t bad = 0;
    for (int64_t i = 0; i < N; i++) bad += ps_f32(&gpu)[i] != ps_f32(&cpu)[i];
    printf("  relu: %lld of %d differ from the CPU op\n", (long long)bad, N);
    TU_CHECK(bad == 0, "relu: %lld elements differ", (long long)bad);
  }
  // axpby: the GPU may fuse alpha*x + y into one FMA (one rounding instead of
  // two), so allow a normalized error of a few float ulps: 1e-6.
  const float alpha = -0.75f;
  if (s == PS_OK) s = ps_cuda_axpby_f32(dout, alpha, dx, dy, N);
  if (s == PS_OK) s = ps_cuda_synchronize();
  if (s == PS_OK) s = ps_cuda_copy_d2h(gpu.data, dout, nb);
  if (s == PS_OK) s = ps_scale_forward(&cpu, &x, alpha);
  if (s == PS_OK) s = ps_add_forward(&cpu, &cpu, &y);
  if (s == PS_OK) {
    double e = ps_tu_rel_err(ps_f32(&gpu), ps_f32(&cpu), N);
    printf("  axpby: normalized error vs CPU %.3e\n", e);
    TU_CHECK(e < 1e-6, "axpby: normalized error %.3e >= 1e-6", e);
  }
  ps_cuda_free(dx);
  ps_cuda_free(dy);
  ps_cuda_free(dout);
  if (s != PS_OK) {
    fprintf(stderr, "FAIL: %s\n", ps_error_message());
    return 1;
  }
  return 0;
}

static int test_cuda_elementwise(void) {
  int ndev = ps_cuda_device_count();
  if (!PANSURV_HAVE_CUDA || ndev == 0) {
    printf("SKIP tensor_cuda_elementwise: %s\n",
           PANSURV_HAVE_CUDA ? "no CUDA device visible" : "built without CUDA (PANSURV_CUDA=OFF or not found)");
    return 0;
  }
  printf("  %d CUDA device(s); using device 0\n", ndev);
  TU_OK(ps_cuda_set_device(0));
  return run_on_device();
}

static const ot_case cases[] = {{"tensor_cuda_elementwise", test_cuda_elementwise}, {NULL, NULL}};

int main(int argc, char **argv) { return ot_main(argc, argv, cases); }
