// Scalar HDF5 attributes for pansurv files (checkpoints and the launcher's own
// state files): one implementation, so every file spells them alike.
#include "ps_h5.h"

#include <stdlib.h>
#include <string.h>

herr_t ps_h5_write_attr_str(hid_t obj, const char *name, const char *val) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, strlen(val) ? strlen(val) : 1);
  H5Tset_strpad(t, H5T_STR_NULLTERM);
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
  herr_t r = a < 0 ? -1 : H5Awrite(a, t, strlen(val) ? val : "");
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(t);
  return r;
}

herr_t ps_h5_write_attr_i64(hid_t obj, const char *name, int64_t v) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
  herr_t r = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT64, &v);
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  return r;
}

herr_t ps_h5_write_attr_u64(hid_t obj, const char *name, uint64_t v) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, H5T_STD_U64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
  herr_t r = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_UINT64, &v);
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  return r;
}

// Reads a string attribute into a malloc'd buffer (NULL on failure).
char *ps_h5_read_attr_str(hid_t obj, const char *name) {
  if (H5Aexists(obj, name) <= 0) return NULL;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) return NULL;
  hid_t ft = H5Aget_type(a);
  char *s = NULL;
  if (H5Tget_class(ft) == H5T_STRING && !H5Tis_variable_str(ft)) {
    size_t n = H5Tget_size(ft);
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, n + 1);
    s = calloc(n + 2, 1);
    if (s && H5Aread(a, mt, s) < 0) {
      free(s);
      s = NULL;
    }
    H5Tclose(mt);
  }
  H5Tclose(ft);
  H5Aclose(a);
  return s;
}

herr_t ps_h5_read_attr_i64(hid_t obj, const char *name, int64_t *v) {
  if (H5Aexists(obj, name) <= 0) return -1;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) return -1;
  herr_t r = H5Aread(a, H5T_NATIVE_INT64, v);
  H5Aclose(a);
  return r;
}
