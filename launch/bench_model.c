// pansurv bench model [--config FILE] [--batch N] [--steps N] [--warmup N]
// Times one full training step of the model (default: the reference model of docs/model.md):
// forward, Efron Cox partial likelihood on the global batch + 0.1 * reconstruction MSE, backward,
// gradient all-reduce, AdamW. Global batch split over the MPI ranks launched; threads from
// OMP_NUM_THREADS (OpenMP over tiles; OpenBLAS single-threaded inside). Prints one line
// "<N> patients/s" (median step) and breakdown lines (per-module time, GFLOP/s, sgemm ceiling).
// --device cuda (auto: cuda when built and a GPU is visible; default cpu): one GPU per rank (local rank -> GPU),
// parameters, gradients and activations on the device, the Cox loss on the host (eta is copied
// out), gradients all-reduced over NCCL when built (else staged through host memory and MPI),
// AdamW on the device; the ceiling is cuBLAS sgemm (or the bf16 GEMM with --precision bf16)
// on the same GPU. Stage timers are read after synchronizing the device.
#include <cblas.h>
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_comm.h"
#include "ps_commands.h"
#include "ps_cox.h"
#include "ps_cuda.h"
#include "ps_device_plan.h"
#include "ps_model.h"
#include "ps_optim.h"
#include "ps_rng.h"

#define BENCH_MAX_STEPS 1000

static ps_status mpi_sum_f64(void *ctx, double *buf, int64_t n) {
  MPI_Comm comm = *(MPI_Comm *)ctx;
  if (MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, comm) != MPI_SUCCESS)
    PS_FAIL(PS_ERR_MPI, "bench model: MPI_Allreduce of %lld doubles failed", (long long)n);
  return PS_OK;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// sgemm ceiling on one thread: 1024^3, best of `reps` (after one untimed call).
static double sgemm_gflops(int reps) {
  const int n = 1024;
  float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
  if (!a || !b || !c) return 0;
  for (int i = 0; i < n * n; i++) a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.1f;
  double best = 1e30;
  for (int r = 0; r <= reps; r++) {
    double t = omp_get_wtime();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    t = omp_get_wtime() - t;
    if (r && t < best) best = t;
  }
  free(a), free(b), free(c);
  return 2.0 * n * n * (double)n / best / 1e9;
}

// GEMM ceiling of this rank's GPU at the current matmul precision: 4096^3 through
// ps_gemm on device tensors, best of `reps` after one untimed call. 0 on failure.
static double gpu_gemm_gflops(int reps) {
  const int64_t n = 4096;
  void *p[3] = {NULL, NULL, NULL};
  double best = 1e30;
  for (int i = 0; i < 3; i++)
    if (ps_cuda_malloc(&p[i], sizeof(float) * (size_t)(n * n)) != PS_OK || ps_cuda_memset_zero(p[i], sizeof(float) * (size_t)(n * n)) != PS_OK) goto out;
  {
    ps_tensor a = ps_tensor_wrap(p[0], PS_F32, PS_CUDA, PS_SHAPE(n, n)), b = ps_tensor_wrap(p[1], PS_F32, PS_CUDA, PS_SHAPE(n, n));
    ps_tensor c = ps_tensor_wrap(p[2], PS_F32, PS_CUDA, PS_SHAPE(n, n));
    for (int r = 0; r <= reps; r++) {
      if (ps_cuda_synchronize() != PS_OK) goto out;
      double t = omp_get_wtime();
      if (ps_gemm(&c, &a, false, &b, false, NULL, 1.0f, 0.0f) != PS_OK || ps_cuda_synchronize() != PS_OK) goto out;
      t = omp_get_wtime() - t;
      if (r && t < best) best = t;
    }
  }
out:
  for (int i = 0; i < 3; i++) ps_cuda_free(p[i]);
  return best < 1e30 ? 2.0 * (double)n * n * n / best / 1e9 : 0;
}

static int parse_config(const char *path, ps_model_config *c, int *batch, int *steps, int *warmup) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "pansurv bench model: cannot open config '%s'\n", path);
    return 1;
  }
  char line[512];
  int ln = 0;
  while (fgets(line, sizeof line, f)) {
    ln++;
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char key[128], val[256];
    if (sscanf(line, " %127[^: ] : %255[^\n]", key, val) != 2) continue;
    long long v = atoll(val);
    double d = atof(val);
    if (!strcmp(key, "use_omics")) c->use[PS_NN_OMICS] = v;
    else if (!strcmp(key, "use_slide")) c->use[PS_NN_SLIDE] = v;
    else if (!strcmp(key, "use_clinical")) c->use[PS_NN_CLINICAL] = v;
    else if (!strcmp(key, "d")) c->d = v;
    else if (!strcmp(key, "genes")) c->genes = v;
    else if (!strcmp(key, "ae_hidden")) c->ae_hidden = v;
    else if (!strcmp(key, "ae_dropout")) c->ae_dropout = (float)d;
    else if (!strcmp(key, "ae_input_noise")) c->ae_input_noise = (float)d;
    else if (!strcmp(key, "slide_mode")) c->slide_mode = strstr(val, "features") ? PS_SLIDE_FEATURES : PS_SLIDE_TILES;
    else if (!strcmp(key, "tile_size")) c->tile_size = v;
    else if (!strcmp(key, "max_tiles")) c->max_tiles = v;
    else if (!strcmp(key, "cnn_channels")) {
      long long a, b, cc;
      if (sscanf(val, " [ %lld , %lld , %lld ]", &a, &b, &cc) == 3) c->cnn_ch[0] = a, c->cnn_ch[1] = b, c->cnn_ch[2] = cc;
    } else if (!strcmp(key, "cnn_norm_groups")) c->cnn_norm_groups = (int)v;
    else if (!strcmp(key, "feat_dim")) c->feat_dim = v;
    else if (!strcmp(key, "attn_hidden")) c->attn_hidden = v;
    else if (!strcmp(key, "clinical")) c->clinical = v;
    else if (!strcmp(key, "clinical_hidden")) c->clinical_hidden = v;
    else if (!strcmp(key, "fusion_layers")) c->fusion_layers = (int)v;
    else if (!strcmp(key, "heads")) c->heads = (int)v;
    else if (!strcmp(key, "ff_hidden")) c->ff_hidden = v;
    else if (!strcmp(key, "seed")) c->seed = (uint64_t)v;
    else if (!strcmp(key, "batch")) *batch = (int)v;
    else if (!strcmp(key, "steps")) *steps = (int)v;
    else if (!strcmp(key, "warmup")) *warmup = (int)v;
    else if (strcmp(key, "bn_momentum") && strcmp(key, "bn_eps")) {
      fprintf(stderr, "pansurv bench model: %s:%d: unknown key '%s'\n", path, ln, key);
      fclose(f);
      return 1;
    }
  }
  fclose(f);
  return 0;
}

int ps_bench_model(int argc, char **argv) {
  ps_model_config cfg;
  ps_model_config_default(&cfg);
  int gbatch = 64, steps = 5, warmup = 1;
  // Default cpu: the CPU figures (docs/performance.md, scripts/scaling.sh) keep meaning what they did on a GPU node.
  const char *device_s = "cpu", *prec_s = "fp32";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--config") && i + 1 < argc) {
      if (parse_config(argv[++i], &cfg, &gbatch, &steps, &warmup)) return 2;
    } else if (!strcmp(argv[i], "--batch") && i + 1 < argc) gbatch = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--device") && i + 1 < argc) device_s = argv[++i];
    else if (!strcmp(argv[i], "--precision") && i + 1 < argc) prec_s = argv[++i];
    else {
      fprintf(!strcmp(argv[i], "--help") ? stdout : stderr,
              "usage: pansurv bench model [--config FILE] [--batch N] [--steps N (>= 5)] [--warmup N]\n"
              "                         [--device cpu|cuda|auto (default cpu)] [--precision fp32|bf16 (cuda)]\n");
      return strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  if (steps < 5 || steps > BENCH_MAX_STEPS || gbatch <= 0 || warmup < 0) {
    fprintf(stderr, "pansurv bench model: need steps in 5..%d, batch > 0, warmup >= 0\n", BENCH_MAX_STEPS);
    return 2;
  }
  // Same resolution as `pansurv train` (train.device, train.precision), before MPI starts.
  ps_config rc_cfg;
  ps_config_defaults(&rc_cfg);
  snprintf(rc_cfg.source, sizeof rc_cfg.source, "bench model");
  char set[128];
  snprintf(set, sizeof set, "train.device=%s", device_s);
  ps_status ss = ps_config_set(&rc_cfg, set);
  if (ss == PS_OK) {
    snprintf(set, sizeof set, "train.precision=%s", prec_s);
    ss = ps_config_set(&rc_cfg, set);
  }
  if (ss != PS_OK) {
    fprintf(stderr, "pansurv bench model: %s\n", ps_error_message());
    return 2;
  }
  ps_run_plan plan;
  if ((ss = ps_run_plan_resolve(&rc_cfg, ps_run_caps_probe(), &plan)) != PS_OK) return ps_report_error("bench model", ss);
  const bool gpu = plan.device == PS_CUDA;
  int inited = 0, rank = 0, size = 1;
  MPI_Initialized(&inited);
  if (!inited) {
    // On a GPU the communicator (ps_comm_init) needs MPI_THREAD_FUNNELED; the CPU bench stays as it was.
    int provided = 0;
    if (gpu) MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    else MPI_Init(&argc, &argv);
  }
  MPI_Comm comm = MPI_COMM_WORLD;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  openblas_set_num_threads(1); // parallelism is OpenMP over tiles; BLAS calls run inside it
  ps_comm *gcomm = NULL; // cuda: binds local rank -> GPU; its all-reduce is NCCL when built
  float *ghost = NULL;   // cuda without NCCL: gradients staged through this host copy
  if (gpu) {
    ps_comm_options go = {PS_COMM_AUTO, PS_CUDA, 0};
    ps_status gs = ps_comm_init(&gcomm, &argc, &argv, &go);
    if (gs == PS_OK) gs = ps_ops_set_matmul_precision(plan.precision);
    if (gs != PS_OK) {
      int code = ps_report_error("bench model", gs);
      if (gcomm) ps_comm_finalize(gcomm);
      if (!inited) MPI_Finalize();
      return code;
    }
  }
  const int nth = omp_get_max_threads();
  int rc = 0;
  // This rank's share of the global batch (unequal shares allowed).
  const int lb = gbatch / size + (rank < gbatch % size), first = rank * (gbatch / size) + (rank < gbatch % size ? rank : gbatch % size);
  ps_model *m = NULL;
  ps_cox_work *cox = NULL;
  ps_optim opt = {0};
  float *omics = NULL, *clin = NULL, *tiles = NULL, *eta_all = NULL, *deta_all = NULL, *eta = NULL;
  double *time = NULL;
  uint8_t *event = NULL, *ones = NULL;
  int64_t *pid = NULL;
  int32_t *tc = NULL;
  int *counts = NULL, *displs = NULL;
  ps_status s = ps_model_create_on(&m, &cfg, plan.device);
  // The per-module rows need each module's kernels finished before its clock is read (costs
  // the overlap of host work with the GPU queue, so the step is a little slower than in training).
  if (s == PS_OK && gpu) ps_model_set_timing_sync(m, true);
  if (s == PS_OK) s = ps_model_plan(m, lb > 0 ? lb : 1);
  if (s == PS_OK) s = ps_cox_work_create(&cox, gbatch);
  if (s != PS_OK) {
    rc = ps_report_error("bench model", s);
    goto out;
  }
  ps_model_set_reducer(m, (ps_nn_reducer){size > 1 ? mpi_sum_f64 : NULL, &comm});
  ps_param_table *pt = ps_model_params(m);
  ps_optim_config oc;
  ps_optim_config_default(&oc);
  if ((s = ps_optim_create(&opt, &oc, pt)) != PS_OK) {
    rc = ps_report_error("bench model", s);
    goto out;
  }
  // Synthetic global batch (every rank generates the same data and takes its rows).
  const int64_t G = cfg.genes, C = cfg.clinical, K = cfg.max_tiles;
  const int64_t tsz = cfg.slide_mode == PS_SLIDE_TILES ? 3 * cfg.tile_size * cfg.tile_size : cfg.feat_dim;
  omics = calloc((size_t)(lb * G) + 1, sizeof(float)), clin = calloc((size_t)(lb * C) + 1, sizeof(float));
  tiles = calloc((size_t)(lb * K * tsz) + 1, sizeof(float));
  time = malloc(sizeof(double) * (size_t)gbatch), eta_all = malloc(sizeof(float) * (size_t)gbatch);
  deta_all = malloc(sizeof(float) * (size_t)gbatch), eta = malloc(sizeof(float) * (size_t)(lb + 1));
  event = malloc((size_t)gbatch), ones = malloc((size_t)lb + 1);
  pid = malloc(sizeof(int64_t) * (size_t)(lb + 1));
  tc = malloc(sizeof(int32_t) * (size_t)(lb + 1));
  counts = malloc(sizeof(int) * (size_t)size), displs = malloc(sizeof(int) * (size_t)size);
  if (!omics || !clin || !tiles || !time || !eta_all || !deta_all || !eta || !event || !ones || !pid || !tc || !counts ||
      !displs) {
    fprintf(stderr, "pansurv bench model: out of memory for the synthetic batch\n");
    rc = 1;
    goto out;
  }
  ps_rng r = ps_rng_make(cfg.seed, ps_rng_stream(PS_RNG_SIM, 0, 0, 0));
  for (int i = 0; i < gbatch; i++) {
    time[i] = (double)(1 + (int)(100.0 * ps_rng_uniform(&r, (uint64_t)i))); // integer days: ties occur
    event[i] = ps_rng_uniform(&r, (uint64_t)(gbatch + i)) < 0.6f;
  }
  for (int i = 0; i < lb; i++) {
    pid[i] = first + i;
    ones[i] = 1;
    tc[i] = (int32_t)K;
    ps_rng rp = ps_rng_make(cfg.seed, ps_rng_stream(PS_RNG_SIM, 1, (uint64_t)pid[i], 0));
    for (int64_t j = 0; j < G; j++) omics[i * G + j] = (float)ps_rng_normal(&rp, (uint64_t)j);
    for (int64_t j = 0; j < C; j++) clin[i * C + j] = (float)ps_rng_normal(&rp, (uint64_t)(G + j));
    for (int64_t j = 0; j < K * tsz; j++) tiles[i * K * tsz + j] = ps_rng_uniform(&rp, (uint64_t)(G + C + j));
  }
  for (int q = 0; q < size; q++) {
    counts[q] = gbatch / size + (q < gbatch % size);
    displs[q] = q * (gbatch / size) + (q < gbatch % size ? q : gbatch % size);
  }
  ps_model_batch in = {lb, pid, omics, ones, clin, ones, cfg.slide_mode == PS_SLIDE_TILES ? tiles : NULL,
                       cfg.slide_mode == PS_SLIDE_FEATURES ? tiles : NULL, tc, 0};
  double step_t[BENCH_MAX_STEPS], opt_t[BENCH_MAX_STEPS], comm_t[BENCH_MAX_STEPS], loss_t[BENCH_MAX_STEPS];
  double mod_t[PS_MT_COUNT][BENCH_MAX_STEPS], flops[PS_MT_COUNT] = {0};
  double gemm0 = gpu ? gpu_gemm_gflops(3) : sgemm_gflops(5), gemm_mid = 0, last_loss = 0;
  for (int it = 0; it < warmup + steps; it++) {
    // The ceiling is sampled between steps too: on a shared machine the best sample is the fair one.
    if (it > 0 && !gpu) gemm_mid = fmax(gemm_mid, sgemm_gflops(1));
    MPI_Barrier(comm);
    double t0 = omp_get_wtime(), rec = 0;
    s = ps_param_zero_grad(pt);
    if (s == PS_OK) s = ps_model_forward(m, eta, &rec, &in, true, it); // eta comes back to the host
    double tl = omp_get_wtime();
    // Global-batch loss: gather eta, every rank computes the same Cox gradient and keeps its rows.
    MPI_Allgatherv(eta, lb, MPI_FLOAT, eta_all, counts, displs, MPI_FLOAT, comm);
    double rec_sum = rec * (double)lb, n_o = lb;
    double agg[2] = {rec_sum, n_o};
    MPI_Allreduce(MPI_IN_PLACE, agg, 2, MPI_DOUBLE, MPI_SUM, comm);
    ps_cox_result cr;
    ps_cox_batch cb = {gbatch, time, event, NULL, NULL};
    if (s == PS_OK) s = ps_cox_loss_f32(cox, &cb, eta_all, PS_COX_EFRON, &cr, deta_all);
    last_loss = cr.loss + 0.1 * agg[0] / agg[1];
    ps_model_set_recon_norm(m, agg[1] * (double)G); // global mean over present rows
    double tl1 = omp_get_wtime();
    if (s == PS_OK) s = ps_model_backward(m, deta_all + first, 0.1f, NULL, NULL);
    if (s == PS_OK && gpu) s = ps_cuda_synchronize();
    double tc0 = omp_get_wtime();
    if (s == PS_OK && size > 1) {
      if (!gpu) MPI_Allreduce(MPI_IN_PLACE, pt->grad, (int)pt->total, MPI_FLOAT, MPI_SUM, comm);
      else if (ps_comm_get_backend(gcomm) == PS_COMM_NCCL) {
        s = ps_comm_allreduce(gcomm, PS_IN_PLACE, pt->grad, pt->total, PS_F32, PS_OP_SUM);
        if (s == PS_OK) s = ps_cuda_synchronize();
      } else {
        if (!ghost && !(ghost = malloc(sizeof(float) * (size_t)pt->total))) s = PS_ERR_MEM;
        if (s == PS_OK) s = ps_param_table_download(pt, ghost, true);
        if (s == PS_OK) MPI_Allreduce(MPI_IN_PLACE, ghost, (int)pt->total, MPI_FLOAT, MPI_SUM, comm);
        if (s == PS_OK) s = ps_cuda_copy_h2d(pt->grad, ghost, sizeof(float) * (size_t)pt->total);
      }
    }
    double to = omp_get_wtime();
    double gn = 0;
    if (s == PS_OK) s = ps_optim_step(&opt, pt->data, pt->grad, &gn);
    if (s == PS_OK && gpu) s = ps_cuda_synchronize();
    double t1 = omp_get_wtime();
    if (s != PS_OK) {
      rc = ps_report_error("bench model", s);
      goto out;
    }
    if (it >= warmup) {
      int k = it - warmup;
      step_t[k] = t1 - t0;
      opt_t[k] = t1 - to;
      comm_t[k] = to - tc0;
      loss_t[k] = tl1 - tl;
      double f[PS_MT_COUNT], b[PS_MT_COUNT], ff[PS_MT_COUNT], fb[PS_MT_COUNT];
      ps_model_timers(m, f, b, ff, fb);
      for (int q = 0; q < PS_MT_COUNT; q++) {
        mod_t[q][k] = f[q] + b[q];
        flops[q] = ff[q] + fb[q];
      }
    }
  }
  double gemm1 = gpu ? gpu_gemm_gflops(3) : sgemm_gflops(5), ceiling = fmax(fmax(gemm0, gemm1), gemm_mid);
  if (!isfinite(last_loss)) {
    fprintf(stderr, "pansurv bench model: loss is %g\n", last_loss);
    rc = 1;
  }
  double med = median(step_t, steps);
  // %ceiling: against threads x the 1-thread sgemm on the CPU, against the GPU's own GEMM on cuda.
  const int units = gpu ? 1 : nth;
  if (rank == 0) {
    printf("%.2f patients/s\n", gbatch / med);
    if (gpu)
      printf("# step: median %.3f s over %d timed steps (%d warm-up), global batch %d, %d rank(s) x 1 GPU (%s), "
             "loss %.4f (Efron Cox + 0.1 MSE)\n",
             med, steps, warmup, gbatch, size, ps_run_plan_describe(&plan), last_loss);
    else
      printf("# step: median %.3f s over %d timed steps (%d warm-up), global batch %d, %d rank(s) x %d thread(s), "
             "loss %.4f (Efron Cox + 0.1 MSE)\n",
             med, steps, warmup, gbatch, size, nth, last_loss);
    if (gpu)
      printf("# GPU GEMM ceiling (4096^3, %s, best sample): %.1f GFLOP/s (before %.1f, after %.1f); %%ceiling below "
             "is against it\n", ps_matmul_precision_name(plan.precision), ceiling, gemm0, gemm1);
    else
      printf("# sgemm ceiling (1024^3, 1 thread, best sample): %.1f GFLOP/s (before %.1f, between steps %.1f, after %.1f); "
             "%%ceiling below is against %d thread(s) x %.1f\n",
             ceiling, gemm0, gemm_mid, gemm1, nth, ceiling);
    printf("# %-10s %10s %12s %10s %9s\n", "module", "time_ms", "GFLOP/step", "GFLOP/s", "%ceiling");
    double tot_fl = 0;
    for (int q = 0; q < PS_MT_COUNT; q++) {
      double t = median(mod_t[q], steps);
      double gf = t > 0 ? flops[q] / t / 1e9 : 0;
      tot_fl += flops[q];
      printf("# %-10s %10.2f %12.3f %10.1f %8.1f%%\n", ps_model_timer_name((ps_model_timer)q), 1e3 * t, flops[q] / 1e9,
             gf, ceiling > 0 ? 100.0 * gf / (units * ceiling) : 0.0);
    }
    printf("# %-10s %10.2f\n# %-10s %10.2f\n# %-10s %10.2f\n", "cox_efron", 1e3 * median(loss_t, steps), "allreduce",
           1e3 * median(comm_t, steps), "adamw", 1e3 * median(opt_t, steps));
    printf("# total: %.2f GFLOP/step per rank, %.1f GFLOP/s per rank; parameters %lld; activations %.1f MiB per rank\n",
           tot_fl / 1e9, tot_fl / med / 1e9, (long long)ps_param_count_elements(pt),
           ps_model_activation_bytes(m) / 1048576.0);
  }
out:
  ps_optim_free(&opt);
  free(omics), free(clin), free(tiles), free(time), free(eta_all), free(deta_all), free(eta), free(event), free(ones);
  free(pid), free(tc), free(counts), free(displs);
  ps_model_destroy(m);
  ps_cox_work_destroy(cox);
  free(ghost);
  if (gcomm) ps_comm_finalize(gcomm); // does not finalize MPI (it was up already)
  if (!inited) MPI_Finalize();
  return rc;
}
