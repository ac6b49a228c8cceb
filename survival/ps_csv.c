// ps_csv: streaming RFC 4180 reader (see ps_csv.h).
#define _POSIX_C_SOURCE 200809L
#include "ps_csv.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { CSV_BUF = 1 << 16 };

struct ps_csv {
  FILE *f;
  char *path;
  unsigned char buf[CSV_BUF];
  size_t pos, len;
  int64_t line;       // current line (1-based)
  int64_t rec_line;   // line where the last record started
  char *text;         // record text, fields separated by NUL
  size_t text_len, text_cap;
  size_t *starts;     // (F) offsets of fields in text
  char **fields;      // (F)
  int64_t nf, f_cap;
};

static int csv_getc(ps_csv *r) {
  if (r->pos == r->len) {
    r->len = fread(r->buf, 1, CSV_BUF, r->f);
    r->pos = 0;
    if (r->len == 0) return EOF;
  }
  return r->buf[r->pos++];
}

static int csv_peek(ps_csv *r) {
  int c = csv_getc(r);
  if (c != EOF) r->pos--;
  return c;
}

ps_status ps_csv_open(ps_csv **out, const char *path) {
  PS_REQUIRE(out && path, "ps_csv_open: null argument");
  FILE *f = fopen(path, "rb");
  if (!f) PS_FAIL(PS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  ps_csv *r = calloc(1, sizeof *r);
  if (!r || !(r->path = strdup(path))) {
    fclose(f);
    free(r);
    PS_FAIL(PS_ERR_MEM, "%s: out of memory", path);
  }
  r->f = f;
  r->line = 1;
  *out = r;
  return PS_OK;
}

void ps_csv_close(ps_csv *r) {
  if (!r) return;
  if (r->f) fclose(r->f);
  free(r->path), free(r->text), free(r->starts), free(r->fields);
  free(r);
}

int64_t ps_csv_line(const ps_csv *r) { return r->rec_line; }
const char *ps_csv_path(const ps_csv *r) { return r->path; }

static ps_status put_char(ps_csv *r, char c) {
  if (r->text_len == r->text_cap) {
    size_t cap = r->text_cap ? 2 * r->text_cap : 4096;
    char *t = realloc(r->text, cap);
    if (!t) PS_FAIL(PS_ERR_MEM, "%s: line %lld: out of memory", r->path, (long long)r->rec_line);
    r->text = t, r->text_cap = cap;
  }
  r->text[r->text_len++] = c;
  return PS_OK;
}

static ps_status start_field(ps_csv *r) {
  if (r->nf == r->f_cap) {
    int64_t cap = r->f_cap ? 2 * r->f_cap : 64;
    size_t *s = realloc(r->starts, (size_t)cap * sizeof *s);
    if (!s) PS_FAIL(PS_ERR_MEM, "%s: out of memory", r->path);
    r->starts = s;
    char **f = realloc(r->fields, (size_t)cap * sizeof *f);
    if (!f) PS_FAIL(PS_ERR_MEM, "%s: out of memory", r->path);
    r->fields = f;
    r->f_cap = cap;
  }
  r->starts[r->nf++] = r->text_len;
  return PS_OK;
}

ps_status ps_csv_next(ps_csv *r, int64_t *nfields, char ***fields, int *eof) {
  for (;;) {
    r->text_len = 0;
    r->nf = 0;
    r->rec_line = r->line;
    int c = csv_getc(r);
    if (c == EOF) {
      *nfields = 0, *fields = NULL, *eof = 1;
      return PS_OK;
    }
    if (c == '\n' || (c == '\r' && csv_peek(r) == '\n')) { // empty line
      if (c == '\r') csv_getc(r);
      r->line++;
      continue;
    }
    PS_TRY(start_field(r));
    int quoted = 0, at_start = 1;
    for (;;) {
      if (c == EOF) {
        if (quoted)
          PS_FAIL(PS_ERR_FORMAT, "%s: line %lld: unterminated quoted field (column %lld)", r->path,
                  (long long)r->rec_line, (long long)r->nf);
        break;
      }
      if (quoted) {
        if (c == '"') {
          if (csv_peek(r) == '"') {
            csv_getc(r);
            PS_TRY(put_char(r, '"'));
          } else {
            quoted = 0;
          }
        } else {
          if (c == '\n') r->line++;
          PS_TRY(put_char(r, (char)c));
        }
      } else if (c == '"' && at_start) {
        quoted = 1;
      } else if (c == ',') {
        PS_TRY(put_char(r, '\0'));
        PS_TRY(start_field(r));
        at_start = 1;
        c = csv_getc(r);
        continue;
      } else if (c == '\n') {
        r->line++;
        break;
      } else if (c == '\r' && csv_peek(r) == '\n') {
        csv_getc(r);
        r->line++;
        break;
      } else {
        PS_TRY(put_char(r, (char)c));
      }
      at_start = 0;
      c = csv_getc(r);
    }
    PS_TRY(put_char(r, '\0'));
    for (int64_t i = 0; i < r->nf; i++) r->fields[i] = r->text + r->starts[i];
    if (ferror(r->f)) PS_FAIL(PS_ERR_IO, "%s: read error near line %lld", r->path, (long long)r->line);
    *nfields = r->nf, *fields = r->fields, *eof = 0;
    return PS_OK;
  }
}

// ---- table ---------------------------------------------------------------

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
  return s;
}

static int is_missing(const char *s) {
  return !*s || !strcasecmp(s, "NA") || !strcasecmp(s, "NaN") || !strcmp(s, ".") || !strcasecmp(s, "null");
}

int64_t ps_csv_header_find(const ps_csv_table *t, const char *name) {
  for (int64_t i = 0; i < t->n_header; i++)
    if (!strcmp(t->header[i], name)) return i;
  return -1;
}

void ps_csv_table_free(ps_csv_table *t) {
  if (!t) return;
  for (int64_t c = 0; c < t->n_cols; c++) {
    ps_csv_column *col = &t->cols[c];
    free(col->name), free(col->num), free(col->label);
    for (int32_t l = 0; l < col->n_levels; l++) free(col->levels[l]);
    free(col->levels);
  }
  free(t->cols);
  for (int64_t i = 0; i < t->n_header; i++) free(t->header[i]);
  free(t->header);
  memset(t, 0, sizeof *t);
}

static ps_status add_level(ps_csv_column *col, const char *s, int32_t *id, const char *path) {
  for (int32_t l = 0; l < col->n_levels; l++)
    if (!strcmp(col->levels[l], s)) {
      *id = l;
      return PS_OK;
    }
  if ((col->n_levels & (col->n_levels - 1)) == 0) { // grow at powers of two
    char **lv = realloc(col->levels, (size_t)(col->n_levels ? 2 * col->n_levels : 1) * sizeof *lv);
    if (!lv) PS_FAIL(PS_ERR_MEM, "%s: out of memory", path);
    col->levels = lv;
  }
  if (!(col->levels[col->n_levels] = strdup(s))) PS_FAIL(PS_ERR_MEM, "%s: out of memory", path);
  *id = col->n_levels++;
  return PS_OK;
}

static ps_status load(ps_csv_table *t, ps_csv *r, int64_t n_cols, const char *const *names, const ps_csv_kind *kinds,
                      int64_t *where) {
  int64_t nf;
  char **f;
  int eof;
  const char *path = ps_csv_path(r);
  PS_TRY(ps_csv_next(r, &nf, &f, &eof));
  if (eof) PS_FAIL(PS_ERR_FORMAT, "%s: empty file (expected a header row)", path);
  t->header = calloc((size_t)nf, sizeof *t->header);
  if (!t->header) PS_FAIL(PS_ERR_MEM, "%s: out of memory", path);
  for (int64_t i = 0; i < nf; i++) {
    if (!(t->header[i] = strdup(trim(f[i])))) PS_FAIL(PS_ERR_MEM, "%s: out of memory", path);
    t->n_header++;
  }
  t->cols = calloc((size_t)(n_cols ? n_cols : 1), sizeof *t->cols);
  if (!t->cols) PS_FAIL(PS_ERR_MEM, "%s: out of memory", path);
  for (int64_t c = 0; c < n_cols; c++) {
    where[c] = ps_csv_header_find(t, names[c]);
    t->cols[c].kind = kinds[c];
    if (!(t->cols[c].name = strdup(names[c]))) PS_FAIL(PS_ERR_MEM, "%s: out of memory", path);
    t->n_cols++;
    if (where[c] < 0) PS_FAIL(PS_ERR_FORMAT, "%s: no column named '%s' in the header", path, names[c]);
  }
  if (n_cols == 0) return PS_OK;
  int64_t cap = 0;
  for (;;) {
    PS_TRY(ps_csv_next(r, &nf, &f, &eof));
    if (eof) break;
    int64_t row = t->n_rows + 1;
    if (nf != t->n_header)
      PS_FAIL(PS_ERR_FORMAT, "%s: row %lld (line %lld) has %lld fields; the header has %lld", path, (long long)row,
              (long long)ps_csv_line(r), (long long)nf, (long long)t->n_header);
    if (t->n_rows == cap) {
      cap = cap ? 2 * cap : 1024;
      for (int64_t c = 0; c < n_cols; c++) {
        ps_csv_column *col = &t->cols[c];
        if (col->kind == PS_CSV_NUMERIC) {
          double *p = realloc(col->num, (size_t)cap * sizeof *p);
          if (!p) PS_FAIL(PS_ERR_MEM, "%s: out of memory at row %lld", path, (long long)row);
          col->num = p;
        } else {
          int32_t *p = realloc(col->label, (size_t)cap * sizeof *p);
          if (!p) PS_FAIL(PS_ERR_MEM, "%s: out of memory at row %lld", path, (long long)row);
          col->label = p;
        }
      }
    }
    for (int64_t c = 0; c < n_cols; c++) {
      ps_csv_column *col = &t->cols[c];
      char *s = trim(f[where[c]]);
      if (is_missing(s))
        PS_FAIL(PS_ERR_DATA, "%s: row %lld (line %lld), column '%s': missing value '%s'", path, (long long)row,
                (long long)ps_csv_line(r), col->name, s);
      if (col->kind == PS_CSV_NUMERIC) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        while (*end == ' ' || *end == '\t') end++;
        if (*end || errno == ERANGE || !isfinite(v))
          PS_FAIL(PS_ERR_DATA, "%s: row %lld (line %lld), column '%s': '%s' is not a finite number", path,
                  (long long)row, (long long)ps_csv_line(r), col->name, s);
        col->num[t->n_rows] = v;
      } else {
        PS_TRY(add_level(col, s, &col->label[t->n_rows], path));
      }
    }
    t->n_rows++;
  }
  return PS_OK;
}

ps_status ps_csv_load(ps_csv_table *t, const char *path, int64_t n_cols, const char *const *names,
                      const ps_csv_kind *kinds) {
  PS_REQUIRE(t && path && n_cols >= 0 && (n_cols == 0 || (names && kinds)), "ps_csv_load: bad arguments");
  memset(t, 0, sizeof *t);
  ps_csv *r;
  PS_TRY(ps_csv_open(&r, path));
  int64_t *where = malloc((size_t)(n_cols ? n_cols : 1) * sizeof *where);
  ps_status s = where ? load(t, r, n_cols, names, kinds, where)
                      : ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "%s: out of memory", path);
  free(where);
  ps_csv_close(r);
  if (s != PS_OK) ps_csv_table_free(t);
  return s;
}
