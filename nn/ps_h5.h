// Scalar HDF5 attribute helpers. Each returns a negative herr_t on failure
// (the caller names the file and attribute in its message).
#ifndef PS_H5_H
#define PS_H5_H

#include <hdf5.h>
#include <stdint.h>

herr_t ps_h5_write_attr_str(hid_t obj, const char *name, const char *val); // fixed-length, NUL-terminated
herr_t ps_h5_write_attr_i64(hid_t obj, const char *name, int64_t v);
herr_t ps_h5_write_attr_u64(hid_t obj, const char *name, uint64_t v);
// A fixed-length string attribute in a malloc'd buffer; NULL when missing or not a string.
char *ps_h5_read_attr_str(hid_t obj, const char *name);
herr_t ps_h5_read_attr_i64(hid_t obj, const char *name, int64_t *v);

#endif
