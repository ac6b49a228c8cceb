// ps_prep: turns what users have (TCGA-CDR-style clinical CSV/TSV, an RNA-seq
// matrix, whole-slide images through OpenSlide or CLAM feature files) into a
// cohort file (docs/data-format.md). Rules and examples: docs/data-format.md, "pansurv prep".
#ifndef PS_PREP_H
#define PS_PREP_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "ps_status.h"

typedef enum { PS_ENDPOINT_OS = 0, PS_ENDPOINT_DSS, PS_ENDPOINT_DFI, PS_ENDPOINT_PFI, PS_ENDPOINT_COUNT } ps_endpoint;
const char *ps_endpoint_name(ps_endpoint e);
ps_status ps_endpoint_parse(const char *s, ps_endpoint *out);

typedef enum { PS_RNA_AUTO = 0, PS_RNA_GENES_ROWS, PS_RNA_SAMPLES_ROWS, PS_RNA_ORIENT_COUNT } ps_rna_orientation;
typedef enum { PS_RNA_NONE = 0, PS_RNA_LOG2_CPM, PS_RNA_LOG2_TPM, PS_RNA_TRANSFORM_COUNT } ps_rna_transform;
ps_status ps_rna_transform_parse(const char *s, ps_rna_transform *out);

#define PS_PREP_MAX_COLS 32

typedef struct {
  const char *clinical;          // CSV/TSV (required)
  const char *out;               // cohort file (required)
  ps_endpoint endpoint;
  const char *id_col;            // default bcr_patient_barcode
  const char *type_col;          // cohort column, default "type" (missing column: one cohort "ALL")
  const char *numeric[PS_PREP_MAX_COLS];     // numeric clinical columns (NULL-terminated)
  const char *categorical[PS_PREP_MAX_COLS]; // one-hot columns (NULL-terminated)
  bool type_onehot;              // add the cohort as one-hot clinical columns
  // RNA-seq
  const char *rnaseq;            // optional matrix (plain or gzip)
  ps_rna_orientation orientation;
  ps_rna_transform transform;
  const char *gene_lengths;      // TSV gene<TAB>length (bp), for TPM
  // slides: one of
  const char *slides_dir;        // whole-slide images (OpenSlide)
  const char *features_dir;      // CLAM .h5 files (features T x F, coords T x 2)
  bool all_slides;               // default: diagnostic slides only (TCGA "-DX" in the name)
  double mpp;                    // > 0: override / supply microns per pixel
  double target_mpp;             // tile grid resolution (default 0.5)
  int tile_size;                 // pixels at target_mpp (default 224)
  double min_tissue;             // minimum tissue fraction per tile (default 0.5)
  int max_tiles;                 // cap per slide (default 512; random but seeded)
  uint64_t seed;
} ps_prep_options;
void ps_prep_defaults(ps_prep_options *o);

// What was matched, dropped and why (printed by pansurv prep on rank 0).
typedef struct {
  int64_t patients, dropped_no_endpoint, duplicate_clinical;
  int64_t rna_samples, rna_matched, rna_unmatched, rna_wrong_type, rna_duplicates;
  int64_t slides, slides_skipped, tiles;
  char unmatched_examples[256];  // a few unmatched sample ids
  char duplicate_examples[256];  // a few dropped duplicate aliquots
} ps_prep_report;

// Collective: every rank parses the tables, each rank renders the slides of its patient range.
ps_status ps_prep_run(const ps_prep_options *o, MPI_Comm comm, ps_prep_report *rep);

// Tissue detection helpers (exposed for tests): Otsu threshold of a 256-bin histogram.
int ps_prep_otsu(const int64_t hist[256]);

#endif
