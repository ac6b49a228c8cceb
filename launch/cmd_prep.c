// pansurv prep: clinical CSV/TSV + RNA-seq matrix + slides or CLAM features -> cohort file.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_commands.h"
#include "ps_data.h"
#include "ps_mpi_session.h"
#include "ps_prep.h"

#include <yaml.h>

// --columns FILE.yaml: a small mapping of column names, e.g.
//   id: bcr_patient_barcode
//   type: type
//   endpoint: PFI
//   numeric: [age_at_initial_pathologic_diagnosis]
//   categorical: [gender, ajcc_pathologic_tumor_stage]
// Strings are copied into `store` (kept alive by the caller). Returns 0 on success.
static int read_columns_yaml(const char *path, ps_prep_options *o, char *store, size_t store_len, int *has_num,
                             int *has_cat) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "pansurv prep: cannot open %s\n", path);
    return 1;
  }
  yaml_parser_t p;
  yaml_event_t e;
  yaml_parser_initialize(&p);
  yaml_parser_set_input_file(&p, f);
  char key[64] = "";
  int depth = 0, in_seq = 0, n_num = 0, n_cat = 0, rc = 0;
  size_t used = 0;
  for (int done = 0; !done && !rc;) {
    if (!yaml_parser_parse(&p, &e)) {
      fprintf(stderr, "pansurv prep: %s: YAML error at line %zu: %s\n", path, p.problem_mark.line + 1,
              p.problem ? p.problem : "?");
      rc = 1;
      break;
    }
    if (e.type == YAML_STREAM_END_EVENT) done = 1;
    else if (e.type == YAML_MAPPING_START_EVENT) depth++;
    else if (e.type == YAML_SEQUENCE_START_EVENT) in_seq = 1;
    else if (e.type == YAML_SEQUENCE_END_EVENT) in_seq = 0, key[0] = '\0';
    else if (e.type == YAML_SCALAR_EVENT && depth == 1) {
      const char *v = (const char *)e.data.scalar.value;
      size_t n = e.data.scalar.length + 1;
      if (!in_seq && !key[0]) {
        snprintf(key, sizeof key, "%s", v);
      } else if (used + n > store_len) {
        fprintf(stderr, "pansurv prep: %s: too many names\n", path);
        rc = 1;
      } else {
        char *copy = memcpy(store + used, v, n);
        used += n;
        if (!strcmp(key, "id")) o->id_col = copy;
        else if (!strcmp(key, "type")) o->type_col = copy;
        else if (!strcmp(key, "endpoint")) rc = ps_endpoint_parse(copy, &o->endpoint) != PS_OK;
        else if (!strcmp(key, "numeric") && n_num < PS_PREP_MAX_COLS - 1) o->numeric[n_num++] = copy, *has_num = 1;
        else if (!strcmp(key, "categorical") && n_cat < PS_PREP_MAX_COLS - 1)
          o->categorical[n_cat++] = copy, *has_cat = 1;
        else {
          fprintf(stderr, "pansurv prep: %s: unknown key '%s' (id, type, endpoint, numeric, categorical)\n", path, key);
          rc = 1;
        }
        if (rc == 1 && !strcmp(key, "endpoint")) fprintf(stderr, "pansurv prep: %s: %s\n", path, ps_error_message());
        if (!in_seq) key[0] = '\0';
      }
    }
    yaml_event_delete(&e);
  }
  o->numeric[n_num] = NULL, o->categorical[n_cat] = NULL;
  yaml_parser_delete(&p);
  fclose(f);
  return rc;
}

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
          "  --columns FILE.yaml         the same choices as a mapping: id, type, endpoint, numeric, categorical\n"
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
  char *num = NULL, *cat = NULL, *columns = NULL;
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
    else if (!strcmp(a, "--columns")) columns = v;
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
  static char yaml_store[8192];
  int yaml_num = 0, yaml_cat = 0;
  if (columns && read_columns_yaml(columns, &o, yaml_store, sizeof yaml_store, &yaml_num, &yaml_cat)) return 2;
  // column lists: --columns YAML, else the flags, else TCGA-CDR defaults present in the header
  if (!yaml_num && num) split_list(num, o.numeric, PS_PREP_MAX_COLS);
  else if (!yaml_num && has_header_col(o.clinical, "age_at_initial_pathologic_diagnosis"))
    o.numeric[0] = "age_at_initial_pathologic_diagnosis";
  if (!yaml_cat && cat) split_list(cat, o.categorical, PS_PREP_MAX_COLS);
  else if (!yaml_cat) {
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
