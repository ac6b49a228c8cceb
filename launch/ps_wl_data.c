#include "ps_wl_data.h"

#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_data.h"
#include "ps_rng.h"

struct ps_wl_data {
  const ps_config *cfg;
  ps_comm *comm;
  MPI_Comm mpi;
  ps_cohort *cohort;
  ps_split split;
  ps_norm norm;
  int norm_ok;
  ps_loader *train, *eval[3];
  int64_t micro;         // micro-batch (loader batch) = global_batch / accumulation
  int eval_part;         // loader in use for eval
  uint8_t *omics_present, *clinical_present; // (capacity)
  int64_t capacity;
};

static const ps_split_part part_of_wl[] = {PS_SPLIT_TRAIN, PS_SPLIT_VAL, PS_SPLIT_TEST};

// Seeded patient-level split by fractions (data.split: random).
static ps_status split_random(ps_split *s, const ps_patients *p, double val, double test, uint64_t seed) {
  s->n = p->n;
  s->part = malloc((size_t)p->n);
  if (!s->part) PS_FAIL(PS_ERR_MEM, "split of %lld patients", (long long)p->n);
  ps_rng r = ps_rng_make(seed, ps_rng_stream(PS_RNG_SPLIT, 0, 0, 0));
  for (int64_t i = 0; i < p->n; i++) {
    double u = ps_rng_uniform_open_f64(&r, (uint64_t)i);
    s->part[i] = u < test ? PS_SPLIT_TEST : (u < test + val ? PS_SPLIT_VAL : PS_SPLIT_TRAIN);
  }
  return PS_OK;
}

static ps_status make_split(ps_wl_data *d) {
  const ps_config *cfg = d->cfg;
  const ps_patients *p = ps_cohort_get_patients(d->cohort);
  uint64_t seed = (uint64_t)cfg->train.seed;
  switch (cfg->data.split) {
  case PS_CFG_SPLIT_RANDOM: PS_TRY(split_random(&d->split, p, cfg->data.val_fraction, cfg->data.test_fraction, seed)); break;
  case PS_CFG_SPLIT_KFOLD: PS_TRY(ps_split_kfold(&d->split, p, cfg->data.folds, cfg->data.fold, seed)); break;
  case PS_CFG_SPLIT_SITE: {
    int32_t site = cfg->data.fold;
    PS_TRY(ps_split_sites(&d->split, p, &site, 1, cfg->data.val_fraction, seed));
    break;
  }
  case PS_CFG_SPLIT_FILE: PS_TRY(ps_split_from_csv(&d->split, p, cfg->data.split_file, cfg->data.fold)); break;
  default: PS_FAIL(PS_ERR_CONFIG, "data.split %d unknown", cfg->data.split);
  }
  // Patients with none of the enabled modalities cannot be scored by the
  // model (unimodal baselines on cohorts with missing modalities): leave them
  // out of every split and say how many.
  int want[PS_MOD_COUNT] = {0};
  for (int i = 0; i < cfg->data.n_modalities; i++) {
    int m = cfg->data.modalities[i];
    want[m == PS_CFG_MOD_OMICS ? PS_MOD_OMICS : m == PS_CFG_MOD_CLINICAL ? PS_MOD_CLINICAL : PS_MOD_SLIDES] = 1;
  }
  int64_t dropped = 0;
  for (int64_t i = 0; i < p->n; i++) {
    int any = 0;
    for (int m = 0; m < PS_MOD_COUNT; m++) any |= want[m] && p->present[i * PS_MOD_COUNT + m];
    if (!any && d->split.part[i] != PS_SPLIT_NONE) d->split.part[i] = PS_SPLIT_NONE, dropped++;
  }
  if (dropped && ps_comm_rank(d->comm) == 0)
    fprintf(stderr, "pansurv: note: %lld patients of %s have none of the enabled modalities and are left out of "
            "every split\n", (long long)dropped, cfg->data.path);
  return ps_split_check(&d->split, p);
}

static ps_status open_all(ps_wl_data *d, ps_wl_shape *shape) {
  const ps_config *cfg = d->cfg;
  PS_TRY(ps_data_validate(cfg->data.path, d->mpi, NULL));
  PS_TRY(ps_cohort_open(&d->cohort, cfg->data.path, d->mpi));
  const ps_cohort_info *info = ps_cohort_get_info(d->cohort);
  const ps_patients *p = ps_cohort_get_patients(d->cohort);
  PS_TRY(make_split(d));
  int64_t n_train = ps_split_count(&d->split, PS_SPLIT_TRAIN), n_val = ps_split_count(&d->split, PS_SPLIT_VAL);
  if (n_train < cfg->train.global_batch)
    PS_FAIL(PS_ERR_CONFIG, "train.global_batch = %d is larger than the training split of %s (%lld patients)",
            cfg->train.global_batch, cfg->data.path, (long long)n_train);
  int64_t val_events = 0;
  for (int64_t i = 0; i < p->n; i++) val_events += d->split.part[i] == PS_SPLIT_VAL && p->event[i];
  if (n_val > 0 && val_events == 0)
    PS_FAIL(PS_ERR_DATA, "%s: the validation split (%lld patients) has no events, so its C-index is undefined; "
            "change data.split / data.val_fraction / train.seed", cfg->data.path, (long long)n_val);
  // Modalities the config enables must exist in the file.
  for (int i = 0; i < cfg->data.n_modalities; i++) {
    int m = cfg->data.modalities[i];
    if (m == PS_CFG_MOD_OMICS && info->g == 0) PS_FAIL(PS_ERR_CONFIG, "data.modalities has omics but %s has no /omics", cfg->data.path);
    if (m == PS_CFG_MOD_CLINICAL && info->c == 0) PS_FAIL(PS_ERR_CONFIG, "data.modalities has clinical but %s has no /clinical", cfg->data.path);
    if (m == PS_CFG_MOD_SLIDES && info->slides == PS_SLIDES_NONE) PS_FAIL(PS_ERR_CONFIG, "data.modalities has slides but %s has no /slides", cfg->data.path);
    if (m == PS_CFG_MOD_SLIDES && cfg->data.slide_input == PS_CFG_SLIDE_TILES && info->slides != PS_SLIDES_TILES)
      PS_FAIL(PS_ERR_CONFIG, "data.slide_input is tiles but %s holds precomputed features", cfg->data.path);
    if (m == PS_CFG_MOD_SLIDES && cfg->data.slide_input == PS_CFG_SLIDE_FEATURES && info->slides != PS_SLIDES_FEATURES)
      PS_FAIL(PS_ERR_CONFIG, "data.slide_input is features but %s holds tile images", cfg->data.path);
    if (m == PS_CFG_MOD_SLIDES && info->slides == PS_SLIDES_TILES && info->tile_size != cfg->model.tile_size)
      PS_FAIL(PS_ERR_CONFIG, "model.tile_size = %d but the tiles in %s are %d pixels", cfg->model.tile_size,
              cfg->data.path, info->tile_size);
    if (m == PS_CFG_MOD_SLIDES && info->slides == PS_SLIDES_FEATURES && info->feat_dim != cfg->model.feature_dim)
      PS_FAIL(PS_ERR_CONFIG, "model.feature_dim = %d but the features in %s have %lld columns", cfg->model.feature_dim,
              cfg->data.path, (long long)info->feat_dim);
  }
  PS_TRY(ps_norm_fit(&d->norm, d->cohort, &d->split, cfg->data.genes, d->mpi));
  d->norm_ok = 1;

  ps_loader_options o = ps_loader_defaults();
  o.part = PS_SPLIT_TRAIN;
  o.batch_size = d->micro;
  o.tiles = cfg->data.tiles;
  o.bag = cfg->data.bag == PS_CFG_BAG_ALL ? PS_BAG_ALL : PS_BAG_SAMPLE;
  o.sampler = PS_SAMPLER_UNIFORM;
  o.augment = cfg->data.augment;
  o.drop_last = true; // every optimizer step sees a full global batch
  o.prefetch = true;
  o.seed = (uint64_t)cfg->train.seed;
  PS_TRY(ps_loader_create(&d->train, d->cohort, &d->split, &d->norm, &o, d->mpi));
  int64_t eval_b = 256;
  for (int k = 0; k < 3; k++) {
    ps_loader_options e = o;
    e.part = part_of_wl[k];
    e.batch_size = eval_b;
    e.sampler = PS_SAMPLER_SEQUENTIAL;
    e.augment = false;
    e.drop_last = false;
    e.prefetch = false;
    if (ps_split_count(&d->split, part_of_wl[k]) > 0)
      PS_TRY(ps_loader_create(&d->eval[k], d->cohort, &d->split, &d->norm, &e, d->mpi));
  }
  int R = ps_comm_size(d->comm);
  shape->genes = d->norm.g_sel;
  shape->clinical = info->c;
  shape->tile_size = info->tile_size;
  shape->feat_dim = info->feat_dim;
  shape->max_tiles = cfg->data.tiles;
  shape->slides = info->slides == PS_SLIDES_TILES ? 1 : info->slides == PS_SLIDES_FEATURES ? 2 : 0;
  shape->n_cohorts = info->n_cohorts;
  shape->n_total = p->n;
  shape->n_train = n_train;
  shape->n_val = n_val;
  shape->n_test = ps_split_count(&d->split, PS_SPLIT_TEST);
  shape->b_max = (d->micro + R - 1) / R;
  shape->eval_b_max = (eval_b + R - 1) / R;
  shape->has_truth = info->has_truth;
  d->capacity = shape->b_max > shape->eval_b_max ? shape->b_max : shape->eval_b_max;
  d->omics_present = calloc((size_t)d->capacity, 1);
  d->clinical_present = calloc((size_t)d->capacity, 1);
  if (!d->omics_present || !d->clinical_present) PS_FAIL(PS_ERR_MEM, "presence flags");
  return PS_OK;
}

ps_status ps_wl_data_open(ps_wl_data **out, const ps_config *cfg, ps_comm *comm, ps_wl_shape *shape) {
  *out = NULL;
  ps_wl_data *d = calloc(1, sizeof *d);
  if (!d) PS_FAIL(PS_ERR_MEM, "data workload");
  d->cfg = cfg;
  d->comm = comm;
  d->mpi = *(MPI_Comm *)ps_comm_mpi_world(comm);
  d->micro = cfg->train.global_batch / cfg->train.accumulation;
  d->eval_part = -1;
  memset(shape, 0, sizeof *shape);
  ps_status s = open_all(d, shape);
  // Library calls above are collective and agree on their status; our own
  // checks depend only on replicated data, so every rank reaches the same verdict.
  if (s != PS_OK) {
    ps_wl_data_close(d);
    return s;
  }
  *out = d;
  return PS_OK;
}

void ps_wl_data_close(ps_wl_data *d) {
  if (!d) return;
  if (d->train) ps_loader_destroy(d->train);
  for (int k = 0; k < 3; k++)
    if (d->eval[k]) ps_loader_destroy(d->eval[k]);
  if (d->norm_ok) ps_norm_free(&d->norm);
  if (d->split.part) ps_split_free(&d->split);
  if (d->cohort) ps_cohort_close(d->cohort);
  free(d->omics_present);
  free(d->clinical_present);
  free(d);
}

int64_t ps_wl_data_steps_per_epoch(const ps_wl_data *d) {
  return ps_loader_steps_per_epoch(d->train) / d->cfg->train.accumulation;
}

static void fill(ps_wl_data *d, const ps_batch *b, ps_wl_batch *out) {
  out->b = b->b;
  out->global_b = b->global_b;
  out->index = b->index;
  out->time = b->time;
  out->event = b->event;
  out->cohort = b->cohort;
  out->omics = b->omics;
  out->clinical = b->clinical;
  for (int64_t i = 0; i < b->b; i++) {
    d->omics_present[i] = b->present[i * PS_MOD_COUNT + PS_MOD_OMICS];
    d->clinical_present[i] = b->present[i * PS_MOD_COUNT + PS_MOD_CLINICAL];
  }
  out->omics_present = d->omics_present;
  out->clinical_present = d->clinical_present;
  out->tiles = b->tiles;
  out->features = b->features;
  out->n_tiles = b->n_tiles;
}

ps_status ps_wl_data_train_begin(ps_wl_data *d, int64_t epoch, int64_t skip_steps) {
  // Resume inside an epoch: the loader starts at the micro-batch an
  // uninterrupted epoch would give next (the order depends on (seed, epoch) only).
  if (skip_steps == 0) return ps_loader_begin_epoch(d->train, epoch);
  return ps_loader_begin_epoch_at(d->train, epoch, skip_steps * d->cfg->train.accumulation);
}

ps_status ps_wl_data_train_next(ps_wl_data *d, ps_wl_batch *out) {
  const ps_batch *b = NULL;
  PS_TRY(ps_loader_next(d->train, &b));
  if (!b) PS_FAIL(PS_ERR_INTERNAL, "training loader ran out of batches inside an epoch");
  fill(d, b, out);
  return PS_OK;
}

ps_status ps_wl_data_eval_begin(ps_wl_data *d, ps_wl_part part) {
  PS_REQUIRE(part >= PS_WL_TRAIN && part <= PS_WL_TEST, "eval part %d", (int)part);
  if (!d->eval[part]) PS_FAIL(PS_ERR_DATA, "the %s split of %s is empty", ps_split_part_name(part_of_wl[part]), d->cfg->data.path);
  PS_TRY(ps_loader_quiesce(d->train));
  d->eval_part = part;
  return ps_loader_begin_epoch(d->eval[part], 0);
}

ps_status ps_wl_data_eval_next(ps_wl_data *d, ps_wl_batch *out, int *end) {
  const ps_batch *b = NULL;
  PS_TRY(ps_loader_next(d->eval[d->eval_part], &b));
  *end = b == NULL;
  if (b) fill(d, b, out);
  return PS_OK;
}

ps_status ps_wl_data_quiesce(ps_wl_data *d) { return ps_loader_quiesce(d->train); }
double ps_wl_data_stall_seconds(const ps_wl_data *d) { return ps_loader_stall_seconds(d->train); }

const char *ps_wl_data_patient_id(const ps_wl_data *d, int64_t index) {
  return ps_cohort_get_patients(d->cohort)->id[index];
}
const char *ps_wl_data_cohort_name(const ps_wl_data *d, int cohort) {
  return ps_cohort_get_patients(d->cohort)->cohort_names[cohort];
}
const double *ps_wl_data_truth(const ps_wl_data *d) { return ps_cohort_get_patients(d->cohort)->log_hazard; }
int ps_wl_data_part_of(const ps_wl_data *d, int64_t index) {
  switch (d->split.part[index]) {
  case PS_SPLIT_TRAIN: return PS_WL_TRAIN;
  case PS_SPLIT_VAL: return PS_WL_VAL;
  case PS_SPLIT_TEST: return PS_WL_TEST;
  default: return PS_WL_PART_COUNT;
  }
}

const char *ps_wl_data_clinical_name(const ps_wl_data *d, int64_t j) { return ps_cohort_clinical_names(d->cohort)[j]; }

int64_t ps_wl_data_tile_row(const ps_wl_data *d, int64_t index, int64_t entry) {
  const ps_patients *p = ps_cohort_get_patients(d->cohort);
  int64_t first = p->offset[index], have = p->offset[index + 1] - first;
  // bag: all keeps the patient's tiles in file order while they fit in the bag;
  // sampled bags do not expose which tile an entry came from.
  if (d->cfg->data.bag != PS_CFG_BAG_ALL || have > d->cfg->data.tiles || entry >= have) return -1;
  return first + entry;
}

ps_status ps_wl_read_tile_coords(const char *path, const int64_t *rows, int64_t n, int32_t *out) {
  for (int64_t i = 0; i < 3 * n; i++) out[i] = -1;
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) PS_FAIL(PS_ERR_HDF5, "%s: cannot open to read /slides/coords", path);
  hid_t ds = H5Dopen2(f, "/slides/coords", H5P_DEFAULT);
  ps_status s = PS_OK;
  if (ds < 0) s = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "%s: no /slides/coords", path);
  for (int64_t i = 0; s == PS_OK && i < n; i++) {
    if (rows[i] < 0) continue;
    hid_t fs = H5Dget_space(ds);
    hsize_t start[2] = {(hsize_t)rows[i], 0}, count[2] = {1, 3}, mdim[1] = {3};
    hid_t ms = H5Screate_simple(1, mdim, NULL);
    if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(ds, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, out + 3 * i) < 0)
      s = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "%s: reading /slides/coords row %lld", path, (long long)rows[i]);
    H5Sclose(ms);
    H5Sclose(fs);
  }
  if (ds >= 0) H5Dclose(ds);
  H5Fclose(f);
  return s;
}

// The normalization travels in checkpoints as a float blob: element 0 and 1
// hold the byte length (low and high 16 bits, exact in float), then the bytes.
int64_t ps_wl_data_norm_blob_len(const ps_wl_data *d) {
  return 2 + (int64_t)((ps_norm_serialized_size(&d->norm) + 3) / 4);
}

ps_status ps_wl_data_norm_blob(const ps_wl_data *d, float *blob, int64_t n) {
  size_t len = ps_norm_serialized_size(&d->norm);
  PS_REQUIRE(n == 2 + (int64_t)((len + 3) / 4) && len < ((size_t)1 << 32), "normalization blob size");
  memset(blob, 0, sizeof(float) * (size_t)n);
  blob[0] = (float)(len & 0xffff);
  blob[1] = (float)(len >> 16);
  return ps_norm_serialize(&d->norm, blob + 2, len);
}

ps_status ps_wl_data_use_norm(ps_wl_data *d, const float *blob, int64_t n, const char *what) {
  size_t len = (size_t)blob[0] + ((size_t)blob[1] << 16);
  if (n < 2 || len > (size_t)(n - 2) * 4) PS_FAIL(PS_ERR_FORMAT, "%s: normalization blob of %zu bytes in %lld floats", what, len, (long long)n);
  ps_norm nm;
  memset(&nm, 0, sizeof nm);
  PS_TRY(ps_norm_deserialize(&nm, blob + 2, len));
  const ps_cohort_info *info = ps_cohort_get_info(d->cohort);
  ps_status s = PS_OK;
  if (nm.g_in != info->g || nm.g_sel != d->norm.g_sel)
    s = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s was trained on %lld genes (%lld kept), %s has %lld genes",
                     what, (long long)nm.g_in, (long long)nm.g_sel, d->cfg->data.path, (long long)info->g);
  else if (nm.c != info->c)
    s = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s was trained on %lld clinical columns, %s has %lld", what,
                     (long long)nm.c, d->cfg->data.path, (long long)info->c);
  if (s != PS_OK) {
    ps_norm_free(&nm);
    return s;
  }
  // Same shapes: replace the statistics in place (the loaders keep a pointer to d->norm).
  ps_norm_free(&d->norm);
  d->norm = nm;
  return PS_OK;
}
