// pansurv check on corrupt files made here: each defect gives its message (naming the dataset and
// the first offending ids) and exit status 1, through the library call and the CLI ($PANSURV_BIN).
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data_fixture.h"
#include "testutil.h"

static char base[256];

static int make_valid(const char *path, ps_slides_kind kind) {
  ps_cohort_data d;
  TU_OK(fx_build(&d, 12, 4, 3, kind, 0, 12));
  TU_OK(ps_data_write(path, &d, MPI_COMM_SELF));
  ps_cohort_data_free(&d);
  return 0;
}

static hid_t open_rw(const char *path) { return H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT); }

static void write_f64(hid_t f, const char *name, int64_t i, double v) {
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT), s = H5Dget_space(d);
  hsize_t st = (hsize_t)i, one = 1;
  H5Sselect_hyperslab(s, H5S_SELECT_SET, &st, NULL, &one, NULL);
  hid_t m = H5Screate_simple(1, &one, NULL);
  H5Dwrite(d, H5T_NATIVE_DOUBLE, m, s, H5P_DEFAULT, &v);
  H5Sclose(m), H5Sclose(s), H5Dclose(d);
}

// Runs the CLI, returns its exit status and stderr+stdout in out.
static int run_cli(const char *path, char *out, size_t len) {
  const char *bin = getenv("PANSURV_BIN");
  if (!bin) return -1;
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' check '%s' 2>&1", bin, path);
  FILE *p = popen(cmd, "r");
  size_t n = p ? fread(out, 1, len - 1, p) : 0;
  out[n] = '\0';
  int st = p ? pclose(p) : -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

typedef enum { DEF_TYPE, DEF_NEG_TIME, DEF_DUP_ID, DEF_OFFSETS, DEF_MISSING, DEF_NOT_HDF5, DEF_FORMAT, DEF_NAN_OMICS,
               DEF_COORDS, DEF_EVENT, DEF_CHECKSUM, DEF_COUNT } defect;
static const struct {
  const char *name;
  ps_status status;
  const char *expect[3]; // substrings of the message
} cases[] = {
    {"wrong type", PS_ERR_FORMAT, {"/patients/time", "wrong type", "float"}},
    {"negative time", PS_ERR_DATA, {"/patients/time", ">= 0", "TCGA-FX-0003"}},
    {"duplicate id", PS_ERR_DATA, {"/patients/id", "unique", "TCGA-FX-0002"}},
    {"bad offsets", PS_ERR_DATA, {"/slides/offset", "non-decreasing", "TCGA-FX-0005"}},
    {"missing dataset", PS_ERR_FORMAT, {"/clinical/x", "missing", NULL}},
    {"not HDF5", PS_ERR_FORMAT, {"not an HDF5 file", NULL, NULL}},
    {"wrong format", PS_ERR_FORMAT, {"pansurv_format = 2", "reads format 1", NULL}},
    {"NaN omics", PS_ERR_DATA, {"/omics/rnaseq", "NaN", "TCGA-FX-0007"}},
    {"coords outside slide", PS_ERR_DATA, {"/slides/coords", "outside", "TCGA-FX-0005"}},
    {"event not 0/1", PS_ERR_DATA, {"/patients/event", "0 or 1", "TCGA-FX-0001"}},
    {"flipped byte in a chunk", PS_ERR_HDF5, {"/omics/rnaseq", "checksum", NULL}},
};
_Static_assert(sizeof cases / sizeof cases[0] == DEF_COUNT, "one case per defect");

static int corrupt(const char *path, defect k) {
  if (k == DEF_NOT_HDF5) {
    FILE *f = fopen(path, "w");
    fputs("bcr_patient_barcode,OS,OS.time\nTCGA-XX-0001,1,100\n", f);
    fclose(f);
    return 0;
  }
  TU_CHECK(make_valid(path, k == DEF_NAN_OMICS ? PS_SLIDES_FEATURES : PS_SLIDES_TILES) == 0, "valid file");
  hid_t f = open_rw(path);
  if (f < 0) return 1;
  if (k == DEF_TYPE) { // time stored as int32
    H5Ldelete(f, "/patients/time", H5P_DEFAULT);
    hsize_t n = 12;
    int v[12] = {0};
    hid_t s = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(f, "/patients/time", H5T_STD_I32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    H5Dclose(d), H5Sclose(s);
  } else if (k == DEF_NEG_TIME) {
    write_f64(f, "/patients/time", 3, -5.0);
    write_f64(f, "/patients/time", 9, -1.0);
  } else if (k == DEF_DUP_ID) {
    hid_t d = H5Dopen2(f, "/patients/id", H5P_DEFAULT), t = H5Dget_type(d);
    char ids[12][PS_DATA_ID_LEN];
    H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
    memcpy(ids[8], ids[2], PS_DATA_ID_LEN);
    H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
    H5Tclose(t), H5Dclose(d);
  } else if (k == DEF_OFFSETS) {
    hid_t d = H5Dopen2(f, "/slides/offset", H5P_DEFAULT);
    int64_t off[13];
    H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off);
    off[6] = off[5] - 1; // patient 5 ends before it starts
    H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off);
    H5Dclose(d);
  } else if (k == DEF_MISSING) {
    H5Ldelete(f, "/clinical/x", H5P_DEFAULT);
  } else if (k == DEF_FORMAT) {
    hid_t a = H5Aopen(f, "pansurv_format", H5P_DEFAULT);
    int v = 2;
    H5Awrite(a, H5T_NATIVE_INT, &v);
    H5Aclose(a);
  } else if (k == DEF_NAN_OMICS) {
    hid_t d = H5Dopen2(f, "/omics/rnaseq", H5P_DEFAULT);
    float x[12 * 4];
    H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
    x[7 * 4 + 2] = NAN, x[10 * 4] = INFINITY;
    H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
    H5Dclose(d);
  } else if (k == DEF_COORDS) {
    hid_t d = H5Dopen2(f, "/slides/coords", H5P_DEFAULT), s = H5Dget_space(d);
    hsize_t dims[2];
    H5Sget_simple_extent_dims(s, dims, NULL);
    int32_t *co = calloc(dims[0] * 3, sizeof(int32_t));
    H5Dread(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, co);
    // tiles per patient 0,1,2,3,0,1,...: offset[5] = 6, so tile 6 is patient 5's
    co[6 * 3 + 1] = 5000; // x beyond the 1000-pixel slide
    H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, co);
    free(co), H5Sclose(s), H5Dclose(d);
  } else if (k == DEF_EVENT) {
    hid_t d = H5Dopen2(f, "/patients/event", H5P_DEFAULT);
    uint8_t ev[12];
    H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, ev);
    ev[1] = 2;
    H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, ev);
    H5Dclose(d);
  }
  if (k == DEF_CHECKSUM) { // flip one byte inside the first omics chunk, behind HDF5's back
    hid_t d = H5Dopen2(f, "/omics/rnaseq", H5P_DEFAULT);
    hsize_t origin[2] = {0, 0}, size = 0;
    haddr_t addr = 0;
    unsigned mask = 0;
    H5Dget_chunk_info_by_coord(d, origin, &mask, &addr, &size);
    H5Dclose(d);
    H5Fclose(f);
    FILE *raw = fopen(path, "r+b");
    if (!raw || size < 8) return 1;
    fseek(raw, (long)addr + 5, SEEK_SET);
    int byte = fgetc(raw);
    fseek(raw, (long)addr + 5, SEEK_SET);
    fputc(byte ^ 0x10, raw);
    fclose(raw);
    return 0;
  }
  H5Fclose(f);
  return 0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  snprintf(base, sizeof base, "data_check_%d", (int)getpid());
  char path[300], out[8192];
  // the valid file passes, through the library and the CLI
  snprintf(path, sizeof path, "%s_valid.h5", base);
  TU_CHECK(make_valid(path, PS_SLIDES_TILES) == 0, "valid");
  ps_data_summary s;
  TU_OK(ps_data_validate(path, MPI_COMM_SELF, &s));
  TU_CHECK(s.events == 8 && s.per_cohort[0] == 6 && s.per_site[2] == 4, "summary events %lld", (long long)s.events);
  ps_data_summary_free(&s);
  if (getenv("PANSURV_BIN")) {
    int rc = run_cli(path, out, sizeof out);
    TU_CHECK(rc == 0 && strstr(out, "valid pansurv cohort file") && strstr(out, "censoring rate 0.333"),
             "CLI on a valid file: rc %d, output:\n%s", rc, out);
  }
  remove(path);
  for (int k = 0; k < DEF_COUNT; k++) {
    snprintf(path, sizeof path, "%s_%d.h5", base, k);
    TU_CHECK(corrupt(path, (defect)k) == 0, "making '%s'", cases[k].name);
    ps_status st = ps_data_validate(path, MPI_COMM_SELF, NULL);
    const char *msg = ps_error_message();
    TU_CHECK(st == cases[k].status, "%s: status %s, expected %s (%s)", cases[k].name, ps_status_name(st),
             ps_status_name(cases[k].status), msg);
    for (int e = 0; e < 3 && cases[k].expect[e]; e++)
      TU_CHECK(strstr(msg, cases[k].expect[e]), "%s: message lacks '%s': %s", cases[k].name, cases[k].expect[e], msg);
    if (getenv("PANSURV_BIN")) {
      int rc = run_cli(path, out, sizeof out);
      TU_CHECK(rc == 1, "%s: CLI exit %d, expected 1", cases[k].name, rc);
      for (int e = 0; e < 3 && cases[k].expect[e]; e++)
        TU_CHECK(strstr(out, cases[k].expect[e]), "%s: CLI output lacks '%s': %s", cases[k].name, cases[k].expect[e], out);
    }
    remove(path);
  }
  TU_CHECK(ps_data_validate("no/such/file.h5", MPI_COMM_SELF, NULL) == PS_ERR_IO, "missing file");
  MPI_Finalize();
  return ps_tu_finish("data_check");
}
