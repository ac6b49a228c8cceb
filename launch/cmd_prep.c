// pansurv prep: clinical CSV/TSV + RNA-seq matrix + slides or CLAM features -> cohort file.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_commands.h"
#include "ps_data.h"
#include "ps_mpi_session.h"
#include "ps_prep.h"

static void prep_usage(FILE *f) {
  fprintf(f,
          "usage: pansurv prep --clinical FILE --out FILE [options]\n\n"
          "clinical (TCGA-CDR style CSV/TSV, gzip ok):\n"
          "  --endpoint OS|DSS|DFI|PFI   event column E and time column E.time (default OS)\n"
          "  --id-col NAME               patient id column (default bcr_patient_barcode)\n"
          "  --type-col NAME             cancer type / cohort column (default type)\n"
          "  --numeric A,B,...           numeric columns (default: age_at_initial_pathologic_diagnosis if present)\n"
          "  --categorical A,B,...       one-hot columns (default: gender,ajcc_pathologic_tumor_stage if present)\n"
          "  --type-onehot               add the cohort as one-hot clinical columns\n"
          "RNA-seq:\n"
          "  --rnaseq FILE               matrix, genes x samples or samples x genes, gzip ok\n"
          "  --orientation auto|genes-rows|samples-rows\n"
          "  --transform none|log2cpm|log2tpm  (log2tpm needs --gene-lengths FILE: gene<TAB>length in bp)\n"
          "slides (one of):\n"
          "  --slides DIR                whole-slide images (OpenSlide); --all-slides keeps non-diagnostic ones\n"
          "  --features DIR              CLAM .h5 files (features T x F, coords T x 2); needs --mpp\n"
          "  --mpp X                     microns per pixel when the slide does not record it\n"
          "  --target-mpp X (0.5)  --tile-size P (224)  --min-tissue F (0.5)  --max-tiles N (512)  --seed S (1)\n");
}

// Splits a comma list into out[] (NULL-terminated); the string is modified.
static int split_list(char *s, const char **out, int max) {
  int n = 0;
  for (char *t = strtok(s, ","); t && n < max - 1; t = strtok(NULL, ",")) out[n++] = t;
  out[n] = NULL;
  return n;
}

static int has_header_col(const char *path, const char *name) {
  // cheap header probe for the defaults (plain text only; gzip files get no defaults)
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[65536];
  int found = 0;
  if (fgets(line, sizeof line, f))
    for (char *t = strtok(line, ",\t\r\n"); t; t = strtok(NULL, ",\t\r\n"))
      if (!strcmp(t, name) || (t[0] == '"' && !strncmp(t + 1, name, strlen(name)))) found = 1;
  fclose(f);
  return found;
}

int ps_cmd_prep(int argc, char **argv) {
  ps_prep_options o;
  ps_prep_defaults(&o);
  char *num = NULL, *cat = NULL;
  int type_onehot = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      prep_usage(stdout);
      return 0;
    }
    if (!strcmp(a, "--type-onehot")) {
      type_onehot = 1;
      continue;
    }
    if (!strcmp(a, "--all-slides")) {
      o.all_slides = true;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "pansurv prep: %s needs a value\n", a);
      return 2;
    }
    char *v = argv[++i];
    ps_status st = PS_OK;
    if (!strcmp(a, "--clinical")) o.clinical = v;
    else if (!strcmp(a, "--out")) o.out = v;
    else if (!strcmp(a, "--endpoint")) st = ps_endpoint_parse(v, &o.endpoint);
    else if (!strcmp(a, "--id-col")) o.id_col = v;
    else if (!strcmp(a, "--type-col")) o.type_col = v;
    else if (!strcmp(a, "--numeric")) num = v;
    else if (!strcmp(a, "--categorical")) cat = v;
    else if (!strcmp(a, "--rnaseq")) o.rnaseq = v;
    else if (!strcmp(a, "--orientation")) {
      if (!strcmp(v, "auto")) o.orientation = PS_RNA_AUTO;
      else if (!strcmp(v, "genes-rows")) o.orientation = PS_RNA_GENES_ROWS;
      else if (!strcmp(v, "samples-rows")) o.orientation = PS_RNA_SAMPLES_ROWS;
      else {
        fprintf(stderr, "pansurv prep: --orientation expects auto, genes-rows or samples-rows\n");
        return 2;
      }
    } else if (!strcmp(a, "--transform")) st = ps_rna_transform_parse(v, &o.transform);
    else if (!strcmp(a, "--gene-lengths")) o.gene_lengths = v;
    else if (!strcmp(a, "--slides")) o.slides_dir = v;
    else if (!strcmp(a, "--features")) o.features_dir = v;
    else if (!strcmp(a, "--mpp")) o.mpp = atof(v);
    else if (!strcmp(a, "--target-mpp")) o.target_mpp = atof(v);
    else if (!strcmp(a, "--tile-size")) o.tile_size = atoi(v);
    else if (!strcmp(a, "--min-tissue")) o.min_tissue = atof(v);
    else if (!strcmp(a, "--max-tiles")) o.max_tiles = atoi(v);
    else if (!strcmp(a, "--seed")) o.seed = strtoull(v, NULL, 10);
    else {
      fprintf(stderr, "pansurv prep: unknown option '%s'\n\n", a);
      prep_usage(stderr);
      return 2;
    }
    if (st != PS_OK) {
      fprintf(stderr, "pansurv prep: %s\n", ps_error_message());
      return 2;
    }
  }
  if (!o.clinical || !o.out) {
    fprintf(stderr, "pansurv prep: --clinical FILE and --out FILE are required\n\n");
    prep_usage(stderr);
    return 2;
  }
  o.type_onehot = type_onehot;
  if (num) split_list(num, o.numeric, PS_PREP_MAX_COLS);
  else if (has_header_col(o.clinical, "age_at_initial_pathologic_diagnosis"))
    o.numeric[0] = "age_at_initial_pathologic_diagnosis";
  if (cat) split_list(cat, o.categorical, PS_PREP_MAX_COLS);
  else {
    int k = 0;
    if (has_header_col(o.clinical, "gender")) o.categorical[k++] = "gender";
    if (has_header_col(o.clinical, "ajcc_pathologic_tumor_stage")) o.categorical[k++] = "ajcc_pathologic_tumor_stage";
  }
  int started = ps_mpi_session_begin(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  ps_prep_report r;
  double t0 = MPI_Wtime();
  ps_status st = ps_prep_run(&o, MPI_COMM_WORLD, &r);
  int code = 0;
  if (st != PS_OK) code = rank == 0 ? ps_report_error("prep", st) : 1;
  else if (rank == 0) {
    printf("pansurv prep: wrote %s in %.2f s: %lld patients (endpoint %s)\n", o.out, MPI_Wtime() - t0,
           (long long)r.patients, ps_endpoint_name(o.endpoint));
    printf("  clinical: dropped %lld rows without a usable endpoint, %lld duplicate ids (first row kept)\n",
           (long long)r.dropped_no_endpoint, (long long)r.duplicate_clinical);
    if (o.rnaseq)
      printf("  rna-seq: %lld samples, %lld matched, %lld unmatched%s%s%s, %lld wrong sample type, %lld duplicate "
             "aliquots dropped%s%s\n", (long long)r.rna_samples, (long long)r.rna_matched, (long long)r.rna_unmatched,
             r.unmatched_examples[0] ? " (e.g. " : "", r.unmatched_examples, r.unmatched_examples[0] ? ")" : "",
             (long long)r.rna_wrong_type, (long long)r.rna_duplicates, r.duplicate_examples[0] ? ": " : "",
             r.duplicate_examples);
    if (o.slides_dir || o.features_dir)
      printf("  slides: %lld used, %lld skipped (no patient or not diagnostic), %lld %s\n", (long long)r.slides,
             (long long)r.slides_skipped, (long long)r.tiles, o.slides_dir ? "tiles" : "feature vectors");
  }
  ps_mpi_session_end(started);
  return code;
}
