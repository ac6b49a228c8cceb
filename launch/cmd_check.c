// pansurv check FILE: validates a cohort file and prints its summary (docs/data-format.md).
#include <stdio.h>
#include <string.h>

#include "ps_commands.h"
#include "ps_data.h"
#include "ps_mpi_session.h"

int ps_cmd_check(int argc, char **argv) {
  if (argc != 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    int help = argc == 2;
    fprintf(help ? stdout : stderr,
            "usage: pansurv check FILE\n\nValidates every dataset of a pansurv cohort file (shapes, types, values)\n"
            "and prints counts per cohort and site, events, censoring and modality coverage.\n"
            "Exit status: 0 valid, 1 invalid or unreadable, 2 usage.\n");
    return help ? 0 : 2;
  }
  int started = ps_mpi_session_begin(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  ps_data_summary s;
  ps_status st = ps_data_validate(argv[1], MPI_COMM_WORLD, &s);
  int code = 0;
  if (st != PS_OK) {
    code = rank == 0 ? ps_report_error("check", st) : 1;
  } else {
    if (rank == 0) {
      const ps_cohort_info *in = &s.info;
      printf("%s: valid pansurv cohort file (format %d)\n", argv[1], PS_DATA_FORMAT);
      printf("  patients %lld, genes %lld, clinical columns %lld, slides: %s", (long long)in->n, (long long)in->g,
             (long long)in->c, ps_slides_kind_name(in->slides));
      if (in->slides == PS_SLIDES_TILES) printf(" (%lld tiles of %dx%d)", (long long)in->t, in->tile_size, in->tile_size);
      if (in->slides == PS_SLIDES_FEATURES) printf(" (%lld vectors of %lld)", (long long)in->t, (long long)in->feat_dim);
      printf("%s\n", in->has_truth ? ", with /truth/log_hazard" : "");
      printf("  events %lld, censoring rate %.3f\n", (long long)s.events, s.censoring_rate);
      printf("  modality coverage: omics %lld, clinical %lld, slides %lld\n", (long long)s.present[0],
             (long long)s.present[1], (long long)s.present[2]);
      printf("  per cohort (patients / events):");
      for (int i = 0; i < in->n_cohorts; i++)
        printf(" %.*s %lld/%lld", PS_DATA_NAME_LEN, s.cohort_names[i], (long long)s.per_cohort[i],
               (long long)s.per_cohort_events[i]);
      printf("\n  per site (patients):");
      for (int i = 0; i < in->n_sites; i++) printf(" %.*s %lld", PS_DATA_NAME_LEN, s.site_names[i], (long long)s.per_site[i]);
      printf("\n");
    }
    ps_data_summary_free(&s);
  }
  ps_mpi_session_end(started);
  return code;
}
