// ps_csv: a streaming CSV reader (RFC 4180): no line-length or column-count
// limit, quoted fields (with "" escapes and embedded newlines), LF or CRLF,
// errors naming the file, the row and the column. Self-contained so any
// module (launch included) can use it.
// Letters: F fields in a record, N data rows, C loaded columns.
#ifndef PS_CSV_H
#define PS_CSV_H

#include <stdint.h>

#include "ps_status.h"

typedef struct ps_csv ps_csv;

ps_status ps_csv_open(ps_csv **out, const char *path);
void ps_csv_close(ps_csv *r);
// Next record: fields (F) stay valid until the next call. *eof = 1 at the end
// (then *nfields = 0). Empty lines are skipped.
ps_status ps_csv_next(ps_csv *r, int64_t *nfields, char ***fields, int *eof);
// Line number (1-based) where the last record started.
int64_t ps_csv_line(const ps_csv *r);
const char *ps_csv_path(const ps_csv *r);

// ---- whole-table loading of selected columns -----------------------------
typedef enum { PS_CSV_NUMERIC = 0, PS_CSV_LABEL, PS_CSV_KIND_COUNT } ps_csv_kind;

typedef struct {
  char *name;
  ps_csv_kind kind;
  double *num;    // (N) NUMERIC values
  int32_t *label; // (N) LABEL ids 0.. in order of first appearance
  char **levels;  // (n_levels) LABEL names
  int32_t n_levels;
} ps_csv_column;

typedef struct {
  int64_t n_rows;       // N
  int64_t n_cols;       // C
  ps_csv_column *cols;  // (C) in the requested order
  int64_t n_header;     // all header names
  char **header;        // (n_header)
} ps_csv_table;

// Loads the named columns (names (C), kinds (C)); names == NULL with C == 0
// loads the header only (to list columns). A missing column, a row with the
// wrong number of fields, an empty/NA value or a non-number in a NUMERIC
// column is an error naming the file, the row (1-based data row and line) and
// the column.
ps_status ps_csv_load(ps_csv_table *t, const char *path, int64_t n_cols, const char *const *names,
                      const ps_csv_kind *kinds);
void ps_csv_table_free(ps_csv_table *t);
// Index of a header name, or -1.
int64_t ps_csv_header_find(const ps_csv_table *t, const char *name);

#endif
