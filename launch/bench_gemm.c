// pansurv bench gemm: GFLOP/s of the tensor/ GEMM, linear and conv2d wrappers
// next to raw cblas_sgemm of the equivalent GEMM shape, nccl-tests style
// (warm-up, median of timed iterations, #wrong from a validation against
// double-precision reference values at sampled outputs).
//
// Dimension letters: M, N, K GEMM sizes; B batch; C/OC channels; H/W image;
// P = OH*OW output positions; CKK = C*3*3 the lowered inner dimension.
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops_conv_kernels.h" // ps_conv_force_kernel: --conv-kernel compares the conv GEMM paths
#include "ps_commands.h"
#include "ps_ops.h"
#include "ps_rng.h"

// conv_dx / conv_dw: ps_conv2d_backward with only din / only dw (+db) requested.
typedef enum {
  BENCH_GEMM = 0,
  BENCH_LINEAR,
  BENCH_CONV,
  BENCH_CONV_DX,
  BENCH_CONV_DW,
  BENCH_CONV_BWD,
  BENCH_KIND_COUNT
} bench_kind;
static const char *const bench_kind_names[] = {"gemm", "linear", "conv2d", "conv_dx", "conv_dw", "conv_bwd"};
_Static_assert(sizeof bench_kind_names / sizeof bench_kind_names[0] == BENCH_KIND_COUNT, "bench kind names");

typedef struct {
  bench_kind kind;
  int64_t M, N, K; // gemm / linear: out (M, N) = op(a) (M, K) · op(b) (K, N); linear: M rows, K=Din, N=Dout
  bool ta, tb, bias;
  int64_t B, C, H, W, OC; // conv2d 3x3, stride 1, pad 1
} bench_case;

// The reference model's shapes: GEMMs of its heads, the tile encoder's convs
// (3->32 at 64x64, 32->64 at 32x32, 64->128 at 16x16; B = --batch tiles, 64
// by default, 1024 in a training step of 64 patients x 16 tiles).
static const bench_case cases[] = {
    {BENCH_GEMM, 1024, 1024, 1024, false, false, false, 0, 0, 0, 0, 0},
    {BENCH_GEMM, 512, 2048, 512, false, true, false, 0, 0, 0, 0, 0},
    {BENCH_GEMM, 2048, 512, 256, true, false, false, 0, 0, 0, 0, 0},
    {BENCH_GEMM, 4096, 256, 512, false, false, true, 0, 0, 0, 0, 0},
    {BENCH_LINEAR, 4096, 256, 512, false, true, true, 0, 0, 0, 0, 0},
    {BENCH_LINEAR, 8192, 128, 128, false, true, true, 0, 0, 0, 0, 0},
    {BENCH_CONV, 0, 0, 0, false, false, true, 64, 3, 64, 64, 32},
    {BENCH_CONV, 0, 0, 0, false, false, true, 64, 32, 32, 32, 64},
    {BENCH_CONV, 0, 0, 0, false, false, true, 64, 64, 16, 16, 128},
    {BENCH_CONV_DX, 0, 0, 0, false, false, true, 64, 3, 64, 64, 32},
    {BENCH_CONV_DX, 0, 0, 0, false, false, true, 64, 32, 32, 32, 64},
    {BENCH_CONV_DX, 0, 0, 0, false, false, true, 64, 64, 16, 16, 128},
    {BENCH_CONV_DW, 0, 0, 0, false, false, true, 64, 3, 64, 64, 32},
    {BENCH_CONV_DW, 0, 0, 0, false, false, true, 64, 32, 32, 32, 64},
    {BENCH_CONV_DW, 0, 0, 0, false, false, true, 64, 64, 16, 16, 128},
    {BENCH_CONV_BWD, 0, 0, 0, false, false, true, 64, 3, 64, 64, 32},
    {BENCH_CONV_BWD, 0, 0, 0, false, false, true, 64, 32, 32, 32, 64},
    {BENCH_CONV_BWD, 0, 0, 0, false, false, true, 64, 64, 16, 16, 128},
};

// --clock cpu: CPU time of the calling thread, which on a shared, oversubscribed
// machine leaves out the time the benchmark was descheduled. At 1 thread all the
// work runs on the calling thread; process CPU time would also count OpenBLAS'
// idle pool thread, seen spinning in sched_yield for ~20% of the samples (perf).
static clockid_t bench_clock = CLOCK_MONOTONIC;

static double now_us(void) {
  struct timespec ts;
  clock_gettime(bench_clock, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static float *alloc_uniform(int64_t n, uint64_t stream) {
  size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) / 64 * 64;
  float *p = aligned_alloc(64, bytes);
  if (!p) return NULL;
  ps_rng r = ps_rng_make(20261122, ps_rng_stream(PS_RNG_TEST, stream, 0, 0));
  for (int64_t i = 0; i < n; i++) p[i] = 2.0f * ps_rng_uniform(&r, (uint64_t)i) - 1.0f;
  return p;
}

// One raw cblas_sgemm: C (M, N) = op(A) · op(B).
typedef struct {
  int M, N, K;
  bool ta, tb;
  float *a, *b, *c;
} raw_gemm;

typedef struct {
  const bench_case *c;
  ps_tensor out, a, b, bias, ws; // conv_bwd: out is dout
  ps_tensor din, dw, db;         // conv_bwd only
  ps_conv2d_params p;
  raw_gemm raw[2]; // the equivalent GEMM(s); conv_bwd has two (dw and dcol), conv_dx/conv_dw one
  int nraw;
} bench_state;

static ps_status run_op(bench_state *s) {
  switch (s->c->kind) {
  case BENCH_GEMM: return ps_gemm(&s->out, &s->a, s->c->ta, &s->b, s->c->tb, s->c->bias ? &s->bias : NULL, 1, 0);
  case BENCH_LINEAR: return ps_linear_forward(&s->out, &s->a, &s->b, &s->bias);
  case BENCH_CONV: return ps_conv2d_forward(&s->out, &s->a, &s->b, &s->bias, &s->p, &s->ws);
  case BENCH_CONV_DX: return ps_conv2d_backward(&s->din, NULL, NULL, &s->out, &s->a, &s->b, &s->p, &s->ws);
  case BENCH_CONV_DW: return ps_conv2d_backward(NULL, &s->dw, &s->db, &s->out, &s->a, &s->b, &s->p, &s->ws);
  default: return ps_conv2d_backward(&s->din, &s->dw, &s->db, &s->out, &s->a, &s->b, &s->p, &s->ws);
  }
}

static void run_raw(bench_state *s) {
  for (int i = 0; i < s->nraw; i++) {
    const raw_gemm *r = &s->raw[i];
    cblas_sgemm(CblasRowMajor, r->ta ? CblasTrans : CblasNoTrans, r->tb ? CblasTrans : CblasNoTrans, r->M, r->N, r->K,
                1.0f, r->a, r->ta ? r->M : r->K, r->b, r->tb ? r->K : r->N, 0.0f, r->c, r->N);
  }
}

// Reference value of output `idx` in double, with the sum of |terms| for the tolerance.
static double reference(const bench_state *s, int64_t idx, double *mag) {
  const bench_case *c = s->c;
  const float *a = ps_f32(&s->a), *b = ps_f32(&s->b), *bias = ps_f32(&s->bias);
  double acc = 0;
  *mag = 0;
  if (c->kind == BENCH_GEMM || c->kind == BENCH_LINEAR) {
    int64_t i = idx / c->N, j = idx % c->N;
    for (int64_t k = 0; k < c->K; k++) {
      double t = (double)(c->ta ? a[k * c->M + i] : a[i * c->K + k]) * (c->tb ? b[j * c->K + k] : b[k * c->N + j]);
      acc += t;
      *mag += fabs(t);
    }
    if (c->bias) acc += bias[j];
    return acc;
  }
  int64_t P = c->H * c->W, n = idx / (c->OC * P), o = idx / P % c->OC, oh = idx % P / c->W, ow = idx % c->W;
  for (int64_t ci = 0; ci < c->C; ci++)
    for (int64_t kh = 0; kh < 3; kh++)
      for (int64_t kw = 0; kw < 3; kw++) {
        int64_t ih = oh - 1 + kh, iw = ow - 1 + kw;
        if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
        double t = (double)a[((n * c->C + ci) * c->H + ih) * c->W + iw] * b[((o * c->C + ci) * 3 + kh) * 3 + kw];
        acc += t;
        *mag += fabs(t);
      }
  return acc + bias[o];
}

// conv_bwd: din[idx] (which = 0) or dw[idx] (which = 1) in double, after one backward from zero.
static double reference_bwd(const bench_state *s, int which, int64_t idx, double *mag) {
  const bench_case *c = s->c;
  const float *x = ps_f32(&s->a), *w = ps_f32(&s->b), *g = ps_f32(&s->out);
  int64_t H = c->H, W = c->W;
  double acc = 0;
  *mag = 0;
  if (which == 0) { // din[n, ci, ih, iw] = sum_o,kh,kw dout[n, o, ih+1-kh, iw+1-kw] w[o, ci, kh, kw]
    int64_t n = idx / (c->C * H * W), ci = idx / (H * W) % c->C, ih = idx % (H * W) / W, iw = idx % W;
    for (int64_t o = 0; o < c->OC; o++)
      for (int64_t kh = 0; kh < 3; kh++)
        for (int64_t kw = 0; kw < 3; kw++) {
          int64_t oh = ih + 1 - kh, ow = iw + 1 - kw;
          if (oh < 0 || oh >= H || ow < 0 || ow >= W) continue;
          double t = (double)g[((n * c->OC + o) * H + oh) * W + ow] * w[((o * c->C + ci) * 3 + kh) * 3 + kw];
          acc += t;
          *mag += fabs(t);
        }
    return acc;
  }
  // dw[o, ci, kh, kw] = sum_n,oh,ow dout[n, o, oh, ow] in[n, ci, oh-1+kh, ow-1+kw]
  int64_t o = idx / (c->C * 9), ci = idx / 9 % c->C, kh = idx % 9 / 3, kw = idx % 3;
  for (int64_t n = 0; n < c->B; n++)
    for (int64_t oh = 0; oh < H; oh++)
      for (int64_t ow = 0; ow < W; ow++) {
        int64_t ih = oh - 1 + kh, iw = ow - 1 + kw;
        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
        double t = (double)g[((n * c->OC + o) * H + oh) * W + ow] * x[((n * c->C + ci) * H + ih) * W + iw];
        acc += t;
        *mag += fabs(t);
      }
  return acc;
}

static int64_t count_wrong(const bench_state *s) {
  enum { SAMPLES = 512, SAMPLES_DW = 32 };
  int64_t wrong = 0;
  ps_rng r = ps_rng_make(7, ps_rng_stream(PS_RNG_TEST, 99, 0, 0));
  // float accumulation error is well below 1e-4 of the summed |terms|; a wrong index is O(1) off.
  bench_kind kind = s->c->kind;
  if (kind != BENCH_CONV_BWD && kind != BENCH_CONV_DX && kind != BENCH_CONV_DW) {
    int64_t n = ps_tensor_numel(&s->out);
    for (int i = 0; i < SAMPLES; i++) {
      int64_t idx = i == 0 ? 0 : i == 1 ? n - 1 : (int64_t)ps_rng_below(&r, (uint64_t)i, (uint64_t)n);
      double mag, want = reference(s, idx, &mag), got = ps_f32(&s->out)[idx];
      if (!(fabs(got - want) <= 1e-4 * mag + 1e-5)) wrong++;
    }
    return wrong;
  }
  for (int which = kind == BENCH_CONV_DW; which < (kind == BENCH_CONV_DX ? 1 : 2); which++) {
    const ps_tensor *t = which ? &s->dw : &s->din;
    int64_t n = ps_tensor_numel(t);
    for (int i = 0; i < (which ? SAMPLES_DW : SAMPLES); i++) {
      int64_t idx = i == 0 ? 0 : i == 1 ? n - 1 : (int64_t)ps_rng_below(&r, (uint64_t)(i + 1000 * which), (uint64_t)n);
      double mag, want = reference_bwd(s, which, idx, &mag), got = ps_f32(t)[idx];
      if (!(fabs(got - want) <= 1e-4 * mag + 1e-5)) wrong++;
    }
  }
  // db[o] = sum of dout over (n, p)
  if (kind == BENCH_CONV_DX) return wrong;
  for (int64_t o = 0; o < s->c->OC; o++) {
    double acc = 0, mag = 0;
    for (int64_t n = 0; n < s->c->B; n++)
      for (int64_t q = 0; q < s->c->H * s->c->W; q++) {
        double v = ps_f32(&s->out)[(n * s->c->OC + o) * s->c->H * s->c->W + q];
        acc += v;
        mag += fabs(v);
      }
    if (!(fabs(ps_f32(&s->db)[o] - acc) <= 1e-4 * mag + 1e-5)) wrong++;
  }
  return wrong;
}

static void state_free(bench_state *s) {
  free(s->a.data);
  free(s->b.data);
  free(s->bias.data);
  free(s->out.data);
  free(s->ws.data);
  free(s->din.data);
  free(s->dw.data);
  free(s->db.data);
  for (int i = 0; i < s->nraw; i++) {
    free(s->raw[i].b);
    free(s->raw[i].c);
    if (s->raw[i].a != s->a.data) free(s->raw[i].a);
  }
}

static bool is_conv_bwd(bench_kind k) { return k == BENCH_CONV_DX || k == BENCH_CONV_DW || k == BENCH_CONV_BWD; }

static int state_init(bench_state *s, const bench_case *c, char *shape, size_t shape_len, double *flops) {
  memset(s, 0, sizeof *s);
  s->c = c;
  if (c->kind == BENCH_GEMM || c->kind == BENCH_LINEAR) {
    int64_t ar = c->ta ? c->K : c->M, ac = c->ta ? c->M : c->K;
    int64_t br = c->kind == BENCH_LINEAR ? c->N : (c->tb ? c->N : c->K);
    int64_t bc = c->kind == BENCH_LINEAR ? c->K : (c->tb ? c->K : c->N);
    s->a = ps_tensor_wrap(alloc_uniform(ar * ac, 1), PS_F32, PS_CPU, 2, (int64_t[]){ar, ac});
    s->b = ps_tensor_wrap(alloc_uniform(br * bc, 2), PS_F32, PS_CPU, 2, (int64_t[]){br, bc});
    s->bias = ps_tensor_wrap(alloc_uniform(c->N, 3), PS_F32, PS_CPU, 1, (int64_t[]){c->N});
    s->out = ps_tensor_wrap(alloc_uniform(c->M * c->N, 4), PS_F32, PS_CPU, 2, (int64_t[]){c->M, c->N});
    s->ws = ps_tensor_wrap(NULL, PS_F32, PS_CPU, 1, (int64_t[]){0});
    s->nraw = 1;
    s->raw[0] = (raw_gemm){(int)c->M, (int)c->N, (int)c->K, c->ta, c->tb, ps_f32(&s->a), alloc_uniform(br * bc, 5),
                           alloc_uniform(c->M * c->N, 6)};
    *flops = 2.0 * c->M * c->N * c->K;
    if (c->kind == BENCH_LINEAR)
      snprintf(shape, shape_len, "%lldx%lld->%lld+b", (long long)c->M, (long long)c->K, (long long)c->N);
    else
      snprintf(shape, shape_len, "%lldx%lldx%lld %c%c%s", (long long)c->M, (long long)c->N, (long long)c->K,
               c->ta ? 'T' : 'N', c->tb ? 'T' : 'N', c->bias ? "+b" : "");
  } else {
    int64_t P = c->H * c->W, CKK = c->C * 9;
    s->p = (ps_conv2d_params){1, 1, 1, 1};
    s->a = ps_tensor_wrap(alloc_uniform(c->B * c->C * P, 1), PS_F32, PS_CPU, 4, (int64_t[]){c->B, c->C, c->H, c->W});
    s->b = ps_tensor_wrap(alloc_uniform(c->OC * CKK, 2), PS_F32, PS_CPU, 4, (int64_t[]){c->OC, c->C, 3, 3});
    s->bias = ps_tensor_wrap(alloc_uniform(c->OC, 3), PS_F32, PS_CPU, 1, (int64_t[]){c->OC});
    s->out = ps_tensor_wrap(alloc_uniform(c->B * c->OC * P, 4), PS_F32, PS_CPU, 4, (int64_t[]){c->B, c->OC, c->H, c->W});
    int64_t wsn = ps_conv2d_workspace_floats(&s->a, &s->b, &s->p);
    s->ws = ps_tensor_wrap(alloc_uniform(wsn, 7), PS_F32, PS_CPU, 1, (int64_t[]){wsn});
    int iM = (int)c->OC, iN = (int)(c->B * P), iK = (int)CKK;
    if (c->kind == BENCH_CONV) {
      // Raw equivalent: the whole batch as one GEMM, (OC, CKK) · (CKK, B*P).
      s->nraw = 1;
      s->raw[0] = (raw_gemm){iM, iN, iK, false, false, alloc_uniform(c->OC * CKK, 8), alloc_uniform(CKK * c->B * P, 5),
                             alloc_uniform(c->OC * c->B * P, 6)};
      *flops = 2.0 * c->B * c->OC * P * CKK;
    } else {
      // Raw equivalent: dw (OC, CKK) = dout (OC, B*P) · col^T, and dcol (CKK, B*P) = w^T (CKK, OC) · dout.
      s->din = ps_tensor_wrap(alloc_uniform(c->B * c->C * P, 9), PS_F32, PS_CPU, 4, (int64_t[]){c->B, c->C, c->H, c->W});
      s->dw = ps_tensor_wrap(alloc_uniform(c->OC * CKK, 10), PS_F32, PS_CPU, 4, (int64_t[]){c->OC, c->C, 3, 3});
      s->db = ps_tensor_wrap(alloc_uniform(c->OC, 11), PS_F32, PS_CPU, 1, (int64_t[]){c->OC});
      if (c->kind != BENCH_CONV_DX)
        s->raw[s->nraw++] = (raw_gemm){iM, iK, iN, false, true, alloc_uniform(c->OC * c->B * P, 8),
                                       alloc_uniform(CKK * c->B * P, 5), alloc_uniform(c->OC * CKK, 6)};
      if (c->kind != BENCH_CONV_DW)
        s->raw[s->nraw++] = (raw_gemm){iK, iN, iM, true, false, alloc_uniform(c->OC * CKK, 12),
                                       alloc_uniform(c->OC * c->B * P, 13), alloc_uniform(CKK * c->B * P, 14)};
      *flops = 2.0 * s->nraw * c->B * c->OC * P * CKK;
    }
    snprintf(shape, shape_len, "%lldx%lldx%lldx%lld->%lld 3x3p1", (long long)c->B, (long long)c->C, (long long)c->H,
             (long long)c->W, (long long)c->OC);
  }
  bool ok = s->a.data && s->b.data && s->bias.data && s->out.data;
  for (int i = 0; i < s->nraw; i++) ok = ok && s->raw[i].a && s->raw[i].b && s->raw[i].c;
  if (c->kind == BENCH_CONV || is_conv_bwd(c->kind)) ok = ok && s->ws.data;
  if (is_conv_bwd(c->kind)) ok = ok && s->din.data && s->dw.data && s->db.data;
  return ok ? 0 : -1;
}

// Median GFLOP/s of a raw 1024^3 NN cblas_sgemm with OpenBLAS at the ops' thread count.
static double measure_ceiling(double *ts, int iters, int warmup) {
  enum { SZ = 1024 };
  float *a = alloc_uniform(SZ * SZ, 21), *b = alloc_uniform(SZ * SZ, 22), *c = alloc_uniform(SZ * SZ, 23);
  double g = 0;
  if (a && b && c) {
    raw_gemm r = {SZ, SZ, SZ, false, false, a, b, c};
    bench_state s = {.raw = {r}, .nraw = 1};
    openblas_set_num_threads(ps_ops_get_threads());
    for (int i = 0; i < warmup; i++) run_raw(&s);
    for (int i = 0; i < iters; i++) {
      double t0 = now_us();
      run_raw(&s);
      ts[i] = now_us() - t0;
    }
    ps_ops_set_threads(0);
    qsort(ts, (size_t)iters, sizeof(double), cmp_double);
    g = 2.0 * SZ * SZ * SZ / ts[iters / 2] * 1e-3;
  }
  free(a);
  free(b);
  free(c);
  return g;
}

static const char *const kernel_names[] = {"auto", "blas", "avx512"};
_Static_assert(sizeof kernel_names / sizeof kernel_names[0] == PS_CONV_KERNEL_COUNT, "conv kernel names");

// --conv-path: the conv lowering or the direct kernels (forward and weight gradient of
// few-channel 3x3 convs); "compare" times im2col and direct alternately, iteration by iteration.
static const char *const path_names[] = {"auto", "im2col", "direct", "direct_c"};
_Static_assert(sizeof path_names / sizeof path_names[0] == PS_CONV_PATH_COUNT, "conv path names");
enum { PATH_COMPARE = PS_CONV_PATH_COUNT };

static bool parse_path(const char *s, int *p) {
  for (int i = 0; i < PS_CONV_PATH_COUNT; i++)
    if (!strcmp(s, path_names[i])) {
      *p = i;
      return true;
    }
  if (!strcmp(s, "compare")) *p = PATH_COMPARE;
  return !strcmp(s, "compare");
}

static bool parse_kernel(const char *s, ps_conv_kernel *k) {
  for (int i = 0; i < PS_CONV_KERNEL_COUNT; i++)
    if (!strcmp(s, kernel_names[i])) {
      *k = (ps_conv_kernel)i;
      return true;
    }
  return false;
}

static int usage(FILE *f) {
  fprintf(f, "usage: pansurv bench gemm [--iters N] [--warmup N] [--threads T] [--batch B] [--conv-only]\n"
             "                          [--conv-kernel auto|blas|avx512] [--conv-path P] [--clock wall|cpu]\n"
             "  GFLOP/s of ps_gemm, ps_linear_forward and ps_conv2d_forward next to raw cblas_sgemm of the\n"
             "  equivalent GEMM; median of N timed iterations after the warm-up; exits 1 if a value is wrong.\n"
             "  --threads T sets OpenMP and OpenBLAS threads for both sides (default: as the environment says).\n"
             "  --batch B: tiles per conv case (default 64; a training step of the reference model has 1024).\n"
             "  --conv-kernel auto|blas|avx512: the GEMM of the conv weight gradient (default auto: per shape).\n"
             "  --conv-path auto|im2col|direct|direct_c|compare: im2col lowering or direct kernels for the\n"
             "  forward and weight gradient of 3x3 convs with <= 4 input channels (default auto: direct with\n"
             "  AVX-512F); compare: im2col and direct alternately per iteration, one row each (path column).\n"
             "  --clock cpu: time by the calling thread's CPU time (with --threads 1, for a shared machine;\n"
             "  default wall).\n"
             "  --conv-only: skip the GEMM and linear rows. %%ceil is GFLOP/s over the ceiling: a raw 1024^3\n"
             "  cblas_sgemm (NN) timed at the start of the same run.\n");
  return f == stdout ? 0 : 2;
}

static bool parse_int(const char *s, int lo, int *out) {
  char *end;
  long v = s ? strtol(s, &end, 10) : 0;
  if (!s || *end || v < lo || v > 1000000) return false;
  *out = (int)v;
  return true;
}

int ps_bench_gemm(int argc, char **argv) {
  int iters = 20, warmup = 3, threads = 0, batch = 64;
  bool conv_only = false;
  ps_conv_kernel kernel = PS_CONV_KERNEL_AUTO;
  int path = PS_CONV_PATH_AUTO;
  for (int i = 1; i < argc; i++) {
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(stdout);
    if (!strcmp(argv[i], "--iters") && parse_int(v, 1, &iters)) i++;
    else if (!strcmp(argv[i], "--warmup") && parse_int(v, 0, &warmup)) i++;
    else if (!strcmp(argv[i], "--threads") && parse_int(v, 1, &threads)) i++;
    else if (!strcmp(argv[i], "--batch") && parse_int(v, 1, &batch)) i++;
    else if (!strcmp(argv[i], "--conv-only")) conv_only = true;
    else if (!strcmp(argv[i], "--clock") && v && (!strcmp(v, "cpu") || !strcmp(v, "wall"))) {
      bench_clock = !strcmp(v, "cpu") ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
      i++;
    }
    else if (!strcmp(argv[i], "--conv-kernel") && v && parse_kernel(v, &kernel)) i++;
    else if (!strcmp(argv[i], "--conv-path") && v && parse_path(v, &path)) i++;
    else {
      fprintf(stderr, "pansurv bench gemm: bad argument '%s'%s%s\n", argv[i], v ? " " : "", v ? v : "");
      return usage(stderr);
    }
  }
  ps_ops_set_threads(threads);
  if (bench_clock != CLOCK_MONOTONIC && ps_ops_get_threads() != 1) {
    fprintf(stderr, "pansurv bench gemm: --clock cpu times the calling thread only: use it with --threads 1\n");
    return 2;
  }
  ps_conv_force_kernel(kernel);
  // Workspaces are planned under this forcing; "compare" plans for the direct path, whose slice
  // also covers the lowering's.
  ps_conv_force_path((ps_conv_path)(path == PATH_COMPARE ? PS_CONV_PATH_DIRECT : path));
  char loadavg[64] = "?";
  FILE *la = fopen("/proc/loadavg", "r");
  if (la) {
    if (!fgets(loadavg, sizeof loadavg, la)) strcpy(loadavg, "?");
    loadavg[strcspn(loadavg, "\n")] = 0;
    fclose(la);
  }
  const char *core = getenv("OPENBLAS_CORETYPE");
  const char *l2 = getenv("OPENBLAS_L2_SIZE");
  printf("# pansurv bench gemm: %d threads (OpenMP; raw sgemm: OpenBLAS threads), %s, OPENBLAS_CORETYPE=%s "
         "OPENBLAS_L2_SIZE=%s\n",
         ps_ops_get_threads(), openblas_get_config(), core ? core : "(unset)", l2 ? l2 : "(unset)");
  printf("# conv kernel: %s; conv path: %s; clock: %s; load average at start: %s\n", kernel_names[kernel],
         path == PATH_COMPARE ? "compare (im2col, direct alternately)" : path_names[path],
         bench_clock == CLOCK_MONOTONIC ? "wall" : "CPU time of the calling thread", loadavg);
  printf("# warm-up %d, median of %d timed iterations; raw = cblas_sgemm of the equivalent GEMM "
         "(conv2d: the whole batch as one (OC, 9C) x (9C, B*H*W) product; conv_bwd: the dw and dcol products, "
         "din+dw+db timed)\n",
         warmup, iters);
  double *ts = malloc((size_t)iters * sizeof(double)), *ts2 = malloc((size_t)iters * sizeof(double));
  if (!ts || !ts2) {
    free(ts);
    free(ts2);
    return 1;
  }
  double ceiling = measure_ceiling(ts, iters, warmup);
  printf("# ceiling: raw cblas_sgemm 1024x1024x1024 NN, %d OpenBLAS thread(s): %.1f GFLOP/s\n", ps_ops_get_threads(),
         ceiling);
  printf("%-8s %-26s %12s %10s %18s %7s %6s %7s %s\n", "op", "shape", "time_us", "GFLOP/s", "raw_sgemm_GFLOP/s",
         "ratio", "%ceil", "#wrong", "path");
  int64_t total_wrong = 0;
  int failed = 0;
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    bench_state s;
    char shape[64];
    double flops;
    bench_case bc = cases[k];
    if (bc.kind == BENCH_GEMM || bc.kind == BENCH_LINEAR) {
      if (conv_only) continue;
    } else
      bc.B = batch;
    if (state_init(&s, &bc, shape, sizeof shape, &flops)) {
      fprintf(stderr, "pansurv bench gemm: out of memory for %s\n", shape);
      state_free(&s);
      failed = 1;
      break;
    }
    // One path, or (compare, conv rows) im2col and direct alternately: tsp[q] holds path q's times.
    const bool is_conv = bc.kind != BENCH_GEMM && bc.kind != BENCH_LINEAR;
    const int npath = path == PATH_COMPARE && is_conv ? 2 : 1;
    const int paths[2] = {path == PATH_COMPARE ? PS_CONV_PATH_IM2COL : path, PS_CONV_PATH_DIRECT};
    double *tsp[2] = {ts, ts2};
    ps_status st = PS_OK;
    for (int i = 0; i < warmup && st == PS_OK; i++)
      for (int q = 0; q < npath && st == PS_OK; q++) {
        ps_conv_force_path((ps_conv_path)(paths[q] == PATH_COMPARE ? PS_CONV_PATH_AUTO : paths[q]));
        st = run_op(&s);
      }
    for (int i = 0; i < iters && st == PS_OK; i++)
      for (int q = 0; q < npath && st == PS_OK; q++) {
        ps_conv_force_path((ps_conv_path)(paths[q] == PATH_COMPARE ? PS_CONV_PATH_AUTO : paths[q]));
        double t0 = now_us();
        st = run_op(&s);
        tsp[q][i] = now_us() - t0;
      }
    if (st != PS_OK) {
      fprintf(stderr, "pansurv bench gemm: %s %s: %s\n", bench_kind_names[cases[k].kind], shape, ps_error_message());
      state_free(&s);
      failed = 1;
      continue;
    }
    double t_op[2] = {0, 0};
    int64_t wrong[2] = {0, 0};
    for (int q = 0; q < npath; q++) {
      qsort(tsp[q], (size_t)iters, sizeof(double), cmp_double);
      t_op[q] = tsp[q][iters / 2];
      ps_conv_force_path((ps_conv_path)(paths[q] == PATH_COMPARE ? PS_CONV_PATH_AUTO : paths[q]));
      if (is_conv_bwd(cases[k].kind)) { // backward accumulates: validate one pass from zero
        ps_tensor_zero(&s.din);
        ps_tensor_zero(&s.dw);
        ps_tensor_zero(&s.db);
      }
      st = is_conv_bwd(cases[k].kind) || npath > 1 ? run_op(&s) : PS_OK;
      wrong[q] = st == PS_OK ? count_wrong(&s) : 1;
    }
    // The raw column is OpenBLAS with its own threads (its best case); the ops keep
    // OpenBLAS single-threaded and split GEMMs over OpenMP (docs/threads.md).
    openblas_set_num_threads(ps_ops_get_threads());
    for (int i = 0; i < warmup; i++) run_raw(&s);
    for (int i = 0; i < iters; i++) {
      double t0 = now_us();
      run_raw(&s);
      ts[i] = now_us() - t0;
    }
    ps_ops_set_threads(0); // back to single-threaded OpenBLAS for the next op
    qsort(ts, (size_t)iters, sizeof(double), cmp_double);
    double t_raw = ts[iters / 2];
    double g_raw = flops / t_raw * 1e-3;
    for (int q = 0; q < npath; q++) {
      double g_op = flops / t_op[q] * 1e-3;
      printf("%-8s %-26s %12.1f %10.1f %18.1f %7.2f %5.0f%% %7lld %s\n", bench_kind_names[cases[k].kind], shape,
             t_op[q], g_op, g_raw, g_op / g_raw, 100.0 * g_op / ceiling, (long long)wrong[q],
             is_conv ? (paths[q] == PATH_COMPARE ? "compare" : path_names[paths[q]]) : "-");
      total_wrong += wrong[q];
    }
    ps_conv_force_path((ps_conv_path)(path == PATH_COMPARE ? PS_CONV_PATH_DIRECT : path));
    fflush(stdout);
    state_free(&s);
  }
  free(ts);
  free(ts2);
  ps_conv_force_path(PS_CONV_PATH_AUTO);
  if (total_wrong) fprintf(stderr, "pansurv bench gemm: %lld wrong values\n", (long long)total_wrong);
  return (failed || total_wrong) ? 1 : 0;
}
