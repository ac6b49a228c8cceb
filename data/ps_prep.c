// pansurv prep: clinical CSV/TSV + RNA-seq matrix + slides (OpenSlide) or CLAM features -> cohort file.
// The tables are small enough to parse on every rank; slides are rendered by the rank that owns the
// patient's rows and streamed one tile at a time.
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "ps_data_internal.h"
#include "ps_prep.h"
#include "ps_rng.h"
#if PANSURV_HAVE_OPENSLIDE
#include <openslide.h>
#endif

static const char *const endpoint_names[] = {"OS", "DSS", "DFI", "PFI"};
_Static_assert(sizeof endpoint_names / sizeof endpoint_names[0] == PS_ENDPOINT_COUNT, "endpoint_names");
const char *ps_endpoint_name(ps_endpoint e) { return (e >= 0 && e < PS_ENDPOINT_COUNT) ? endpoint_names[e] : "?"; }
ps_status ps_endpoint_parse(const char *s, ps_endpoint *out) {
  for (int i = 0; i < PS_ENDPOINT_COUNT; i++)
    if (!strcmp(s, endpoint_names[i])) {
      *out = (ps_endpoint)i;
      return PS_OK;
    }
  PS_FAIL(PS_ERR_CONFIG, "unknown endpoint '%s' (expected OS, DSS, DFI or PFI)", s);
}

static const char *const transform_names[] = {"none", "log2cpm", "log2tpm"};
_Static_assert(sizeof transform_names / sizeof transform_names[0] == PS_RNA_TRANSFORM_COUNT, "transform_names");
ps_status ps_rna_transform_parse(const char *s, ps_rna_transform *out) {
  for (int i = 0; i < PS_RNA_TRANSFORM_COUNT; i++)
    if (!strcmp(s, transform_names[i])) {
      *out = (ps_rna_transform)i;
      return PS_OK;
    }
  PS_FAIL(PS_ERR_CONFIG, "unknown RNA-seq transform '%s' (expected none, log2cpm or log2tpm)", s);
}

void ps_prep_defaults(ps_prep_options *o) {
  memset(o, 0, sizeof *o);
  o->endpoint = PS_ENDPOINT_OS;
  o->id_col = "bcr_patient_barcode";
  o->type_col = "type";
  o->target_mpp = 0.5;
  o->tile_size = 224;
  o->min_tissue = 0.5;
  o->max_tiles = 512;
  o->seed = 1;
}

// ---- text tables ----------------------------------------------------------------------------------

typedef struct {
  int64_t rows, cols;  // rows excluding the header
  char **cell;         // (rows + 1) x cols, row 0 = header; NULL for short rows
  char *text;          // backing store
} table;

static void table_free(table *t) {
  free(t->cell), free(t->text);
  memset(t, 0, sizeof *t);
}

static bool is_missing(const char *s) {
  static const char *const tokens[] = {"", "[Not Available]", "[Discrepancy]", "[Unknown]", "[Not Applicable]",
                                       "NA", "#N/A", "[Not Evaluated]", "[Completed]"};
  if (!s) return true;
  for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++)
    if (!strcmp(s, tokens[i])) return true;
  return false;
}

// Reads a whole (optionally gzip-compressed) CSV/TSV; the delimiter is tab when the header has one.
static ps_status table_read(table *t, const char *path) {
  memset(t, 0, sizeof *t);
  gzFile f = gzopen(path, "rb");
  if (!f) PS_FAIL(PS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 20, len = 0;
  char *buf = malloc(cap);
  int n;
  while (buf && (n = gzread(f, buf + len, (unsigned)(cap - len - 1))) > 0) {
    len += (size_t)n;
    if (cap - len < 2) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) free(buf);
      buf = nb, cap *= 2;
    }
  }
  int err;
  const char *emsg = gzerror(f, &err);
  gzclose(f);
  if (!buf) PS_FAIL(PS_ERR_MEM, "%s: reading", path);
  if (err != Z_OK && err != Z_STREAM_END) {
    free(buf);
    PS_FAIL(PS_ERR_IO, "%s: %s", path, emsg);
  }
  buf[len] = '\0';
  char *nl = strchr(buf, '\n');
  char delim = (nl ? memchr(buf, '\t', (size_t)(nl - buf)) != NULL : strchr(buf, '\t') != NULL) ? '\t' : ',';
  // count lines and the header's columns
  int64_t lines = 0, cols = 1;
  for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
  if (len && buf[len - 1] != '\n') lines++;
  bool q = false;
  for (char *c = buf; *c && *c != '\n'; c++) {
    if (*c == '"') q = !q;
    else if (*c == delim && !q) cols++;
  }
  t->cell = calloc((size_t)(lines + 1) * (size_t)cols, sizeof(char *));
  if (!t->cell) {
    free(buf);
    PS_FAIL(PS_ERR_MEM, "%s: %lld lines x %lld columns", path, (long long)lines, (long long)cols);
  }
  t->text = buf, t->cols = cols;
  int64_t row = 0;
  char *c = buf;
  while (*c) {
    int64_t col = 0;
    bool blank = true;
    for (;;) { // one field
      char *start = c, *w = c;
      bool quoted = *c == '"';
      if (quoted) c++;
      while (*c) {
        if (quoted && *c == '"') {
          if (c[1] == '"') {
            *w++ = '"', c += 2;
            continue;
          }
          quoted = false, c++;
          continue;
        }
        if (!quoted && (*c == delim || *c == '\n' || *c == '\r')) break;
        *w++ = *c++;
      }
      char end = *c;
      *w = '\0';
      if (*start) blank = false;
      if (col < cols) t->cell[row * cols + col] = start;
      col++;
      if (end == '\r') c++, end = *c;
      if (end == delim) {
        c++;
        continue;
      }
      if (end == '\n') c++;
      break;
    }
    if (!blank || col > 1) row++;
    else
      for (int64_t k = 0; k < cols; k++) t->cell[row * cols + k] = NULL;
    if (row > lines) break;
  }
  t->rows = row > 0 ? row - 1 : 0;
  for (int64_t k = 0; k < cols; k++) {
    char *h = t->cell[k];
    if (h) { // trim header names
      while (isspace((unsigned char)*h)) h++;
      size_t n2 = strlen(h);
      while (n2 && isspace((unsigned char)h[n2 - 1])) h[--n2] = '\0';
      t->cell[k] = h;
    }
  }
  return PS_OK;
}

static const char *cell(const table *t, int64_t row, int64_t col) { // row 0 = first data row
  return col < 0 ? NULL : t->cell[(row + 1) * t->cols + col];
}

static int64_t find_col(const table *t, const char *name) {
  for (int64_t k = 0; k < t->cols; k++)
    if (t->cell[k] && !strcmp(t->cell[k], name)) return k;
  return -1;
}

// ---- string sets ----------------------------------------------------------------------------------

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Sorted unique non-missing values of a column; returns count.
static int64_t levels(const table *t, int64_t col, const char ***out) {
  const char **v = calloc((size_t)t->rows + 1, sizeof *v);
  int64_t n = 0;
  for (int64_t r = 0; v && r < t->rows; r++)
    if (!is_missing(cell(t, r, col))) v[n++] = cell(t, r, col);
  if (v) qsort(v, (size_t)n, sizeof *v, cmp_str);
  int64_t u = 0;
  for (int64_t i = 0; i < n; i++)
    if (u == 0 || strcmp(v[u - 1], v[i])) v[u++] = v[i];
  *out = v;
  return u;
}

static int64_t index_of(const char **sorted, int64_t n, const char *s) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t m = (lo + hi) / 2;
    int c = strcmp(sorted[m], s);
    if (!c) return m;
    if (c < 0) lo = m + 1;
    else hi = m;
  }
  return -1;
}

static bool is_tcga(const char *s) { return !strncmp(s, "TCGA-", 5) && strlen(s) >= 12; }

// Patient key of a sample or slide name: TCGA -> first 12 characters; otherwise up to the first '.'.
static void patient_key(const char *s, char *key, size_t len) {
  size_t n = is_tcga(s) ? 12 : strcspn(s, ".");
  if (n >= len) n = len - 1;
  memcpy(key, s, n);
  key[n] = '\0';
}

typedef struct {
  const char *id;
  int64_t p;
} id_ref;
static int cmp_ref(const void *a, const void *b) { return strcmp(((const id_ref *)a)->id, ((const id_ref *)b)->id); }
static int64_t find_patient(const id_ref *ids, int64_t n, const char *key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t m = (lo + hi) / 2;
    int c = strcmp(ids[m].id, key);
    if (!c) return ids[m].p;
    if (c < 0) lo = m + 1;
    else hi = m;
  }
  return -1;
}

static void add_example(char *buf, size_t len, const char *s) {
  size_t n = strlen(buf);
  if (n + strlen(s) + 3 < len) snprintf(buf + n, len - n, "%s%s", n ? ", " : "", s);
}

// ---- the prep state ---------------------------------------------------------------------------------

typedef struct {
  const ps_prep_options *o;
  ps_prep_report *rep;
  int rank, size;
  table clin;
  int64_t n;           // kept patients
  int64_t *row_of;     // (n) clinical row of each kept patient
  id_ref *ids;         // (n) sorted by id
  ps_cohort_data d;
  // RNA-seq
  int64_t g;
  float *rna;          // (n, G) full (every rank parses), NULL when absent
  uint8_t *rna_present;
  char (*genes)[PS_DATA_NAME_LEN];
} prep;

static ps_status parse_clinical(prep *s) {
  const ps_prep_options *o = s->o;
  table *t = &s->clin;
  PS_TRY(table_read(t, o->clinical));
  int64_t c_id = find_col(t, o->id_col);
  char ev_name[64], tm_name[64];
  snprintf(ev_name, sizeof ev_name, "%s", ps_endpoint_name(o->endpoint));
  snprintf(tm_name, sizeof tm_name, "%s.time", ps_endpoint_name(o->endpoint));
  int64_t c_ev = find_col(t, ev_name), c_tm = find_col(t, tm_name), c_type = find_col(t, o->type_col);
  if (c_id < 0) PS_FAIL(PS_ERR_FORMAT, "%s: no column '%s' (patient id; choose it with --id-col)", o->clinical, o->id_col);
  if (c_ev < 0 || c_tm < 0)
    PS_FAIL(PS_ERR_FORMAT, "%s: endpoint %s needs columns '%s' and '%s'", o->clinical, ev_name, ev_name, tm_name);
  int64_t n_num = 0, n_cat = 0, num_col[PS_PREP_MAX_COLS], cat_col[PS_PREP_MAX_COLS];
  for (; o->numeric[n_num]; n_num++)
    if ((num_col[n_num] = find_col(t, o->numeric[n_num])) < 0)
      PS_FAIL(PS_ERR_FORMAT, "%s: numeric column '%s' not found", o->clinical, o->numeric[n_num]);
  for (; o->categorical[n_cat]; n_cat++)
    if ((cat_col[n_cat] = find_col(t, o->categorical[n_cat])) < 0)
      PS_FAIL(PS_ERR_FORMAT, "%s: categorical column '%s' not found", o->clinical, o->categorical[n_cat]);
  // keep rows with a usable endpoint, first occurrence of each id
  s->row_of = calloc((size_t)t->rows + 1, sizeof(int64_t));
  s->ids = calloc((size_t)t->rows + 1, sizeof(id_ref));
  if (!s->row_of || !s->ids) PS_FAIL(PS_ERR_MEM, "clinical rows");
  id_ref *all = calloc((size_t)t->rows + 1, sizeof(id_ref));
  if (!all) PS_FAIL(PS_ERR_MEM, "clinical ids");
  int64_t m = 0;
  for (int64_t r = 0; r < t->rows; r++) {
    const char *id = cell(t, r, c_id), *ev = cell(t, r, c_ev), *tm = cell(t, r, c_tm);
    char *end;
    double tv = tm ? strtod(tm, &end) : NAN;
    bool ok = id && *id && !is_missing(ev) && !is_missing(tm) && (!strcmp(ev, "0") || !strcmp(ev, "1")) &&
              *end == '\0' && isfinite(tv) && tv >= 0;
    if (!ok) {
      s->rep->dropped_no_endpoint++;
      continue;
    }
    if (strlen(id) >= PS_DATA_ID_LEN) {
      free(all);
      PS_FAIL(PS_ERR_DATA, "%s: id '%s' (row %lld) is longer than %d characters", o->clinical, id, (long long)r + 2,
              PS_DATA_ID_LEN - 1);
    }
    all[m++] = (id_ref){id, r};
  }
  qsort(all, (size_t)m, sizeof *all, cmp_ref); // stable enough: ties resolved below by row
  uint8_t *keep = calloc((size_t)t->rows + 1, 1);
  for (int64_t i = 0; i < m;) {
    int64_t j = i, best = all[i].p;
    while (j < m && !strcmp(all[j].id, all[i].id)) best = all[j].p < best ? all[j].p : best, j++;
    keep[best] = 1;
    s->rep->duplicate_clinical += j - i - 1;
    i = j;
  }
  free(all);
  for (int64_t r = 0; r < t->rows; r++)
    if (keep[r]) s->row_of[s->n++] = r;
  free(keep);
  if (s->n == 0) PS_FAIL(PS_ERR_DATA, "%s: no patient has a usable %s endpoint", o->clinical, ev_name);
  s->rep->patients = s->n;
  for (int64_t i = 0; i < s->n; i++) s->ids[i] = (id_ref){cell(t, s->row_of[i], c_id), i};
  qsort(s->ids, (size_t)s->n, sizeof *s->ids, cmp_ref);
  // cohorts, sites, clinical columns
  const char **types = NULL, **cat_lv[PS_PREP_MAX_COLS] = {0};
  int64_t n_types = c_type >= 0 ? levels(t, c_type, &types) : 0;
  int64_t n_lv[PS_PREP_MAX_COLS] = {0}, n_c = n_num;
  for (int64_t k = 0; k < n_cat; k++) n_c += n_lv[k] = levels(t, cat_col[k], &cat_lv[k]);
  bool type_oh = o->type_onehot && n_types > 1;
  if (type_oh) n_c += n_types;
  // sites: TCGA tissue-source site (barcode field 2), else one site
  const char **site_v = calloc((size_t)s->n + 1, sizeof *site_v);
  char (*site_s)[8] = calloc((size_t)s->n + 1, 8);
  int64_t n_sites = 0;
  for (int64_t i = 0; site_v && site_s && i < s->n; i++) {
    const char *id = cell(t, s->row_of[i], c_id);
    if (is_tcga(id)) snprintf(site_s[i], 8, "%.2s", id + 5);
    else snprintf(site_s[i], 8, "site0");
    site_v[n_sites++] = site_s[i];
  }
  qsort(site_v, (size_t)n_sites, sizeof *site_v, cmp_str);
  int64_t u = 0;
  for (int64_t i = 0; i < n_sites; i++)
    if (!u || strcmp(site_v[u - 1], site_v[i])) site_v[u++] = site_v[i];
  n_sites = u;
  ps_status st = ps_cohort_data_alloc(&s->d, s->n, 0, n_c, PS_SLIDES_NONE, 0, 0, 0, n_types > 0 ? (int)n_types : 1,
                                      (int)n_sites, false);
  for (int64_t i = 0; st == PS_OK && i < s->n; i++) {
    int64_t r = s->row_of[i];
    snprintf(s->d.id[i], PS_DATA_ID_LEN, "%s", cell(t, r, c_id));
    s->d.event[i] = cell(t, r, c_ev)[0] == '1';
    s->d.time[i] = strtod(cell(t, r, c_tm), NULL);
    const char *ty = c_type >= 0 ? cell(t, r, c_type) : NULL;
    s->d.cohort[i] = is_missing(ty) ? 0 : (int32_t)index_of(types, n_types, ty);
    s->d.site[i] = (int32_t)index_of(site_v, n_sites, site_s[i]);
    s->d.clinical_present[i] = 1;
  }
  if (st == PS_OK) {
    if (n_types == 0) snprintf(s->d.cohort_names[0], PS_DATA_NAME_LEN, "ALL");
    for (int64_t k = 0; k < n_types; k++) snprintf(s->d.cohort_names[k], PS_DATA_NAME_LEN, "%s", types[k]);
    for (int64_t k = 0; k < n_sites; k++) snprintf(s->d.site_names[k], PS_DATA_NAME_LEN, "%s", site_v[k]);
    int64_t j = 0;
    for (int64_t k = 0; k < n_num; k++) snprintf(s->d.clinical_names[j++], PS_DATA_NAME_LEN, "%s", o->numeric[k]);
    for (int64_t k = 0; k < n_cat; k++)
      for (int64_t v = 0; v < n_lv[k]; v++)
        snprintf(s->d.clinical_names[j++], PS_DATA_NAME_LEN, "%s_%s", o->categorical[k], cat_lv[k][v]);
    if (type_oh)
      for (int64_t v = 0; v < n_types; v++) snprintf(s->d.clinical_names[j++], PS_DATA_NAME_LEN, "type_%s", types[v]);
  }
  // the full clinical matrix is kept on every rank until the bulk rows are assigned
  float *x = st == PS_OK ? calloc((size_t)(s->n * n_c) + 1, sizeof(float)) : NULL;
  if (st == PS_OK && !x) st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "clinical matrix");
  for (int64_t i = 0; st == PS_OK && i < s->n; i++) {
    int64_t r = s->row_of[i], j = 0;
    float *row = x + i * n_c;
    for (int64_t k = 0; k < n_num && st == PS_OK; k++, j++) {
      const char *v = cell(t, r, num_col[k]);
      char *end;
      double val = is_missing(v) ? NAN : strtod(v, &end);
      if (!is_missing(v) && (*end != '\0' || !isfinite(val)))
        st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: column '%s', patient %s (line %lld): '%s' is not a "
                          "number or a missing-value token", o->clinical, o->numeric[k], s->d.id[i], (long long)r + 2, v);
      row[j] = (float)val;
    }
    for (int64_t k = 0; k < n_cat; k++) {
      const char *v = cell(t, r, cat_col[k]);
      int64_t lv = is_missing(v) ? -1 : index_of(cat_lv[k], n_lv[k], v);
      for (int64_t q = 0; q < n_lv[k]; q++, j++) row[j] = lv < 0 ? NAN : (float)(q == lv);
    }
    if (type_oh)
      for (int64_t q = 0; q < n_types; q++, j++) row[j] = (float)(q == s->d.cohort[i]);
  }
  s->d.clinical = x; // temporarily full; replaced by the rank's rows later
  free(types), free(site_v), free(site_s);
  for (int64_t k = 0; k < n_cat; k++) free(cat_lv[k]);
  return st;
}

// ---- RNA-seq ----------------------------------------------------------------------------------------

static bool looks_like_sample(const char *s, const id_ref *ids, int64_t n) {
  if (!s) return false;
  if (is_tcga(s)) return true;
  char key[PS_DATA_ID_LEN];
  patient_key(s, key, sizeof key);
  return find_patient(ids, n, key) >= 0;
}

static ps_status parse_rnaseq(prep *s) {
  const ps_prep_options *o = s->o;
  table t;
  PS_TRY(table_read(&t, o->rnaseq));
  ps_status st = PS_OK;
  // orientation: which axis holds sample ids
  int64_t hdr_hits = 0, col_hits = 0;
  for (int64_t k = 1; k < t.cols; k++) hdr_hits += looks_like_sample(t.cell[k], s->ids, s->n);
  for (int64_t r = 0; r < t.rows; r++) col_hits += looks_like_sample(cell(&t, r, 0), s->ids, s->n);
  ps_rna_orientation orient = o->orientation;
  if (orient == PS_RNA_AUTO) {
    if (hdr_hits == 0 && col_hits == 0) {
      table_free(&t);
      PS_FAIL(PS_ERR_DATA, "%s: no sample id matches a clinical patient in the header or the first column (TCGA "
              "barcodes or patient ids expected)", o->rnaseq);
    }
    orient = hdr_hits * (t.rows + 1) >= col_hits * t.cols ? PS_RNA_GENES_ROWS : PS_RNA_SAMPLES_ROWS;
  }
  int64_t n_samp = orient == PS_RNA_GENES_ROWS ? t.cols - 1 : t.rows;
  int64_t g = orient == PS_RNA_GENES_ROWS ? t.rows : t.cols - 1;
  s->rep->rna_samples = n_samp;
  if (g <= 0 || n_samp <= 0) {
    table_free(&t);
    PS_FAIL(PS_ERR_FORMAT, "%s: expected a matrix with gene and sample names", o->rnaseq);
  }
  s->g = g;
  s->genes = calloc((size_t)g, PS_DATA_NAME_LEN);
  s->rna = calloc((size_t)(s->n * g) + 1, sizeof(float));
  s->rna_present = calloc((size_t)s->n + 1, 1);
  int64_t *chosen = calloc((size_t)s->n + 1, sizeof(int64_t)); // sample index + 1
  if (!s->genes || !s->rna || !s->rna_present || !chosen) {
    free(chosen), table_free(&t);
    PS_FAIL(PS_ERR_MEM, "RNA-seq matrix %lld x %lld", (long long)s->n, (long long)g);
  }
  for (int64_t j = 0; j < g; j++)
    snprintf(s->genes[j], PS_DATA_NAME_LEN, "%s", orient == PS_RNA_GENES_ROWS ? (cell(&t, j, 0) ? cell(&t, j, 0) : "")
                                                                            : (t.cell[j + 1] ? t.cell[j + 1] : ""));
  // match samples to patients: TCGA sample type 01 (03 for LAML), duplicates -> smallest barcode
  for (int64_t k = 0; k < n_samp; k++) {
    const char *name = orient == PS_RNA_GENES_ROWS ? t.cell[k + 1] : cell(&t, k, 0);
    if (!name || !*name) continue;
    char key[PS_DATA_ID_LEN];
    patient_key(name, key, sizeof key);
    int64_t p = find_patient(s->ids, s->n, key);
    if (p < 0) {
      s->rep->rna_unmatched++;
      add_example(s->rep->unmatched_examples, sizeof s->rep->unmatched_examples, name);
      continue;
    }
    if (is_tcga(name) && strlen(name) >= 15) {
      bool blood = !strcmp(s->d.cohort_names[s->d.cohort[p]], "LAML");
      if (strncmp(name + 13, blood ? "03" : "01", 2)) {
        s->rep->rna_wrong_type++;
        continue;
      }
    }
    if (chosen[p]) {
      s->rep->rna_duplicates++;
      const char *prev = orient == PS_RNA_GENES_ROWS ? t.cell[chosen[p]] : cell(&t, chosen[p] - 1, 0);
      bool better = strcmp(name, prev) < 0;
      add_example(s->rep->duplicate_examples, sizeof s->rep->duplicate_examples, better ? prev : name);
      if (!better) continue;
    }
    chosen[p] = k + 1;
  }
  double *len_bp = NULL;
  if (o->transform == PS_RNA_LOG2_TPM) {
    table lt;
    st = o->gene_lengths ? table_read(&lt, o->gene_lengths)
                         : ps_error_set(PS_ERR_CONFIG, __FILE__, __LINE__, "log2tpm needs --gene-lengths FILE");
    if (st == PS_OK) {
      len_bp = calloc((size_t)g, sizeof(double));
      // header row is data too when its second field is numeric
      for (int64_t j = 0; j < g; j++) len_bp[j] = NAN;
      for (int64_t r = -1; r < lt.rows; r++) {
        const char *gn = r < 0 ? lt.cell[0] : cell(&lt, r, 0), *lv = r < 0 ? lt.cell[1] : cell(&lt, r, 1);
        if (!gn || !lv) continue;
        for (int64_t j = 0; j < g; j++)
          if (!strcmp(s->genes[j], gn)) len_bp[j] = strtod(lv, NULL);
      }
      for (int64_t j = 0; j < g && st == PS_OK; j++)
        if (!(len_bp[j] > 0))
          st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: no positive length for gene '%s'", o->gene_lengths,
                            s->genes[j]);
      table_free(&lt);
    }
  }
  double *v = calloc((size_t)g, sizeof(double));
  for (int64_t p = 0; st == PS_OK && p < s->n; p++) {
    if (!chosen[p]) continue;
    int64_t k = chosen[p] - 1;
    s->rep->rna_matched++;
    double total = 0;
    for (int64_t j = 0; j < g && st == PS_OK; j++) {
      const char *c = orient == PS_RNA_GENES_ROWS ? cell(&t, j, k + 1) : cell(&t, k, j + 1);
      char *end;
      v[j] = c ? strtod(c, &end) : NAN;
      if (!c || *end != '\0' || !isfinite(v[j]) || (o->transform != PS_RNA_NONE && v[j] < 0))
        st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: sample of patient %s, gene '%s': '%s' is not a %s",
                          o->rnaseq, s->d.id[p], s->genes[j], c ? c : "(missing)",
                          o->transform != PS_RNA_NONE ? "non-negative count" : "finite number");
      if (st == PS_OK && len_bp) v[j] /= len_bp[j] / 1000.0;
      total += st == PS_OK ? v[j] : 0;
    }
    for (int64_t j = 0; st == PS_OK && j < g; j++)
      s->rna[p * g + j] = (float)(o->transform == PS_RNA_NONE ? v[j] : log2(v[j] / (total > 0 ? total : 1) * 1e6 + 1));
    s->rna_present[p] = 1;
  }
  free(v), free(len_bp), free(chosen);
  table_free(&t);
  return st;
}

// ---- slides -----------------------------------------------------------------------------------------

typedef struct {
  char name[PS_DATA_NAME_LEN];
  char path[4096];
  int64_t patient;
} slide_ref;

static int cmp_slide(const void *a, const void *b) {
  const slide_ref *x = a, *y = b;
  if (x->patient != y->patient) return x->patient < y->patient ? -1 : 1;
  return strcmp(x->name, y->name);
}

static bool has_ext(const char *name, const char *const *exts) {
  const char *dot = strrchr(name, '.');
  if (!dot) return false;
  for (int i = 0; exts[i]; i++)
    if (!strcasecmp(dot + 1, exts[i])) return true;
  return false;
}

static ps_status list_slides(prep *s, const char *dir, bool features, slide_ref **out, int64_t *n_out) {
  static const char *const wsi_ext[] = {"svs", "tif", "tiff", "ndpi", "vms", "vmu", "scn", "mrxs", "bif", "svslide", NULL};
  static const char *const h5_ext[] = {"h5", NULL};
  DIR *d = opendir(dir);
  if (!d) PS_FAIL(PS_ERR_IO, "%s: cannot list slides: %s", dir, strerror(errno));
  int64_t cap = 64, n = 0;
  slide_ref *v = calloc((size_t)cap, sizeof *v);
  struct dirent *e;
  while (v && (e = readdir(d))) {
    if (e->d_name[0] == '.' || !has_ext(e->d_name, features ? h5_ext : wsi_ext)) continue;
    if (is_tcga(e->d_name) && !s->o->all_slides && !strstr(e->d_name, "-DX")) {
      s->rep->slides_skipped++;
      continue;
    }
    char key[PS_DATA_ID_LEN];
    patient_key(e->d_name, key, sizeof key);
    int64_t p = find_patient(s->ids, s->n, key);
    if (p < 0) {
      s->rep->slides_skipped++;
      continue;
    }
    if (n == cap) {
      slide_ref *nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
      if (!nv) free(v);
      v = nv;
      if (!v) break;
    }
    snprintf(v[n].name, PS_DATA_NAME_LEN, "%s", e->d_name);
    snprintf(v[n].path, sizeof v[n].path, "%s/%s", dir, e->d_name);
    v[n].patient = p;
    n++;
  }
  closedir(d);
  if (!v) PS_FAIL(PS_ERR_MEM, "slide list");
  qsort(v, (size_t)n, sizeof *v, cmp_slide);
  *out = v, *n_out = n;
  return PS_OK;
}

// Growable local tile store of one rank.
typedef struct {
  int64_t n, cap;
  size_t row;        // bytes per tile row
  uint8_t *data;
  int32_t *coords;   // (n, 3)
} tile_store;

static ps_status store_push(tile_store *ts, const void *row, int32_t slide, int32_t x, int32_t y) {
  if (ts->n == ts->cap) {
    int64_t cap = ts->cap ? ts->cap * 2 : 256;
    uint8_t *d = realloc(ts->data, (size_t)cap * ts->row);
    if (!d) PS_FAIL(PS_ERR_MEM, "tile store");
    ts->data = d;
    int32_t *c = realloc(ts->coords, (size_t)cap * 3 * sizeof(int32_t));
    if (!c) PS_FAIL(PS_ERR_MEM, "tile store");
    ts->coords = c, ts->cap = cap;
  }
  memcpy(ts->data + (size_t)ts->n * ts->row, row, ts->row);
  ts->coords[ts->n * 3] = slide, ts->coords[ts->n * 3 + 1] = x, ts->coords[ts->n * 3 + 2] = y;
  ts->n++;
  return PS_OK;
}

int ps_prep_otsu(const int64_t hist[256]) {
  double total = 0, sum = 0;
  for (int i = 0; i < 256; i++) total += (double)hist[i], sum += (double)i * (double)hist[i];
  double w0 = 0, sum0 = 0, best = -1;
  int thr = 0;
  for (int t = 0; t < 256; t++) {
    w0 += (double)hist[t];
    if (w0 == 0) continue;
    double w1 = total - w0;
    if (w1 == 0) break;
    sum0 += (double)t * (double)hist[t];
    double m0 = sum0 / w0, m1 = (sum - sum0) / w1, between = w0 * w1 * (m0 - m1) * (m0 - m1);
    if (between > best) best = between, thr = t;
  }
  return thr; // tissue: value > thr
}

static uint64_t name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

// Chooses at most `cap` of n candidates (seeded by the slide name), kept in their original (raster) order.
static int64_t cap_candidates(int64_t *cand, int64_t n, int64_t cap, uint64_t seed, const char *name) {
  if (n <= cap) return n;
  int64_t *perm = calloc((size_t)n, sizeof(int64_t));
  uint8_t *take = calloc((size_t)n, 1);
  if (!perm || !take) {
    free(perm), free(take);
    return cap;
  }
  ps_rng r = ps_rng_make(seed, ps_rng_stream(PS_RNG_TILES, name_hash(name), 0, 0));
  ps_rng_permutation(&r, perm, n);
  for (int64_t i = 0; i < cap; i++) take[perm[i]] = 1;
  int64_t m = 0;
  for (int64_t i = 0; i < n; i++)
    if (take[i]) cand[m++] = cand[i];
  free(perm), free(take);
  return m;
}

#if PANSURV_HAVE_OPENSLIDE
// ARGB premultiplied -> RGB, transparent -> white.
static inline void argb_rgb(uint32_t px, double *rgb) {
  double a = (double)(px >> 24);
  if (a == 0) {
    rgb[0] = rgb[1] = rgb[2] = 255;
    return;
  }
  rgb[0] = ((px >> 16) & 0xFF) * 255.0 / a, rgb[1] = ((px >> 8) & 0xFF) * 255.0 / a, rgb[2] = (px & 0xFF) * 255.0 / a;
}

#define THUMB_MAX 1024 // tissue mask resolution (longest side)

static ps_status wsi_tiles(prep *s, const slide_ref *sl, int32_t slide_index, tile_store *ts, int64_t *dims,
                           double *mpp_out) {
  const ps_prep_options *o = s->o;
  openslide_t *os = openslide_open(sl->path);
  if (!os) PS_FAIL(PS_ERR_FORMAT, "%s: OpenSlide cannot open it (not a supported slide format)", sl->path);
  const char *err = openslide_get_error(os);
  if (err) {
    ps_status st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "%s: OpenSlide: %s", sl->path, err);
    openslide_close(os);
    return st;
  }
  int64_t w0, h0;
  openslide_get_level0_dimensions(os, &w0, &h0);
  const char *mp = openslide_get_property_value(os, OPENSLIDE_PROPERTY_NAME_MPP_X);
  double mpp = mp ? strtod(mp, NULL) : 0;
  if (!(mpp > 0)) { // generic TIFF: the resolution tags, when they describe a microscope (< 100 um/pixel)
    const char *xr = openslide_get_property_value(os, "tiff.XResolution");
    const char *unit = openslide_get_property_value(os, "tiff.ResolutionUnit");
    double r = xr ? strtod(xr, NULL) : 0;
    double um = unit && !strcmp(unit, "centimeter") ? 1e4 : unit && !strcmp(unit, "inch") ? 25400.0 : 0;
    if (r > 0 && um > 0 && um / r < 100) mpp = um / r;
  }
  if (o->mpp > 0) mpp = o->mpp;
  if (!(mpp > 0)) {
    openslide_close(os);
    PS_FAIL(PS_ERR_DATA, "%s: the slide records no microns per pixel (openslide.mpp-x); pass --mpp", sl->path);
  }
  dims[0] = w0, dims[1] = h0, *mpp_out = mpp;
  // thumbnail of the lowest-resolution level, streamed in strips and box-averaged to <= THUMB_MAX
  int32_t lv = openslide_get_level_count(os) - 1;
  int64_t lw, lh;
  openslide_get_level_dimensions(os, lv, &lw, &lh);
  double lds = openslide_get_level_downsample(os, lv);
  int64_t f = (lw > lh ? lw : lh) / THUMB_MAX + 1;
  int64_t tw = (lw + f - 1) / f, th = (lh + f - 1) / f;
  double *acc = calloc((size_t)(tw * th), sizeof(double));
  int32_t *cnt = calloc((size_t)(tw * th), sizeof(int32_t));
  uint32_t *strip = calloc((size_t)(lw * f), sizeof(uint32_t));
  ps_status st = acc && cnt && strip ? PS_OK : ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "thumbnail");
  for (int64_t y = 0; st == PS_OK && y < lh; y += f) {
    int64_t rows = lh - y < f ? lh - y : f;
    openslide_read_region(os, strip, 0, (int64_t)(y * lds), lv, lw, rows);
    if ((err = openslide_get_error(os))) st = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "%s: %s", sl->path, err);
    for (int64_t r = 0; st == PS_OK && r < rows; r++)
      for (int64_t x = 0; x < lw; x++) {
        double rgb[3];
        argb_rgb(strip[r * lw + x], rgb);
        double mx = fmax(rgb[0], fmax(rgb[1], rgb[2])), mn = fmin(rgb[0], fmin(rgb[1], rgb[2]));
        int64_t ti = (y / f) * tw + x / f;
        acc[ti] += mx > 0 ? (mx - mn) / mx * 255.0 : 0; // HSV saturation
        cnt[ti]++;
      }
  }
  free(strip);
  int64_t hist[256] = {0};
  uint8_t *mask = calloc((size_t)(tw * th), 1);
  if (st == PS_OK && !mask) st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "mask");
  for (int64_t i = 0; st == PS_OK && i < tw * th; i++) {
    int sv = cnt[i] ? (int)(acc[i] / cnt[i] + 0.5) : 0;
    acc[i] = sv > 255 ? 255 : sv;
    hist[(int)acc[i]]++;
  }
  // Otsu on saturation, floored so that a blank slide (glass only) yields no tissue
  int thr = ps_prep_otsu(hist);
  if (thr < 20) thr = 20;
  for (int64_t i = 0; st == PS_OK && i < tw * th; i++) mask[i] = acc[i] > thr;
  free(acc), free(cnt);
  // tile grid at target_mpp: a tile covers `side0` level-0 pixels
  double side0 = o->tile_size * o->target_mpp / mpp, thumb_px0 = lds * (double)f; // level-0 pixels per mask pixel
  int64_t nx = (int64_t)floor((double)w0 / side0), ny = (int64_t)floor((double)h0 / side0);
  int64_t *cand = st == PS_OK ? calloc((size_t)(nx * ny) + 1, sizeof(int64_t)) : NULL;
  int64_t nc = 0;
  for (int64_t gy = 0; cand && gy < ny; gy++)
    for (int64_t gx = 0; gx < nx; gx++) {
      int64_t x0 = (int64_t)(gx * side0 / thumb_px0), x1 = (int64_t)ceil((gx + 1) * side0 / thumb_px0);
      int64_t y0 = (int64_t)(gy * side0 / thumb_px0), y1 = (int64_t)ceil((gy + 1) * side0 / thumb_px0);
      if (x1 > tw) x1 = tw;
      if (y1 > th) y1 = th;
      int64_t in = 0, all = 0;
      for (int64_t y = y0; y < y1; y++)
        for (int64_t x = x0; x < x1; x++) in += mask[y * tw + x], all++;
      if (all && (double)in / (double)all >= o->min_tissue) cand[nc++] = gy * nx + gx;
    }
  free(mask);
  if (st == PS_OK && !cand) st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "tile grid");
  nc = st == PS_OK ? cap_candidates(cand, nc, o->max_tiles, o->seed, sl->name) : 0;
  // read each tile at the best level, resample to tile_size x tile_size (box filter)
  double ds = side0 / o->tile_size;
  int32_t bl = openslide_get_best_level_for_downsample(os, ds);
  double bds = openslide_get_level_downsample(os, bl);
  int64_t rs = (int64_t)ceil(side0 / bds) + 1;
  uint32_t *region = st == PS_OK ? calloc((size_t)(rs * rs), sizeof(uint32_t)) : NULL;
  int P = o->tile_size;
  uint8_t *tile = st == PS_OK ? calloc((size_t)P * P * 3, 1) : NULL;
  if (st == PS_OK && (!region || !tile)) st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "tile buffers");
  for (int64_t i = 0; st == PS_OK && i < nc; i++) {
    int64_t gx = cand[i] % nx, gy = cand[i] / nx;
    int64_t x0 = (int64_t)(gx * side0), y0 = (int64_t)(gy * side0);
    openslide_read_region(os, region, x0, y0, bl, rs, rs);
    if ((err = openslide_get_error(os))) {
      st = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "%s: %s", sl->path, err);
      break;
    }
    double scale = side0 / bds / P; // region pixels per output pixel
    for (int y = 0; y < P; y++)
      for (int x = 0; x < P; x++) {
        double sum[3] = {0}, n = 0;
        int64_t ya = (int64_t)(y * scale), yb = (int64_t)ceil((y + 1) * scale), xa = (int64_t)(x * scale),
                xb = (int64_t)ceil((x + 1) * scale);
        if (yb <= ya) yb = ya + 1;
        if (xb <= xa) xb = xa + 1;
        for (int64_t yy = ya; yy < yb && yy < rs; yy++)
          for (int64_t xx = xa; xx < xb && xx < rs; xx++) {
            double rgb[3];
            argb_rgb(region[yy * rs + xx], rgb);
            sum[0] += rgb[0], sum[1] += rgb[1], sum[2] += rgb[2], n++;
          }
        for (int ch = 0; ch < 3; ch++) tile[((size_t)y * P + x) * 3 + ch] = (uint8_t)(n ? sum[ch] / n + 0.5 : 255);
      }
    st = store_push(ts, tile, slide_index, (int32_t)x0, (int32_t)y0);
  }
  free(region), free(tile), free(cand);
  openslide_close(os);
  return st;
}
#endif

static ps_status clam_features(prep *s, const slide_ref *sl, int32_t slide_index, tile_store *ts, int64_t *feat_dim,
                               int64_t *dims, double *mpp_out) {
  if (!(s->o->mpp > 0))
    PS_FAIL(PS_ERR_CONFIG, "%s: CLAM feature files carry no microns per pixel; pass --mpp (of the slides they came "
            "from)", sl->path);
  hid_t f = H5Fopen(sl->path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) PS_FAIL(PS_ERR_FORMAT, "%s: not an HDF5 file", sl->path);
  hid_t df = H5Lexists(f, "features", H5P_DEFAULT) > 0 ? H5Dopen2(f, "features", H5P_DEFAULT) : -1;
  hid_t dc = H5Lexists(f, "coords", H5P_DEFAULT) > 0 ? H5Dopen2(f, "coords", H5P_DEFAULT) : -1;
  ps_status st = PS_OK;
  hsize_t fd[3] = {0}, cd[3] = {0};
  if (df < 0 || dc < 0)
    st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "%s: CLAM layout expects datasets 'features' (T x F) and "
                      "'coords' (T x 2)", sl->path);
  if (st == PS_OK) {
    hid_t a = H5Dget_space(df), b = H5Dget_space(dc);
    int na = H5Sget_simple_extent_dims(a, fd, NULL), nb = H5Sget_simple_extent_dims(b, cd, NULL);
    H5Sclose(a), H5Sclose(b);
    if (na == 3 && fd[0] == 1) fd[0] = fd[1], fd[1] = fd[2], na = 2; // (1, T, F) as some CLAM versions write
    if (na != 2 || nb != 2 || cd[1] != 2 || cd[0] != fd[0])
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "%s: features (%llu x %llu) and coords (%llu x %llu) do "
                        "not match the CLAM layout", sl->path, (unsigned long long)fd[0], (unsigned long long)fd[1],
                        (unsigned long long)cd[0], (unsigned long long)cd[1]);
  }
  if (st == PS_OK && *feat_dim && (int64_t)fd[1] != *feat_dim)
    st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: feature width %llu, other files have %lld", sl->path,
                      (unsigned long long)fd[1], (long long)*feat_dim);
  float *feat = st == PS_OK ? calloc((size_t)(fd[0] * fd[1]) + 1, sizeof(float)) : NULL;
  int64_t *co = st == PS_OK ? calloc((size_t)(cd[0] * 2) + 1, sizeof(int64_t)) : NULL;
  if (st == PS_OK && (!feat || !co)) st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "CLAM buffers");
  if (st == PS_OK && (H5Dread(df, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, feat) < 0 ||
                      H5Dread(dc, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, co) < 0))
    st = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "%s: cannot read features/coords", sl->path);
  int64_t mx = 0, my = 0;
  if (st == PS_OK) {
    *feat_dim = (int64_t)fd[1];
    ts->row = (size_t)fd[1] * sizeof(float);
    for (hsize_t i = 0; st == PS_OK && i < fd[0]; i++) {
      for (hsize_t j = 0; j < fd[1]; j++)
        if (!isfinite(feat[i * fd[1] + j]))
          st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: feature row %llu has NaN/Inf", sl->path,
                            (unsigned long long)i);
      if (st == PS_OK) st = store_push(ts, feat + i * fd[1], slide_index, (int32_t)co[2 * i], (int32_t)co[2 * i + 1]);
      mx = co[2 * i] > mx ? co[2 * i] : mx, my = co[2 * i + 1] > my ? co[2 * i + 1] : my;
    }
  }
  // CLAM files do not record the slide size: the extent of the coordinates stands in for it
  dims[0] = mx + 1, dims[1] = my + 1, *mpp_out = s->o->mpp;
  free(feat), free(co);
  if (df >= 0) H5Dclose(df);
  if (dc >= 0) H5Dclose(dc);
  H5Fclose(f);
  return st;
}

// ---- driver -----------------------------------------------------------------------------------------

ps_status ps_prep_run(const ps_prep_options *o, MPI_Comm comm, ps_prep_report *rep) {
  PS_REQUIRE(o->clinical && o->out, "prep: --clinical and --out are required");
  PS_REQUIRE(!(o->slides_dir && o->features_dir), "prep: give --slides or --features, not both");
  PS_REQUIRE(o->tile_size >= 8 && o->target_mpp > 0 && o->max_tiles >= 1 && o->min_tissue >= 0 && o->min_tissue <= 1,
             "prep: tile size >= 8, target mpp > 0, max tiles >= 1, min tissue in [0, 1]");
#if !PANSURV_HAVE_OPENSLIDE
  PS_REQUIRE(!o->slides_dir, "prep: this build has no OpenSlide (configure with PANSURV_OPENSLIDE=ON); use --features");
#endif
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  memset(rep, 0, sizeof *rep);
  prep s = {.o = o, .rep = rep};
  MPI_Comm_rank(comm, &s.rank);
  MPI_Comm_size(comm, &s.size);
  ps_status st = parse_clinical(&s);
  if (st == PS_OK && o->rnaseq) st = parse_rnaseq(&s);
  st = ps_data_agree(comm, st);
  slide_ref *slides = NULL;
  int64_t n_sl = 0;
  const char *dir = o->slides_dir ? o->slides_dir : o->features_dir;
  if (st == PS_OK && dir) st = ps_data_agree(comm, list_slides(&s, dir, o->features_dir != NULL, &slides, &n_sl));
  ps_cohort_data *d = &s.d;
  float *clin_full = d->clinical;
  d->clinical = NULL;
  int64_t n = s.n, first = n * s.rank / s.size, count = n * (s.rank + 1) / s.size - first;
  tile_store ts = {.row = (size_t)o->tile_size * o->tile_size * 3};
  int64_t *per_patient = calloc((size_t)n + 1, sizeof(int64_t)), *sdims = calloc((size_t)n_sl * 2 + 1, sizeof(int64_t));
  double *smpp = calloc((size_t)n_sl + 1, sizeof(double));
  int64_t feat_dim = 0;
  if (st == PS_OK && (!per_patient || !sdims || !smpp)) st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "prep");
  // slides of this rank's patients, in (patient, name) order
  for (int64_t k = 0; st == PS_OK && k < n_sl; k++) {
    if (slides[k].patient < first || slides[k].patient >= first + count) continue;
    int64_t before = ts.n;
#if PANSURV_HAVE_OPENSLIDE
    if (o->slides_dir) st = wsi_tiles(&s, &slides[k], (int32_t)k, &ts, sdims + 2 * k, &smpp[k]);
#endif
    if (o->features_dir) st = clam_features(&s, &slides[k], (int32_t)k, &ts, &feat_dim, sdims + 2 * k, &smpp[k]);
    per_patient[slides[k].patient] += ts.n - before;
  }
  st = ps_data_agree(comm, st);
  if (st == PS_OK) {
    MPI_Allreduce(MPI_IN_PLACE, per_patient, (int)n, MPI_INT64_T, MPI_SUM, comm);
    MPI_Allreduce(MPI_IN_PLACE, sdims, (int)(2 * n_sl), MPI_INT64_T, MPI_SUM, comm);
    MPI_Allreduce(MPI_IN_PLACE, smpp, (int)n_sl, MPI_DOUBLE, MPI_SUM, comm);
    int64_t fmin = feat_dim ? feat_dim : INT64_MAX, fmax = feat_dim;
    MPI_Allreduce(MPI_IN_PLACE, &fmin, 1, MPI_INT64_T, MPI_MIN, comm);
    MPI_Allreduce(MPI_IN_PLACE, &fmax, 1, MPI_INT64_T, MPI_MAX, comm);
    feat_dim = fmax;
    if (fmax && fmin != fmax)
      st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: CLAM feature widths differ between files (%lld and "
                        "%lld)", dir, (long long)fmin, (long long)fmax);
  }
  // the patient table now gets its slides; rebuild the cohort data with the right slide kind
  ps_cohort_data w = {0};
  ps_slides_kind kind = !dir ? PS_SLIDES_NONE : o->features_dir ? PS_SLIDES_FEATURES : PS_SLIDES_TILES;
  if (st == PS_OK && kind == PS_SLIDES_FEATURES && feat_dim == 0)
    st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: no CLAM feature file matched a patient", dir);
  if (st == PS_OK)
    st = ps_cohort_data_alloc(&w, n, s.g, d->c, kind, o->tile_size, feat_dim, n_sl, d->n_cohorts, d->n_sites, false);
  if (st == PS_OK) {
    memcpy(w.id, d->id, (size_t)n * PS_DATA_ID_LEN);
    memcpy(w.time, d->time, (size_t)n * sizeof(double));
    memcpy(w.event, d->event, (size_t)n);
    memcpy(w.cohort, d->cohort, (size_t)n * 4);
    memcpy(w.site, d->site, (size_t)n * 4);
    memcpy(w.cohort_names, d->cohort_names, (size_t)d->n_cohorts * PS_DATA_NAME_LEN);
    memcpy(w.site_names, d->site_names, (size_t)d->n_sites * PS_DATA_NAME_LEN);
    memcpy(w.clinical_names, d->clinical_names, (size_t)d->c * PS_DATA_NAME_LEN);
    memcpy(w.clinical_present, d->clinical_present, (size_t)n);
    if (s.g) memcpy(w.genes, s.genes, (size_t)s.g * PS_DATA_NAME_LEN);
    if (s.rna_present) memcpy(w.omics_present, s.rna_present, (size_t)n);
    for (int64_t p = 0; p < n; p++) w.offset[p + 1] = w.offset[p] + (kind == PS_SLIDES_NONE ? 0 : per_patient[p]);
    for (int64_t k = 0; k < n_sl; k++) {
      snprintf(w.slide_files[k], PS_DATA_NAME_LEN, "%s", slides[k].name);
      w.slide_dims[2 * k] = sdims[2 * k], w.slide_dims[2 * k + 1] = sdims[2 * k + 1], w.slide_mpp[k] = smpp[k];
    }
    st = ps_cohort_data_alloc_bulk(&w, first, count);
  }
  if (st == PS_OK) {
    if (s.g) memcpy(w.omics, s.rna + first * s.g, (size_t)(count * s.g) * sizeof(float));
    memcpy(w.clinical, clin_full + first * d->c, (size_t)(count * d->c) * sizeof(float));
    int64_t nt = kind == PS_SLIDES_NONE ? 0 : w.offset[first + count] - w.offset[first];
    if (nt != ts.n) st = ps_error_set(PS_ERR_INTERNAL, __FILE__, __LINE__, "prep: %lld tiles made, %lld expected",
                                      (long long)ts.n, (long long)nt);
    else if (nt) {
      memcpy(kind == PS_SLIDES_TILES ? (void *)w.tiles : (void *)w.features, ts.data, (size_t)nt * ts.row);
      memcpy(w.coords, ts.coords, (size_t)nt * 3 * sizeof(int32_t));
    }
  }
  st = ps_data_agree(comm, st);
  if (st == PS_OK) {
    rep->slides = n_sl;
    rep->tiles = w.t;
    st = ps_data_write(o->out, &w, comm);
  }
  if (w.id) ps_cohort_data_free(&w);
  free(clin_full), free(per_patient), free(sdims), free(smpp), free(slides), free(ts.data), free(ts.coords);
  ps_cohort_data_free(d);
  free(s.row_of), free(s.ids), free(s.rna), free(s.rna_present), free(s.genes);
  table_free(&s.clin);
  return st;
}
