// The CSV reader: quotes ("" escapes, commas and newlines inside), CRLF, a
// 20 000-column row far beyond any line buffer, and bad-input messages that
// name the file, the row and the column.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_csv.h"
#include "testutil.h"

static const char *write_tmp(const char *name, const char *text) {
  static char path[512];
  const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(path, sizeof path, "%s/pansurv_csv_%d_%s", dir, (int)getpid(), name);
  FILE *f = fopen(path, "wb");
  fputs(text, f);
  fclose(f);
  return path;
}

static int expect_error(const char *name, const char *text, const char *col, ps_status want, const char *must1,
                        const char *must2) {
  const char *path = write_tmp(name, text);
  ps_csv_table t;
  const char *names[2] = {"time", col};
  ps_csv_kind kinds[2] = {PS_CSV_NUMERIC, PS_CSV_NUMERIC};
  ps_status s = ps_csv_load(&t, path, 2, names, kinds);
  const char *msg = ps_error_message();
  printf("  %-14s -> %s\n", name, msg);
  TU_CHECK(s == want, "%s: status %d, expected %d", name, (int)s, (int)want);
  TU_CHECK(strstr(msg, path) != NULL, "%s: message does not name the file", name);
  TU_CHECK(!must1 || strstr(msg, must1), "%s: message lacks '%s'", name, must1);
  TU_CHECK(!must2 || strstr(msg, must2), "%s: message lacks '%s'", name, must2);
  unlink(path);
  return 0;
}

int main(void) {
  // Quotes, CRLF, embedded comma/newline/quote, label column, spaces.
  const char *text = "\"time\",\"event\",name,x\r\n"
                     "1.5,1,\"Smith, J\",  2\r\n"
                     "\"2\",0,\"multi\nline \"\"quoted\"\"\",3e2\r\n"
                     "\r\n"
                     "0,1,\"Smith, J\",-4\n";
  const char *path = write_tmp("ok.csv", text);
  ps_csv_table t;
  const char *names[3] = {"x", "time", "name"};
  ps_csv_kind kinds[3] = {PS_CSV_NUMERIC, PS_CSV_NUMERIC, PS_CSV_LABEL};
  TU_OK(ps_csv_load(&t, path, 3, names, kinds));
  TU_CHECK(t.n_rows == 3 && t.n_header == 4, "rows %lld header %lld", (long long)t.n_rows, (long long)t.n_header);
  TU_CHECK(t.cols[0].num[0] == 2 && t.cols[0].num[1] == 300 && t.cols[0].num[2] == -4, "x values");
  TU_CHECK(t.cols[1].num[0] == 1.5 && t.cols[1].num[1] == 2 && t.cols[1].num[2] == 0, "time values");
  TU_CHECK(t.cols[2].n_levels == 2 && !strcmp(t.cols[2].levels[1], "multi\nline \"quoted\""), "labels");
  TU_CHECK(t.cols[2].label[0] == 0 && t.cols[2].label[1] == 1 && t.cols[2].label[2] == 0, "label ids");
  ps_csv_table_free(&t);
  unlink(path);

  // 20 000 columns (a line of ~200 kB): no column or line limit.
  enum { C = 20000 };
  size_t cap = (size_t)C * 40 + 64, len = 0; // 4 lines of <= 8 chars per field
  char *big = malloc(cap);
  for (int c = 0; c < C; c++) len += (size_t)snprintf(big + len, cap - len, "%sg%d", c ? "," : "", c);
  len += (size_t)snprintf(big + len, cap - len, "\r\n");
  for (int r = 0; r < 3; r++) {
    for (int c = 0; c < C; c++) len += (size_t)snprintf(big + len, cap - len, "%s%d.%d", c ? "," : "", r, c % 10);
    len += (size_t)snprintf(big + len, cap - len, "\r\n");
  }
  path = write_tmp("wide.csv", big);
  const char *wn[2] = {"g19999", "g0"};
  ps_csv_kind wk[2] = {PS_CSV_NUMERIC, PS_CSV_NUMERIC};
  TU_OK(ps_csv_load(&t, path, 2, wn, wk));
  TU_CHECK(t.n_header == C && t.n_rows == 3, "wide: header %lld rows %lld", (long long)t.n_header, (long long)t.n_rows);
  TU_CHECK(t.cols[0].num[2] == 2.9 && t.cols[1].num[1] == 1.0, "wide values %g %g", t.cols[0].num[2], t.cols[1].num[1]);
  ps_csv_table_free(&t);
  unlink(path);
  free(big);

  // Bad inputs name the file, the row and the column.
  expect_error("missing.csv", "time,x\n1,2\n3,\n", "x", PS_ERR_DATA, "row 2", "'x'");
  expect_error("na.csv", "time,x\r\n1,2\r\nNA,3\r\n", "x", PS_ERR_DATA, "row 2", "'time'");
  expect_error("notnum.csv", "time,x\n1,2\n2,abc\n", "x", PS_ERR_DATA, "row 2", "'x'");
  expect_error("nocol.csv", "time,x\n1,2\n", "y", PS_ERR_FORMAT, "'y'", NULL);
  expect_error("fields.csv", "time,x\n1,2\n1,2,3\n", "x", PS_ERR_FORMAT, "row 2", "3 fields");
  expect_error("quote.csv", "time,x\n1,\"2\n", "x", PS_ERR_FORMAT, "unterminated", "line 2");
  expect_error("empty.csv", "", "x", PS_ERR_FORMAT, "empty", NULL);
  ps_csv_table e;
  const char *nn[1] = {"x"};
  ps_csv_kind nk[1] = {PS_CSV_NUMERIC};
  TU_CHECK(ps_csv_load(&e, "/nonexistent/file.csv", 1, nn, nk) == PS_ERR_IO, "missing file");
  return ps_tu_finish("survival_csv");
}
