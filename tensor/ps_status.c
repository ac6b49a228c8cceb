#include "ps_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const status_names[] = {
    "ok",           "invalid argument", "I/O error",        "format error", "data error",
    "config error", "out of memory",    "MPI error",        "HDF5 error",   "CUDA error",
    "unsupported",  "numerical error",  "interrupted",      "internal error",
};
_Static_assert(sizeof(status_names) / sizeof(status_names[0]) == PS_STATUS_COUNT,
               "status_names must cover every ps_status");

const char *ps_status_name(ps_status s) {
  return (s >= 0 && s < PS_STATUS_COUNT) ? status_names[s] : "unknown status";
}

enum { PS_ERROR_MAX = 4096 };
static _Thread_local char error_buf[PS_ERROR_MAX];

ps_status ps_error_set(ps_status s, const char *file, int line, const char *fmt, ...) {
  const char *base = strrchr(file, '/');
  int n = snprintf(error_buf, sizeof error_buf, "%s: ", ps_status_name(s));
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && n < PS_ERROR_MAX) n += vsnprintf(error_buf + n, sizeof error_buf - (size_t)n, fmt, ap);
  va_end(ap);
  if (n > 0 && n < PS_ERROR_MAX)
    snprintf(error_buf + n, sizeof error_buf - (size_t)n, " [%s:%d]", base ? base + 1 : file, line);
  return s;
}

ps_status ps_error_wrap(ps_status s, const char *fmt, ...) {
  char prefix[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  char old[PS_ERROR_MAX];
  memcpy(old, error_buf, sizeof old);
  size_t n = strlen(prefix);
  if (n > PS_ERROR_MAX - 3) n = PS_ERROR_MAX - 3;
  memcpy(error_buf, prefix, n);
  memcpy(error_buf + n, ": ", 2);
  size_t rest = PS_ERROR_MAX - n - 3;
  size_t m = 0;
  while (m < rest && old[m]) m++;
  memcpy(error_buf + n + 2, old, m);
  error_buf[n + 2 + m] = '\0';
  return s;
}

const char *ps_error_message(void) { return error_buf; }
void ps_error_clear(void) { error_buf[0] = '\0'; }
