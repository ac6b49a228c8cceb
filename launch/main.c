// pansurv: one binary, one subcommand per task.
#include <stdio.h>
#include <string.h>

#include "ps_commands.h"
#include "ps_status.h"

int ps_cmd_coxph(int argc, char **argv);   // cmd_coxph.c (survival)
int ps_cmd_metrics(int argc, char **argv); // cmd_metrics.c (survival)

static const ps_command commands[] = {
    {"bench", ps_cmd_bench, "benchmarks: gemm, comm, survival, io, model"},
    {"coxph", ps_cmd_coxph, "classical Cox fit on a CSV (as R survival::coxph)"},
    {"metrics", ps_cmd_metrics, "C-indices, td-AUC, Brier/IBS, Kaplan-Meier, log-rank on a CSV"},
    {"sim", ps_cmd_sim, "simulate a multimodal cohort with known ground truth"},
    {"check", ps_cmd_check, "validate a cohort file and summarize it"},
    {"prep", ps_cmd_prep, "build a cohort file from clinical, RNA-seq and slide files"},
};

static void usage(FILE *f) {
  fprintf(f, "pansurv %s: multimodal survival models on HPC clusters\n\nusage: pansurv <command> [options]\n\ncommands:\n",
          PANSURV_VERSION);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fprintf(f, "\n'pansurv <command> --help' describes one command.\n");
}

int ps_report_error(const char *cmd, int status) {
  fprintf(stderr, "pansurv %s: %s\n", cmd, ps_error_message());
  return status == PS_OK ? 0 : (status == PS_ERR_INTERRUPTED ? 3 : 1);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("pansurv %s\n", PANSURV_VERSION);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "pansurv: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
