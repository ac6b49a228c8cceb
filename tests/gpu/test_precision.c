// Matmul precision (ps_ops_set_matmul_precision).
// gpu_precision (host side, runs everywhere): default fp32, range check, a
// build without CUDA refuses tf32/bf16 and stays fp32, CPU results do not
// depend on the setting (bit-identical).
// gpu_bf16_ops (skips without a GPU): ps_gemm, ps_linear_* and ps_conv2d_* on
// CUDA tensors under BF16 against the fp32 CPU ops by normalized error
// ||gpu - cpu|| / ||cpu||, a proof that the bf16 path ran (the error is above
// fp32 level), and the bf16 scratch does not grow when a shape repeats.
#define _POSIX_C_SOURCE 200809L // setenv
#include <stdlib.h>
#include <string.h>

#include "gpu_testutil.h"

// bf16 keeps 8 significant bits: rounding an input costs at most 2^-9 relative
// (u = 2^-9 ~ 2e-3, RMS ~ u/sqrt(3)). A product of two rounded inputs carries
// ~sqrt(2) of that; over K terms of random sign the absolute error grows like
// sqrt(K), as the result itself does, so the normalized error stays near
// sqrt(2/3) u ~ 1.6e-3 whatever K. 1e-2 is a 6x margin, and still catches a
// wrong transpose, a wrong leading dimension or a lost bias (errors of O(1)).
#define TOL_BF16 1e-2
// The convolution under BF16: cuDNN with tensor-op math (TF32 inputs: 2^-11)
// or im2col through the bf16 GEMM: at most the GEMM's error; same bound.
#define TOL_BF16_CONV 1e-2
// Rounding 100+ random inputs to bf16 changes a product by far more than fp32
// summation order does (~1e-7): below this the bf16 path did not run.
#define MIN_BF16_EFFECT 1e-4


// ---- gpu_precision: the setter, host side ------------------------------------------------
static int test_precision(void) {
  TU_CHECK(ps_ops_get_matmul_precision() == PS_MATMUL_FP32, "default precision is %s",
           ps_matmul_precision_name(ps_ops_get_matmul_precision()));
  TU_CHECK(!strcmp(ps_matmul_precision_name(PS_MATMUL_BF16), "bf16"), "name of BF16");
  TU_CHECK(!strcmp(ps_matmul_precision_name((ps_matmul_precision)7), "?"), "name of an out-of-range value");
  ps_status s = ps_ops_set_matmul_precision((ps_matmul_precision)7);
  TU_CHECK(s == PS_ERR_ARG && strstr(ps_error_message(), "out of range"), "out of range: %s %s", ps_status_name(s),
           ps_error_message());
  TU_CHECK(ps_ops_get_matmul_precision() == PS_MATMUL_FP32, "a refused value changed the setting");
  TU_OK(ps_ops_set_matmul_precision(PS_MATMUL_FP32));
  // CPU reference product, then the same under each precision this build accepts.
  ps_tensor a = OT_RAND(-1, 1, 17, 40), b = OT_RAND(-1, 1, 23, 40), bias = OT_RAND(-1, 1, 23);
  ps_tensor ref = OT_ZEROS(17, 23), got = OT_ZEROS(17, 23);
  TU_OK(ps_gemm(&ref, &a, false, &b, true, &bias, 1.0f, 0.0f));
  for (int p = PS_MATMUL_TF32; p <= PS_MATMUL_BF16; p++) {
    s = ps_ops_set_matmul_precision((ps_matmul_precision)p);
    if (!PANSURV_HAVE_CUDA) {
      TU_CHECK(s == PS_ERR_UNSUPPORTED && strstr(ps_error_message(), "CUDA"), "%s without CUDA: %s (%s)",
               ps_matmul_precision_name((ps_matmul_precision)p), ps_status_name(s), ps_error_message());
      TU_CHECK(ps_ops_get_matmul_precision() == PS_MATMUL_FP32, "refused %s changed the setting",
               ps_matmul_precision_name((ps_matmul_precision)p));
      continue;
    }
    TU_CHECK(s == PS_OK, "set %s: %s", ps_matmul_precision_name((ps_matmul_precision)p), ps_error_message());
    TU_CHECK(ps_ops_get_matmul_precision() == (ps_matmul_precision)p, "get after set %s",
             ps_matmul_precision_name((ps_matmul_precision)p));
    // CPU ops compute in fp32 whatever the setting: bit-identical to the reference.
    TU_OK(ps_gemm(&got, &a, false, &b, true, &bias, 1.0f, 0.0f));
    TU_CHECK(!memcmp(got.data, ref.data, ps_tensor_nbytes(&ref)), "CPU gemm under %s differs from fp32",
             ps_matmul_precision_name((ps_matmul_precision)p));
  }
  TU_OK(ps_ops_set_matmul_precision(PS_MATMUL_FP32));
  TU_CHECK(ps_ops_get_matmul_precision() == PS_MATMUL_FP32, "back to fp32");
  printf("  setter semantics ok (%s build)\n", PANSURV_HAVE_CUDA ? "CUDA" : "CPU-only");
  return 0;
}

// ---- gpu_bf16_ops ----------------------------------------------------------------------------

// Normalized error of device tensor d against host h; fails above tol (and below lo when lo > 0).
static double cmp(const char *what, const ps_tensor *d, const ps_tensor *h, double tol, double lo) {
  int64_t n = ps_tensor_numel(h);
  float *buf = malloc((size_t)(n ? n : 1) * sizeof(float));
  TU_OK(ps_cuda_synchronize());
  TU_OK(ps_cuda_copy_d2h(buf, d->data, (size_t)n * sizeof(float)));
  double e = ps_tu_rel_err(buf, ps_f32(h), n);
  printf("  %-30s rel err %.2e (tol %.0e%s)\n", what, e, tol, lo > 0 ? ", must exceed 1e-4" : "");
  TU_CHECK(e <= tol, "%s: ||gpu-cpu||/||cpu|| = %.3e > %.1e", what, e, tol);
  if (lo > 0) TU_CHECK(e > lo, "%s: error %.3e is fp32-level: the bf16 path did not run", what, e);
  free(buf);
  return e;
}

static int test_bf16_ops(void) {
  if (gpu_skip("gpu_bf16_ops")) return OT_SKIP;
  TU_OK(ps_ops_set_matmul_precision(PS_MATMUL_BF16));
  // GEMM, all four transpose combinations, with bias and beta.
  enum { M = 37, N = 53, K = 300 };
  for (int t = 0; t < 4; t++) {
    bool ta = t & 1, tb = t & 2;
    ps_tensor a = ta ? OT_RAND(-1, 1, K, M) : OT_RAND(-1, 1, M, K);
    ps_tensor b = tb ? OT_RAND(-1, 1, N, K) : OT_RAND(-1, 1, K, N);
    ps_tensor bias = OT_RAND(-1, 1, N), c = OT_RAND(-1, 1, M, N);
    ps_tensor *C = gpu_dev(&c);
    TU_OK(ps_gemm(C, gpu_dev(&a), ta, gpu_dev(&b), tb, gpu_dev(&bias), 1.5f, 0.5f));
    TU_OK(ps_gemm(&c, &a, ta, &b, tb, &bias, 1.5f, 0.5f));
    char what[64];
    snprintf(what, sizeof what, "bf16 gemm ta=%d tb=%d", ta, tb != 0);
    cmp(what, C, &c, TOL_BF16, MIN_BF16_EFFECT);
  }
  // The scratch grows to the largest GEMM and then stays (no cudaMalloc per call).
  size_t cap = ps_cuda_bf16_scratch_bytes();
  TU_CHECK(cap >= (size_t)(M * K + K * N) * 2, "bf16 scratch %zu bytes < the inputs of one GEMM", cap);
  {
    ps_tensor a = OT_RAND(-1, 1, M, K), b = OT_RAND(-1, 1, K, N), c = OT_ZEROS(M, N);
    ps_tensor *A = gpu_dev(&a), *B = gpu_dev(&b), *C = gpu_dev(&c);
    for (int r = 0; r < 3; r++) TU_OK(ps_gemm(C, A, false, B, false, NULL, 1.0f, 0.0f));
    TU_CHECK(ps_cuda_bf16_scratch_bytes() == cap, "bf16 scratch grew on a repeated shape (%zu -> %zu)", cap,
             ps_cuda_bf16_scratch_bytes());
  }
  // Linear forward and backward (dw, db, din accumulate).
  {
    enum { R = 40, DI = 200, DO = 30 };
    ps_tensor x = OT_RAND(-1, 1, R, DI), w = OT_RAND(-1, 1, DO, DI), b = OT_RAND(-1, 1, DO);
    ps_tensor y = OT_ZEROS(R, DO), g = OT_RAND(-1, 1, R, DO);
    ps_tensor dx = OT_RAND(-1, 1, R, DI), dw = OT_RAND(-1, 1, DO, DI), db = OT_RAND(-1, 1, DO);
    ps_tensor *X = gpu_dev(&x), *Wt = gpu_dev(&w), *Y = gpu_dev(&y), *DX = gpu_dev(&dx), *DW = gpu_dev(&dw), *DB = gpu_dev(&db);
    TU_OK(ps_linear_forward(Y, X, Wt, gpu_dev(&b)));
    TU_OK(ps_linear_backward(DX, DW, DB, gpu_dev(&g), X, Wt));
    TU_OK(ps_linear_forward(&y, &x, &w, &b));
    TU_OK(ps_linear_backward(&dx, &dw, &db, &g, &x, &w));
    cmp("bf16 linear out", Y, &y, TOL_BF16, MIN_BF16_EFFECT);
    cmp("bf16 linear din", DX, &dx, TOL_BF16, 0);
    cmp("bf16 linear dw", DW, &dw, TOL_BF16, 0);
    cmp("bf16 linear db (fp32 reduction)", DB, &db, 1e-5, 0); // column sums stay fp32
  }
  // Convolution: cuDNN (when built) and the im2col path.
  for (int path = 0; path < 2; path++) {
    if (path == 1) setenv("PANSURV_CONV", "im2col", 1);
    gpu_conv_pair r;
    if (gpu_conv_pair_run(&r, 2, 8, 12, 10, 16, 3, (ps_conv2d_params){1, 1, 1, 1})) return 1;
    const char *name = path ? "im2col" : (PANSURV_HAVE_CUDNN ? "cudnn" : "im2col");
    char s[64];
    snprintf(s, sizeof s, "bf16 conv (%s) out", name);
    cmp(s, r.Out, &r.out, TOL_BF16_CONV, path ? MIN_BF16_EFFECT : 0); // cuDNN may pick a non-tensor-op algorithm
    snprintf(s, sizeof s, "bf16 conv (%s) din", name);
    cmp(s, r.Din, &r.din, TOL_BF16_CONV, 0);
    snprintf(s, sizeof s, "bf16 conv (%s) dw", name);
    cmp(s, r.Dw, &r.dw, TOL_BF16_CONV, 0);
    snprintf(s, sizeof s, "bf16 conv (%s) db", name);
    cmp(s, r.Db, &r.db, 1e-5, 0); // per-channel sums in double
  }
  unsetenv("PANSURV_CONV");
  // Back to fp32: the same GEMM is fp32-exact again.
  TU_OK(ps_ops_set_matmul_precision(PS_MATMUL_FP32));
  {
    ps_tensor a = OT_RAND(-1, 1, M, K), b = OT_RAND(-1, 1, K, N), c = OT_ZEROS(M, N);
    ps_tensor *C = gpu_dev(&c);
    TU_OK(ps_gemm(C, gpu_dev(&a), false, gpu_dev(&b), false, NULL, 1.0f, 0.0f));
    TU_OK(ps_gemm(&c, &a, false, &b, false, NULL, 1.0f, 0.0f));
    cmp("fp32 gemm after bf16", C, &c, 1e-5, 0);
  }
  gpu_dev_free_all();
  return 0;
}

static const ot_case cases[] = {{"gpu_precision", test_precision}, {"gpu_bf16_ops", test_bf16_ops}, {NULL, NULL}};
int main(int argc, char **argv) { return ot_main(argc, argv, cases); }
