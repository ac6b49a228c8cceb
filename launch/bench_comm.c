// pansurv bench comm: nccl-tests style table of the communicator's
// collectives next to the raw MPI call in the same run (like with like:
// out-of-place against out-of-place, in-place against in-place), and
// --buckets mode: the bucketed gradient sync overlapped with a simulated
// backward vs one plain all-reduce after it.
//
// Timing: each iteration starts after a barrier; its time is the slowest
// rank's; the table shows the median over --iters. Our call and the raw
// MPI call alternate iteration by iteration so both see the same noise.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_comm.h"
#include "ps_commands.h"
#include "ps_cuda.h"

typedef enum { OP_ALLREDUCE = 0, OP_ALLGATHER, OP_BROADCAST, OP_COUNT } bench_op;
static const char *const op_names[] = {"allreduce", "allgather", "broadcast"};
_Static_assert(sizeof op_names / sizeof op_names[0] == OP_COUNT, "op_names must cover every bench_op");

typedef struct {
  ps_comm_backend backend;
  bench_op op;
  int64_t min_bytes, max_bytes;
  int iters, warmup;
  bool buckets;
  int64_t params;      // --buckets: gradient floats
  int64_t bucket_bytes;
  double backward_ms;  // --buckets: simulated backward duration
  int layers;
  bool corrupt;        // --corrupt: flip one result element, to show that validation catches it
} bench_opts;

static void usage(FILE *f) {
  fprintf(f,
          "usage: pansurv bench comm [--backend mpi|nccl] [--op allreduce|allgather|broadcast] [--min 4K]\n"
          "                          [--max 256M] [--iters 20] [--warmup 5]\n"
          "       pansurv bench comm --buckets [--params 2.6M] [--bucket-bytes 2M] [--backward-ms 20] [--layers 26]\n"
          "                          [--progress auto|thread|test] [--iters 20] [--warmup 5]\n\n"
          "Sizes take binary suffixes (1K = 1024, 1M = 1048576, 1G). Run under mpirun/srun; rows are float32,\n"
          "sum. busbw = algbw * 2(n-1)/n (allreduce), (n-1)/n (allgather), 1 (broadcast). '#wrong' counts\n"
          "elements that differ from the closed-form expected values; the exit status is non-zero if any.\n"
          "The raw columns time the plain MPI call (MPI_Allreduce, MPI_Allgather, MPI_Bcast) on the same\n"
          "buffers; ratio = our busbw / raw busbw.\n"
          "--buckets: a gradient arena of --params floats synchronized bucketed during a simulated backward\n"
          "(--layers layers, --backward-ms in total, idle like a CPU waiting on a GPU) vs one all-reduce after it.\n"
          "--corrupt: rank 0 flips one result element before validation (checks that #wrong catches it).\n");
}

// "4K" -> 4096; binary suffixes K M G; fractional mantissa allowed ("2.6M" for --params).
static int parse_size(const char *s, int64_t *out) {
  char *end = NULL;
  double v = strtod(s, &end);
  if (!end || end == s || v < 0) return -1;
  double m = 1;
  if (*end == 'K' || *end == 'k') m = 1024.0, end++;
  else if (*end == 'M' || *end == 'm') m = 1048576.0, end++;
  else if (*end == 'G' || *end == 'g') m = 1073741824.0, end++;
  if (*end) return -1;
  *out = (int64_t)llround(v * m);
  return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o) {
  *o = (bench_opts){.backend = PS_COMM_MPI, .op = OP_ALLREDUCE, .min_bytes = 4096, .max_bytes = 256 << 20,
                    .iters = 20, .warmup = 5, .params = 2600000, .backward_ms = 20.0, .layers = 26};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 1;
    } else if (!strcmp(a, "--buckets")) {
      o->buckets = true;
      continue;
    } else if (!strcmp(a, "--corrupt")) {
      o->corrupt = true;
      continue;
    } else if (!v) {
      bad = 1;
    } else if (!strcmp(a, "--backend")) {
      bad = ps_comm_backend_parse(v, &o->backend) != PS_OK || o->backend == PS_COMM_AUTO;
    } else if (!strcmp(a, "--op")) {
      bad = 1;
      for (int k = 0; k < OP_COUNT; k++)
        if (!strcmp(v, op_names[k])) o->op = (bench_op)k, bad = 0;
    } else if (!strcmp(a, "--min")) {
      bad = parse_size(v, &o->min_bytes) || o->min_bytes < 4;
    } else if (!strcmp(a, "--max")) {
      bad = parse_size(v, &o->max_bytes) || o->max_bytes < 4;
    } else if (!strcmp(a, "--params")) {
      bad = parse_size(v, &o->params) || o->params < 1;
    } else if (!strcmp(a, "--bucket-bytes")) {
      bad = parse_size(v, &o->bucket_bytes) || o->bucket_bytes < 4;
    } else if (!strcmp(a, "--iters") || !strcmp(a, "--warmup") || !strcmp(a, "--layers")) {
      char *end = NULL;
      long n = strtol(v, &end, 10);
      bad = !end || *end || n < (strcmp(a, "--warmup") ? 1 : 0) || n > 1000000;
      if (!bad) *(!strcmp(a, "--iters") ? &o->iters : !strcmp(a, "--warmup") ? &o->warmup : &o->layers) = (int)n;
    } else if (!strcmp(a, "--progress")) {
      ps_comm_progress pm;
      bad = ps_comm_progress_parse(v, &pm) != PS_OK;
      if (!bad) setenv("PANSURV_COMM_PROGRESS", v, 1); // read by ps_comm_init
    } else if (!strcmp(a, "--backward-ms")) {
      char *end = NULL;
      o->backward_ms = strtod(v, &end);
      bad = !end || *end || !(o->backward_ms >= 0);
    } else {
      fprintf(stderr, "pansurv bench comm: unknown option '%s'\n", a);
      usage(stderr);
      return 2;
    }
    if (bad) {
      fprintf(stderr, "pansurv bench comm: bad value for %s: '%s'\n", a, v ? v : "(missing)");
      return 2;
    }
    i++;
  }
  if (o->min_bytes > o->max_bytes) {
    fprintf(stderr, "pansurv bench comm: --min %lld exceeds --max %lld\n", (long long)o->min_bytes,
            (long long)o->max_bytes);
    return 2;
  }
  return 0;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// Median over iterations of the slowest rank's time.
static double median_max(double *t, int n) {
  MPI_Allreduce(MPI_IN_PLACE, t, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  qsort(t, (size_t)n, sizeof *t, cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

// Rank r's element i: small integers, so every sum is exact in float32.
static inline float val(int r, int64_t i) { return (float)(r + 1 + (int)(i % 13)); }

typedef enum { IMPL_OURS = 0, IMPL_RAW } impl;

typedef struct {
  bench_opts *o;
  ps_comm *c;
  int p, me;
  bool device;           // buffers on the GPU (nccl)
  float *send, *recv;    // host or device buffers, max size
  float *host;           // host staging for fills and checks
  int64_t cap;           // elements in host/send/recv
} bench_ctx;

static ps_status copy_in(bench_ctx *b, float *dst, int64_t n) {
  if (b->device) return ps_cuda_copy_h2d(dst, b->host, (size_t)n * sizeof(float));
  if (dst != b->host) memcpy(dst, b->host, (size_t)n * sizeof(float));
  return PS_OK;
}

static ps_status copy_out(bench_ctx *b, const float *src, int64_t n) {
  if (b->device) return ps_cuda_copy_d2h(b->host, src, (size_t)n * sizeof(float));
  if (src != b->host) memcpy(b->host, src, (size_t)n * sizeof(float));
  return PS_OK;
}

// Fills the inputs for one iteration: n = elements of the result buffer.
static ps_status prepare(bench_ctx *b, bool inplace, int64_t n) {
  int64_t per = b->o->op == OP_ALLGATHER ? n / b->p : n;
  if (b->o->op == OP_BROADCAST) {
    for (int64_t i = 0; i < n; i++) b->host[i] = b->me == 0 ? val(0, i) : -1.0f;
    return copy_in(b, b->recv, n);
  }
  if (b->o->op == OP_ALLGATHER && inplace) {
    for (int64_t i = 0; i < n; i++) b->host[i] = (i / per == b->me) ? val(b->me, i % per) : -1.0f;
    return copy_in(b, b->recv, n);
  }
  for (int64_t i = 0; i < per; i++) b->host[i] = val(b->me, i);
  return copy_in(b, inplace ? b->recv : b->send, per);
}

static int64_t count_wrong(bench_ctx *b, int64_t n) {
  if (copy_out(b, b->recv, n) != PS_OK) return n;
  if (b->o->corrupt && b->me == 0) b->host[n / 2] += 1.0f;
  int64_t wrong = 0, per = n / b->p;
  for (int64_t i = 0; i < n; i++) {
    float want;
    if (b->o->op == OP_ALLREDUCE) {
      want = 0;
      for (int r = 0; r < b->p; r++) want += val(r, i);
    } else if (b->o->op == OP_ALLGATHER) {
      want = val((int)(i / per), i % per);
    } else {
      want = val(0, i);
    }
    wrong += b->host[i] != want;
  }
  return wrong;
}

static ps_status run_once(bench_ctx *b, impl which, bool inplace, int64_t n, double *t) {
  int64_t per = b->o->op == OP_ALLGATHER ? n / b->p : n;
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = now_s();
  int r = MPI_SUCCESS;
  if (which == IMPL_OURS) {
    switch (b->o->op) {
    case OP_ALLREDUCE: PS_TRY(ps_comm_allreduce(b->c, inplace ? PS_IN_PLACE : b->send, b->recv, n, PS_F32, PS_OP_SUM)); break;
    case OP_ALLGATHER: PS_TRY(ps_comm_allgather(b->c, inplace ? PS_IN_PLACE : b->send, b->recv, per, PS_F32)); break;
    default: PS_TRY(ps_comm_broadcast(b->c, b->recv, n, PS_F32, 0)); break;
    }
  } else {
    const void *s = inplace ? MPI_IN_PLACE : b->send;
    switch (b->o->op) {
    case OP_ALLREDUCE: r = MPI_Allreduce(s, b->recv, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); break;
    case OP_ALLGATHER: r = MPI_Allgather(s, (int)per, MPI_FLOAT, b->recv, (int)per, MPI_FLOAT, MPI_COMM_WORLD); break;
    default: r = MPI_Bcast(b->recv, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD); break;
    }
  }
  *t = now_s() - t0;
  if (r != MPI_SUCCESS) PS_FAIL(PS_ERR_MPI, "raw MPI collective failed with code %d", r);
  return PS_OK;
}

static double bus_factor(bench_op op, int p) {
  return op == OP_ALLREDUCE ? 2.0 * (p - 1) / p : op == OP_ALLGATHER ? (double)(p - 1) / p : 1.0;
}

typedef struct {
  double time_us, algbw, busbw;
  int64_t wrong;
} cell;

// One (impl, in-place) column set for one size: median time, bandwidths, #wrong of the last iteration.
static ps_status measure(bench_ctx *b, int64_t n, cell out[2][2], double *times[2][2]) {
  bool has_oop = b->o->op != OP_BROADCAST; // broadcast is in place by nature
  int total = b->o->warmup + b->o->iters;
  for (int it = 0; it < total; it++)
    for (int ip = has_oop ? 0 : 1; ip < 2; ip++)
      for (int w = 0; w < (b->device ? 1 : 2); w++) {
        double t;
        PS_TRY(prepare(b, ip, n));
        PS_TRY(run_once(b, (impl)w, ip, n, &t));
        if (it >= b->o->warmup) times[w][ip][it - b->o->warmup] = t;
        if (it == total - 1) out[w][ip].wrong = count_wrong(b, n);
      }
  double bytes = (double)n * sizeof(float);
  for (int w = 0; w < 2; w++)
    for (int ip = 0; ip < 2; ip++) {
      if ((!has_oop && ip == 0) || (b->device && w == 1)) {
        out[w][ip] = (cell){-1, -1, -1, 0};
        continue;
      }
      double t = median_max(times[w][ip], b->o->iters);
      out[w][ip].time_us = 1e6 * t;
      out[w][ip].algbw = bytes / t / 1e9;
      out[w][ip].busbw = out[w][ip].algbw * bus_factor(b->o->op, b->p);
      int64_t wr = out[w][ip].wrong;
      MPI_Allreduce(MPI_IN_PLACE, &wr, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
      out[w][ip].wrong = wr;
    }
  return PS_OK;
}

static void print_cell(const cell *x, bool with_wrong) {
  if (x->time_us < 0) {
    printf(with_wrong ? " %10s %7s %7s %6s" : " %10s %7s", "n/a", "n/a", "n/a", "n/a");
    return;
  }
  if (with_wrong) printf(" %10.1f %7.2f %7.2f %6lld", x->time_us, x->algbw, x->busbw, (long long)x->wrong);
  else printf(" %10.1f %7.2f", x->time_us, x->busbw);
}

static ps_status run_table(bench_ctx *b, int *wrong_total) {
  bench_opts *o = b->o;
  double *times[2][2];
  for (int w = 0; w < 2; w++)
    for (int ip = 0; ip < 2; ip++) {
      times[w][ip] = malloc(sizeof(double) * (size_t)o->iters);
      if (!times[w][ip]) PS_FAIL(PS_ERR_MEM, "bench comm: timing arrays");
    }
  const char *raw = o->op == OP_ALLREDUCE ? "MPI_Allreduce" : o->op == OP_ALLGATHER ? "MPI_Allgather" : "MPI_Bcast";
  if (b->me == 0) {
    printf("# pansurv bench comm: %s, backend %s, %d ranks on %d nodes, %d iters (median of the slowest rank), %d "
           "warmup\n", op_names[o->op], ps_comm_backend_name(o->backend), b->p, ps_comm_node_count(b->c), o->iters,
           o->warmup);
    printf("# raw = %s on the same buffers, alternating with ours; ratio = our busbw / raw busbw\n", raw);
    printf("#%11s %11s %5s %5s | %35s | %35s | %18s | %18s | %6s %6s\n", "", "", "", "", "out-of-place (ours)",
           "in-place (ours)", "raw out-of-place", "raw in-place", "ratio", "ratio");
    printf("#%11s %11s %5s %5s | %10s %7s %7s %6s | %10s %7s %7s %6s | %10s %7s | %10s %7s | %6s %6s\n", "size",
           "count", "type", "redop", "time(us)", "algbw", "busbw", "#wrong", "time(us)", "algbw", "busbw", "#wrong",
           "time(us)", "busbw", "time(us)", "busbw", "oop", "ip");
  }
  double ratios[2][64]; // per size in 1-64 MiB, for the footer's min and median
  int rn = 0;
  // Weighted least squares of t = A + B*bytes over the out-of-place rows
  // (weights 1/t^2: relative error, so small sizes count as much as large).
  double sw = 0, swx = 0, swy = 0, swxx = 0, swxy = 0;
  int nfit = 0;
  for (int64_t bytes = o->min_bytes; bytes <= o->max_bytes; bytes *= 2) {
    int64_t n = bytes / (int64_t)sizeof(float);
    if (o->op == OP_ALLGATHER) n = n / b->p * b->p;
    if (n < (o->op == OP_ALLGATHER ? b->p : 1)) continue;
    cell cl[2][2];
    PS_TRY(measure(b, n, cl, times));
    for (int w = 0; w < 2; w++)
      for (int ip = 0; ip < 2; ip++) *wrong_total += cl[w][ip].wrong > 0;
    double ratio[2];
    for (int ip = 0; ip < 2; ip++)
      ratio[ip] = (cl[0][ip].busbw > 0 && cl[1][ip].busbw > 0) ? cl[0][ip].busbw / cl[1][ip].busbw : -1;
    if (bytes >= (1 << 20) && bytes <= (64 << 20) && ratio[1] > 0 && rn < 64) {
      for (int ip = 0; ip < 2; ip++) ratios[ip][rn] = ratio[ip] > 0 ? ratio[ip] : ratio[1];
      rn++;
    }
    if (cl[0][0].time_us > 0) {
      double x = (double)n * sizeof(float), y = cl[0][0].time_us * 1e-6, w = 1.0 / (y * y);
      sw += w, swx += w * x, swy += w * y, swxx += w * x * x, swxy += w * x * y;
      nfit++;
    }
    if (b->me == 0) {
      printf(" %11lld %11lld %5s %5s |", (long long)(n * (int64_t)sizeof(float)), (long long)n, "float",
             o->op == OP_ALLREDUCE ? "sum" : "none");
      print_cell(&cl[0][0], true);
      printf(" |");
      print_cell(&cl[0][1], true);
      printf(" |");
      print_cell(&cl[1][0], false);
      printf(" |");
      print_cell(&cl[1][1], false);
      printf(" |");
      for (int ip = 0; ip < 2; ip++) {
        if (ratio[ip] > 0) printf(" %5.1f%%", 100 * ratio[ip]);
        else printf(" %6s", "n/a");
      }
      printf("\n");
      fflush(stdout);
    }
  }
  if (b->me == 0 && rn > 0) {
    double med[2];
    for (int ip = 0; ip < 2; ip++) {
      qsort(ratios[ip], (size_t)rn, sizeof(double), cmp_double);
      med[ip] = rn % 2 ? ratios[ip][rn / 2] : 0.5 * (ratios[ip][rn / 2 - 1] + ratios[ip][rn / 2]);
    }
    printf("# busbw ours/raw over 1-64 MiB (%d sizes): out-of-place min %.1f%% median %.1f%%, in-place min %.1f%% "
           "median %.1f%%\n", rn, 100 * ratios[0][0], 100 * med[0], 100 * ratios[1][0], 100 * med[1]);
  }
  double det = sw * swxx - swx * swx;
  if (b->me == 0 && o->op == OP_ALLREDUCE && b->p > 1 && nfit >= 3 && det > 0) {
    double A = (swxx * swy - swx * swxy) / det, B = (sw * swxy - swx * swy) / det;
    // Ring all-reduce: t = 2(p-1) alpha + 2(p-1)/p * n * beta.
    double alpha = A / (2.0 * (b->p - 1)), beta = B / (2.0 * (b->p - 1) / b->p);
    printf("# alpha-beta fit of the out-of-place rows to t = 2(p-1)a + 2(p-1)/p n b (%d sizes): alpha = %.2f us, "
           "beta = %.4f ns/byte (1/beta = %.2f GB/s)\n", nfit, alpha * 1e6, beta * 1e9, beta > 0 ? 1e-9 / beta : 0);
  }
  if (b->me == 0) printf("# Out of bounds values : %d %s\n", *wrong_total, *wrong_total ? "FAILED" : "OK");
  for (int w = 0; w < 2; w++)
    for (int ip = 0; ip < 2; ip++) free(times[w][ip]);
  return PS_OK;
}

// ---- --buckets ---------------------------------------------------------------
static void idle_for(double seconds) {
  if (seconds <= 0) return;
  struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  nanosleep(&ts, NULL);
}

static ps_status run_buckets(bench_ctx *b, int *wrong_total) {
  bench_opts *o = b->o;
  int64_t n = o->params;
  float *g = malloc(sizeof(float) * (size_t)n), *ref = malloc(sizeof(float) * (size_t)n);
  double *tp = malloc(sizeof(double) * (size_t)o->iters * 5);
  if (!g || !ref || !tp) PS_FAIL(PS_ERR_MEM, "bench comm --buckets: %lld floats", (long long)n);
  double *t_plain = tp, *t_buck = tp + o->iters, *t_ar = tp + 2 * o->iters, *t_wait = tp + 3 * o->iters;
  double *t_bwd = tp + 4 * o->iters; // measured idle time of the bucketed step's backward (sleeps overshoot)
  ps_grad_sync *s = NULL;
  PS_TRY(ps_grad_sync_create(&s, b->c, g, n, o->bucket_bytes));
  double layer_s = o->backward_ms * 1e-3 / o->layers;
  int total = o->warmup + o->iters;
  ps_grad_sync_timing tm = {0};
  for (int it = 0; it < total; it++) {
    // Plain: the whole backward, then one all-reduce of the arena.
    for (int64_t i = 0; i < n; i++) ref[i] = val(b->me, i);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = now_s();
    for (int l = 0; l < o->layers; l++) idle_for(layer_s);
    double t1 = now_s();
    PS_TRY(ps_comm_allreduce(b->c, PS_IN_PLACE, ref, n, PS_F32, PS_OP_SUM));
    double t2 = now_s();
    // Bucketed: layer l's gradients (from the end of the arena) become final after its compute.
    for (int64_t i = 0; i < n; i++) g[i] = val(b->me, i);
    MPI_Barrier(MPI_COMM_WORLD);
    double t3 = now_s();
    PS_TRY(ps_grad_sync_begin(s));
    double idle = 0;
    for (int l = o->layers - 1; l >= 0; l--) {
      double a = now_s();
      idle_for(layer_s);
      idle += now_s() - a;
      PS_TRY(ps_grad_sync_ready(s, n * l / o->layers));
    }
    PS_TRY(ps_grad_sync_finish(s, &tm));
    double t4 = now_s();
    if (it >= o->warmup) {
      int k = it - o->warmup;
      t_plain[k] = t2 - t0;
      t_ar[k] = t2 - t1;
      t_buck[k] = t4 - t3;
      t_wait[k] = tm.comm_wait_s;
      t_bwd[k] = idle;
    }
  }
  int64_t wrong = 0;
  if (o->corrupt && b->me == 0) g[n / 2] += 1.0f;
  for (int64_t i = 0; i < n; i++) wrong += g[i] != ref[i]; // small integers: exact in any order
  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  *wrong_total += wrong > 0;
  double plain = median_max(t_plain, o->iters), ar = median_max(t_ar, o->iters);
  double buck = median_max(t_buck, o->iters), wait = median_max(t_wait, o->iters);
  double bwd = median_max(t_bwd, o->iters);
  double exposed = buck - bwd > 0 ? buck - bwd : 0;
  if (b->me == 0) {
    printf("# pansurv bench comm --buckets: %lld float gradients (%.1f MiB), %d buckets of %lld bytes, %d ranks, %d "
           "layers, simulated backward %.1f ms, progress %s, %d iters (median of the slowest rank)\n",
           (long long)n, n * 4.0 / 1048576, ps_grad_sync_bucket_count(s),
           (long long)(o->bucket_bytes > 0 ? o->bucket_bytes : PS_GRAD_SYNC_DEFAULT_BUCKET_BYTES), b->p, o->layers,
           o->backward_ms, ps_comm_progress_name(ps_comm_get_progress(b->c)), o->iters);
    printf("#%-22s %12s %12s %12s %14s %10s %6s\n", "mode", "step(ms)", "backward(ms)", "comm(ms)", "exposed(ms)",
           "exposed%", "#wrong");
    printf(" %-22s %12.3f %12.3f %12.3f %14.3f %9.1f%% %6s\n", "plain all-reduce", 1e3 * plain, 1e3 * (plain - ar),
           1e3 * ar, 1e3 * ar, 100 * ar / plain, "-");
    printf(" %-22s %12.3f %12.3f %12.3f %14.3f %9.1f%% %6lld\n", "bucketed (overlapped)", 1e3 * buck, 1e3 * bwd,
           1e3 * wait, 1e3 * exposed, 100 * exposed / buck, (long long)wrong);
    printf("# fraction of the plain all-reduce hidden behind the backward: %.1f%% (1 - exposed / plain comm)\n",
           100 * (1 - exposed / ar));
    printf("# comm(ms) of the bucketed row: time inside ready()/finish() (progress work + waiting); last step: %d of "
           "%d buckets complete before finish()\n", tm.done_early, tm.buckets);
  }
  ps_grad_sync_destroy(s);
  free(g), free(ref), free(tp);
  return PS_OK;
}

int ps_bench_comm(int argc, char **argv) {
  bench_opts o;
  int pr = parse_args(argc, argv, &o);
  if (pr) return pr == 1 ? 0 : pr;
  bench_ctx b = {.o = &o};
  ps_comm_options copt = {o.backend, o.backend == PS_COMM_NCCL ? PS_CUDA : PS_CPU, 0};
  ps_status s = ps_comm_init(&b.c, &argc, &argv, &copt);
  if (s != PS_OK) return ps_report_error("bench comm", s);
  b.p = ps_comm_size(b.c);
  b.me = ps_comm_rank(b.c);
  b.device = o.backend == PS_COMM_NCCL;
  int wrong = 0;
  if (o.buckets) {
    if (b.device) s = ps_error_set(PS_ERR_UNSUPPORTED, __FILE__, __LINE__, "--buckets runs on host buffers (mpi)");
    else s = run_buckets(&b, &wrong);
  } else {
    b.cap = o.max_bytes / (int64_t)sizeof(float) + b.p;
    b.host = malloc(sizeof(float) * (size_t)b.cap);
    if (!b.host) s = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "bench comm: %lld-byte buffers", (long long)o.max_bytes);
    if (s == PS_OK && b.device) {
      void *d1 = NULL, *d2 = NULL;
      s = ps_cuda_malloc(&d1, sizeof(float) * (size_t)b.cap);
      if (s == PS_OK) s = ps_cuda_malloc(&d2, sizeof(float) * (size_t)b.cap);
      b.send = d1, b.recv = d2;
    } else if (s == PS_OK) {
      b.send = malloc(sizeof(float) * (size_t)b.cap);
      b.recv = malloc(sizeof(float) * (size_t)b.cap);
      if (!b.send || !b.recv) s = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "bench comm: buffers");
    }
    if (s == PS_OK) s = run_table(&b, &wrong);
    if (b.device) {
      ps_cuda_free(b.send);
      ps_cuda_free(b.recv);
    } else {
      free(b.send);
      free(b.recv);
    }
    free(b.host);
  }
  if (s != PS_OK) {
    int code = ps_report_error("bench comm", s);
    ps_comm_abort(b.c, code); // a failure on one rank must not leave the others in a collective
  }
  ps_comm_finalize(b.c);
  if (wrong && b.me == 0) fprintf(stderr, "pansurv bench comm: %d column(s) with wrong values\n", wrong);
  return wrong ? 1 : 0;
}
