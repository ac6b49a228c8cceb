#define _POSIX_C_SOURCE 200809L
#include "ps_ckpt_files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char tmp_prefix[] = ".tmp-";

ps_status ps_ckpt_mkdirs(const char *dir) {
  char buf[PS_CKPT_PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) PS_FAIL(PS_ERR_ARG, "path too long: %s", dir);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      if (mkdir(buf, 0755) && errno != EEXIST) PS_FAIL(PS_ERR_IO, "cannot create directory '%s': %s", buf, strerror(errno));
      *p = c;
      if (!c) break;
    }
  }
  struct stat st;
  if (stat(dir, &st) || !S_ISDIR(st.st_mode)) PS_FAIL(PS_ERR_IO, "'%s' exists and is not a directory", dir);
  return PS_OK;
}

static ps_status fsync_path(const char *path, int flags) {
  int fd = open(path, flags);
  if (fd < 0) PS_FAIL(PS_ERR_IO, "cannot open '%s' to fsync: %s", path, strerror(errno));
  int r = fsync(fd);
  int e = errno;
  close(fd);
  // Some file systems refuse fsync on a directory (EINVAL): the rename is still atomic there.
  if (r && !(e == EINVAL && (flags & O_DIRECTORY))) PS_FAIL(PS_ERR_IO, "fsync '%s' failed: %s", path, strerror(e));
  return PS_OK;
}

ps_status ps_ckpt_write_atomic(const char *dir, const char *name, ps_ckpt_write_fn write, void *ctx) {
  char tmp[PS_CKPT_PATH_MAX], final[PS_CKPT_PATH_MAX];
  PS_REQUIRE(!strchr(name, '/'), "checkpoint name '%s' must be a plain file name", name);
  PS_TRY(ps_ckpt_mkdirs(dir));
  snprintf(tmp, sizeof tmp, "%s/%s%ld-%s", dir, tmp_prefix, (long)getpid(), name);
  snprintf(final, sizeof final, "%s/%s", dir, name);
  ps_status s = write(tmp, ctx);
  if (s == PS_OK) s = fsync_path(tmp, O_RDONLY);
  if (s == PS_OK && rename(tmp, final))
    s = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "cannot rename '%s' to '%s': %s", tmp, final, strerror(errno));
  if (s != PS_OK) {
    unlink(tmp); // nothing half-written stays behind
    return ps_error_wrap(s, "writing checkpoint '%s'", final);
  }
  return fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

// "ckpt-0000000123.h5" -> 123; -1 for any other name.
static int64_t parse_step_name(const char *name) {
  const char *p = name;
  if (strncmp(p, "ckpt-", 5)) return -1;
  p += 5;
  int64_t v = 0;
  int digits = 0;
  for (; *p >= '0' && *p <= '9'; p++, digits++) v = v * 10 + (*p - '0');
  if (digits == 0 || strcmp(p, ".h5")) return -1;
  return v;
}

typedef struct {
  int64_t step;
  char name[256];
} entry;

static int newest_first(const void *a, const void *b) {
  int64_t x = ((const entry *)a)->step, y = ((const entry *)b)->step;
  return (x < y) - (x > y);
}

ps_status ps_ckpt_list(const char *dir, char (*paths)[PS_CKPT_PATH_MAX], int64_t *steps, int max, int *count) {
  *count = 0;
  DIR *d = opendir(dir);
  if (!d) {
    if (errno == ENOENT) return PS_OK;
    PS_FAIL(PS_ERR_IO, "cannot list checkpoint directory '%s': %s", dir, strerror(errno));
  }
  entry *all = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    int64_t st = parse_step_name(e->d_name);
    if (st < 0 || strlen(e->d_name) >= sizeof all[0].name) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      entry *bigger = realloc(all, cap * sizeof *all);
      if (!bigger) {
        free(all);
        closedir(d);
        PS_FAIL(PS_ERR_MEM, "listing '%s'", dir);
      }
      all = bigger;
    }
    all[n].step = st;
    snprintf(all[n].name, sizeof all[n].name, "%s", e->d_name);
    n++;
  }
  closedir(d);
  if (n) qsort(all, n, sizeof *all, newest_first);
  for (size_t i = 0; i < n && (int)i < max; i++) {
    steps[i] = all[i].step;
    snprintf(paths[i], PS_CKPT_PATH_MAX, "%s/%s", dir, all[i].name);
    (*count)++;
  }
  free(all);
  return PS_OK;
}

enum { LIST_MAX = 4096 };

ps_status ps_ckpt_save_step(const char *dir, int64_t step, int keep, ps_ckpt_write_fn write, void *ctx,
                            char *out_path) {
  char name[64];
  PS_REQUIRE(step >= 0 && keep >= 1, "step %lld, keep %d", (long long)step, keep);
  snprintf(name, sizeof name, "ckpt-%010lld.h5", (long long)step);
  PS_TRY(ps_ckpt_write_atomic(dir, name, write, ctx));
  if (out_path) snprintf(out_path, PS_CKPT_PATH_MAX, "%s/%s", dir, name);
  char(*paths)[PS_CKPT_PATH_MAX] = malloc(sizeof *paths * LIST_MAX);
  int64_t *steps = malloc(sizeof *steps * LIST_MAX);
  if (!paths || !steps) {
    free(paths);
    free(steps);
    PS_FAIL(PS_ERR_MEM, "checkpoint list");
  }
  int n = 0;
  ps_status s = ps_ckpt_list(dir, paths, steps, LIST_MAX, &n);
  for (int i = keep; s == PS_OK && i < n; i++)
    if (unlink(paths[i]) && errno != ENOENT)
      s = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "cannot delete old checkpoint '%s': %s", paths[i], strerror(errno));
  free(paths);
  free(steps);
  return s;
}

ps_status ps_ckpt_find_latest_valid(const char *dir, ps_ckpt_verify_fn verify, void *vctx, ps_ckpt_note_fn note,
                                    void *nctx, char *out_path, int *found) {
  *found = 0;
  char(*paths)[PS_CKPT_PATH_MAX] = malloc(sizeof *paths * LIST_MAX);
  int64_t *steps = malloc(sizeof *steps * LIST_MAX);
  if (!paths || !steps) {
    free(paths);
    free(steps);
    PS_FAIL(PS_ERR_MEM, "checkpoint list");
  }
  int n = 0;
  ps_status s = ps_ckpt_list(dir, paths, steps, LIST_MAX, &n);
  for (int i = 0; s == PS_OK && i < n; i++) {
    if (verify(paths[i], vctx) == PS_OK) {
      snprintf(out_path, PS_CKPT_PATH_MAX, "%s", paths[i]);
      *found = 1;
      break;
    }
    if (note) {
      char msg[PS_CKPT_PATH_MAX + 4200];
      snprintf(msg, sizeof msg, "skipping invalid checkpoint %s (%s)%s", paths[i], ps_error_message(),
               i + 1 < n ? "; trying the previous one" : "; no older checkpoint left");
      note(msg, nctx);
    }
  }
  free(paths);
  free(steps);
  ps_error_clear();
  return s;
}

ps_status ps_ckpt_clean_temps(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return PS_OK;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, tmp_prefix, sizeof tmp_prefix - 1)) continue;
    char p[PS_CKPT_PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  closedir(d);
  return PS_OK;
}
