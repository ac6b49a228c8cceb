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

#include "ps_commands.h"
#include "ps_ops.h"
#include "ps_rng.h"

typedef enum { BENCH_GEMM = 0, BENCH_LINEAR, BENCH_CONV, BENCH_CONV_BWD, BENCH_KIND_COUNT } bench_kind;
static const char *const bench_kind_names[] = {"gemm", "linear", "conv2d", "conv_bwd"};
_Static_assert(sizeof bench_kind_names / sizeof bench_kind_names[0] == BENCH_KIND_COUNT, "bench kind names");

typedef struct {
  bench_kind kind;
  int64_t M, N, K; // gemm / linear: out (M, N) = op(a) (M, K) · op(b) (K, N); linear: M rows, K=Din, N=Dout
  bool ta, tb, bias;
  int64_t B, C, H, W, OC; // conv2d 3x3, stride 1, pad 1
} bench_case;

// The reference model's shapes: GEMMs of its heads, the tile encoder's convs
// (a batch of 64 tiles, 3->32 at 64x64, 32->64 at 32x32, 64->128 at 16x16).
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
    {BENCH_CONV_BWD, 0, 0, 0, false, false, true, 64, 3, 64, 64, 32},
    {BENCH_CONV_BWD, 0, 0, 0, false, false, true, 64, 32, 32, 32, 64},
    {BENCH_CONV_BWD, 0, 0, 0, false, false, true, 64, 64, 16, 16, 128},
};

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
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
  raw_gemm raw[2]; // the equivalent GEMM(s); conv_bwd has two (dw and dcol)
  int nraw;
} bench_state;

static ps_status run_op(bench_state *s) {
  switch (s->c->kind) {
  case BENCH_GEMM: return ps_gemm(&s->out, &s->a, s->c->ta, &s->b, s->c->tb, s->c->bias ? &s->bias : NULL, 1, 0);
  case BENCH_LINEAR: return ps_linear_forward(&s->out, &s->a, &s->b, &s->bias);
  case BENCH_CONV: return ps_conv2d_forward(&s->out, &s->a, &s->b, &s->bias, &s->p, &s->ws);
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
  if (s->c->kind != BENCH_CONV_BWD) {
    int64_t n = ps_tensor_numel(&s->out);
    for (int i = 0; i < SAMPLES; i++) {
      int64_t idx = i == 0 ? 0 : i == 1 ? n - 1 : (int64_t)ps_rng_below(&r, (uint64_t)i, (uint64_t)n);
      double mag, want = reference(s, idx, &mag), got = ps_f32(&s->out)[idx];
      if (!(fabs(got - want) <= 1e-4 * mag + 1e-5)) wrong++;
    }
    return wrong;
  }
  for (int which = 0; which < 2; which++) {
    const ps_tensor *t = which ? &s->dw : &s->din;
    int64_t n = ps_tensor_numel(t);
    for (int i = 0; i < (which ? SAMPLES_DW : SAMPLES); i++) {
      int64_t idx = i == 0 ? 0 : i == 1 ? n - 1 : (int64_t)ps_rng_below(&r, (uint64_t)(i + 1000 * which), (uint64_t)n);
      double mag, want = reference_bwd(s, which, idx, &mag), got = ps_f32(t)[idx];
      if (!(fabs(got - want) <= 1e-4 * mag + 1e-5)) wrong++;
    }
  }
  // db[o] = sum of dout over (n, p)
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
      s->nraw = 2;
      s->raw[0] = (raw_gemm){iM, iK, iN, false, true, alloc_uniform(c->OC * c->B * P, 8), alloc_uniform(CKK * c->B * P, 5),
                             alloc_uniform(c->OC * CKK, 6)};
      s->raw[1] = (raw_gemm){iK, iN, iM, true, false, alloc_uniform(c->OC * CKK, 12), alloc_uniform(c->OC * c->B * P, 13),
                             alloc_uniform(CKK * c->B * P, 14)};
      *flops = 4.0 * c->B * c->OC * P * CKK;
    }
    snprintf(shape, shape_len, "%lldx%lldx%lldx%lld->%lld 3x3p1", (long long)c->B, (long long)c->C, (long long)c->H,
             (long long)c->W, (long long)c->OC);
  }
  bool ok = s->a.data && s->b.data && s->bias.data && s->out.data;
  for (int i = 0; i < s->nraw; i++) ok = ok && s->raw[i].a && s->raw[i].b && s->raw[i].c;
  if (c->kind == BENCH_CONV || c->kind == BENCH_CONV_BWD) ok = ok && s->ws.data;
  if (c->kind == BENCH_CONV_BWD) ok = ok && s->din.data && s->dw.data && s->db.data;
  return ok ? 0 : -1;
}

static int usage(FILE *f) {
  fprintf(f, "usage: pansurv bench gemm [--iters N] [--warmup N] [--threads T]\n"
             "  GFLOP/s of ps_gemm, ps_linear_forward and ps_conv2d_forward next to raw cblas_sgemm of the\n"
             "  equivalent GEMM; median of N timed iterations after the warm-up; exits 1 if a value is wrong.\n"
             "  --threads T sets OpenMP and OpenBLAS threads for both sides (default: as the environment says).\n");
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
  int iters = 20, warmup = 3, threads = 0;
  for (int i = 1; i < argc; i++) {
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(stdout);
    if (!strcmp(argv[i], "--iters") && parse_int(v, 1, &iters)) i++;
    else if (!strcmp(argv[i], "--warmup") && parse_int(v, 0, &warmup)) i++;
    else if (!strcmp(argv[i], "--threads") && parse_int(v, 1, &threads)) i++;
    else {
      fprintf(stderr, "pansurv bench gemm: bad argument '%s'%s%s\n", argv[i], v ? " " : "", v ? v : "");
      return usage(stderr);
    }
  }
  ps_ops_set_threads(threads);
  const char *core = getenv("OPENBLAS_CORETYPE");
  const char *l2 = getenv("OPENBLAS_L2_SIZE");
  printf("# pansurv bench gemm: %d threads (OpenMP; raw sgemm: OpenBLAS threads), %s, OPENBLAS_CORETYPE=%s "
         "OPENBLAS_L2_SIZE=%s\n",
         ps_ops_get_threads(), openblas_get_config(), core ? core : "(unset)", l2 ? l2 : "(unset)");
  printf("# warm-up %d, median of %d timed iterations; raw = cblas_sgemm of the equivalent GEMM "
         "(conv2d: the whole batch as one (OC, 9C) x (9C, B*H*W) product; conv_bwd: the dw and dcol products, "
         "din+dw+db timed)\n",
         warmup, iters);
  printf("%-7s %-24s %12s %10s %18s %7s %7s\n", "op", "shape", "time_us", "GFLOP/s", "raw_sgemm_GFLOP/s", "ratio",
         "#wrong");
  double *ts = malloc((size_t)iters * sizeof(double));
  if (!ts) return 1;
  int64_t total_wrong = 0;
  int failed = 0;
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    bench_state s;
    char shape[64];
    double flops;
    if (state_init(&s, &cases[k], shape, sizeof shape, &flops)) {
      fprintf(stderr, "pansurv bench gemm: out of memory for %s\n", shape);
      state_free(&s);
      failed = 1;
      break;
    }
    ps_status st = PS_OK;
    for (int i = 0; i < warmup && st == PS_OK; i++) st = run_op(&s);
    for (int i = 0; i < iters && st == PS_OK; i++) {
      double t0 = now_us();
      st = run_op(&s);
      ts[i] = now_us() - t0;
    }
    if (st != PS_OK) {
      fprintf(stderr, "pansurv bench gemm: %s %s: %s\n", bench_kind_names[cases[k].kind], shape, ps_error_message());
      state_free(&s);
      failed = 1;
      continue;
    }
    qsort(ts, (size_t)iters, sizeof(double), cmp_double);
    double t_op = ts[iters / 2];
    if (cases[k].kind == BENCH_CONV_BWD) { // backward accumulates: validate one pass from zero
      ps_tensor_zero(&s.din);
      ps_tensor_zero(&s.dw);
      ps_tensor_zero(&s.db);
      st = run_op(&s);
    }
    int64_t wrong = st == PS_OK ? count_wrong(&s) : 1;
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
    double g_op = flops / t_op * 1e-3, g_raw = flops / t_raw * 1e-3;
    printf("%-7s %-24s %12.1f %10.1f %18.1f %7.2f %7lld\n", bench_kind_names[cases[k].kind], shape, t_op, g_op, g_raw,
           g_op / g_raw, (long long)wrong);
    fflush(stdout);
    total_wrong += wrong;
    state_free(&s);
  }
  free(ts);
  if (total_wrong) fprintf(stderr, "pansurv bench gemm: %lld wrong values\n", (long long)total_wrong);
  return (failed || total_wrong) ? 1 : 0;
}
