// pansurv sim: write a simulated pan-cancer cohort with known log-hazard (docs/simulator.md).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_commands.h"
#include "ps_data.h"
#include "ps_mpi_session.h"

static void sim_usage(FILE *f) {
  ps_sim_options d = ps_sim_defaults();
  fprintf(f,
          "usage: pansurv sim --out FILE [--patients N] [--cohorts C] [--sites S] [--genes G] [--tiles K]\n"
          "                   [--tile-size P] [--censoring R] [--missing M] [--seed X]\n\n"
          "Simulates a multimodal pan-cancer cohort (RNA-seq, clinical, H&E-like tiles, Weibull survival)\n"
          "with the true log-hazard stored in /truth/log_hazard. Runs on any number of MPI ranks; the file\n"
          "does not depend on the rank count. Defaults: N=%lld C=%d S=%d G=%lld K=%d P=%d R=%.2f M=%.2f X=%llu\n",
          (long long)d.patients, d.cohorts, d.sites, (long long)d.genes, d.tiles, d.tile_size, d.censoring,
          d.missing, (unsigned long long)d.seed);
}

#define ORACLE_MAX_N 20000 // O(N^2) pairs: larger cohorts use their first 20000 patients (ids are exchangeable)

// Harrell's C of the true log-hazard over comparable pairs; ties in risk count 1/2.
static double oracle_cindex(const ps_cohort_data *d) {
  double conc = 0, total = 0;
  int64_t n = d->n < ORACLE_MAX_N ? d->n : ORACLE_MAX_N;
  for (int64_t i = 0; i < n; i++) {
    if (!d->event[i]) continue;
    for (int64_t j = 0; j < n; j++) {
      if (d->time[j] <= d->time[i]) continue;
      total += 1;
      conc += d->log_hazard[i] > d->log_hazard[j] ? 1.0 : d->log_hazard[i] == d->log_hazard[j] ? 0.5 : 0.0;
    }
  }
  return total > 0 ? conc / total : NAN;
}

static int parse_num(const char *flag, const char *v, double lo, double hi, double *out) {
  char *end;
  double x = strtod(v, &end);
  if (*v == '\0' || *end != '\0' || !(x >= lo && x <= hi)) {
    fprintf(stderr, "pansurv sim: %s expects a number in [%g, %g], got '%s'\n", flag, lo, hi, v);
    return 0;
  }
  *out = x;
  return 1;
}

int ps_cmd_sim(int argc, char **argv) {
  ps_sim_options o = ps_sim_defaults();
  const char *out = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      sim_usage(stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "pansurv sim: %s needs a value\n", a);
      return 2;
    }
    const char *v = argv[++i];
    double x = 0;
    int ok = 1;
    if (!strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--patients") && (ok = parse_num(a, v, 1, 1e8, &x))) o.patients = (int64_t)x;
    else if (!strcmp(a, "--cohorts") && (ok = parse_num(a, v, 1, 99, &x))) o.cohorts = (int)x;
    else if (!strcmp(a, "--sites") && (ok = parse_num(a, v, 1, 9999, &x))) o.sites = (int)x;
    else if (!strcmp(a, "--genes") && (ok = parse_num(a, v, 1, 1e6, &x))) o.genes = (int64_t)x;
    else if (!strcmp(a, "--tiles") && (ok = parse_num(a, v, 1, 4096, &x))) o.tiles = (int)x;
    else if (!strcmp(a, "--tile-size") && (ok = parse_num(a, v, 8, 1024, &x))) o.tile_size = (int)x;
    else if (!strcmp(a, "--censoring") && (ok = parse_num(a, v, 0, 0.99, &x))) o.censoring = x;
    else if (!strcmp(a, "--missing") && (ok = parse_num(a, v, 0, 0.99, &x))) o.missing = x;
    else if (!strcmp(a, "--seed") && (ok = parse_num(a, v, 0, 1.8e19, &x))) o.seed = strtoull(v, NULL, 10);
    else if (ok) {
      fprintf(stderr, "pansurv sim: unknown option '%s'\n\n", a);
      sim_usage(stderr);
      return 2;
    }
    if (!ok) return 2;
  }
  if (!out) {
    fprintf(stderr, "pansurv sim: --out FILE is required\n\n");
    sim_usage(stderr);
    return 2;
  }
  int started = ps_mpi_session_begin(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  double t0 = MPI_Wtime();
  int64_t first = o.patients * rank / size, count = o.patients * (rank + 1) / size - first;
  ps_cohort_data d;
  ps_status st = ps_sim_generate(&d, &o, first, count);
  double t_gen = MPI_Wtime() - t0;
  int all_ok = st == PS_OK, agreed = 0;
  MPI_Allreduce(&all_ok, &agreed, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!agreed) {
    int code = st != PS_OK ? ps_report_error("sim", st) : 1;
    if (st == PS_OK) ps_cohort_data_free(&d);
    ps_mpi_session_end(started);
    return code;
  }
  st = ps_data_write(out, &d, MPI_COMM_WORLD);
  double t_all = MPI_Wtime() - t0;
  int code = 0;
  if (st != PS_OK) {
    code = rank == 0 ? ps_report_error("sim", st) : 1;
  } else if (rank == 0) {
    int64_t ev = 0, pres[PS_MOD_COUNT] = {0};
    for (int64_t i = 0; i < d.n; i++) {
      ev += d.event[i];
      pres[PS_MOD_OMICS] += d.omics_present[i];
      pres[PS_MOD_CLINICAL] += d.clinical_present[i];
      pres[PS_MOD_SLIDES] += d.offset[i + 1] > d.offset[i];
    }
    ps_sim_variance v;
    ps_sim_variance_decomposition(&o, &v);
    printf("pansurv sim: wrote %s: %lld patients, %d cohorts, %d sites, %lld genes, %lld tiles of %dx%d\n", out,
           (long long)d.n, o.cohorts, o.sites, (long long)o.genes, (long long)d.t, o.tile_size, o.tile_size);
    printf("  events %lld (censoring %.3f, target %.3f); present: omics %lld, clinical %lld, slides %lld\n",
           (long long)ev, 1.0 - (double)ev / (double)d.n, o.censoring, (long long)pres[0], (long long)pres[1],
           (long long)pres[2]);
    printf("  log-hazard variance %.3f = omics-only %.3f + slides-only %.3f + shared (omics and slides) %.3f + "
           "clinical %.3f + cohort baseline %.3f\n", v.total, v.omics_only, v.slides_only, v.shared, v.clinical,
           v.cohort);
    printf("  oracle C-index (true log-hazard, Harrell%s): %.4f\n",
           d.n > ORACLE_MAX_N ? ", first 20000 patients" : "", oracle_cindex(&d));
    printf("  time: generate %.2f s, total %.2f s on %d rank(s)\n", t_gen, t_all, size);
  }
  ps_cohort_data_free(&d);
  ps_mpi_session_end(started);
  return code;
}
