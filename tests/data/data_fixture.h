// A small hand-built cohort for the data tests: values are simple functions of
// (patient, column) so a reader test can recompute what it expects.
#ifndef PS_DATA_FIXTURE_H
#define PS_DATA_FIXTURE_H

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ps_data.h"

static inline float fx_omics(int64_t p, int64_t j) { return (float)(p * 0.5 + j * 0.25 + 0.125 * (p % 3)); }
static inline float fx_clin(int64_t p, int64_t j) { return (j == 1 && p % 4 == 1) ? NAN : (float)(p % 7 + 10 * j); }
static inline uint8_t fx_tile(int64_t t, int64_t k) { return (uint8_t)((t * 31 + k * 7) & 0xFF); }
static inline float fx_feat(int64_t t, int64_t k) { return (float)(t - 0.5 * k); }
// tiles per patient: 0, 1, 2, 3, 0, 1, ... (variable bag sizes, some patients without slides)
static inline int64_t fx_ntiles(int64_t p) { return p % 4; }

// N patients, G genes, C clinical columns, 2 cohorts, 3 sites; kind selects tiles (S=4) or features (F=6).
static inline ps_status fx_build(ps_cohort_data *d, int64_t n, int64_t g, int64_t c, ps_slides_kind kind,
                                 int64_t first, int64_t count) {
  int64_t slides = 0;
  for (int64_t p = 0; p < n; p++) slides += fx_ntiles(p) > 0;
  ps_status st = ps_cohort_data_alloc(d, n, g, c, kind, 4, 6, kind == PS_SLIDES_NONE ? 0 : slides, 2, 3, true);
  if (st != PS_OK) return st;
  int64_t s = 0;
  for (int64_t p = 0; p < n; p++) {
    snprintf(d->id[p], PS_DATA_ID_LEN, "TCGA-FX-%04lld", (long long)p);
    d->time[p] = 10.0 + 3.0 * (double)((p * 7) % n);
    d->event[p] = (uint8_t)(p % 3 != 0);
    d->cohort[p] = (int32_t)(p % 2);
    d->site[p] = (int32_t)(p % 3);
    d->omics_present[p] = p % 5 != 4;
    d->clinical_present[p] = p % 6 != 5;
    d->log_hazard[p] = 0.1 * (double)p;
    int64_t k = kind == PS_SLIDES_NONE ? 0 : fx_ntiles(p);
    d->offset[p + 1] = d->offset[p] + k;
    if (k) {
      snprintf(d->slide_files[s], PS_DATA_NAME_LEN, "slide-%lld.svs", (long long)p);
      d->slide_dims[2 * s] = 1000, d->slide_dims[2 * s + 1] = 800, d->slide_mpp[s] = 0.25;
      s++;
    }
  }
  snprintf(d->cohort_names[0], PS_DATA_NAME_LEN, "BRCA");
  snprintf(d->cohort_names[1], PS_DATA_NAME_LEN, "LUAD");
  for (int i = 0; i < 3; i++) snprintf(d->site_names[i], PS_DATA_NAME_LEN, "A%d", i);
  for (int64_t j = 0; j < g; j++) snprintf(d->genes[j], PS_DATA_NAME_LEN, "G%lld", (long long)j);
  for (int64_t j = 0; j < c; j++) snprintf(d->clinical_names[j], PS_DATA_NAME_LEN, "clin%lld", (long long)j);
  st = ps_cohort_data_alloc_bulk(d, first, count);
  if (st != PS_OK) return st;
  for (int64_t i = 0; i < count; i++) {
    int64_t p = first + i;
    for (int64_t j = 0; j < g; j++) d->omics[i * g + j] = d->omics_present[p] ? fx_omics(p, j) : 0.0f;
    for (int64_t j = 0; j < c; j++) d->clinical[i * c + j] = d->clinical_present[p] ? fx_clin(p, j) : NAN;
  }
  int64_t t0 = d->bulk_t0, t1 = d->offset[first + count];
  s = 0;
  for (int64_t p = 0; p < first; p++) s += d->offset[p + 1] > d->offset[p];
  for (int64_t p = first; p < first + count; p++) {
    for (int64_t t = d->offset[p]; t < d->offset[p + 1]; t++) {
      d->coords[(t - t0) * 3] = (int32_t)s;
      d->coords[(t - t0) * 3 + 1] = (int32_t)(10 * (t - d->offset[p]));
      d->coords[(t - t0) * 3 + 2] = 5;
    }
    s += d->offset[p + 1] > d->offset[p];
  }
  for (int64_t t = t0; t < t1; t++) {
    if (kind == PS_SLIDES_TILES)
      for (int64_t k = 0; k < 4 * 4 * 3; k++) d->tiles[(t - t0) * 48 + k] = fx_tile(t, k);
    if (kind == PS_SLIDES_FEATURES)
      for (int64_t k = 0; k < 6; k++) d->features[(t - t0) * 6 + k] = fx_feat(t, k);
  }
  return PS_OK;
}

#endif
