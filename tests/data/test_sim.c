// Simulator: rank-count independence (file written by N ranks == 1-rank generation in memory),
// determinism from the seed, censoring calibrated to the target, valid output.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_data.h"
#include "testutil.h"

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  ps_sim_options o = ps_sim_defaults();
  o.patients = 157, o.genes = 40, o.tiles = 3, o.tile_size = 16, o.cohorts = 3, o.sites = 5, o.missing = 0.2;
  o.seed = ps_tu_seed("data_sim", 11);
  int64_t first = o.patients * rank / size, count = o.patients * (rank + 1) / size - first;
  ps_cohort_data part, full;
  TU_OK(ps_sim_generate(&part, &o, first, count));
  int pid = (int)getpid();
  MPI_Bcast(&pid, 1, MPI_INT, 0, MPI_COMM_WORLD);
  char path[128];
  snprintf(path, sizeof path, "data_sim_%d_%d.h5", size, pid);
  TU_OK(ps_data_write(path, &part, MPI_COMM_WORLD));
  ps_cohort_data_free(&part);
  TU_OK(ps_sim_generate(&full, &o, 0, o.patients));
  ps_data_summary sum;
  TU_OK(ps_data_validate(path, MPI_COMM_WORLD, &sum));
  TU_CHECK(sum.info.n == o.patients && sum.info.g == o.genes && sum.info.tile_size == 16, "shape");
  ps_data_summary_free(&sum);
  ps_cohort *c;
  TU_OK(ps_cohort_open(&c, path, MPI_COMM_WORLD));
  const ps_patients *p = ps_cohort_get_patients(c);
  int64_t n = o.patients, g = o.genes;
  for (int64_t i = 0; i < n; i++) {
    TU_CHECK(p->time[i] == full.time[i] && p->event[i] == full.event[i] && p->log_hazard[i] == full.log_hazard[i],
             "patient %lld table differs from the 1-rank generation", (long long)i);
  }
  int64_t rows[157];
  for (int64_t i = 0; i < n; i++) rows[i] = i;
  float *om = calloc((size_t)(n * g), sizeof(float));
  TU_OK(ps_cohort_read_omics(c, rows, n, om));
  TU_CHECK(memcmp(om, full.omics, (size_t)(n * g) * sizeof(float)) == 0, "omics differ from the 1-rank generation");
  int64_t t = full.t, *trows = calloc((size_t)t, sizeof(int64_t));
  for (int64_t i = 0; i < t; i++) trows[i] = i;
  uint8_t *tiles = calloc((size_t)t * 16 * 16 * 3, 1);
  TU_OK(ps_cohort_read_tiles(c, trows, t, tiles));
  TU_CHECK(memcmp(tiles, full.tiles, (size_t)t * 16 * 16 * 3) == 0, "tiles differ from the 1-rank generation");
  ps_cohort_close(c);
  free(om), free(trows), free(tiles);
  // determinism and seed sensitivity (in memory, table only)
  ps_cohort_data again, other;
  TU_OK(ps_sim_generate(&again, &o, 0, 0));
  TU_CHECK(memcmp(again.time, full.time, (size_t)n * sizeof(double)) == 0, "same seed, same times");
  o.seed += 1;
  TU_OK(ps_sim_generate(&other, &o, 0, 0));
  TU_CHECK(memcmp(other.time, full.time, (size_t)n * sizeof(double)) != 0, "other seed, other times");
  ps_cohort_data_free(&again), ps_cohort_data_free(&other), ps_cohort_data_free(&full);
  // censoring calibration: 4000 patients, target 0.3 and 0.7; tolerance 0.02 (bisection is on the same draws, so
  // the realized rate is within 1/N of the target up to ties)
  double targets[] = {0.3, 0.7};
  for (int k = 0; k < 2; k++) {
    ps_cohort_data big;
    o.patients = 4000, o.censoring = targets[k];
    TU_OK(ps_sim_generate(&big, &o, 0, 0));
    int64_t ev = 0;
    for (int64_t i = 0; i < big.n; i++) ev += big.event[i];
    double rate = 1.0 - (double)ev / (double)big.n;
    TU_CHECK(fabs(rate - targets[k]) < 0.02, "censoring %.3f, target %.2f", rate, targets[k]);
    ps_cohort_data_free(&big);
  }
  ps_sim_variance v;
  TU_OK(ps_sim_variance_decomposition(&o, &v));
  TU_CHECK(v.omics_only > 0.3 && v.slides_only > 0.3 && v.shared > 0.1 && v.clinical > 0.1 &&
               fabs(v.total - (v.omics_only + v.slides_only + v.shared + v.clinical + v.cohort)) < 1e-12, "variance split");
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) remove(path);
  int fails = ps_tu_failures, all = 0;
  MPI_Allreduce(&fails, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  ps_tu_failures = all;
  MPI_Finalize();
  return ps_tu_finish("data_sim");
}
