// pansurv bench <what>: benchmarks print nccl-tests style tables and exit
// non-zero when a validated value is wrong. They are never timed tests.
#include <stdio.h>
#include <string.h>

#include "ps_commands.h"

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} bench_entry;

int ps_bench_gemm(int argc, char **argv);     // launch/bench_gemm.c
int ps_bench_comm(int argc, char **argv);     // launch/bench_comm.c
int ps_bench_survival(int argc, char **argv); // launch/bench_survival.c
int ps_bench_io(int argc, char **argv);       // launch/bench_io.c
int ps_bench_model(int argc, char **argv);    // launch/bench_model.c

static const bench_entry benches[] = {
    {"gemm", ps_bench_gemm, "GFLOP/s of ps_gemm/linear/conv2d vs raw cblas_sgemm"},
    {"comm", ps_bench_comm, "collectives vs raw MPI (nccl-tests columns); --buckets: overlapped gradient sync"},
    {"survival", ps_bench_survival, "Harrell C and Cox loss+grad for n = 1e4..1e6 (optional Python peers)"},
    {"io", ps_bench_io, "cohort-file read throughput vs sequential read, loader stall per step"},
    {"model", ps_bench_model, "one training step of the reference model: patients/s, per-module GFLOP/s (--device cuda: on a GPU)"},
    {NULL, NULL, NULL}, // entries are added by the modules' benchmarks
};

int ps_cmd_bench(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "--help") && strcmp(argv[1], "-h"))
    for (size_t i = 0; benches[i].name; i++)
      if (!strcmp(argv[1], benches[i].name)) return benches[i].run(argc - 1, argv + 1);
  FILE *f = (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) ? stdout : stderr;
  fprintf(f, "usage: pansurv bench <what> [options]\n\n");
  for (size_t i = 0; benches[i].name; i++) fprintf(f, "  %-10s %s\n", benches[i].name, benches[i].summary);
  return f == stdout ? 0 : 2;
}
