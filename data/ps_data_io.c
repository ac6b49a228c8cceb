// Cohort file format 1: writer and reader (parallel HDF5 through MPI-IO).
// Layout: docs/data-format.md.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "ps_data_internal.h"

static const char *const modality_names[] = {"omics", "clinical", "slides"};
_Static_assert(sizeof modality_names / sizeof modality_names[0] == PS_MOD_COUNT, "modality_names");
const char *ps_modality_name(ps_modality m) { return (m >= 0 && m < PS_MOD_COUNT) ? modality_names[m] : "?"; }

static const char *const slides_kind_names[] = {"none", "tiles", "features"};
_Static_assert(sizeof slides_kind_names / sizeof slides_kind_names[0] == PS_SLIDES_KIND_COUNT, "slides_kind_names");
const char *ps_slides_kind_name(ps_slides_kind k) {
  return (k >= 0 && k < PS_SLIDES_KIND_COUNT) ? slides_kind_names[k] : "?";
}

ps_status ps_data_agree(MPI_Comm comm, ps_status local) {
  int l = (int)local, g = l;
  if (MPI_Allreduce(&l, &g, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
    PS_FAIL(PS_ERR_MPI, "MPI_Allreduce of the status failed");
  if (g != PS_OK && l == PS_OK) {
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    return ps_error_set((ps_status)g, __FILE__, __LINE__, "another rank failed (%s); rank %d was fine",
                        ps_status_name((ps_status)g), rank);
  }
  return (ps_status)g;
}

hid_t ps_h5_str_type(size_t len) {
  hid_t t = H5Tcopy(H5T_C_S1);
  if (t < 0) return t;
  H5Tset_size(t, len);
  H5Tset_strpad(t, H5T_STR_NULLPAD);
  return t;
}

uint32_t ps_data_crc32(const void *buf, size_t len) {
  const uint8_t *p = buf;
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < len; i++) {
    crc ^= p[i];
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// ---- in-memory cohort -------------------------------------------------------

ps_status ps_cohort_data_alloc(ps_cohort_data *d, int64_t n, int64_t g, int64_t c, ps_slides_kind slides,
                               int tile_size, int64_t feat_dim, int64_t s_slides, int n_cohorts, int n_sites,
                               bool truth) {
  PS_REQUIRE(n >= 0 && g >= 0 && c >= 0 && s_slides >= 0 && n_cohorts >= 1 && n_sites >= 1,
             "cohort sizes must be non-negative (N=%lld G=%lld C=%lld) with >= 1 cohort and site", (long long)n,
             (long long)g, (long long)c);
  PS_REQUIRE(slides != PS_SLIDES_TILES || tile_size > 0, "tiles need a tile size > 0");
  PS_REQUIRE(slides != PS_SLIDES_FEATURES || feat_dim > 0, "features need a width > 0");
  memset(d, 0, sizeof *d);
  d->n = n, d->g = g, d->c = c, d->s_slides = s_slides;
  d->n_cohorts = n_cohorts, d->n_sites = n_sites, d->slides = slides, d->tile_size = tile_size,
  d->feat_dim = feat_dim;
  d->id = ps_xcalloc((size_t)n, PS_DATA_ID_LEN);
  d->time = ps_xcalloc((size_t)n, sizeof(double));
  d->event = ps_xcalloc((size_t)n, 1);
  d->cohort = ps_xcalloc((size_t)n, sizeof(int32_t));
  d->site = ps_xcalloc((size_t)n, sizeof(int32_t));
  d->cohort_names = ps_xcalloc((size_t)n_cohorts, PS_DATA_NAME_LEN);
  d->site_names = ps_xcalloc((size_t)n_sites, PS_DATA_NAME_LEN);
  d->genes = ps_xcalloc((size_t)g, PS_DATA_NAME_LEN);
  d->omics_present = ps_xcalloc((size_t)n, 1);
  d->clinical_names = ps_xcalloc((size_t)c, PS_DATA_NAME_LEN);
  d->clinical_present = ps_xcalloc((size_t)n, 1);
  d->offset = ps_xcalloc((size_t)n + 1, sizeof(int64_t));
  d->slide_files = ps_xcalloc((size_t)s_slides, PS_DATA_NAME_LEN);
  d->slide_dims = ps_xcalloc((size_t)s_slides * 2, sizeof(int64_t));
  d->slide_mpp = ps_xcalloc((size_t)s_slides, sizeof(double));
  if (truth) d->log_hazard = ps_xcalloc((size_t)n, sizeof(double));
  bool ok = d->id && d->time && d->event && d->cohort && d->site && d->cohort_names && d->site_names && d->genes &&
            d->omics_present && d->clinical_names && d->clinical_present && d->offset && d->slide_files &&
            d->slide_dims && d->slide_mpp && (!truth || d->log_hazard);
  if (!ok) {
    ps_cohort_data_free(d);
    PS_FAIL(PS_ERR_MEM, "cannot allocate a patient table of N=%lld", (long long)n);
  }
  return PS_OK;
}

ps_status ps_cohort_data_alloc_bulk(ps_cohort_data *d, int64_t first, int64_t count) {
  PS_REQUIRE(first >= 0 && count >= 0 && first + count <= d->n, "bulk rows [%lld, %lld) outside N = %lld",
             (long long)first, (long long)(first + count), (long long)d->n);
  d->t = d->slides == PS_SLIDES_NONE ? 0 : d->offset[d->n];
  for (int64_t p = 0; p < d->n; p++)
    PS_REQUIRE(d->offset[p + 1] >= d->offset[p], "offsets must be monotone (patient %lld)", (long long)p);
  d->bulk_first = first, d->bulk_count = count;
  d->bulk_t0 = d->slides == PS_SLIDES_NONE ? 0 : d->offset[first];
  int64_t nt = d->slides == PS_SLIDES_NONE ? 0 : d->offset[first + count] - d->bulk_t0;
  d->omics = ps_xcalloc((size_t)(count * d->g), sizeof(float));
  d->clinical = ps_xcalloc((size_t)(count * d->c), sizeof(float));
  d->coords = ps_xcalloc((size_t)nt * 3, sizeof(int32_t));
  size_t s = (size_t)d->tile_size;
  if (d->slides == PS_SLIDES_TILES) d->tiles = ps_xcalloc((size_t)nt * s * s * 3, 1);
  if (d->slides == PS_SLIDES_FEATURES) d->features = ps_xcalloc((size_t)(nt * d->feat_dim), sizeof(float));
  if (!d->omics || !d->clinical || !d->coords || (d->slides == PS_SLIDES_TILES && !d->tiles) ||
      (d->slides == PS_SLIDES_FEATURES && !d->features))
    PS_FAIL(PS_ERR_MEM, "cannot allocate bulk rows for %lld patients, %lld tiles", (long long)count, (long long)nt);
  return PS_OK;
}

void ps_cohort_data_free(ps_cohort_data *d) {
  if (!d) return;
  void *ptrs[] = {d->id,       d->time,          d->event,    d->cohort,         d->site,        d->cohort_names,
                  d->site_names, d->omics,       d->genes,    d->omics_present,  d->clinical,    d->clinical_names,
                  d->clinical_present, d->tiles, d->features, d->offset,         d->coords,      d->slide_files,
                  d->slide_dims, d->slide_mpp,   d->log_hazard};
  for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
  memset(d, 0, sizeof *d);
}

// ---- writer -----------------------------------------------------------------

typedef struct {
  hid_t file, dxpl_coll;
  int rank;
} writer;

// Creates `name` with dims (rows, rest...) and writes rows [first, first+count) from buf (which points at
// row `first`). Collective: every rank calls it, count may be 0.
static ps_status write_rows(writer *w, const char *name, hid_t ftype, hid_t mtype, int ndim, const hsize_t *dims,
                            hsize_t chunk_rows, int64_t first, int64_t count, const void *buf) {
  hsize_t row_elems = 1;
  for (int i = 1; i < ndim; i++) row_elems *= dims[i];
  hid_t space = H5Screate_simple(ndim, dims, NULL);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (dims[0] > 0 && row_elems > 0 && chunk_rows > 0) {
    hsize_t chunk[4];
    chunk[0] = chunk_rows < dims[0] ? chunk_rows : dims[0];
    for (int i = 1; i < ndim; i++) chunk[i] = dims[i];
    H5Pset_chunk(dcpl, ndim, chunk);
    H5Pset_fletcher32(dcpl); // every chunk carries a checksum that HDF5 verifies on read
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
  }
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t dset = H5Dcreate2(w->file, name, ftype, space, lcpl, dcpl, H5P_DEFAULT);
  H5Pclose(lcpl);
  H5Pclose(dcpl);
  if (dset < 0) {
    H5Sclose(space);
    PS_FAIL(PS_ERR_HDF5, "cannot create dataset %s", name);
  }
  if (dims[0] == 0 || row_elems == 0) { // nothing to write (e.g. no genes); same decision on every rank
    H5Sclose(space);
    H5Dclose(dset);
    return PS_OK;
  }
  hsize_t start[4] = {0}, cnt[4];
  start[0] = (hsize_t)first;
  cnt[0] = (hsize_t)count;
  for (int i = 1; i < ndim; i++) cnt[i] = dims[i];
  hid_t mspace;
  if (count > 0 && row_elems > 0) {
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, cnt, NULL);
    mspace = H5Screate_simple(ndim, cnt, NULL);
  } else {
    H5Sselect_none(space);
    hsize_t one = 1;
    mspace = H5Screate_simple(1, &one, NULL);
    H5Sselect_none(mspace);
  }
  herr_t e = H5Dwrite(dset, mtype, mspace, space, w->dxpl_coll, buf ? buf : (const void *)&e);
  H5Sclose(mspace);
  H5Sclose(space);
  H5Dclose(dset);
  if (e < 0) PS_FAIL(PS_ERR_HDF5, "cannot write dataset %s rows [%lld, %lld)", name, (long long)first,
                     (long long)(first + count));
  return PS_OK;
}

// Whole small dataset written by rank 0.
static ps_status write_all0(writer *w, const char *name, hid_t ftype, hid_t mtype, int ndim, const hsize_t *dims,
                            const void *buf) {
  return write_rows(w, name, ftype, mtype, ndim, dims, 0, 0, w->rank == 0 ? (int64_t)dims[0] : 0, buf);
}

static ps_status write_body(writer *w, const ps_cohort_data *d) {
  int64_t first = d->bulk_first, count = d->bulk_count;
  hid_t sid = ps_h5_str_type(PS_DATA_ID_LEN), sname = ps_h5_str_type(PS_DATA_NAME_LEN);
  hsize_t n = (hsize_t)d->n;
  ps_status st = PS_OK;
#define W(expr)                                                                                    \
  do {                                                                                             \
    st = (expr);                                                                                   \
    if (st != PS_OK) goto done;                                                                    \
  } while (0)
  // root attribute
  {
    hid_t as = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(w->file, "pansurv_format", H5T_STD_I32LE, as, H5P_DEFAULT, H5P_DEFAULT);
    int v = PS_DATA_FORMAT;
    herr_t e = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT, &v);
    if (a >= 0) H5Aclose(a);
    H5Sclose(as);
    if (e < 0) {
      st = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "cannot write root attribute pansurv_format");
      goto done;
    }
  }
  W(write_all0(w, "/patients/id", sid, sid, 1, &n, d->id));
  W(write_all0(w, "/patients/time", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &n, d->time));
  W(write_all0(w, "/patients/event", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, &n, d->event));
  W(write_all0(w, "/patients/cohort", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &n, d->cohort));
  W(write_all0(w, "/patients/site", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &n, d->site));
  hsize_t nc = (hsize_t)d->n_cohorts, ns = (hsize_t)d->n_sites;
  W(write_all0(w, "/patients/cohort_names", sname, sname, 1, &nc, d->cohort_names));
  W(write_all0(w, "/patients/site_names", sname, sname, 1, &ns, d->site_names));
  // omics: chunks of whole rows
  hsize_t om[2] = {n, (hsize_t)d->g};
  // ~64 KiB of whole rows: a random patient row costs one small chunk read, not a large one
  hsize_t om_chunk = d->g > 0 ? (hsize_t)(1 << 14) / (hsize_t)d->g : 1;
  if (om_chunk < 1) om_chunk = 1;
  W(write_rows(w, "/omics/rnaseq", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, om, om_chunk, first, count,
               d->omics));
  hsize_t g = (hsize_t)d->g;
  W(write_all0(w, "/omics/genes", sname, sname, 1, &g, d->genes));
  W(write_all0(w, "/omics/present", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, &n, d->omics_present));
  hsize_t cl[2] = {n, (hsize_t)d->c};
  hsize_t cl_chunk = d->c > 0 ? (hsize_t)(1 << 14) / (hsize_t)d->c : 1;
  if (cl_chunk < 1) cl_chunk = 1;
  W(write_rows(w, "/clinical/x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, cl, cl_chunk, first, count,
               d->clinical));
  hsize_t c = (hsize_t)d->c;
  W(write_all0(w, "/clinical/names", sname, sname, 1, &c, d->clinical_names));
  W(write_all0(w, "/clinical/present", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, &n, d->clinical_present));
  if (d->slides != PS_SLIDES_NONE) {
    int64_t t0 = d->offset[first], t1 = d->offset[first + count];
    hsize_t t = (hsize_t)d->t;
    if (d->slides == PS_SLIDES_TILES) {
      hsize_t s = (hsize_t)d->tile_size;
      hsize_t dims[4] = {t, s, s, 3};
      W(write_rows(w, "/slides/tiles", H5T_STD_U8LE, H5T_NATIVE_UINT8, 4, dims, 1, t0, t1 - t0,
                   d->tiles));
    } else {
      hsize_t dims[2] = {t, (hsize_t)d->feat_dim};
      hsize_t ch = (hsize_t)(1 << 16) / (hsize_t)d->feat_dim;
      W(write_rows(w, "/slides/features", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dims, ch < 1 ? 1 : ch, t0, t1 - t0,
                   d->features));
    }
    hsize_t n1 = n + 1, cd[2] = {t, 3}, ss = (hsize_t)d->s_slides, sd[2] = {ss, 2};
    W(write_all0(w, "/slides/offset", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &n1, d->offset));
    W(write_rows(w, "/slides/coords", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, cd, 4096, t0, t1 - t0, d->coords));
    W(write_all0(w, "/slides/files", sname, sname, 1, &ss, d->slide_files));
    W(write_all0(w, "/slides/dims", H5T_STD_I64LE, H5T_NATIVE_INT64, 2, sd, d->slide_dims));
    W(write_all0(w, "/slides/mpp", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &ss, d->slide_mpp));
  }
  if (d->log_hazard) W(write_all0(w, "/truth/log_hazard", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &n, d->log_hazard));
#undef W
done:
  H5Tclose(sid);
  H5Tclose(sname);
  return st;
}

ps_status ps_data_write(const char *path, const ps_cohort_data *d, MPI_Comm comm) {
  PS_REQUIRE(path && d, "ps_data_write: path and data are required");
  int64_t rows = d->bulk_count, total = 0;
  MPI_Allreduce(&rows, &total, 1, MPI_INT64_T, MPI_SUM, comm);
  PS_REQUIRE(total == d->n && d->omics && d->clinical,
             "ps_data_write: the ranks' bulk rows (%lld in all) must cover the N = %lld patients exactly once",
             (long long)total, (long long)d->n);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) PS_FAIL(PS_ERR_ARG, "path too long: %s", path);
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
  H5Pset_all_coll_metadata_ops(fapl, 1);
  H5Pset_coll_metadata_write(fapl, 1);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
  hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  ps_status st = file < 0 ? ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "cannot create %s (directory writable? "
                                         "on a file system without locking set HDF5_USE_FILE_LOCKING=FALSE)", tmp)
                          : PS_OK;
  st = ps_data_agree(comm, st);
  if (st != PS_OK) {
    if (file >= 0) H5Fclose(file);
    return st;
  }
  writer w = {.file = file, .dxpl_coll = H5Pcreate(H5P_DATASET_XFER), .rank = rank};
  H5Pset_dxpl_mpio(w.dxpl_coll, H5FD_MPIO_COLLECTIVE);
  // Every rank must issue the same sequence of collective creates/writes, so a local failure
  // (HDF5 errors are collective here) is agreed at the end.
  st = write_body(&w, d);
  H5Pclose(w.dxpl_coll);
  if (H5Fclose(file) < 0 && st == PS_OK) st = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "closing %s", tmp);
  st = ps_data_agree(comm, st);
  if (rank == 0) {
    if (st == PS_OK && rename(tmp, path) != 0)
      st = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (st != PS_OK) remove(tmp);
  }
  return ps_data_agree(comm, st);
}

// ---- reader -----------------------------------------------------------------

struct ps_cohort {
  char path[4096];
  MPI_Comm comm;
  hid_t file;
  ps_cohort_info info;
  ps_patients p;
  char (*genes)[PS_DATA_NAME_LEN];
  char (*clin_names)[PS_DATA_NAME_LEN];
  ps_h5_bulk bulk;
};

typedef enum { K_INT, K_FLOAT, K_STR } kind;

// Opens dataset `name`, checks class/size and rank, returns dims. Missing datasets fail with a clear message.
static ps_status open_checked(hid_t file, const char *path, const char *name, kind k, size_t size, int ndim,
                              hsize_t *dims, hid_t *out) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0)
    PS_FAIL(PS_ERR_FORMAT, "%s: required dataset %s is missing", path, name);
  hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
  if (d < 0) PS_FAIL(PS_ERR_FORMAT, "%s: %s is not a dataset", path, name);
  hid_t t = H5Dget_type(d), s = H5Dget_space(d);
  H5T_class_t cls = H5Tget_class(t);
  size_t sz = H5Tget_size(t);
  int nd = H5Sget_simple_extent_ndims(s);
  bool var = cls == H5T_STRING && H5Tis_variable_str(t) > 0;
  if (nd == ndim) H5Sget_simple_extent_dims(s, dims, NULL);
  H5Tclose(t);
  H5Sclose(s);
  const char *want = k == K_INT ? "integer" : k == K_FLOAT ? "float" : "fixed-length string";
  bool ok_cls = (k == K_INT && cls == H5T_INTEGER) || (k == K_FLOAT && cls == H5T_FLOAT) ||
                (k == K_STR && cls == H5T_STRING && !var);
  if (!ok_cls || (size && sz != size)) {
    H5Dclose(d);
    if (size)
      PS_FAIL(PS_ERR_FORMAT, "%s: %s has the wrong type (class %d, %zu bytes): expected %s of %zu bytes", path, name,
              (int)cls, sz, want, size);
    PS_FAIL(PS_ERR_FORMAT, "%s: %s has the wrong type (class %d%s): expected %s", path, name, (int)cls,
            var ? ", variable-length" : "", want);
  }
  if (nd != ndim) {
    H5Dclose(d);
    PS_FAIL(PS_ERR_FORMAT, "%s: %s has %d dimensions, expected %d", path, name, nd, ndim);
  }
  *out = d;
  return PS_OK;
}

static ps_status read_whole(hid_t d, hid_t mtype, void *buf, const char *name) {
  herr_t e = H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
  H5Dclose(d);
  if (e < 0) PS_FAIL(PS_ERR_HDF5, "cannot read %s", name);
  return PS_OK;
}

// Checks one 1-D dataset of length `n` and reads it (buf may be NULL: check only).
static ps_status read_vec(ps_cohort *c, const char *name, kind k, size_t size, hsize_t n, hid_t mtype, void *buf) {
  hsize_t dims[4];
  hid_t d = -1;
  PS_TRY(open_checked(c->file, c->path, name, k, size, 1, dims, &d));
  if (dims[0] != n) {
    H5Dclose(d);
    PS_FAIL(PS_ERR_FORMAT, "%s: %s has %llu entries, expected %llu", c->path, name, (unsigned long long)dims[0],
            (unsigned long long)n);
  }
  if (!buf) {
    H5Dclose(d);
    return PS_OK;
  }
  return read_whole(d, mtype, buf, name);
}

static hsize_t vec_len(ps_cohort *c, const char *name, kind k, ps_status *st) {
  hsize_t dims[4] = {0};
  hid_t d = -1;
  *st = open_checked(c->file, c->path, name, k, 0, 1, dims, &d);
  if (*st == PS_OK) H5Dclose(d);
  return dims[0];
}

static ps_status read_structure(ps_cohort *c) {
  ps_cohort_info *in = &c->info;
  // format attribute
  if (H5Aexists(c->file, "pansurv_format") <= 0)
    PS_FAIL(PS_ERR_FORMAT, "%s: no root attribute pansurv_format: not a pansurv cohort file (make one with "
            "'pansurv prep' or 'pansurv sim')", c->path);
  hid_t a = H5Aopen(c->file, "pansurv_format", H5P_DEFAULT);
  int v = -1;
  if (a < 0 || H5Aread(a, H5T_NATIVE_INT, &v) < 0) {
    if (a >= 0) H5Aclose(a);
    PS_FAIL(PS_ERR_FORMAT, "%s: root attribute pansurv_format is unreadable (expected an integer)", c->path);
  }
  H5Aclose(a);
  if (v != PS_DATA_FORMAT)
    PS_FAIL(PS_ERR_FORMAT, "%s: pansurv_format = %d, this build reads format %d (re-create the file with this "
            "version's 'pansurv prep' or use the matching pansurv release)", c->path, v, PS_DATA_FORMAT);
  ps_status st;
  hsize_t n = vec_len(c, "/patients/id", K_STR, &st);
  PS_TRY(st);
  in->n = (int64_t)n;
  hsize_t nc = vec_len(c, "/patients/cohort_names", K_STR, &st);
  PS_TRY(st);
  hsize_t ns = vec_len(c, "/patients/site_names", K_STR, &st);
  PS_TRY(st);
  in->n_cohorts = (int)nc, in->n_sites = (int)ns;
  hsize_t dims[4];
  hid_t d = -1;
  PS_TRY(open_checked(c->file, c->path, "/omics/rnaseq", K_FLOAT, 4, 2, dims, &d));
  H5Dclose(d);
  if (dims[0] != n)
    PS_FAIL(PS_ERR_FORMAT, "%s: /omics/rnaseq has %llu rows, expected N = %llu (one per patient)", c->path,
            (unsigned long long)dims[0], (unsigned long long)n);
  in->g = (int64_t)dims[1];
  PS_TRY(open_checked(c->file, c->path, "/clinical/x", K_FLOAT, 4, 2, dims, &d));
  H5Dclose(d);
  if (dims[0] != n)
    PS_FAIL(PS_ERR_FORMAT, "%s: /clinical/x has %llu rows, expected N = %llu", c->path, (unsigned long long)dims[0],
            (unsigned long long)n);
  in->c = (int64_t)dims[1];
  in->slides = PS_SLIDES_NONE;
  bool has_tiles = H5Lexists(c->file, "/slides", H5P_DEFAULT) > 0 && H5Lexists(c->file, "/slides/tiles", H5P_DEFAULT) > 0;
  bool has_feat = H5Lexists(c->file, "/slides", H5P_DEFAULT) > 0 &&
                  H5Lexists(c->file, "/slides/features", H5P_DEFAULT) > 0;
  if (has_tiles && has_feat)
    PS_FAIL(PS_ERR_FORMAT, "%s: both /slides/tiles and /slides/features exist; a file holds one of them", c->path);
  if (has_tiles) {
    PS_TRY(open_checked(c->file, c->path, "/slides/tiles", K_INT, 1, 4, dims, &d));
    H5Dclose(d);
    if (dims[1] != dims[2] || dims[3] != 3 || dims[1] == 0)
      PS_FAIL(PS_ERR_FORMAT, "%s: /slides/tiles has shape (%llu, %llu, %llu, %llu), expected (T, S, S, 3)", c->path,
              (unsigned long long)dims[0], (unsigned long long)dims[1], (unsigned long long)dims[2],
              (unsigned long long)dims[3]);
    in->slides = PS_SLIDES_TILES, in->t = (int64_t)dims[0], in->tile_size = (int)dims[1];
  } else if (has_feat) {
    PS_TRY(open_checked(c->file, c->path, "/slides/features", K_FLOAT, 4, 2, dims, &d));
    H5Dclose(d);
    in->slides = PS_SLIDES_FEATURES, in->t = (int64_t)dims[0], in->feat_dim = (int64_t)dims[1];
  }
  if (in->slides != PS_SLIDES_NONE) {
    PS_TRY(open_checked(c->file, c->path, "/slides/coords", K_INT, 4, 2, dims, &d));
    H5Dclose(d);
    if (dims[0] != (hsize_t)in->t || dims[1] != 3)
      PS_FAIL(PS_ERR_FORMAT, "%s: /slides/coords has shape (%llu, %llu), expected (T = %lld, 3)", c->path,
              (unsigned long long)dims[0], (unsigned long long)dims[1], (long long)in->t);
    in->s_slides = (int64_t)vec_len(c, "/slides/files", K_STR, &st);
    PS_TRY(st);
    PS_TRY(open_checked(c->file, c->path, "/slides/dims", K_INT, 8, 2, dims, &d));
    H5Dclose(d);
    if (dims[0] != (hsize_t)in->s_slides || dims[1] != 2)
      PS_FAIL(PS_ERR_FORMAT, "%s: /slides/dims has shape (%llu, %llu), expected (%lld slides, 2)", c->path,
              (unsigned long long)dims[0], (unsigned long long)dims[1], (long long)in->s_slides);
    PS_TRY(read_vec(c, "/slides/mpp", K_FLOAT, 8, (hsize_t)in->s_slides, 0, NULL));
  }
  in->has_truth = H5Lexists(c->file, "/truth", H5P_DEFAULT) > 0 &&
                  H5Lexists(c->file, "/truth/log_hazard", H5P_DEFAULT) > 0;
  return PS_OK;
}

static ps_status read_table(ps_cohort *c) {
  const ps_cohort_info *in = &c->info;
  ps_patients *p = &c->p;
  hsize_t n = (hsize_t)in->n;
  p->n = in->n;
  p->id = ps_xcalloc(n, PS_DATA_ID_LEN);
  p->time = ps_xcalloc(n, sizeof(double));
  p->event = ps_xcalloc(n, 1);
  p->cohort = ps_xcalloc(n, sizeof(int32_t));
  p->site = ps_xcalloc(n, sizeof(int32_t));
  p->present = ps_xcalloc(n * PS_MOD_COUNT, 1);
  p->offset = ps_xcalloc(n + 1, sizeof(int64_t));
  p->cohort_names = ps_xcalloc((size_t)in->n_cohorts, PS_DATA_NAME_LEN);
  p->site_names = ps_xcalloc((size_t)in->n_sites, PS_DATA_NAME_LEN);
  c->genes = ps_xcalloc((size_t)in->g, PS_DATA_NAME_LEN);
  c->clin_names = ps_xcalloc((size_t)in->c, PS_DATA_NAME_LEN);
  uint8_t *tmp = ps_xcalloc(n, 1);
  if (in->has_truth) p->log_hazard = ps_xcalloc(n, sizeof(double));
  if (!p->id || !p->time || !p->event || !p->cohort || !p->site || !p->present || !p->offset || !p->cohort_names ||
      !p->site_names || !c->genes || !c->clin_names || !tmp || (in->has_truth && !p->log_hazard)) {
    free(tmp);
    PS_FAIL(PS_ERR_MEM, "%s: cannot allocate the patient table (N = %lld)", c->path, (long long)in->n);
  }
  hid_t sid = ps_h5_str_type(PS_DATA_ID_LEN), sname = ps_h5_str_type(PS_DATA_NAME_LEN);
  ps_status st = PS_OK;
#define R(expr)                                                                                    \
  do {                                                                                             \
    if (st == PS_OK) st = (expr);                                                                  \
  } while (0)
  R(read_vec(c, "/patients/id", K_STR, 0, n, sid, p->id));
  R(read_vec(c, "/patients/time", K_FLOAT, 8, n, H5T_NATIVE_DOUBLE, p->time));
  R(read_vec(c, "/patients/event", K_INT, 1, n, H5T_NATIVE_UINT8, p->event));
  R(read_vec(c, "/patients/cohort", K_INT, 4, n, H5T_NATIVE_INT32, p->cohort));
  R(read_vec(c, "/patients/site", K_INT, 4, n, H5T_NATIVE_INT32, p->site));
  R(read_vec(c, "/patients/cohort_names", K_STR, 0, (hsize_t)in->n_cohorts, sname, p->cohort_names));
  R(read_vec(c, "/patients/site_names", K_STR, 0, (hsize_t)in->n_sites, sname, p->site_names));
  R(read_vec(c, "/omics/genes", K_STR, 0, (hsize_t)in->g, sname, c->genes));
  R(read_vec(c, "/clinical/names", K_STR, 0, (hsize_t)in->c, sname, c->clin_names));
  R(read_vec(c, "/omics/present", K_INT, 1, n, H5T_NATIVE_UINT8, tmp));
  for (hsize_t i = 0; st == PS_OK && i < n; i++) p->present[i * PS_MOD_COUNT + PS_MOD_OMICS] = tmp[i];
  R(read_vec(c, "/clinical/present", K_INT, 1, n, H5T_NATIVE_UINT8, tmp));
  for (hsize_t i = 0; st == PS_OK && i < n; i++) p->present[i * PS_MOD_COUNT + PS_MOD_CLINICAL] = tmp[i];
  if (in->slides != PS_SLIDES_NONE) {
    R(read_vec(c, "/slides/offset", K_INT, 8, n + 1, H5T_NATIVE_INT64, p->offset));
    for (hsize_t i = 0; st == PS_OK && i < n; i++)
      p->present[i * PS_MOD_COUNT + PS_MOD_SLIDES] = p->offset[i + 1] > p->offset[i];
  }
  if (in->has_truth) R(read_vec(c, "/truth/log_hazard", K_FLOAT, 8, n, H5T_NATIVE_DOUBLE, p->log_hazard));
#undef R
  free(tmp);
  H5Tclose(sid);
  H5Tclose(sname);
  return st;
}

// Chunk cache for the per-patient tables: up to 64 MiB, so that after one epoch the omics and clinical
// rows are served from memory (tiles are one chunk per tile and read once per use: no cache).
static hid_t row_cache_dapl(const ps_cohort_info *info, int64_t width) {
  hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
  size_t bytes = (size_t)info->n * (size_t)width * sizeof(float) + (1u << 20);
  if (bytes > (64u << 20)) bytes = 64u << 20;
  H5Pset_chunk_cache(dapl, 100003, bytes, 1.0);
  return dapl;
}

ps_status ps_h5_bulk_open(ps_h5_bulk *b, hid_t file, const ps_cohort_info *info) {
  b->file = file;
  hid_t da = row_cache_dapl(info, info->g), dc = row_cache_dapl(info, info->c);
  b->omics = H5Dopen2(file, "/omics/rnaseq", da);
  b->clinical = H5Dopen2(file, "/clinical/x", dc);
  H5Pclose(da), H5Pclose(dc);
  b->tiles = info->slides == PS_SLIDES_TILES ? H5Dopen2(file, "/slides/tiles", H5P_DEFAULT) : -1;
  b->features = info->slides == PS_SLIDES_FEATURES ? H5Dopen2(file, "/slides/features", H5P_DEFAULT) : -1;
  b->dxpl = H5Pcreate(H5P_DATASET_XFER);
  if (b->omics < 0 || b->clinical < 0 || (info->slides == PS_SLIDES_TILES && b->tiles < 0) ||
      (info->slides == PS_SLIDES_FEATURES && b->features < 0) || b->dxpl < 0) {
    ps_h5_bulk_close(b);
    PS_FAIL(PS_ERR_HDF5, "cannot open the bulk datasets");
  }
  return PS_OK;
}

void ps_h5_bulk_close(ps_h5_bulk *b) {
  hid_t *ids[] = {&b->omics, &b->clinical, &b->tiles, &b->features};
  for (size_t i = 0; i < 4; i++)
    if (*ids[i] >= 0) H5Dclose(*ids[i]), *ids[i] = -1;
  if (b->dxpl >= 0) H5Pclose(b->dxpl), b->dxpl = -1;
}

static void free_table(ps_cohort *c) {
  ps_patients *p = &c->p;
  void *ptrs[] = {p->id, p->time, p->event, p->cohort, p->site, p->present, p->offset, p->cohort_names,
                  p->site_names, p->log_hazard, c->genes, c->clin_names};
  for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
}

ps_status ps_cohort_open(ps_cohort **out, const char *path, MPI_Comm comm) {
  *out = NULL;
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  ps_cohort *c = ps_xcalloc(1, sizeof *c);
  if (!c) PS_FAIL(PS_ERR_MEM, "cannot allocate a cohort handle");
  c->file = -1;
  c->bulk = (ps_h5_bulk){.file = -1, .omics = -1, .clinical = -1, .tiles = -1, .features = -1, .dxpl = -1};
  c->comm = comm;
  snprintf(c->path, sizeof c->path, "%s", path);
  ps_status st = PS_OK;
  struct stat sb;
  if (stat(path, &sb) != 0)
    st = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "%s: cannot open: %s", path, strerror(errno));
  else if (H5Fis_hdf5(path) <= 0)
    st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "%s: not an HDF5 file (expected a pansurv cohort file "
                      "made by 'pansurv prep' or 'pansurv sim')", path);
  st = ps_data_agree(comm, st);
  if (st == PS_OK) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    c->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (c->file < 0)
      st = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "%s: HDF5 cannot open it (if the file system has no locking, "
                        "set HDF5_USE_FILE_LOCKING=FALSE)", path);
    st = ps_data_agree(comm, st);
  }
  if (st == PS_OK) st = ps_data_agree(comm, read_structure(c));
  if (st == PS_OK) st = ps_data_agree(comm, read_table(c));
  if (st == PS_OK) st = ps_data_agree(comm, ps_h5_bulk_open(&c->bulk, c->file, &c->info));
  if (st != PS_OK) {
    ps_h5_bulk_close(&c->bulk);
    if (c->file >= 0) H5Fclose(c->file);
    free_table(c);
    free(c);
    return st;
  }
  *out = c;
  return PS_OK;
}

void ps_cohort_close(ps_cohort *c) {
  if (!c) return;
  ps_h5_bulk_close(&c->bulk);
  if (c->file >= 0) H5Fclose(c->file);
  free_table(c);
  free(c);
}

const ps_cohort_info *ps_cohort_get_info(const ps_cohort *c) { return &c->info; }
const ps_patients *ps_cohort_get_patients(const ps_cohort *c) { return &c->p; }
const char (*ps_cohort_gene_names(const ps_cohort *c))[PS_DATA_NAME_LEN] { return (const char(*)[PS_DATA_NAME_LEN])c->genes; }
const char (*ps_cohort_clinical_names(const ps_cohort *c))[PS_DATA_NAME_LEN] {
  return (const char(*)[PS_DATA_NAME_LEN])c->clin_names;
}
ps_h5_bulk *ps_cohort_bulk(ps_cohort *c) { return &c->bulk; }
const char *ps_cohort_path(const ps_cohort *c) { return c->path; }

// Reads rows (any order, duplicates allowed) of a row-major dataset; consecutive runs become one hyperslab block.
ps_status ps_h5_read_rows(hid_t dset, hid_t dxpl, hid_t memtype, const int64_t *rows, int64_t n, int64_t row_elems,
                          int rank, void *out, const char *name) {
  if (n == 0 || row_elems == 0) return PS_OK;
  size_t esz = H5Tget_size(memtype);
  hid_t fs = H5Dget_space(dset);
  hsize_t dims[4];
  H5Sget_simple_extent_dims(fs, dims, NULL);
  uint8_t *o = out;
  int64_t i = 0;
  ps_status st = PS_OK;
  // One read per run of consecutive rows: keeps output order trivially equal to `rows`.
  while (i < n && st == PS_OK) {
    int64_t j = i + 1;
    while (j < n && rows[j] == rows[j - 1] + 1) j++;
    if (rows[i] < 0 || rows[j - 1] >= (int64_t)dims[0]) {
      st = ps_error_set(PS_ERR_ARG, __FILE__, __LINE__, "%s: row %lld outside [0, %llu)", name,
                        (long long)(rows[i] < 0 ? rows[i] : rows[j - 1]), (unsigned long long)dims[0]);
      break;
    }
    hsize_t start[4] = {(hsize_t)rows[i], 0, 0, 0}, cnt[4] = {(hsize_t)(j - i), dims[1], dims[2], dims[3]};
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
    hid_t ms = H5Screate_simple(rank, cnt, NULL);
    if (H5Dread(dset, memtype, ms, fs, dxpl, o + (size_t)i * (size_t)row_elems * esz) < 0)
      st = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "cannot read %s rows [%lld, %lld): a chunk failed its "
                        "Fletcher-32 checksum (corrupt file) or the read failed", name, (long long)rows[i],
                        (long long)rows[j - 1] + 1);
    H5Sclose(ms);
    i = j;
  }
  H5Sclose(fs);
  return st;
}

ps_status ps_cohort_read_omics(ps_cohort *c, const int64_t *rows, int64_t n, float *out) {
  return ps_h5_read_rows(c->bulk.omics, c->bulk.dxpl, H5T_NATIVE_FLOAT, rows, n, c->info.g, 2, out, "/omics/rnaseq");
}
ps_status ps_cohort_read_clinical(ps_cohort *c, const int64_t *rows, int64_t n, float *out) {
  return ps_h5_read_rows(c->bulk.clinical, c->bulk.dxpl, H5T_NATIVE_FLOAT, rows, n, c->info.c, 2, out, "/clinical/x");
}
ps_status ps_cohort_read_tiles(ps_cohort *c, const int64_t *tiles, int64_t n, uint8_t *out) {
  PS_REQUIRE(c->info.slides == PS_SLIDES_TILES, "%s has no /slides/tiles", c->path);
  int64_t s = c->info.tile_size;
  return ps_h5_read_rows(c->bulk.tiles, c->bulk.dxpl, H5T_NATIVE_UINT8, tiles, n, s * s * 3, 4, out, "/slides/tiles");
}
ps_status ps_cohort_read_features(ps_cohort *c, const int64_t *tiles, int64_t n, float *out) {
  PS_REQUIRE(c->info.slides == PS_SLIDES_FEATURES, "%s has no /slides/features", c->path);
  return ps_h5_read_rows(c->bulk.features, c->bulk.dxpl, H5T_NATIVE_FLOAT, tiles, n, c->info.feat_dim, 2, out,
                         "/slides/features");
}
