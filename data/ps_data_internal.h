// Helpers shared by the data/ sources (not part of the public API).
#ifndef PS_DATA_INTERNAL_H
#define PS_DATA_INTERNAL_H

#include <hdf5.h>
#include <stdlib.h>

#include "ps_data.h"

// HDF5 call check: negative hid_t / herr_t is failure.
#define PS_H5(call, ...)                                                                           \
  do {                                                                                             \
    if ((call) < 0) PS_FAIL(PS_ERR_HDF5, __VA_ARGS__);                                             \
  } while (0)

// Every rank learns the worst status; ranks that were fine get a message saying another failed.
ps_status ps_data_agree(MPI_Comm comm, ps_status local);

// The bulk datasets of one open file handle (a cohort may have two: MPI-IO and a private POSIX one).
typedef struct {
  hid_t file;
  hid_t omics, clinical, tiles, features; // -1 when absent
  hid_t dxpl;                             // independent transfers
} ps_h5_bulk;

ps_status ps_h5_bulk_open(ps_h5_bulk *b, hid_t file, const ps_cohort_info *info);
void ps_h5_bulk_close(ps_h5_bulk *b);
ps_status ps_h5_read_rows(hid_t dset, hid_t dxpl, hid_t memtype, const int64_t *rows, int64_t n, int64_t row_elems,
                          int rank, void *out, const char *name);
// Access to a cohort's bulk handle for the loader.
ps_h5_bulk *ps_cohort_bulk(ps_cohort *c);
const char *ps_cohort_path(const ps_cohort *c);

// Fixed-length, null-padded string type of `len` bytes (caller closes).
hid_t ps_h5_str_type(size_t len);

// Simple CRC32 (IEEE) for serialized blobs.
uint32_t ps_data_crc32(const void *buf, size_t len);

static inline void *ps_xcalloc(size_t n, size_t sz) { return calloc(n ? n : 1, sz ? sz : 1); }

#endif
