// Full validation of a cohort file (pansurv check; the trainer runs it before training).
// Structure and types are checked when the file is opened; here come the values.
// Table checks run on every rank (the table is replicated); bulk checks are split by patient rows.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ps_data_internal.h"

#define FIRST_IDS 3 // offending ids named in a message
#define CHECK_BLOCK 256 // patients per read in the bulk checks

// Collects the first FIRST_IDS offending patients of one check.
typedef struct {
  int64_t count;
  int64_t first[FIRST_IDS];
} offenders;

static void off_init(offenders *o) {
  o->count = 0;
  for (int i = 0; i < FIRST_IDS; i++) o->first[i] = INT64_MAX;
}

static void off_add(offenders *o, int64_t p) {
  o->count++;
  for (int i = 0; i < FIRST_IDS; i++) {
    if (o->first[i] == p) return;
    if (p < o->first[i]) {
      for (int k = FIRST_IDS - 1; k > i; k--) o->first[k] = o->first[k - 1];
      o->first[i] = p;
      return;
    }
  }
}

// Writes "N patients ..., first: ID, ID" into buf.
static void off_ids(const offenders *o, const ps_patients *p, char *buf, size_t len) {
  size_t n = 0;
  for (int i = 0; i < FIRST_IDS && o->first[i] != INT64_MAX && n < len; i++)
    n += (size_t)snprintf(buf + n, len - n, "%s%.*s (row %lld)", i ? ", " : "", PS_DATA_ID_LEN, p->id[o->first[i]],
                          (long long)o->first[i]);
  if (n == 0) snprintf(buf, len, "(none)");
}

#define FAIL_OFF(status, o, p, fmt, ...)                                                           \
  do {                                                                                             \
    char ids_[512];                                                                                \
    off_ids(&(o), (p), ids_, sizeof ids_);                                                         \
    PS_FAIL(status, fmt "; %lld patient(s), first: %s", __VA_ARGS__, (long long)(o).count, ids_);   \
  } while (0)

typedef struct {
  const char *a, *b;
  int64_t i;
} id_ref;

static int cmp_id(const void *x, const void *y) {
  const id_ref *a = x, *b = y;
  int c = strncmp(a->a, b->a, PS_DATA_ID_LEN);
  return c ? c : (a->i < b->i ? -1 : a->i > b->i);
}

static ps_status check_table(ps_cohort *c) {
  const char *path = ps_cohort_path(c);
  const ps_cohort_info *in = ps_cohort_get_info(c);
  const ps_patients *p = ps_cohort_get_patients(c);
  offenders o;
  off_init(&o);
  for (int64_t i = 0; i < p->n; i++)
    if (!isfinite(p->time[i]) || p->time[i] < 0) off_add(&o, i);
  if (o.count) FAIL_OFF(PS_ERR_DATA, o, p, "%s: /patients/time must be finite and >= 0 (days)", path);
  for (int64_t i = 0; i < p->n; i++)
    if (p->event[i] > 1) off_add(&o, i);
  if (o.count) FAIL_OFF(PS_ERR_DATA, o, p, "%s: /patients/event must be 0 or 1", path);
  for (int64_t i = 0; i < p->n; i++)
    if (p->cohort[i] < 0 || p->cohort[i] >= in->n_cohorts) off_add(&o, i);
  if (o.count)
    FAIL_OFF(PS_ERR_DATA, o, p, "%s: /patients/cohort must index /patients/cohort_names [0, %d)", path, in->n_cohorts);
  for (int64_t i = 0; i < p->n; i++)
    if (p->site[i] < 0 || p->site[i] >= in->n_sites) off_add(&o, i);
  if (o.count)
    FAIL_OFF(PS_ERR_DATA, o, p, "%s: /patients/site must index /patients/site_names [0, %d)", path, in->n_sites);
  for (int64_t i = 0; i < p->n; i++)
    if (p->id[i][0] == '\0') off_add(&o, i);
  if (o.count) FAIL_OFF(PS_ERR_DATA, o, p, "%s: /patients/id must not be empty", path);
  for (int64_t i = 0; i < p->n; i++)
    if (p->present[i * PS_MOD_COUNT + PS_MOD_OMICS] > 1 || p->present[i * PS_MOD_COUNT + PS_MOD_CLINICAL] > 1)
      off_add(&o, i);
  if (o.count) FAIL_OFF(PS_ERR_DATA, o, p, "%s: /omics/present and /clinical/present must be 0 or 1", path);
  if (p->log_hazard) {
    for (int64_t i = 0; i < p->n; i++)
      if (!isfinite(p->log_hazard[i])) off_add(&o, i);
    if (o.count) FAIL_OFF(PS_ERR_DATA, o, p, "%s: /truth/log_hazard must be finite", path);
  }
  // unique ids
  id_ref *ref = ps_xcalloc((size_t)p->n, sizeof *ref);
  if (!ref) PS_FAIL(PS_ERR_MEM, "checking ids");
  for (int64_t i = 0; i < p->n; i++) ref[i] = (id_ref){p->id[i], NULL, i};
  qsort(ref, (size_t)p->n, sizeof *ref, cmp_id);
  for (int64_t i = 1; i < p->n; i++)
    if (!strncmp(ref[i].a, ref[i - 1].a, PS_DATA_ID_LEN)) off_add(&o, ref[i].i), off_add(&o, ref[i - 1].i);
  free(ref);
  if (o.count) FAIL_OFF(PS_ERR_DATA, o, p, "%s: /patients/id must be unique (duplicates found)", path);
  if (in->slides != PS_SLIDES_NONE) {
    if (p->offset[0] != 0)
      PS_FAIL(PS_ERR_DATA, "%s: /slides/offset[0] = %lld, must be 0", path, (long long)p->offset[0]);
    for (int64_t i = 0; i < p->n; i++)
      if (p->offset[i + 1] < p->offset[i] || p->offset[i + 1] > in->t) off_add(&o, i);
    if (o.count)
      FAIL_OFF(PS_ERR_DATA, o, p, "%s: /slides/offset must be non-decreasing and within [0, T = %lld]", path,
               (long long)in->t);
    if (p->offset[p->n] != in->t)
      PS_FAIL(PS_ERR_DATA, "%s: /slides/offset[N] = %lld, must equal the tile count T = %lld", path,
              (long long)p->offset[p->n], (long long)in->t);
  }
  return PS_OK;
}

enum { CK_OMICS_NONFINITE, CK_OMICS_ABSENT, CK_CLIN_INF, CK_FEAT, CK_COORD_SLIDE, CK_COORD_RANGE, CK_COUNT };

static ps_status read_slide_table(hid_t file, int64_t s, int64_t *dims, double *mpp) {
  hid_t d = H5Dopen2(file, "/slides/dims", H5P_DEFAULT);
  herr_t e = d < 0 ? -1 : H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, dims);
  if (d >= 0) H5Dclose(d);
  if (e < 0 && s > 0) PS_FAIL(PS_ERR_HDF5, "cannot read /slides/dims");
  d = H5Dopen2(file, "/slides/mpp", H5P_DEFAULT);
  e = d < 0 ? -1 : H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, mpp);
  if (d >= 0) H5Dclose(d);
  if (e < 0 && s > 0) PS_FAIL(PS_ERR_HDF5, "cannot read /slides/mpp");
  return PS_OK;
}

static ps_status check_bulk(ps_cohort *c, MPI_Comm comm, offenders *ck) {
  const ps_cohort_info *in = ps_cohort_get_info(c);
  const ps_patients *p = ps_cohort_get_patients(c);
  ps_h5_bulk *b = ps_cohort_bulk(c);
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int64_t lo = p->n * rank / size, hi = p->n * (rank + 1) / size;
  for (int k = 0; k < CK_COUNT; k++) off_init(&ck[k]);
  int64_t *rows = ps_xcalloc(CHECK_BLOCK, sizeof(int64_t));
  float *om = ps_xcalloc((size_t)(CHECK_BLOCK * (in->g > in->c ? in->g : in->c)), sizeof(float));
  int64_t *sdims = ps_xcalloc((size_t)in->s_slides * 2, sizeof(int64_t));
  double *mpp = ps_xcalloc((size_t)in->s_slides, sizeof(double));
  ps_status st = (rows && om && sdims && mpp) ? PS_OK : ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "check buffers");
  // omics and clinical, in blocks of consecutive rows
  for (int64_t r0 = lo; st == PS_OK && r0 < hi; r0 += CHECK_BLOCK) {
    int64_t n = hi - r0 < CHECK_BLOCK ? hi - r0 : CHECK_BLOCK;
    for (int64_t i = 0; i < n; i++) rows[i] = r0 + i;
    st = ps_cohort_read_omics(c, rows, n, om);
    for (int64_t i = 0; st == PS_OK && i < n; i++) {
      bool present = p->present[(r0 + i) * PS_MOD_COUNT + PS_MOD_OMICS];
      for (int64_t j = 0; j < in->g; j++) {
        float v = om[i * in->g + j];
        if (!isfinite(v)) {
          off_add(&ck[CK_OMICS_NONFINITE], r0 + i);
          break;
        }
        if (!present && v != 0.0f) {
          off_add(&ck[CK_OMICS_ABSENT], r0 + i);
          break;
        }
      }
    }
    if (st == PS_OK) st = ps_cohort_read_clinical(c, rows, n, om);
    for (int64_t i = 0; st == PS_OK && i < n; i++)
      for (int64_t j = 0; j < in->c; j++)
        if (isinf(om[i * in->c + j])) {
          off_add(&ck[CK_CLIN_INF], r0 + i);
          break;
        }
  }
  if (st == PS_OK && in->slides != PS_SLIDES_NONE) st = read_slide_table(b->file, in->s_slides, sdims, mpp);
  if (st == PS_OK && in->slides != PS_SLIDES_NONE) {
    hid_t dc = H5Dopen2(b->file, "/slides/coords", H5P_DEFAULT);
    int64_t t_lo = p->offset[lo], t_hi = p->offset[hi];
    int64_t fdim = in->slides == PS_SLIDES_FEATURES ? in->feat_dim : 0;
    float *feat = fdim ? ps_xcalloc((size_t)(CHECK_BLOCK * fdim), sizeof(float)) : NULL;
    int32_t *co = ps_xcalloc(CHECK_BLOCK * 3, sizeof(int32_t));
    if (dc < 0 || !co || (fdim && !feat)) st = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "cannot open /slides/coords");
    int64_t pat = lo; // patient owning tile t
    for (int64_t t0 = t_lo; st == PS_OK && t0 < t_hi; t0 += CHECK_BLOCK) {
      int64_t n = t_hi - t0 < CHECK_BLOCK ? t_hi - t0 : CHECK_BLOCK;
      for (int64_t i = 0; i < n; i++) rows[i] = t0 + i;
      st = ps_h5_read_rows(dc, b->dxpl, H5T_NATIVE_INT32, rows, n, 3, 2, co, "/slides/coords");
      if (st == PS_OK && fdim) st = ps_cohort_read_features(c, rows, n, feat);
      for (int64_t i = 0; st == PS_OK && i < n; i++) {
        while (p->offset[pat + 1] <= t0 + i) pat++;
        int32_t s = co[i * 3], x = co[i * 3 + 1], y = co[i * 3 + 2];
        if (s < 0 || s >= in->s_slides) off_add(&ck[CK_COORD_SLIDE], pat);
        else if (x < 0 || y < 0 || x >= sdims[s * 2] || y >= sdims[s * 2 + 1]) off_add(&ck[CK_COORD_RANGE], pat);
        for (int64_t j = 0; j < fdim; j++)
          if (!isfinite(feat[i * fdim + j])) {
            off_add(&ck[CK_FEAT], pat);
            break;
          }
      }
    }
    if (dc >= 0) H5Dclose(dc);
    free(feat);
    free(co);
  }
  if (st == PS_OK)
    for (int64_t s = 0; s < in->s_slides; s++)
      if (!(mpp[s] > 0) || !isfinite(mpp[s]) || sdims[2 * s] <= 0 || sdims[2 * s + 1] <= 0) {
        char name[PS_DATA_NAME_LEN + 1] = {0};
        st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "%s: /slides/mpp or /slides/dims of slide %lld is not "
                          "positive (mpp %g, %lld x %lld)%s", ps_cohort_path(c), (long long)s, mpp[s],
                          (long long)sdims[2 * s], (long long)sdims[2 * s + 1], name);
        break;
      }
  free(rows), free(om), free(sdims), free(mpp);
  return st;
}

static ps_status reduce_offenders(MPI_Comm comm, offenders *ck) {
  int size;
  MPI_Comm_size(comm, &size);
  int64_t cnt[CK_COUNT];
  for (int k = 0; k < CK_COUNT; k++) cnt[k] = ck[k].count;
  if (MPI_Allreduce(MPI_IN_PLACE, cnt, CK_COUNT, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS)
    PS_FAIL(PS_ERR_MPI, "reducing check counts");
  int64_t mine[CK_COUNT * FIRST_IDS];
  for (int k = 0; k < CK_COUNT; k++) memcpy(mine + k * FIRST_IDS, ck[k].first, sizeof ck[k].first);
  int64_t *all = ps_xcalloc((size_t)size * CK_COUNT * FIRST_IDS, sizeof(int64_t));
  if (!all) PS_FAIL(PS_ERR_MEM, "reducing check ids");
  if (MPI_Allgather(mine, CK_COUNT * FIRST_IDS, MPI_INT64_T, all, CK_COUNT * FIRST_IDS, MPI_INT64_T, comm) !=
      MPI_SUCCESS) {
    free(all);
    PS_FAIL(PS_ERR_MPI, "gathering check ids");
  }
  for (int k = 0; k < CK_COUNT; k++) {
    off_init(&ck[k]);
    for (int r = 0; r < size; r++)
      for (int i = 0; i < FIRST_IDS; i++)
        if (all[((size_t)r * CK_COUNT + k) * FIRST_IDS + i] != INT64_MAX)
          off_add(&ck[k], all[((size_t)r * CK_COUNT + k) * FIRST_IDS + i]);
    ck[k].count = cnt[k];
  }
  free(all);
  return PS_OK;
}

static ps_status bulk_verdict(const ps_cohort *c, const offenders *ck) {
  const char *path = ps_cohort_path(c);
  const ps_patients *p = ps_cohort_get_patients(c);
  if (ck[CK_OMICS_NONFINITE].count)
    FAIL_OFF(PS_ERR_DATA, ck[CK_OMICS_NONFINITE], p, "%s: /omics/rnaseq has NaN or Inf values", path);
  if (ck[CK_OMICS_ABSENT].count)
    FAIL_OFF(PS_ERR_DATA, ck[CK_OMICS_ABSENT], p, "%s: /omics/rnaseq rows of patients with /omics/present = 0 must be "
             "zero", path);
  if (ck[CK_CLIN_INF].count)
    FAIL_OFF(PS_ERR_DATA, ck[CK_CLIN_INF], p, "%s: /clinical/x has Inf values (NaN marks a missing value, Inf is not "
             "allowed)", path);
  if (ck[CK_FEAT].count) FAIL_OFF(PS_ERR_DATA, ck[CK_FEAT], p, "%s: /slides/features has NaN or Inf values", path);
  if (ck[CK_COORD_SLIDE].count)
    FAIL_OFF(PS_ERR_DATA, ck[CK_COORD_SLIDE], p, "%s: /slides/coords slide index outside /slides/files", path);
  if (ck[CK_COORD_RANGE].count)
    FAIL_OFF(PS_ERR_DATA, ck[CK_COORD_RANGE], p, "%s: /slides/coords x, y outside the slide's /slides/dims", path);
  return PS_OK;
}

static ps_status summarize(const ps_cohort *c, ps_data_summary *s) {
  const ps_cohort_info *in = ps_cohort_get_info(c);
  const ps_patients *p = ps_cohort_get_patients(c);
  memset(s, 0, sizeof *s);
  s->info = *in;
  s->per_cohort = ps_xcalloc((size_t)in->n_cohorts, sizeof(int64_t));
  s->per_cohort_events = ps_xcalloc((size_t)in->n_cohorts, sizeof(int64_t));
  s->per_site = ps_xcalloc((size_t)in->n_sites, sizeof(int64_t));
  s->cohort_names = ps_xcalloc((size_t)in->n_cohorts, PS_DATA_NAME_LEN);
  s->site_names = ps_xcalloc((size_t)in->n_sites, PS_DATA_NAME_LEN);
  if (!s->per_cohort || !s->per_site || !s->per_cohort_events || !s->cohort_names || !s->site_names) {
    ps_data_summary_free(s);
    PS_FAIL(PS_ERR_MEM, "summary");
  }
  memcpy(s->cohort_names, p->cohort_names, (size_t)in->n_cohorts * PS_DATA_NAME_LEN);
  memcpy(s->site_names, p->site_names, (size_t)in->n_sites * PS_DATA_NAME_LEN);
  for (int64_t i = 0; i < p->n; i++) {
    s->events += p->event[i];
    s->per_cohort[p->cohort[i]]++;
    s->per_cohort_events[p->cohort[i]] += p->event[i];
    s->per_site[p->site[i]]++;
    for (int m = 0; m < PS_MOD_COUNT; m++) s->present[m] += p->present[i * PS_MOD_COUNT + m] != 0;
  }
  s->censoring_rate = p->n ? 1.0 - (double)s->events / (double)p->n : 0;
  return PS_OK;
}

ps_status ps_data_validate(const char *path, MPI_Comm comm, ps_data_summary *summary) {
  ps_cohort *c;
  PS_TRY(ps_cohort_open(&c, path, comm));
  // table checks give the same verdict on every rank (same data)
  ps_status st = ps_data_agree(comm, check_table(c));
  offenders ck[CK_COUNT];
  if (st == PS_OK) st = ps_data_agree(comm, check_bulk(c, comm, ck));
  if (st == PS_OK) st = reduce_offenders(comm, ck);
  if (st == PS_OK) st = bulk_verdict(c, ck);
  if (st == PS_OK && summary) st = summarize(c, summary);
  ps_cohort_close(c);
  return st;
}

void ps_data_summary_free(ps_data_summary *s) {
  if (!s) return;
  free(s->per_cohort), free(s->per_site), free(s->per_cohort_events), free(s->cohort_names), free(s->site_names);
  s->per_cohort = s->per_site = s->per_cohort_events = NULL;
  s->cohort_names = s->site_names = NULL;
}
