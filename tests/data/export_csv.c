// Exports a cohort file to CSV for tests/data/learnability.R: survival, truth, clinical, RNA-seq and three
// hand-made image features per patient (mean over its tiles: fraction of dark "nucleus" pixels, their
// red-minus-blue hue and their darkness). Usage: test_data_export_csv FILE.h5 OUT.csv
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "ps_data.h"

#define NUCLEUS_RGB_SUM 420 // a pixel darker than this (R+G+B) counts as nucleus
int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  ps_cohort *c;
  if (argc != 3 || ps_cohort_open(&c, argv[1], MPI_COMM_SELF) != PS_OK) {
    fprintf(stderr, "usage: test_data_export_csv FILE.h5 OUT.csv (%s)\n", ps_error_message());
    return 1;
  }
  const ps_cohort_info *in = ps_cohort_get_info(c);
  const ps_patients *p = ps_cohort_get_patients(c);
  int64_t G = in->g, C = in->c, S = in->tile_size;
  float *om = malloc(G * 4), *cl = malloc(C * 4);
  uint8_t *t = malloc(S * S * 3);
  FILE *f = fopen(argv[2], "w");
  fprintf(f, "time,event,cohort,site,lh,om_present,cl_present,sl_present");
  for (int j = 0; j < C; j++) fprintf(f, ",c%d", j);
  fprintf(f, ",nuc_frac,nuc_rb,nuc_dark");
  for (int j = 0; j < G; j++) fprintf(f, ",g%d", j);
  fprintf(f, "\n");
  for (int64_t i = 0; i < p->n; i++) {
    ps_cohort_read_omics(c, &i, 1, om);
    ps_cohort_read_clinical(c, &i, 1, cl);
    double frac = 0, rb = 0, dark = 0, nn = 0, ntiles = 0;
    for (int64_t k = p->offset[i]; k < p->offset[i + 1]; k++) {
      ps_cohort_read_tiles(c, &k, 1, t);
      double tf = 0;
      for (int64_t q = 0; q < S * S; q++) {
        int r = t[3 * q], g = t[3 * q + 1], b = t[3 * q + 2];
        int nuc = (r + g + b) < NUCLEUS_RGB_SUM;
        if (nuc) { tf++; rb += r - b; dark += r + g + b; nn++; }
      }
      frac += tf / (S * S);
      ntiles++;
    }
    fprintf(f, "%g,%d,%d,%d,%g,%d,%d,%d", p->time[i], p->event[i], p->cohort[i], p->site[i], p->log_hazard[i],
            p->present[i * 3], p->present[i * 3 + 1], p->present[i * 3 + 2]);
    for (int j = 0; j < C; j++) isnan(cl[j]) ? fprintf(f, ",NA") : fprintf(f, ",%g", cl[j]);
    if (ntiles) fprintf(f, ",%g,%g,%g", frac / ntiles, nn ? rb / nn : 0, nn ? dark / nn : 0);
    else fprintf(f, ",NA,NA,NA");
    for (int j = 0; j < G; j++) p->present[i * 3] ? fprintf(f, ",%g", om[j]) : fprintf(f, ",NA");
    fprintf(f, "\n");
  }
  fclose(f);
  ps_cohort_close(c);
  MPI_Finalize();
  return 0;
}
