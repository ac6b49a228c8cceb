// pansurv train CONFIG [--set section.key=value ...] [--resume auto|PATH] [--quiet]
// pansurv config CONFIG [--set ...] | pansurv config --markdown
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_commands.h"
#include "ps_comm.h"
#include "ps_config.h"
#include "ps_device_plan.h"
#include "ps_metrics.h"
#include "ps_signal.h"
#include "ps_train.h"
#include "ps_wl_model.h"

static void train_usage(FILE *f) {
  fprintf(f, "usage: pansurv train CONFIG [--set section.key=value ...] [--resume auto|PATH] [--quiet]\n\n"
             "Trains under mpirun/srun (or as a single process). Exit status: 0 done, 1 error, 2 usage,\n"
             "%d stopped by SIGUSR1/SIGTERM after writing a checkpoint (continue with --resume auto).\n"
             "A second SIGTERM/SIGINT exits at once (128+signal). Keys: docs/config.md.\n",
             PS_EXIT_PREEMPTED);
}

// Parses CONFIG and --set flags into cfg; returns 0 or an exit code.
static int load_config(const char *cmd, int argc, char **argv, ps_config *cfg, const char **resume, int *quiet,
                       int rank) {
  const char *path = NULL;
  ps_config_defaults(cfg);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if ((!strcmp(a, "--set") || !strcmp(a, "--resume")) && i + 1 >= argc) {
      if (rank == 0) fprintf(stderr, "pansurv %s: %s needs a value\n", cmd, a);
      return PS_EXIT_USAGE;
    }
    if (!strcmp(a, "--set")) i++;
    else if (!strcmp(a, "--resume") && resume) *resume = argv[++i];
    else if (!strcmp(a, "--quiet") && quiet) *quiet = 1;
    else if (a[0] == '-' ) {
      if (rank == 0) fprintf(stderr, "pansurv %s: unknown option '%s'\n", cmd, a);
      return PS_EXIT_USAGE;
    } else if (!path) path = a;
    else {
      if (rank == 0) fprintf(stderr, "pansurv %s: more than one CONFIG ('%s', '%s')\n", cmd, path, a);
      return PS_EXIT_USAGE;
    }
  }
  if (!path) {
    if (rank == 0) fprintf(stderr, "pansurv %s: missing CONFIG (a YAML file; see docs/config.md)\n", cmd);
    return PS_EXIT_USAGE;
  }
  ps_status s = ps_config_load(cfg, path);
  for (int i = 1; s == PS_OK && i < argc; i++)
    if (!strcmp(argv[i], "--set")) s = ps_config_set(cfg, argv[++i]);
    else if (!strcmp(argv[i], "--resume")) i++;
  if (s == PS_OK) s = ps_config_validate(cfg);
  if (s != PS_OK) {
    if (rank == 0) fprintf(stderr, "pansurv %s: %s\n", cmd, ps_error_message());
    return PS_EXIT_ERROR;
  }
  return 0;
}

int ps_cmd_config(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "--markdown")) {
    ps_config_print_markdown(stdout);
    return 0;
  }
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fprintf(argc < 2 ? stderr : stdout, "usage: pansurv config CONFIG [--set section.key=value ...]  (prints the "
            "resolved config)\n       pansurv config --markdown  (the key reference table of docs/config.md)\n");
    return argc < 2 ? PS_EXIT_USAGE : 0;
  }
  ps_config cfg;
  int rc = load_config("config", argc, argv, &cfg, NULL, NULL, 0);
  if (rc) return rc;
  ps_config_print(&cfg, stdout);
  return 0;
}

int ps_cmd_train(int argc, char **argv) {
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    train_usage(stdout);
    return 0;
  }
  ps_config cfg;
  const char *resume = NULL;
  int quiet = 0;
  // Config errors are found before MPI starts: every rank parses the same file.
  const char *rank_env = getenv("OMPI_COMM_WORLD_RANK");
  if (!rank_env) rank_env = getenv("SLURM_PROCID");
  int rank_guess = rank_env ? atoi(rank_env) : 0;
  int rc = load_config("train", argc, argv, &cfg, &resume, &quiet, rank_guess);
  if (rc) {
    if (rc == PS_EXIT_USAGE && rank_guess == 0) train_usage(stderr);
    return rc;
  }
  // Device, gradient backend and precision are settled before anything is written.
  ps_comm *comm = NULL;
  ps_run_plan plan;
  ps_status s = ps_run_setup(&cfg, &plan, &comm, &argc, &argv);
  if (s != PS_OK) {
    ps_run_setup_fail("train", &comm, rank_guess);
    return PS_EXIT_ERROR;
  }
  const int rank = ps_comm_rank(comm);
  // Said only for GPU runs: CPU output stays as it was.
  if (rank == 0 && !quiet && plan.device == PS_CUDA) printf("pansurv train: %s\n", ps_run_plan_describe(&plan));
  void *w = NULL;
  const ps_workload_ops *ops = NULL;
  if (cfg.train.workload == PS_CFG_WORKLOAD_TOY) s = ps_toy_create(&w, &ops, &cfg, comm);
  else s = ps_wl_model_create(&w, &ops, &cfg, &plan, comm);
  ps_status g = PS_OK;
  if (ps_comm_agree(comm, s, &g) != PS_OK || g != PS_OK) {
    if (s != PS_OK) fprintf(stderr, "pansurv train: rank %d: %s\n", rank, ps_error_message());
    if (ops) ops->destroy(w);
    ps_comm_finalize(comm);
    return PS_EXIT_ERROR;
  }
  ps_train_options to = {resume, quiet};
  s = ps_train_run(&cfg, comm, w, ops, &to);
  int code = PS_EXIT_OK;
  if (s == PS_ERR_INTERRUPTED) code = PS_EXIT_PREEMPTED;
  else if (s != PS_OK) {
    code = PS_EXIT_ERROR;
    if (rank == 0 || !strstr(ps_error_message(), "another rank failed"))
      fprintf(stderr, "pansurv train: rank %d: %s\n", rank, ps_error_message());
  }
  ops->destroy(w);
  ps_comm_finalize(comm);
  return code;
}

// ---- pansurv cv CONFIG [--fold k] [--summarize] [--set ...] [--resume auto|PATH] ----
// k-fold cross-validation (data.split: kfold, data.folds): each fold trains
// in RUN_DIR/NAME/fold<k> and scores its best checkpoint on its test fold
// (fold_result.json); when every fold has a result, cv_summary.json gets the
// mean, sd and 95% t-interval of the test C-index.

static double t975(int df) { // two-sided 95% Student t quantiles
  static const double q[] = {0, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                             2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086};
  return df >= 1 && df <= 20 ? q[df] : 1.96;
}

static int cv_summarize(const char *dir, int folds) {
  double c[1024];
  int n = 0;
  for (int k = 0; k < folds && k < 1024; k++) {
    char p[3 * PS_CFG_STR_MAX];
    snprintf(p, sizeof p, "%s/fold%d/fold_result.json", dir, k);
    FILE *f = fopen(p, "r");
    if (!f) return 0; // not all folds done yet
    char buf[4096];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    buf[len] = '\0';
    fclose(f);
    const char *q = strstr(buf, "\"test_c\": ");
    if (!q) return 0;
    c[n++] = strtod(q + 10, NULL);
  }
  double mean = 0, var = 0;
  for (int i = 0; i < n; i++) mean += c[i] / n;
  for (int i = 0; i < n; i++) var += (c[i] - mean) * (c[i] - mean) / (n > 1 ? n - 1 : 1);
  double sd = sqrt(var), half = n > 1 ? t975(n - 1) * sd / sqrt((double)n) : NAN;
  char p[3 * PS_CFG_STR_MAX];
  snprintf(p, sizeof p, "%s/cv_summary.json", dir);
  FILE *f = fopen(p, "w");
  if (!f) return 0;
  fprintf(f, "{\n  \"folds\": %d,\n  \"test_c\": [", n);
  for (int i = 0; i < n; i++) fprintf(f, "%s%.6f", i ? ", " : "", c[i]);
  fprintf(f, "],\n  \"mean\": %.6f,\n  \"sd\": %.6f,\n  \"ci95\": [%.6f, %.6f],\n  \"interval\": \"mean +- t(0.975, k-1) sd / sqrt(k)\"\n}\n",
          mean, sd, mean - half, mean + half);
  fclose(f);
  printf("pansurv cv: %d folds: test C-index %.4f +- %.4f (sd), 95%% CI [%.4f, %.4f]; %s\n", n, mean, sd, mean - half,
         mean + half, p);
  return 1;
}

int ps_cmd_cv(int argc, char **argv) {
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    printf("usage: pansurv cv CONFIG [--fold k] [--set section.key=value ...] [--resume auto|PATH] [--quiet]\n\n"
           "k-fold cross-validation (data.folds folds, stratified by cohort x event). Without --fold the folds run\n"
           "one after another; with --fold (SLURM array tasks) only that one. Writes RUN_DIR/NAME/fold<k>/ and,\n"
           "once every fold has finished, RUN_DIR/NAME/cv_summary.json (mean, sd, 95%% CI of the test C-index).\n");
    return 0;
  }
  int fold = -1;
  // strip --fold k before the common parser
  char **args = malloc(sizeof(char *) * (size_t)(argc + 1));
  int na = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--fold") && i + 1 < argc) {
      char *end;
      fold = (int)strtol(argv[++i], &end, 10);
      if (*end || fold < 0) {
        fprintf(stderr, "pansurv cv: --fold %s: expected a fold index >= 0\n", argv[i]);
        free(args);
        return PS_EXIT_USAGE;
      }
    } else args[na++] = argv[i];
  }
  args[na] = NULL;
  ps_config base;
  const char *resume = NULL;
  int quiet = 0;
  const char *rank_env = getenv("OMPI_COMM_WORLD_RANK");
  if (!rank_env) rank_env = getenv("SLURM_PROCID");
  int rank_guess = rank_env ? atoi(rank_env) : 0;
  int rc = load_config("cv", na, args, &base, &resume, &quiet, rank_guess);
  if (!rc && fold >= base.data.folds) {
    if (rank_guess == 0) fprintf(stderr, "pansurv cv: --fold %d but data.folds = %d\n", fold, base.data.folds);
    rc = PS_EXIT_USAGE;
  }
  if (rc) {
    free(args);
    return rc;
  }
  ps_comm *comm = NULL;
  ps_run_plan plan;
  ps_status s = ps_run_setup(&base, &plan, &comm, &argc, &argv);
  if (s != PS_OK) {
    ps_run_setup_fail("cv", &comm, rank_guess);
    free(args);
    return PS_EXIT_ERROR;
  }
  const int rank = ps_comm_rank(comm);
  if (rank == 0 && !quiet && plan.device == PS_CUDA) printf("pansurv cv: %s\n", ps_run_plan_describe(&plan));
  // NAME: log.name, else cv-<array job or job id>, else cv-<UTC time> (rank 0 decides)
  char name[PS_CFG_STR_MAX] = {0};
  if (rank == 0) {
    const char *arr = getenv("SLURM_ARRAY_JOB_ID"), *job = getenv("SLURM_JOB_ID");
    if (base.log.name[0]) snprintf(name, sizeof name, "%s", base.log.name);
    else if (arr && *arr) snprintf(name, sizeof name, "cv-%s", arr);
    else if (job && *job) snprintf(name, sizeof name, "cv-%s", job);
    else {
      time_t t = time(NULL);
      struct tm tm;
      gmtime_r(&t, &tm);
      strftime(name, sizeof name, "cv-%Y%m%d-%H%M%S", &tm);
    }
  }
  ps_comm_broadcast(comm, name, sizeof name, PS_U8, 0);
  char dir[2 * PS_CFG_STR_MAX + 8];
  snprintf(dir, sizeof dir, "%s/%s", base.log.run_dir, name);
  int code = PS_EXIT_OK;
  for (int k = fold >= 0 ? fold : 0; k < (fold >= 0 ? fold + 1 : base.data.folds); k++) {
    ps_config cfg = base;
    cfg.data.split = PS_CFG_SPLIT_KFOLD;
    cfg.data.fold = k;
    cfg.train.workload = PS_CFG_WORKLOAD_MODEL;
    if (snprintf(cfg.log.run_dir, sizeof cfg.log.run_dir, "%s", dir) >= (int)sizeof cfg.log.run_dir) cfg.log.run_dir[sizeof cfg.log.run_dir - 1] = 0;
    snprintf(cfg.log.name, sizeof cfg.log.name, "fold%d", k);
    cfg.checkpoint.dir[0] = '\0';
    if (rank == 0 && !quiet) printf("pansurv cv: fold %d of %d -> %s/fold%d\n", k, cfg.data.folds, dir, k);
    void *w = NULL;
    const ps_workload_ops *ops = NULL;
    ps_status g = PS_OK;
    s = ps_wl_model_create(&w, &ops, &cfg, &plan, comm);
    if (ps_comm_agree(comm, s, &g) != PS_OK || g != PS_OK) {
      if (s != PS_OK) fprintf(stderr, "pansurv cv: fold %d: rank %d: %s\n", k, rank, ps_error_message());
      code = PS_EXIT_ERROR;
      break;
    }
    ps_train_options to = {resume, quiet};
    s = ps_train_run(&cfg, comm, w, ops, &to);
    if (s == PS_OK) { // score the best (else last) checkpoint on the test fold
      char best[3 * PS_CFG_STR_MAX];
      snprintf(best, sizeof best, "%s/fold%d/checkpoints/best.h5", dir, k);
      FILE *bf = fopen(best, "rb");
      if (bf) fclose(bf);
      int64_t n = 0;
      const double *t, *eta;
      const uint8_t *ev;
      const int32_t *cohort;
      const int64_t *ix;
      if (bf) s = ps_wl_model_load_params(w, best);
      if (s == PS_OK) s = ps_wl_model_predict(w, PS_WL_TEST, NULL, NULL, &n, &t, &ev, &cohort, &ix, &eta);
      ps_cindex ci = {0};
      if (s == PS_OK && rank == 0) s = ps_cindex_compute(PS_CINDEX_HARRELL, n, t, ev, eta, NULL, 0, &ci);
      if (s == PS_OK && rank == 0) {
        char p[3 * PS_CFG_STR_MAX];
        snprintf(p, sizeof p, "%s/fold%d/fold_result.json", dir, k);
        FILE *f = fopen(p, "w");
        if (f) {
          fprintf(f, "{\n  \"fold\": %d,\n  \"test_n\": %lld,\n  \"test_c\": %.9f,\n  \"test_c_se\": %.9f,\n  \"checkpoint\": \"%s\"\n}\n",
                  k, (long long)n, ci.c, ci.se, bf ? best : "(last step)");
          fclose(f);
        }
        if (!quiet) printf("pansurv cv: fold %d test C-index %.4f (n %lld)\n", k, ci.c, (long long)n);
      }
    }
    ops->destroy(w);
    if (s != PS_OK) {
      code = s == PS_ERR_INTERRUPTED ? PS_EXIT_PREEMPTED : PS_EXIT_ERROR;
      if (s != PS_ERR_INTERRUPTED) fprintf(stderr, "pansurv cv: fold %d: rank %d: %s\n", k, rank, ps_error_message());
      break;
    }
  }
  if (code == PS_EXIT_OK && rank == 0) cv_summarize(dir, base.data.folds);
  ps_comm_finalize(comm);
  free(args);
  return code;
}
