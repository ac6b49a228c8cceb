// pansurv train CONFIG [--set section.key=value ...] [--resume auto|PATH] [--quiet]
// pansurv config CONFIG [--set ...] | pansurv config --markdown
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_commands.h"
#include "ps_comm.h"
#include "ps_config.h"
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
  ps_comm *comm = NULL;
  ps_comm_options co = {PS_COMM_MPI, PS_CPU, cfg.train.threads};
  ps_status s = ps_comm_init(&comm, &argc, &argv, &co);
  if (s != PS_OK) {
    fprintf(stderr, "pansurv train: %s\n", ps_error_message());
    return PS_EXIT_ERROR;
  }
  const int rank = ps_comm_rank(comm);
  void *w = NULL;
  const ps_workload_ops *ops = NULL;
  if (cfg.train.workload == PS_CFG_WORKLOAD_TOY) s = ps_toy_create(&w, &ops, &cfg, comm);
  else s = ps_wl_model_create(&w, &ops, &cfg, comm);
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
