// ps_data: the pansurv cohort file (HDF5, format 1), its validation, patient
// splits without leakage, training-split normalization and the sharded,
// rank-count-independent batch loader. The format is described in
// docs/data-format.md; the simulator in docs/simulator.md.
//
// Dimension letters used below:
//   N patients in the file        T tiles (or feature vectors) in the file
//   G genes in the file           Gs genes kept after top-variance selection
//   C clinical columns            S tile side in pixels, F feature width
//   B global batch (patients)     b this rank's share of the global batch
//   K tiles per patient in a batch (bag size)
//
// MPI: the data layer talks to HDF5's MPI-IO driver and therefore takes an
// MPI_Comm (ps_comm's communicator, or MPI_COMM_WORLD). Every function that
// takes a comm is collective over it; on error every rank returns the same
// status (agreed before the next collective).
//
// Threads: HDF5 here is not built thread-safe. While a loader with prefetch
// has a batch in flight, its background thread is the only HDF5 user; call
// ps_loader_quiesce() before other HDF5 calls (e.g. writing a checkpoint).
#ifndef PS_DATA_H
#define PS_DATA_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "ps_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PS_DATA_FORMAT 1   // root attribute `pansurv_format`
#define PS_DATA_ID_LEN 32  // fixed-length, null-padded patient ids (bytes, incl. padding)
#define PS_DATA_NAME_LEN 64 // fixed-length names (genes, clinical columns, cohorts, sites, slides)

typedef enum { PS_MOD_OMICS = 0, PS_MOD_CLINICAL, PS_MOD_SLIDES, PS_MOD_COUNT } ps_modality;
const char *ps_modality_name(ps_modality m);

typedef enum { PS_SLIDES_NONE = 0, PS_SLIDES_TILES, PS_SLIDES_FEATURES, PS_SLIDES_KIND_COUNT } ps_slides_kind;
const char *ps_slides_kind_name(ps_slides_kind k);

// ---- in-memory cohort (the writer's input; small tests build one by hand) ----
// Arrays are owned by the struct (ps_cohort_data_alloc + ps_cohort_data_alloc_bulk,
// freed by ps_cohort_data_free). The patient table, names, offsets and slide table
// cover all N patients; the bulk arrays (omics, clinical, tiles/features, coords)
// hold only patients [bulk_first, bulk_first + bulk_count) and their tiles
// [offset[bulk_first], offset[bulk_first + bulk_count]), so a rank holds its rows only.
// Rows of absent modalities are zero (omics) or NaN (clinical).
typedef struct {
  int64_t n, g, c, t, s_slides; // N, G, C, T, number of slides
  int64_t bulk_first, bulk_count, bulk_t0; // bulk rows held; bulk_t0 = offset[bulk_first]
  int n_cohorts, n_sites;
  ps_slides_kind slides;
  int tile_size;      // S (PS_SLIDES_TILES)
  int64_t feat_dim;   // F (PS_SLIDES_FEATURES)
  char (*id)[PS_DATA_ID_LEN];                 // (N)
  double *time;                               // (N) days
  uint8_t *event;                             // (N) 0/1
  int32_t *cohort, *site;                     // (N) codes
  char (*cohort_names)[PS_DATA_NAME_LEN];     // (n_cohorts)
  char (*site_names)[PS_DATA_NAME_LEN];       // (n_sites)
  float *omics;                               // (bulk_count, G)
  char (*genes)[PS_DATA_NAME_LEN];            // (G)
  uint8_t *omics_present;                     // (N)
  float *clinical;                            // (bulk_count, C), NaN = missing value
  char (*clinical_names)[PS_DATA_NAME_LEN];   // (C)
  uint8_t *clinical_present;                  // (N)
  uint8_t *tiles;                             // (bulk tiles, S, S, 3) RGB
  float *features;                            // (bulk tiles, F)
  int64_t *offset;                            // (N+1) patient p owns [offset[p], offset[p+1])
  int32_t *coords;                            // (bulk tiles, 3) slide index, x, y at level 0
  char (*slide_files)[PS_DATA_NAME_LEN];      // (s_slides)
  int64_t *slide_dims;                        // (s_slides, 2) width, height at level 0
  double *slide_mpp;                          // (s_slides)
  double *log_hazard;                         // (N) or NULL (simulated data only)
} ps_cohort_data;

// Allocates the patient table, names, offsets and slide table (zeroed).
ps_status ps_cohort_data_alloc(ps_cohort_data *d, int64_t n, int64_t g, int64_t c, ps_slides_kind slides,
                               int tile_size, int64_t feat_dim, int64_t s_slides, int n_cohorts, int n_sites,
                               bool truth);
// After d->offset is final (sets d->t = offset[N]): allocates the bulk arrays for rows [first, first+count).
ps_status ps_cohort_data_alloc_bulk(ps_cohort_data *d, int64_t first, int64_t count);
void ps_cohort_data_free(ps_cohort_data *d);

// ---- writer ---------------------------------------------------------------
// Writes a whole cohort file. Collective: each rank writes its bulk rows
// (the ranks' [bulk_first, bulk_first + bulk_count) ranges tile [0, N));
// rank 0 writes the patient table. Serial callers hold all rows and pass MPI_COMM_SELF.
// The file is written to PATH.tmp and renamed, so a failure leaves nothing half-written.
ps_status ps_data_write(const char *path, const ps_cohort_data *d, MPI_Comm comm);

// ---- reader ---------------------------------------------------------------
typedef struct {
  int64_t n, g, c, t, s_slides;
  int n_cohorts, n_sites;
  ps_slides_kind slides;
  int tile_size;    // S
  int64_t feat_dim; // F
  bool has_truth;
} ps_cohort_info;

// The patient table: small, replicated on every rank.
typedef struct {
  int64_t n;
  char (*id)[PS_DATA_ID_LEN];             // (N)
  double *time;                           // (N)
  uint8_t *event;                         // (N)
  int32_t *cohort, *site;                 // (N)
  uint8_t *present;                       // (N, PS_MOD_COUNT) modality present flags
  int64_t *offset;                        // (N+1) tiles / features of each patient
  char (*cohort_names)[PS_DATA_NAME_LEN]; // (n_cohorts)
  char (*site_names)[PS_DATA_NAME_LEN];   // (n_sites)
  double *log_hazard;                     // (N) or NULL
} ps_patients;

typedef struct ps_cohort ps_cohort; // an open cohort file

// Opens FILE collectively (MPI-IO driver, collective metadata), checks the
// `pansurv_format` attribute and reads the patient table. Does NOT run the
// full value checks: call ps_data_validate for that.
ps_status ps_cohort_open(ps_cohort **out, const char *path, MPI_Comm comm);
void ps_cohort_close(ps_cohort *c); // collective
const ps_cohort_info *ps_cohort_get_info(const ps_cohort *c);
const ps_patients *ps_cohort_get_patients(const ps_cohort *c);
// Gene / clinical column names (G or C entries, fixed-length).
const char (*ps_cohort_gene_names(const ps_cohort *c))[PS_DATA_NAME_LEN];
const char (*ps_cohort_clinical_names(const ps_cohort *c))[PS_DATA_NAME_LEN];

// Independent reads of arbitrary patient rows (no collectives).
// rows: n sorted-or-not global patient indices.
ps_status ps_cohort_read_omics(ps_cohort *c, const int64_t *rows, int64_t n, float *out /* (n, G) */);
ps_status ps_cohort_read_clinical(ps_cohort *c, const int64_t *rows, int64_t n, float *out /* (n, C) */);
// Tile rows t (global tile indices) -> uint8 (n, S, S, 3) or float (n, F).
ps_status ps_cohort_read_tiles(ps_cohort *c, const int64_t *tiles, int64_t n, uint8_t *out);
ps_status ps_cohort_read_features(ps_cohort *c, const int64_t *tiles, int64_t n, float *out);

// ---- validation (pansurv check; the trainer runs it before training) -------
typedef struct {
  ps_cohort_info info;
  int64_t events;
  double censoring_rate;
  int64_t present[PS_MOD_COUNT];
  int64_t *per_cohort; // (n_cohorts) patients
  int64_t *per_site;   // (n_sites) patients
  int64_t *per_cohort_events;
  char (*cohort_names)[PS_DATA_NAME_LEN]; // (n_cohorts)
  char (*site_names)[PS_DATA_NAME_LEN];   // (n_sites)
} ps_data_summary;

// Full validation of FILE: datasets, shapes, types and values. Collective;
// each rank checks a slice of the bulk arrays. On failure the message names
// the dataset and the first offending patient ids; status is PS_ERR_IO (cannot
// open), PS_ERR_FORMAT (not HDF5, wrong pansurv_format, missing dataset, wrong
// type or shape), PS_ERR_DATA (values) or PS_ERR_HDF5 (a read failed, e.g. a
// chunk checksum). summary may be NULL (else free with ps_data_summary_free).
ps_status ps_data_validate(const char *path, MPI_Comm comm, ps_data_summary *summary);
void ps_data_summary_free(ps_data_summary *s);

// ---- splits ---------------------------------------------------------------
typedef enum { PS_SPLIT_TRAIN = 0, PS_SPLIT_VAL, PS_SPLIT_TEST, PS_SPLIT_NONE, PS_SPLIT_PART_COUNT } ps_split_part;
const char *ps_split_part_name(ps_split_part p);

typedef struct {
  int64_t n;      // N
  uint8_t *part;  // (N) ps_split_part of every patient
} ps_split;

// k-fold stratified by cohort x event: fold `fold` is test, fold (fold+1)%k is
// validation (none when k = 2), the rest train. Deterministic from seed.
ps_status ps_split_kfold(ps_split *s, const ps_patients *p, int k, int fold, uint64_t seed);
// Site-held-out: patients of the listed sites are test; a stratified
// `val_fraction` of the remaining patients is validation.
ps_status ps_split_sites(ps_split *s, const ps_patients *p, const int32_t *test_sites, int n_test_sites,
                         double val_fraction, uint64_t seed);
// Explicit CSV: `id,split` lines where split is train|val|test or a fold
// number (then fold `fold` is test, (fold+1)%k val). Unknown ids are errors;
// patients missing from the CSV are PS_SPLIT_NONE.
ps_status ps_split_from_csv(ps_split *s, const ps_patients *p, const char *path, int fold);
// No-leakage assertion: every patient is in exactly one part and no id
// appears twice across parts (ids are unique); also fails when train is empty.
ps_status ps_split_check(const ps_split *s, const ps_patients *p);
int64_t ps_split_count(const ps_split *s, ps_split_part part);
void ps_split_free(ps_split *s);

// ---- normalization (training split only) -----------------------------------
// z-score for omics (after top-variance gene selection) and clinical, with
// statistics from the training patients only, reduced across ranks. Clinical
// NaN is imputed with the training mean (z = 0); rows of absent modalities are
// all zero after normalization and flagged absent.
typedef struct {
  int64_t g_in, g_sel, c;   // G, Gs, C
  int32_t *gene_index;      // (Gs) selected columns of /omics/rnaseq, ascending
  float *omics_mean, *omics_std; // (Gs)
  float *clin_mean, *clin_std;   // (C)
} ps_norm;

// top_genes <= 0 keeps all G genes. Collective.
ps_status ps_norm_fit(ps_norm *nm, ps_cohort *c, const ps_split *s, int64_t top_genes, MPI_Comm comm);
void ps_norm_free(ps_norm *nm);
// Serialization for checkpoints: magic, version, sizes, arrays, CRC32.
size_t ps_norm_serialized_size(const ps_norm *nm);
ps_status ps_norm_serialize(const ps_norm *nm, void *buf, size_t len);
ps_status ps_norm_deserialize(ps_norm *nm, const void *buf, size_t len);
// Applies the statistics: omics raw (n, G) -> out (n, Gs); clinical (n, C) in place (NaN -> 0).
void ps_norm_apply_omics(const ps_norm *nm, const float *raw, int64_t n, float *out);
void ps_norm_apply_clinical(const ps_norm *nm, float *x, int64_t n);

// ---- loader ---------------------------------------------------------------
typedef enum {
  PS_SAMPLER_UNIFORM = 0,   // seeded shuffle of the split each epoch
  PS_SAMPLER_STRATIFIED,    // each global batch: >= min_per_stratum patients of each cohort it draws
                            // (a cohort with fewer in the whole part comes as one group); sizes vary <= B
  PS_SAMPLER_EVENT_BALANCED,// each global batch: >= min_events events (when the split has them)
  PS_SAMPLER_SEQUENTIAL,    // split order, no shuffle (evaluation)
  PS_SAMPLER_COUNT
} ps_sampler;
const char *ps_sampler_name(ps_sampler s);
ps_status ps_sampler_parse(const char *s, ps_sampler *out);

typedef enum { PS_BAG_SAMPLE = 0, PS_BAG_ALL, PS_BAG_COUNT } ps_bag_mode;

typedef struct {
  ps_split_part part;     // which patients
  int64_t batch_size;     // B (global)
  int tiles;              // K; PS_BAG_ALL: maximum bag size (larger bags are sampled down)
  ps_bag_mode bag;
  ps_sampler sampler;
  int min_per_stratum;    // PS_SAMPLER_STRATIFIED
  int min_events;         // PS_SAMPLER_EVENT_BALANCED
  bool augment;           // flips, 90-degree rotations, brightness/contrast/hue jitter
  bool drop_last;         // drop a final partial global batch (uniform, sequential, event_balanced)
  bool prefetch;          // background thread, double buffered
  uint64_t seed;
} ps_loader_options;
ps_loader_options ps_loader_defaults(void);

// One rank's share of one global batch. All buffers are allocated once by the
// loader at capacity b_max; fields are valid until the next ps_loader_next.
typedef struct {
  int64_t epoch, step;     // step within the epoch
  int64_t b;               // this rank's patients in this step (0 is possible when B < ranks)
  int64_t b_max;           // capacity: ceil(B / ranks)
  int64_t global_b;        // patients in this global batch
  int64_t global_first;    // position of this rank's first patient in the global batch
  int64_t *index;          // (b) global patient index in the file
  double *time;            // (b) days
  uint8_t *event;          // (b)
  int32_t *cohort, *site;  // (b)
  uint8_t *present;        // (b, PS_MOD_COUNT)
  float *omics;            // (b, Gs) normalized, zero when absent
  float *clinical;         // (b, C) normalized, NaN -> 0 (training mean), zero when absent
  float *tiles;            // (b, K, 3, S, S) NCHW, per-channel normalized, augmented; NULL without tiles
  float *features;         // (b, K, F); NULL without features
  int32_t *n_tiles;        // (b) valid bag entries (K in sample mode when the patient has slides, else 0)
  uint8_t *tile_mask;      // (b, K) 1 = valid entry
  int64_t gs, c, k, s, f;  // Gs, C, K, S, F of the arrays above
} ps_batch;

typedef struct ps_loader ps_loader;

// Collective. The loader keeps pointers to c, s and nm (they must outlive it).
ps_status ps_loader_create(ps_loader **out, ps_cohort *c, const ps_split *s, const ps_norm *nm,
                           const ps_loader_options *opt, MPI_Comm comm);
void ps_loader_destroy(ps_loader *l);
// Same on every rank: ceil or floor(patients in the part / B) by drop_last.
int64_t ps_loader_steps_per_epoch(const ps_loader *l);
// Starts an epoch (the order comes from (seed, epoch) only).
ps_status ps_loader_begin_epoch(ps_loader *l, int64_t epoch);
// Starts an epoch at step `step` (resuming from a mid-epoch checkpoint): the batches that follow are
// exactly those an uninterrupted epoch would give from that step on.
ps_status ps_loader_begin_epoch_at(ps_loader *l, int64_t epoch, int64_t step);
// Next batch of the epoch, *out = NULL at the end. Not collective: reads are independent.
ps_status ps_loader_next(ps_loader *l, const ps_batch **out);
// Waits for an in-flight prefetch (call before other HDF5 use).
ps_status ps_loader_quiesce(ps_loader *l);
// Time spent waiting for data in ps_loader_next since creation (seconds).
double ps_loader_stall_seconds(const ps_loader *l);

// The global batch plan, for tests and tools: patient indices of global batch
// `step` of `epoch` (count via *n, at most B). Identical on every rank.
ps_status ps_loader_global_batch(const ps_loader *l, int64_t epoch, int64_t step, int64_t *idx, int64_t *n);

// ---- simulator ------------------------------------------------------------
typedef struct {
  int64_t patients;   // N
  int cohorts, sites;
  int64_t genes;      // G
  int tiles;          // tiles per patient
  int tile_size;      // S
  double censoring;   // target censoring rate in [0, 1)
  double missing;     // per-modality missing rate in [0, 1)
  uint64_t seed;
} ps_sim_options;
ps_sim_options ps_sim_defaults(void);

// Simulated cohort in memory (every patient keyed by (seed, patient) only, so
// the result does not depend on how rows are split across ranks). The patient
// table is built for all N; bulk rows [first, first+count) are rendered.
ps_status ps_sim_generate(ps_cohort_data *d, const ps_sim_options *o, int64_t first, int64_t count);
// Variance of the true log-hazard explained by each modality's latent factors
// (population values from the simulator's parameters; see docs/simulator.md).
// total = omics_only + slides_only + shared + clinical + cohort (independent terms);
// omics sees omics_only + shared, slides see slides_only + shared.
typedef struct {
  double total, omics_only, slides_only, shared, clinical, cohort;
} ps_sim_variance;
ps_status ps_sim_variance_decomposition(const ps_sim_options *o, ps_sim_variance *v);

#ifdef __cplusplus
}
#endif

#endif
