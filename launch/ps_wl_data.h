// ps_wl_data: the model workload's view of the data module (cohort file,
// split, training-split normalization, loaders) through plain arrays, so the
// model side never includes ps_data.h (the two modules' headers both define
// ps_modality). Letters: b this rank's patients, B global batch, K bag size,
// S tile side, F feature width, Gs genes kept, C clinical columns.
#ifndef PS_WL_DATA_H
#define PS_WL_DATA_H

#include <stdint.h>

#include "ps_comm.h"
#include "ps_config.h"

typedef struct ps_wl_data ps_wl_data;

typedef struct {
  int64_t b, global_b;
  const int64_t *index;            // (b) global patient index
  const double *time;              // (b)
  const uint8_t *event;            // (b)
  const int32_t *cohort;           // (b)
  const float *omics;              // (b, Gs)
  const uint8_t *omics_present;    // (b)
  const float *clinical;           // (b, C)
  const uint8_t *clinical_present; // (b)
  const float *tiles;              // (b, K, 3, S, S) or NULL
  const float *features;           // (b, K, F) or NULL
  const int32_t *n_tiles;          // (b) valid bag entries, 0 = no slide
} ps_wl_batch;

typedef struct {
  int64_t genes, clinical;     // Gs, C
  int64_t tile_size, feat_dim; // S, F
  int64_t max_tiles;           // K
  int slides;                  // 0 none, 1 tiles, 2 features
  int n_cohorts;
  int64_t n_total, n_train, n_val, n_test;
  int64_t b_max;               // largest local share of a training micro-batch
  int64_t eval_b_max;          // of an evaluation batch
  int has_truth;
} ps_wl_shape;

typedef enum { PS_WL_TRAIN = 0, PS_WL_VAL, PS_WL_TEST, PS_WL_ALL, PS_WL_PART_COUNT } ps_wl_part;

// Opens and validates the cohort file, splits it (data.split), fits the
// normalization on the training split and creates the training loader
// (micro-batch = global_batch / accumulation). Collective.
ps_status ps_wl_data_open(ps_wl_data **out, const ps_config *cfg, ps_comm *comm, ps_wl_shape *shape);
void ps_wl_data_close(ps_wl_data *d);
int64_t ps_wl_data_steps_per_epoch(const ps_wl_data *d); // optimizer steps
// Training: begin an epoch at optimizer step `skip_steps` of it (resume).
ps_status ps_wl_data_train_begin(ps_wl_data *d, int64_t epoch, int64_t skip_steps);
ps_status ps_wl_data_train_next(ps_wl_data *d, ps_wl_batch *out);
// Evaluation over one part, sequential: begin, then next until *end.
ps_status ps_wl_data_eval_begin(ps_wl_data *d, ps_wl_part part);
ps_status ps_wl_data_eval_next(ps_wl_data *d, ps_wl_batch *out, int *end);
// Waits for background reads (before other HDF5 use, e.g. checkpoints).
ps_status ps_wl_data_quiesce(ps_wl_data *d);
double ps_wl_data_stall_seconds(const ps_wl_data *d);
// Patient table access for outputs.
const char *ps_wl_data_patient_id(const ps_wl_data *d, int64_t index);
const char *ps_wl_data_cohort_name(const ps_wl_data *d, int cohort);
// Clinical column j name (fixed-length, up to 64 bytes).
const char *ps_wl_data_clinical_name(const ps_wl_data *d, int64_t j);
// Global tile row of bag entry `entry` of patient `index`, or -1 when unknown
// (sampled bags). Valid for bag: all while the patient's tiles fit in the bag.
int64_t ps_wl_data_tile_row(const ps_wl_data *d, int64_t index, int64_t entry);
// Reads /slides/coords (slide, x, y) of the given tile rows (-1 rows stay -1)
// with a serial open of `path` (call after the cohort is closed). out: (n, 3).
ps_status ps_wl_read_tile_coords(const char *path, const int64_t *rows, int64_t n, int32_t *out);
// Training-split normalization as a float blob for checkpoints (length from _len).
int64_t ps_wl_data_norm_blob_len(const ps_wl_data *d);
ps_status ps_wl_data_norm_blob(const ps_wl_data *d, float *blob, int64_t n);
// Replaces the normalization fitted on this file by the one stored with a model
// (evaluation on another cohort); refuses other gene or clinical columns.
ps_status ps_wl_data_use_norm(ps_wl_data *d, const float *blob, int64_t n, const char *what);
const double *ps_wl_data_truth(const ps_wl_data *d); // (N) or NULL
int ps_wl_data_part_of(const ps_wl_data *d, int64_t index); // ps_wl_part

#endif
