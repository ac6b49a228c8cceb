// Cohort file format: write (each rank its rows) -> open -> every array read back equals what was built.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data_fixture.h"
#include "testutil.h"

static int same_f(float a, float b) { return (isnan(a) && isnan(b)) || a == b; }

static int run(ps_slides_kind kind, MPI_Comm comm) {
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  const int64_t n = 23, g = 5, c = 3;
  int64_t first = n * rank / size, count = n * (rank + 1) / size - first;
  ps_cohort_data d;
  TU_OK(fx_build(&d, n, g, c, kind, first, count));
  char path[256];
  int pid = (int)getpid();
  MPI_Bcast(&pid, 1, MPI_INT, 0, comm);
  snprintf(path, sizeof path, "data_format_%d_%d_%s.h5", size, pid, ps_slides_kind_name(kind));
  TU_OK(ps_data_write(path, &d, comm));
  ps_cohort_data_free(&d);
  TU_OK(fx_build(&d, n, g, c, kind, 0, n)); // the reference: all rows
  ps_cohort *co;
  TU_OK(ps_cohort_open(&co, path, comm));
  const ps_cohort_info *in = ps_cohort_get_info(co);
  const ps_patients *p = ps_cohort_get_patients(co);
  TU_CHECK(in->n == n && in->g == g && in->c == c && in->slides == kind && in->has_truth, "info");
  TU_CHECK(in->n_cohorts == 2 && in->n_sites == 3, "names");
  TU_CHECK(in->t == (kind == PS_SLIDES_NONE ? 0 : d.offset[n]), "T %lld", (long long)in->t);
  for (int64_t i = 0; i < n; i++) {
    TU_CHECK(!strcmp(p->id[i], d.id[i]), "id %lld: %s", (long long)i, p->id[i]);
    TU_CHECK(p->time[i] == d.time[i] && p->event[i] == d.event[i], "time/event %lld", (long long)i);
    TU_CHECK(p->cohort[i] == d.cohort[i] && p->site[i] == d.site[i], "cohort/site %lld", (long long)i);
    TU_CHECK(p->present[i * PS_MOD_COUNT + PS_MOD_OMICS] == d.omics_present[i], "omics present %lld", (long long)i);
    TU_CHECK(p->present[i * PS_MOD_COUNT + PS_MOD_CLINICAL] == d.clinical_present[i], "clin present");
    TU_CHECK(p->present[i * PS_MOD_COUNT + PS_MOD_SLIDES] == (d.offset[i + 1] > d.offset[i]), "slides present");
    TU_CHECK(p->offset[i + 1] == d.offset[i + 1], "offset %lld", (long long)i);
    TU_CHECK(p->log_hazard[i] == d.log_hazard[i], "log hazard");
  }
  TU_CHECK(!strcmp(p->cohort_names[1], "LUAD") && !strcmp(p->site_names[2], "A2"), "names");
  TU_CHECK(!strcmp(ps_cohort_gene_names(co)[4], "G4") && !strcmp(ps_cohort_clinical_names(co)[2], "clin2"), "names");
  // rows in any order, with runs and repeats
  int64_t rows[] = {7, 2, 3, 4, 4, 22, 0};
  int64_t nr = (int64_t)(sizeof rows / sizeof rows[0]);
  float om[7 * 5], cl[7 * 3];
  TU_OK(ps_cohort_read_omics(co, rows, nr, om));
  TU_OK(ps_cohort_read_clinical(co, rows, nr, cl));
  for (int64_t i = 0; i < nr; i++) {
    for (int64_t j = 0; j < g; j++) TU_CHECK(om[i * g + j] == d.omics[rows[i] * g + j], "omics %lld %lld", (long long)rows[i], (long long)j);
    for (int64_t j = 0; j < c; j++)
      TU_CHECK(same_f(cl[i * c + j], d.clinical[rows[i] * c + j]), "clin %lld %lld", (long long)rows[i], (long long)j);
  }
  if (kind != PS_SLIDES_NONE) {
    int64_t tl[] = {in->t - 1, 0, 1, 2, 5};
    uint8_t tiles[5 * 48];
    float feats[5 * 6];
    if (kind == PS_SLIDES_TILES) {
      TU_OK(ps_cohort_read_tiles(co, tl, 5, tiles));
      for (int i = 0; i < 5; i++)
        for (int k = 0; k < 48; k++) TU_CHECK(tiles[i * 48 + k] == fx_tile(tl[i], k), "tile %lld", (long long)tl[i]);
    } else {
      TU_OK(ps_cohort_read_features(co, tl, 5, feats));
      for (int i = 0; i < 5; i++)
        for (int k = 0; k < 6; k++) TU_CHECK(feats[i * 6 + k] == fx_feat(tl[i], k), "feature %lld", (long long)tl[i]);
    }
    int64_t bad = in->t;
    TU_CHECK(kind != PS_SLIDES_TILES || ps_cohort_read_tiles(co, &bad, 1, tiles) == PS_ERR_ARG, "row out of range");
  }
  ps_cohort_close(co);
  TU_OK(ps_data_validate(path, comm, NULL));
  MPI_Barrier(comm);
  if (rank == 0) remove(path);
  ps_cohort_data_free(&d);
  return 0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  for (int k = 0; k < PS_SLIDES_KIND_COUNT && !rc; k++) rc = run((ps_slides_kind)k, MPI_COMM_WORLD);
  // writer input errors: bulk rows must cover N exactly once
  ps_cohort_data d;
  if (!rc) {
    TU_OK(fx_build(&d, 6, 2, 2, PS_SLIDES_NONE, 0, 3));
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size == 1) TU_CHECK(ps_data_write("never.h5", &d, MPI_COMM_WORLD) == PS_ERR_ARG, "partial rows rejected");
    TU_CHECK(access("never.h5", F_OK) != 0 && access("never.h5.tmp", F_OK) != 0, "nothing half-written");
    ps_cohort_data_free(&d);
  }
  int fails = ps_tu_failures, all = 0;
  MPI_Allreduce(&fails, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  ps_tu_failures = all;
  MPI_Finalize();
  return rc ? rc : ps_tu_finish("data_format");
}
