// CUDA ops vs their CPU twins on the same seeded inputs, forward and backward:
// normalized error ||gpu - cpu|| / ||cpu||. Tolerances sit next to each check.
// Without a device (or without CUDA) every case but gpu_bind prints SKIP and exits 77 (CTest: skipped).
#define _POSIX_C_SOURCE 200809L // setenv
#include <stdlib.h>
#include <string.h>

#include "gpu_testutil.h"

// fp32 kernels: same formulas, different summation order (cuBLAS blocking,
// block-wide reductions) and FMA contraction: ~1e-7 per op; 1e-5 is the bar.
#define TOL_F32 1e-5

// ||gpu - cpu|| / ||cpu|| of a device tensor d against host h; fails above tol.
static double cmp(const char *what, const ps_tensor *d, const ps_tensor *h, double tol) {
  int64_t n = ps_tensor_numel(h);
  float *buf = malloc((size_t)(n ? n : 1) * sizeof(float));
  if (ps_cuda_synchronize() != PS_OK || ps_cuda_copy_d2h(buf, d->data, (size_t)n * sizeof(float)) != PS_OK) {
    fprintf(stderr, "FAIL %s: %s\n", what, ps_error_message());
    ps_tu_failures++;
    free(buf);
    return 1;
  }
  double e = ps_tu_rel_err(buf, ps_f32(h), n);
  printf("  %-28s rel err %.2e (tol %.0e)\n", what, e, tol);
  TU_CHECK(e <= tol, "%s: ||gpu-cpu||/||cpu|| = %.3e > %.1e", what, e, tol);
  free(buf);
  return e;
}

// Byte-identical device vs host contents.
static void same_bytes(const char *what, const ps_tensor *d, const ps_tensor *h) {
  size_t nb = ps_tensor_nbytes(h);
  unsigned char *buf = malloc(nb ? nb : 1);
  TU_CHECK(ps_cuda_copy_d2h(buf, d->data, nb) == PS_OK, "%s: copy back", what);
  TU_CHECK(memcmp(buf, h->data, nb) == 0, "%s: device bytes differ from the CPU's", what);
  printf("  %-28s bit-identical\n", what);
  free(buf);
}

// ---- gpu_bind: pure logic, runs in every build ---------------------------------------
static int test_bind(void) {
  int d = -1;
  TU_OK(ps_cuda_pick_device(3, 4, 4, "0,1,2,3", NULL, NULL, &d));
  TU_CHECK(d == 3, "4 GPUs visible, local rank 3 -> device 3 (got %d)", d);
  TU_OK(ps_cuda_pick_device(1, 8, 8, NULL, NULL, NULL, &d));
  TU_CHECK(d == 1, "8 GPUs, no CUDA_VISIBLE_DEVICES -> local rank (got %d)", d);
  TU_OK(ps_cuda_pick_device(2, 4, 1, "2", "0,1,2,3", NULL, &d));
  TU_CHECK(d == 0, "srun --gpus-per-task=1: each task sees its GPU as device 0 (got %d)", d);
  TU_OK(ps_cuda_pick_device(2, 4, 1, "2", NULL, "1", &d));
  TU_CHECK(d == 0, "SLURM_GPUS_PER_TASK set -> device 0 (got %d)", d);
  TU_CHECK(ps_cuda_pick_device(2, 4, 2, "0,1", NULL, NULL, &d) == PS_ERR_CONFIG, "4 ranks on 2 GPUs must fail");
  TU_CHECK(strstr(ps_error_message(), "4 ranks on this node but only 2 GPUs") != NULL, "message: %s",
           ps_error_message());
  TU_CHECK(ps_cuda_pick_device(0, 1, 0, NULL, NULL, NULL, &d) == PS_ERR_UNSUPPORTED, "no GPU must fail");
  TU_CHECK(ps_cuda_pick_device(4, 4, 4, NULL, NULL, NULL, &d) == PS_ERR_ARG, "rank outside the node must fail");
  if (ps_cuda_device_count() == 0)
    TU_CHECK(ps_cuda_bind_local_rank(0, 1, &d) != PS_OK, "binding without a device must fail");
  printf("  binding rules hold\n");
  return 0;
}

// ---- gpu_dense -------------------------------------------------------------------------
static int test_dense(void) {
  if (gpu_skip("gpu_dense")) return OT_SKIP;
  // GEMM, all transposes, bias, beta != 0 (accumulating into out).
  for (int t = 0; t < 4; t++) {
    bool ta = t & 1, tb = t & 2;
    ps_tensor a = ta ? OT_RAND(-1, 1, 37, 29) : OT_RAND(-1, 1, 29, 37);
    ps_tensor b = tb ? OT_RAND(-1, 1, 23, 37) : OT_RAND(-1, 1, 37, 23);
    ps_tensor bias = OT_RAND(-1, 1, 23), out = OT_RAND(-1, 1, 29, 23);
    ps_tensor *dout = gpu_dev(&out);
    TU_OK(ps_gemm(dout, gpu_dev(&a), ta, gpu_dev(&b), tb, gpu_dev(&bias), 0.7f, 0.5f));
    TU_OK(ps_gemm(&out, &a, ta, &b, tb, &bias, 0.7f, 0.5f));
    char name[32];
    snprintf(name, sizeof name, "gemm ta=%d tb=%d", ta, tb != 0);
    cmp(name, dout, &out, TOL_F32);
  }
  { // linear forward/backward (gradients accumulate into non-zero buffers)
    ps_tensor in = OT_RAND(-1, 1, 3, 5, 13), w = OT_RAND(-1, 1, 11, 13), b = OT_RAND(-1, 1, 11);
    ps_tensor out = OT_ZEROS(3, 5, 11), g = OT_RAND(-1, 1, 3, 5, 11);
    ps_tensor din = OT_RAND(-1, 1, 3, 5, 13), dw = OT_RAND(-1, 1, 11, 13), db = OT_RAND(-1, 1, 11);
    ps_tensor *Din = gpu_dev(&din), *Dw = gpu_dev(&dw), *Db = gpu_dev(&db), *Out = gpu_dev(&out);
    ps_tensor *In = gpu_dev(&in), *W = gpu_dev(&w);
    TU_OK(ps_linear_forward(Out, In, W, gpu_dev(&b)));
    TU_OK(ps_linear_backward(Din, Dw, Db, gpu_dev(&g), In, W));
    TU_OK(ps_linear_forward(&out, &in, &w, &b));
    TU_OK(ps_linear_backward(&din, &dw, &db, &g, &in, &w));
    cmp("linear out", Out, &out, TOL_F32);
    cmp("linear din", Din, &din, TOL_F32);
    cmp("linear dw", Dw, &dw, TOL_F32);
    cmp("linear db", Db, &db, TOL_F32);
  }
  { // elementwise
    enum { n = 1031 };
    ps_tensor a = OT_RAND(-2, 2, n), b = OT_RAND(-2, 2, n), g = OT_RAND(-1, 1, n), o = OT_ZEROS(n);
    ps_tensor da = OT_RAND(-1, 1, n), db = OT_RAND(-1, 1, n);
    ps_tensor *A = gpu_dev(&a), *B = gpu_dev(&b), *G = gpu_dev(&g), *O = gpu_dev(&o), *DA = gpu_dev(&da), *DB = gpu_dev(&db);
    TU_OK(ps_add_forward(O, A, B));
    TU_OK(ps_add_forward(&o, &a, &b));
    cmp("add", O, &o, TOL_F32);
    TU_OK(ps_mul_forward(O, A, B));
    TU_OK(ps_mul_forward(&o, &a, &b));
    cmp("mul", O, &o, TOL_F32);
    TU_OK(ps_scale_forward(O, A, -1.5f));
    TU_OK(ps_scale_forward(&o, &a, -1.5f));
    cmp("scale", O, &o, TOL_F32);
    TU_OK(ps_add_backward(DA, DB, G));
    TU_OK(ps_add_backward(&da, &db, &g));
    TU_OK(ps_mul_backward(DA, DB, G, A, B));
    TU_OK(ps_mul_backward(&da, &db, &g, &a, &b));
    TU_OK(ps_scale_backward(DA, G, 0.25f));
    TU_OK(ps_scale_backward(&da, &g, 0.25f));
    cmp("add/mul/scale bwd da", DA, &da, TOL_F32);
    cmp("add/mul/scale bwd db", DB, &db, TOL_F32);
    ps_tensor x = OT_RAND(-2, 2, 7, 9), v = OT_RAND(-1, 1, 9), y = OT_ZEROS(7, 9), gy = OT_RAND(-1, 1, 7, 9);
    ps_tensor dx = OT_RAND(-1, 1, 7, 9), dv = OT_RAND(-1, 1, 9);
    ps_tensor *Y = gpu_dev(&y), *DX = gpu_dev(&dx), *DV = gpu_dev(&dv);
    TU_OK(ps_add_rowvec_forward(Y, gpu_dev(&x), gpu_dev(&v)));
    TU_OK(ps_add_rowvec_backward(DX, DV, gpu_dev(&gy)));
    TU_OK(ps_add_rowvec_forward(&y, &x, &v));
    TU_OK(ps_add_rowvec_backward(&dx, &dv, &gy));
    cmp("add_rowvec", Y, &y, TOL_F32);
    cmp("add_rowvec din", DX, &dx, TOL_F32);
    cmp("add_rowvec dv", DV, &dv, TOL_F32);
    // activations, backward from the input and from the output
    for (int act = 0; act < PS_ACT_COUNT; act++) {
      ps_tensor out = OT_ZEROS(n), d1 = OT_RAND(-1, 1, n), d2 = OT_RAND(-1, 1, n);
      ot_away_from_zero(&a, 1e-3f); // relu's kink
      ps_tensor *Ai = gpu_dev(&a), *Out = gpu_dev(&out), *D1 = gpu_dev(&d1), *D2 = gpu_dev(&d2);
      TU_OK(ps_act_forward(Out, Ai, (ps_activation)act));
      TU_OK(ps_act_forward(&out, &a, (ps_activation)act));
      TU_OK(ps_act_backward(D1, G, Ai, NULL, (ps_activation)act));
      TU_OK(ps_act_backward(&d1, &g, &a, NULL, (ps_activation)act));
      char name[48];
      snprintf(name, sizeof name, "%s forward", ps_activation_name((ps_activation)act));
      cmp(name, Out, &out, TOL_F32);
      snprintf(name, sizeof name, "%s backward (in)", ps_activation_name((ps_activation)act));
      cmp(name, D1, &d1, TOL_F32);
      if (act != PS_ACT_GELU) {
        TU_OK(ps_act_backward(D2, G, NULL, Out, (ps_activation)act));
        TU_OK(ps_act_backward(&d2, &g, NULL, &out, (ps_activation)act));
        snprintf(name, sizeof name, "%s backward (out)", ps_activation_name((ps_activation)act));
        cmp(name, D2, &d2, TOL_F32);
      }
    }
  }
  { // masked softmax / log-sum-exp; row 2 fully masked, one row longer than a block
    enum { R = 5, L = 300 };
    ps_tensor x = OT_RAND(-4, 4, R, L), y = OT_ZEROS(R, L), g = OT_RAND(-1, 1, R, L), d = OT_RAND(-1, 1, R, L);
    ps_tensor m = ot_zeros(PS_U8, PS_SHAPE(R, L)), l = OT_ZEROS(R), gl = OT_RAND(-1, 1, R), dl = OT_RAND(-1, 1, R, L);
    for (int64_t i = 0; i < R * L; i++) ps_u8(&m)[i] = (i / L != 2) && (i % 7 != 3);
    ps_tensor *X = gpu_dev(&x), *M = gpu_dev(&m), *Y = gpu_dev(&y), *D = gpu_dev(&d), *Lg = gpu_dev(&l), *DL = gpu_dev(&dl);
    TU_OK(ps_softmax_forward(Y, X, M));
    TU_OK(ps_softmax_forward(&y, &x, &m));
    cmp("softmax masked", Y, &y, TOL_F32);
    TU_OK(ps_softmax_backward(D, gpu_dev(&g), Y));
    TU_OK(ps_softmax_backward(&d, &g, &y));
    cmp("softmax backward", D, &d, TOL_F32);
    TU_OK(ps_logsumexp_forward(Lg, X, NULL));
    TU_OK(ps_logsumexp_forward(&l, &x, NULL));
    cmp("logsumexp", Lg, &l, TOL_F32);
    TU_OK(ps_logsumexp_forward(Lg, X, M));
    TU_OK(ps_logsumexp_forward(&l, &x, &m));
    float lh[R];
    TU_OK(ps_cuda_copy_d2h(lh, Lg->data, sizeof lh));
    TU_CHECK(lh[2] == -INFINITY, "empty row gives -inf on the GPU (got %g)", lh[2]);
    TU_CHECK(ps_f32(&l)[2] == -INFINITY, "empty row gives -inf on the CPU");
    float lc[R]; // the finite rows by norm
    memcpy(lc, ps_f32(&l), sizeof lc);
    lh[2] = lc[2] = 0;
    double le = ps_tu_rel_err(lh, lc, R);
    printf("  %-28s rel err %.2e (tol %.0e)\n", "logsumexp masked", le, TOL_F32);
    TU_CHECK(le <= TOL_F32, "masked logsumexp: %.3e", le);
    TU_OK(ps_logsumexp_backward(DL, gpu_dev(&gl), X, Lg, M));
    TU_OK(ps_logsumexp_backward(&dl, &gl, &x, &l, &m));
    cmp("logsumexp masked bwd", DL, &dl, TOL_F32);
  }
  { // reductions over each axis of (3, 5, 7), sum and mean
    ps_tensor x = OT_RAND(-1, 1, 3, 5, 7);
    for (int axis = 0; axis < 3; axis++)
      for (int op = 0; op < PS_REDUCE_COUNT; op++) {
        int64_t shp[3] = {3, 5, 7}, os[2];
        for (int i = 0, k = 0; i < 3; i++)
          if (i != axis) os[k++] = shp[i];
        ps_tensor y = ot_zeros(PS_F32, 2, os), g = ot_uniform(-1, 1, 2, os), d = OT_RAND(-1, 1, 3, 5, 7);
        ps_tensor *Y = gpu_dev(&y), *D = gpu_dev(&d);
        TU_OK(ps_reduce_forward(Y, gpu_dev(&x), axis, (ps_reduce)op));
        TU_OK(ps_reduce_backward(D, gpu_dev(&g), axis, (ps_reduce)op));
        TU_OK(ps_reduce_forward(&y, &x, axis, (ps_reduce)op));
        TU_OK(ps_reduce_backward(&d, &g, axis, (ps_reduce)op));
        char name[48];
        snprintf(name, sizeof name, "reduce %s axis %d", ps_reduce_name((ps_reduce)op), axis);
        cmp(name, Y, &y, TOL_F32);
        snprintf(name, sizeof name, "reduce %s axis %d bwd", ps_reduce_name((ps_reduce)op), axis);
        cmp(name, D, &d, TOL_F32);
      }
  }
  { // layer norm (D > block size, so the block loops)
    enum { N = 6, D = 333 };
    ps_tensor x = OT_RAND(-2, 2, N, D), gm = OT_RAND(0.5, 1.5, D), bt = OT_RAND(-1, 1, D), y = OT_ZEROS(N, D);
    ps_tensor mu = OT_ZEROS(N), rs = OT_ZEROS(N), g = OT_RAND(-1, 1, N, D);
    ps_tensor dx = OT_RAND(-1, 1, N, D), dg = OT_RAND(-1, 1, D), db = OT_RAND(-1, 1, D);
    ps_tensor *X = gpu_dev(&x), *GM = gpu_dev(&gm), *Y = gpu_dev(&y), *MU = gpu_dev(&mu), *RS = gpu_dev(&rs);
    ps_tensor *DX = gpu_dev(&dx), *DG = gpu_dev(&dg), *DB = gpu_dev(&db);
    TU_OK(ps_layernorm_forward(Y, MU, RS, X, GM, gpu_dev(&bt), 1e-5f));
    TU_OK(ps_layernorm_backward(DX, DG, DB, gpu_dev(&g), X, MU, RS, GM));
    TU_OK(ps_layernorm_forward(&y, &mu, &rs, &x, &gm, &bt, 1e-5f));
    TU_OK(ps_layernorm_backward(&dx, &dg, &db, &g, &x, &mu, &rs, &gm));
    cmp("layernorm out", Y, &y, TOL_F32);
    cmp("layernorm rstd", RS, &rs, TOL_F32);
    cmp("layernorm din", DX, &dx, TOL_F32);
    cmp("layernorm dgamma", DG, &dg, TOL_F32);
    cmp("layernorm dbeta", DB, &db, TOL_F32);
  }
  gpu_dev_free_all();
  return 0;
}

// ---- gpu_spatial: conv, pooling --------------------------------------------------------
static int conv_case(const char *name, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OC, int64_t K,
                     ps_conv2d_params p) {
  gpu_conv_pair r;
  if (gpu_conv_pair_run(&r, N, C, H, W, OC, K, p)) return 1;
  char s[64];
  snprintf(s, sizeof s, "%s out", name);
  cmp(s, r.Out, &r.out, TOL_F32);
  snprintf(s, sizeof s, "%s din", name);
  cmp(s, r.Din, &r.din, TOL_F32);
  snprintf(s, sizeof s, "%s dw", name);
  cmp(s, r.Dw, &r.dw, TOL_F32);
  snprintf(s, sizeof s, "%s db", name);
  cmp(s, r.Db, &r.db, TOL_F32);
  return 0;
}

static int test_spatial(void) {
  if (gpu_skip("gpu_spatial")) return OT_SKIP;
  // Both CUDA convolution paths: cuDNN (when built with it) and the own im2col kernels.
  for (int path = 0; path < 2; path++) {
    if (path == 1) setenv("PANSURV_CONV", "im2col", 1);
    printf("  conv path: %s\n", path ? "im2col + cuBLAS" : (PANSURV_HAVE_CUDNN ? "cuDNN" : "im2col + cuBLAS"));
    if (conv_case("conv 3x3 s1 p1", 2, 3, 9, 8, 4, 3, (ps_conv2d_params){1, 1, 1, 1})) return 1;
    if (conv_case("conv 3x3 s2 p1", 3, 2, 11, 10, 5, 3, (ps_conv2d_params){2, 2, 1, 1})) return 1;
    if (conv_case("conv 3x3 s2x1 p2x0", 2, 3, 12, 9, 4, 3, (ps_conv2d_params){2, 1, 2, 0})) return 1;
    if (conv_case("conv 1x1", 2, 6, 5, 5, 3, 1, (ps_conv2d_params){1, 1, 0, 0})) return 1;
  }
  unsetenv("PANSURV_CONV");
  int ks[2][2] = {{2, 2}, {3, 2}}; // non-overlapping and overlapping windows
  for (int c = 0; c < 2; c++) {
    int k = ks[c][0], s = ks[c][1];
    int64_t N = 2, C = 3, H = 9, W = 11, OH = (H - k) / s + 1, OW = (W - k) / s + 1;
    ps_tensor x = OT_RAND(-1, 1, N, C, H, W), y = OT_ZEROS(N, C, OH, OW);
    ps_tensor am = ot_zeros(PS_I32, PS_SHAPE(N, C, OH, OW)), g = OT_RAND(-1, 1, N, C, OH, OW);
    ps_tensor d = OT_RAND(-1, 1, N, C, H, W);
    ps_tensor *Y = gpu_dev(&y), *AM = gpu_dev(&am), *D = gpu_dev(&d);
    TU_OK(ps_maxpool2d_forward(Y, AM, gpu_dev(&x), k, s));
    TU_OK(ps_maxpool2d_backward(D, gpu_dev(&g), AM));
    TU_OK(ps_maxpool2d_forward(&y, &am, &x, k, s));
    TU_OK(ps_maxpool2d_backward(&d, &g, &am));
    same_bytes(c ? "maxpool k3 s2 out" : "maxpool k2 s2 out", Y, &y);
    same_bytes(c ? "maxpool k3 s2 argmax" : "maxpool k2 s2 argmax", AM, &am);
    cmp(c ? "maxpool k3 s2 din" : "maxpool k2 s2 din", D, &d, TOL_F32);
  }
  ps_tensor x = OT_RAND(-1, 1, 3, 4, 17, 19), y = OT_ZEROS(3, 4), g = OT_RAND(-1, 1, 3, 4);
  ps_tensor d = OT_RAND(-1, 1, 3, 4, 17, 19);
  ps_tensor *Y = gpu_dev(&y), *D = gpu_dev(&d);
  TU_OK(ps_global_avgpool_forward(Y, gpu_dev(&x)));
  TU_OK(ps_global_avgpool_backward(D, gpu_dev(&g)));
  TU_OK(ps_global_avgpool_forward(&y, &x));
  TU_OK(ps_global_avgpool_backward(&d, &g));
  cmp("avgpool", Y, &y, TOL_F32);
  cmp("avgpool backward", D, &d, TOL_F32);
  gpu_dev_free_all();
  return 0;
}

// ---- gpu_batchnorm: all five phases ------------------------------------------------------
static double max_rel(const double *a, const double *b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; i++) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static int test_batchnorm(void) {
  if (gpu_skip("gpu_batchnorm")) return OT_SKIP;
  enum { N = 4, C = 5, H = 6, W = 7 };
  ps_tensor x = OT_RAND(-2, 3, N, C, H, W), gm = OT_RAND(0.5, 1.5, C), bt = OT_RAND(-1, 1, C);
  ps_tensor y = OT_ZEROS(N, C, H, W), mu = OT_ZEROS(C), rs = OT_ZEROS(C), rm = OT_RAND(-1, 1, C),
            rv = OT_RAND(0.5, 2, C);
  ps_tensor *X = gpu_dev(&x), *GM = gpu_dev(&gm), *BT = gpu_dev(&bt), *Y = gpu_dev(&y), *MU = gpu_dev(&mu), *RS = gpu_dev(&rs),
            *RM = gpu_dev(&rm), *RV = gpu_dev(&rv);
  double s[C], q[C], sg[C], qg[C];
  int64_t cnt = 0, cntg = 0;
  TU_OK(ps_batchnorm_stats(sg, qg, &cntg, X));
  TU_OK(ps_batchnorm_stats(s, q, &cnt, &x));
  TU_CHECK(cnt == cntg, "count %lld vs %lld", (long long)cnt, (long long)cntg);
  // Double sums of floats in a different order: ~1e-15 relative.
  TU_CHECK(max_rel(sg, s, C) < 1e-12 && max_rel(qg, q, C) < 1e-12, "stats differ: %g %g", max_rel(sg, s, C),
           max_rel(qg, q, C));
  TU_OK(ps_batchnorm_forward_apply(Y, MU, RS, X, GM, BT, s, q, cnt, 1e-5f, 0.1f, RM, RV));
  TU_OK(ps_batchnorm_forward_apply(&y, &mu, &rs, &x, &gm, &bt, s, q, cnt, 1e-5f, 0.1f, &rm, &rv));
  cmp("bn train out", Y, &y, TOL_F32);
  cmp("bn mean", MU, &mu, TOL_F32);
  cmp("bn rstd", RS, &rs, TOL_F32);
  cmp("bn running mean", RM, &rm, TOL_F32);
  cmp("bn running var", RV, &rv, TOL_F32);
  TU_OK(ps_batchnorm_forward_eval(Y, X, GM, BT, RM, RV, 1e-5f));
  TU_OK(ps_batchnorm_forward_eval(&y, &x, &gm, &bt, &rm, &rv, 1e-5f));
  cmp("bn eval out", Y, &y, TOL_F32);
  ps_tensor g = OT_RAND(-1, 1, N, C, H, W), dx = OT_RAND(-1, 1, N, C, H, W), dg = OT_RAND(-1, 1, C),
            db = OT_RAND(-1, 1, C);
  ps_tensor *G = gpu_dev(&g), *DX = gpu_dev(&dx), *DG = gpu_dev(&dg), *DB = gpu_dev(&db);
  double a[C], b2[C], ag[C], bg[C];
  TU_OK(ps_batchnorm_backward_reduce(ag, bg, G, X, MU, RS));
  TU_OK(ps_batchnorm_backward_reduce(a, b2, &g, &x, &mu, &rs));
  TU_CHECK(max_rel(ag, a, C) < 1e-6 && max_rel(bg, b2, C) < 1e-6, "backward sums differ: %g %g", max_rel(ag, a, C),
           max_rel(bg, b2, C)); // mean/rstd are f32 copies that may differ by 1 ulp between devices
  TU_OK(ps_batchnorm_backward_apply(DX, DG, DB, G, X, MU, RS, GM, a, b2, NULL, NULL, cnt));
  TU_OK(ps_batchnorm_backward_apply(&dx, &dg, &db, &g, &x, &mu, &rs, &gm, a, b2, NULL, NULL, cnt));
  cmp("bn din", DX, &dx, TOL_F32);
  cmp("bn dgamma", DG, &dg, TOL_F32);
  cmp("bn dbeta", DB, &db, TOL_F32);
  gpu_dev_free_all();
  return 0;
}

// ---- gpu_dropout: masks bit-identical to the CPU ------------------------------------------
static int test_dropout(void) {
  if (gpu_skip("gpu_dropout")) return OT_SKIP;
  enum { R = 7, D = 1029 }; // D not a multiple of 4: partial Philox blocks
  ps_tensor x = OT_RAND(-1, 1, R, D), y = OT_ZEROS(R, D), m = ot_zeros(PS_U8, PS_SHAPE(R, D));
  ps_tensor g = OT_RAND(-1, 1, R, D), d = OT_RAND(-1, 1, R, D);
  uint64_t streams[R];
  for (int r = 0; r < R; r++) streams[r] = ps_rng_stream(PS_RNG_DROPOUT, 17, (uint64_t)r * 1000003u, 2);
  ps_tensor *Y = gpu_dev(&y), *M = gpu_dev(&m), *D_ = gpu_dev(&d);
  TU_OK(ps_dropout_forward(Y, M, gpu_dev(&x), 0.3f, ot_seed, streams));
  TU_OK(ps_dropout_backward(D_, gpu_dev(&g), M, 0.3f));
  TU_OK(ps_dropout_forward(&y, &m, &x, 0.3f, ot_seed, streams));
  TU_OK(ps_dropout_backward(&d, &g, &m, 0.3f));
  same_bytes("dropout mask", M, &m);
  same_bytes("dropout out", Y, &y); // x * (1/(1-p)): one IEEE multiply on both sides
  cmp("dropout backward", D_, &d, TOL_F32);
  gpu_dev_free_all();
  return 0;
}

// ---- gpu_optim: AdamW against nn's CPU formula -----------------------------------------------
static int test_optim(void) {
  if (gpu_skip("gpu_optim")) return OT_SKIP;
  enum { n = 4099 };
  ps_tensor p = OT_RAND(-1, 1, n), gr = OT_RAND(-1, 1, n), m = OT_RAND(-0.1, 0.1, n), v = OT_RAND(0, 0.01, n);
  ps_tensor dec = ot_zeros(PS_U8, PS_SHAPE(n));
  for (int i = 0; i < n; i++) ps_u8(&dec)[i] = i % 3 != 0;
  ps_tensor *P = gpu_dev(&p), *M = gpu_dev(&m), *V = gpu_dev(&v), *G = gpu_dev(&gr), *DEC = gpu_dev(&dec);
  const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 1e-2f;
  for (int step = 1; step <= 3; step++) {
    float bc1 = (float)(1.0 - pow(b1, step)), bc2 = (float)(1.0 - pow(b2, step));
    TU_OK(ps_cuda_adamw_step(ps_f32(P), ps_f32(G), ps_f32(M), ps_f32(V), ps_u8(DEC), n, lr, b1, b2, eps, wd, bc1,
                             bc2));
    float *pp = ps_f32(&p), *mm = ps_f32(&m), *vv = ps_f32(&v), *g = ps_f32(&gr);
    for (int i = 0; i < n; i++) { // nn/ps_optim.c's loop
      if (ps_u8(&dec)[i]) pp[i] -= lr * wd * pp[i];
      mm[i] = b1 * mm[i] + (1.0f - b1) * g[i];
      vv[i] = b2 * vv[i] + (1.0f - b2) * g[i] * g[i];
      float mh = mm[i] / bc1, vh = vv[i] / bc2;
      pp[i] -= lr * mh / (sqrtf(vh) + eps);
    }
  }
  cmp("adamw params", P, &p, TOL_F32);
  cmp("adamw m", M, &m, TOL_F32);
  cmp("adamw v", V, &v, TOL_F32);
  double ss = 0, ref = 0;
  TU_OK(ps_cuda_sumsq(&ss, ps_f32(G), n));
  for (int i = 0; i < n; i++) ref += (double)ps_f32(&gr)[i] * ps_f32(&gr)[i];
  TU_CHECK(fabs(ss - ref) <= 1e-12 * ref, "sumsq %.17g vs %.17g", ss, ref);
  gpu_dev_free_all();
  return 0;
}

// ---- gpu_bf16 ------------------------------------------------------------------------------
static uint16_t bf16_rne(float f) { // reference f32 -> bf16, round to nearest even
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); // NaN stays NaN
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static float bf16_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static int test_bf16(void) {
  if (gpu_skip("gpu_bf16")) return OT_SKIP;
  enum { M = 33, N = 47, K = 129 };
  ps_tensor a = OT_RAND(-1, 1, M, K), b = OT_RAND(-1, 1, N, K), c = OT_ZEROS(M, N);
  ps_tensor ah = ot_zeros(PS_U8, PS_SHAPE(M * K * 2)), bh = ot_zeros(PS_U8, PS_SHAPE(N * K * 2));
  uint16_t *ar = (uint16_t *)ah.data, *br = (uint16_t *)bh.data;
  for (int i = 0; i < M * K; i++) ar[i] = bf16_rne(ps_f32(&a)[i]);
  for (int i = 0; i < N * K; i++) br[i] = bf16_rne(ps_f32(&b)[i]);
  ps_tensor *A = gpu_dev(&a), *B = gpu_dev(&b), *Cc = gpu_dev(&c), *AH = gpu_dev(&ah), *BH = gpu_dev(&bh);
  ps_tensor ahd = ah, bhd = bh;
  TU_OK(ps_cuda_f32_to_bf16((uint16_t *)AH->data, ps_f32(A), M * K));
  TU_OK(ps_cuda_f32_to_bf16((uint16_t *)BH->data, ps_f32(B), N * K));
  same_bytes("f32->bf16 (RNE) A", AH, &ahd);
  same_bytes("f32->bf16 (RNE) B", BH, &bhd);
  TU_OK(ps_cuda_gemm_bf16(ps_f32(Cc), (uint16_t *)AH->data, false, (uint16_t *)BH->data, true, M, N, K, 1.0f, 0.0f));
  // Reference 1: the same bf16-rounded inputs in double: only fp32 accumulation differs.
  ps_tensor ref = OT_ZEROS(M, N), full = OT_ZEROS(M, N);
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double s = 0;
      for (int k = 0; k < K; k++) s += (double)bf16_f32(ar[i * K + k]) * bf16_f32(br[j * K + k]);
      ps_f32(&ref)[i * N + j] = (float)s;
    }
  cmp("bf16 gemm vs bf16 inputs", Cc, &ref, TOL_F32);
  // Reference 2: the fp32 GEMM. bf16 keeps 8 mantissa bits (rel. rounding 2^-9 per
  // input); over K products of random sign the errors average out to ~2^-9 relative
  // of the result's norm, so 1e-2 bounds it with margin.
  TU_OK(ps_gemm(&full, &a, false, &b, true, NULL, 1.0f, 0.0f));
  cmp("bf16 gemm vs fp32 gemm", Cc, &full, 1e-2);
  ps_tensor back = OT_ZEROS(M * K), backref = OT_ZEROS(M * K);
  for (int i = 0; i < M * K; i++) ps_f32(&backref)[i] = bf16_f32(ar[i]);
  ps_tensor *Back = gpu_dev(&back);
  TU_OK(ps_cuda_bf16_to_f32(ps_f32(Back), (uint16_t *)AH->data, M * K));
  same_bytes("bf16->f32 exact", Back, &backref);
  gpu_dev_free_all();
  return 0;
}

// ---- gpu_prefetch: pinned buffer, async copy on its own stream, event ordering ---------------
static int test_prefetch(void) {
  if (gpu_skip("gpu_prefetch")) return OT_SKIP;
  enum { n = 1 << 20 };
  float *pinned = NULL, *d = NULL;
  ps_cuda_stream st = NULL;
  ps_cuda_event ev = NULL;
  TU_OK(ps_cuda_host_alloc((void **)&pinned, n * sizeof(float)));
  TU_OK(ps_cuda_malloc((void **)&d, n * sizeof(float)));
  TU_OK(ps_cuda_stream_create(&st));
  TU_OK(ps_cuda_event_create(&ev));
  ps_tu_fill_uniform(pinned, n, -1, 1, ot_seed, 99);
  TU_OK(ps_cuda_copy_h2d_async(d, pinned, n * sizeof(float), st));
  TU_OK(ps_cuda_event_record(ev, st));
  TU_OK(ps_cuda_stream_wait_event(NULL, ev)); // the ops' stream waits for the batch
  ps_tensor src = ps_tensor_wrap(pinned, PS_F32, PS_CPU, 1, (int64_t[]){n});
  ps_tensor dt = ps_tensor_wrap(d, PS_F32, PS_CUDA, 1, (int64_t[]){n}), out = dt;
  float *o = NULL;
  TU_OK(ps_cuda_malloc((void **)&o, n * sizeof(float)));
  out.data = o;
  TU_OK(ps_scale_forward(&out, &dt, 2.0f)); // ordered after the copy by the event
  ps_tensor ref = OT_ZEROS(n);
  TU_OK(ps_scale_forward(&ref, &src, 2.0f));
  cmp("async copy then op", &out, &ref, 0.0); // exact: a copy and one multiply
  ps_cuda_event_destroy(ev);
  ps_cuda_stream_destroy(st);
  ps_cuda_free(d);
  ps_cuda_free(o);
  ps_cuda_host_free(pinned);
  return 0;
}


// ---- gpu_errors: bad inputs fail with a clear message, in every build -------------------
static int test_errors(void) {
  ps_tensor a = OT_RAND(-1, 1, 8), o = OT_ZEROS(8);
  ps_tensor ga = a, go = o;
  ga.device = go.device = PS_CUDA; // host memory tagged cuda
  ps_status s = ps_act_forward(&go, &ga, PS_ACT_RELU);
  if (ps_cuda_device_count() == 0) {
    TU_CHECK(s == PS_ERR_UNSUPPORTED, "cuda tensors without a device: %s", ps_status_name(s));
    TU_CHECK(strstr(ps_error_message(), "CUDA backend") != NULL, "message: %s", ps_error_message());
  } else {
    TU_CHECK(s == PS_ERR_ARG, "host memory tagged cuda must be refused: %s", ps_status_name(s));
    TU_CHECK(strstr(ps_error_message(), "holds host memory") != NULL, "message: %s", ps_error_message());
  }
  TU_CHECK(ps_act_forward(&o, &ga, PS_ACT_RELU) == PS_ERR_ARG, "mixed devices must fail");
  TU_CHECK(strstr(ps_error_message(), "different devices") != NULL, "message: %s", ps_error_message());
  // Argument checks of the exported kernels come before any device work.
  s = ps_cuda_adamw_step(NULL, NULL, NULL, NULL, NULL, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 0.0f, 1.0f);
  TU_CHECK(s == (PANSURV_HAVE_CUDA ? PS_ERR_ARG : PS_ERR_UNSUPPORTED), "adamw with bc1 = 0: %s", ps_status_name(s));
  s = ps_cuda_gemm_bf16(NULL, NULL, false, NULL, false, -1, 2, 2, 1, 0);
  TU_CHECK(s == (PANSURV_HAVE_CUDA ? PS_ERR_ARG : PS_ERR_UNSUPPORTED), "bf16 gemm with M < 0: %s", ps_status_name(s));
  if (!PANSURV_HAVE_CUDA) {
    void *p = NULL;
    TU_CHECK(ps_cuda_host_alloc(&p, 16) == PS_ERR_UNSUPPORTED, "pinned memory without CUDA");
    TU_CHECK(strstr(ps_error_message(), "built without CUDA") != NULL, "message: %s", ps_error_message());
  }
  if (ps_cuda_device_count() > 0) { // a workspace too small for the lowered image
    ps_tensor in = OT_RAND(-1, 1, 1, 2, 6, 6), w = OT_RAND(-1, 1, 3, 2, 3, 3), out = OT_ZEROS(1, 3, 6, 6);
    ps_tensor ws = OT_ZEROS(1);
    ps_conv2d_params cp = {1, 1, 1, 1};
    s = ps_conv2d_forward(&(ps_tensor){0}, &in, &w, NULL, &cp, &ws); // NULL-data out: refused on the CPU side
    TU_CHECK(s == PS_ERR_ARG, "conv with an empty out: %s", ps_status_name(s));
    setenv("PANSURV_CONV", "im2col", 1); // cuDNN's chosen algorithm may need no workspace at all
    s = ps_conv2d_forward(gpu_dev(&out), gpu_dev(&in), gpu_dev(&w), NULL, &cp, gpu_dev(&ws));
    unsetenv("PANSURV_CONV");
    TU_CHECK(s == PS_ERR_ARG, "im2col conv with a 1-float workspace: %s", ps_status_name(s));
    TU_CHECK(strstr(ps_error_message(), "workspace") != NULL, "message: %s", ps_error_message());
    gpu_dev_free_all();
  }
  printf("  bad inputs refused with clear messages\n");
  return 0;
}

static const ot_case cases[] = {
    {"gpu_bind", test_bind},       {"gpu_dense", test_dense}, {"gpu_spatial", test_spatial},
    {"gpu_batchnorm", test_batchnorm}, {"gpu_dropout", test_dropout}, {"gpu_optim", test_optim},
    {"gpu_bf16", test_bf16},       {"gpu_prefetch", test_prefetch}, {"gpu_errors", test_errors}, {NULL, NULL}};

int main(int argc, char **argv) { return ot_main(argc, argv, cases); }
