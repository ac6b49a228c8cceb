// Patient-level splits: stratified k-fold (cohort x event), site-held-out, explicit CSV.
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ps_data_internal.h"
#include "ps_rng.h"

static const char *const part_names[] = {"train", "val", "test", "none"};
_Static_assert(sizeof part_names / sizeof part_names[0] == PS_SPLIT_PART_COUNT, "part_names");
const char *ps_split_part_name(ps_split_part p) { return (p >= 0 && p < PS_SPLIT_PART_COUNT) ? part_names[p] : "?"; }

static ps_status split_alloc(ps_split *s, int64_t n) {
  s->n = n;
  s->part = ps_xcalloc((size_t)n, 1);
  if (!s->part) PS_FAIL(PS_ERR_MEM, "split of %lld patients", (long long)n);
  return PS_OK;
}

void ps_split_free(ps_split *s) {
  if (!s) return;
  free(s->part);
  s->part = NULL;
  s->n = 0;
}

int64_t ps_split_count(const ps_split *s, ps_split_part part) {
  int64_t k = 0;
  for (int64_t i = 0; i < s->n; i++) k += s->part[i] == part;
  return k;
}

// Assigns a fold in [0, k) to every patient: within each (cohort, event) stratum patients are shuffled and dealt
// round-robin, continuing the deal across strata so fold sizes differ by at most one.
static ps_status stratified_folds(const ps_patients *p, int k, uint64_t seed, int32_t *fold, const uint8_t *skip) {
  int32_t max_c = 0;
  for (int64_t i = 0; i < p->n; i++) max_c = p->cohort[i] > max_c ? p->cohort[i] : max_c;
  int64_t *members = ps_xcalloc((size_t)p->n, sizeof(int64_t)), *perm = ps_xcalloc((size_t)p->n, sizeof(int64_t));
  if (!members || !perm) {
    free(members), free(perm);
    PS_FAIL(PS_ERR_MEM, "split strata");
  }
  int64_t dealt = 0;
  for (int32_t c = 0; c <= max_c; c++)
    for (int e = 0; e < 2; e++) {
      int64_t m = 0;
      for (int64_t i = 0; i < p->n; i++)
        if (p->cohort[i] == c && p->event[i] == e && !(skip && skip[i])) members[m++] = i;
      if (!m) continue;
      ps_rng r = ps_rng_make(seed, ps_rng_stream(PS_RNG_SPLIT, (uint64_t)c, (uint64_t)e, 0));
      ps_rng_permutation(&r, perm, m);
      for (int64_t j = 0; j < m; j++) fold[members[perm[j]]] = (int32_t)((dealt + j) % k);
      dealt += m;
    }
  free(members), free(perm);
  return PS_OK;
}

ps_status ps_split_kfold(ps_split *s, const ps_patients *p, int k, int fold, uint64_t seed) {
  PS_REQUIRE(k >= 2 && fold >= 0 && fold < k, "k-fold split: need k >= 2 and 0 <= fold < k (k = %d, fold = %d)", k,
             fold);
  PS_REQUIRE(p->n >= k, "k-fold split: %lld patients cannot fill %d folds", (long long)p->n, k);
  PS_TRY(split_alloc(s, p->n));
  int32_t *f = ps_xcalloc((size_t)p->n, sizeof(int32_t));
  if (!f) PS_FAIL(PS_ERR_MEM, "folds");
  ps_status st = stratified_folds(p, k, seed, f, NULL);
  for (int64_t i = 0; st == PS_OK && i < p->n; i++)
    s->part[i] = f[i] == fold ? PS_SPLIT_TEST : (k > 2 && f[i] == (fold + 1) % k) ? PS_SPLIT_VAL : PS_SPLIT_TRAIN;
  free(f);
  if (st != PS_OK) ps_split_free(s);
  return st;
}

ps_status ps_split_sites(ps_split *s, const ps_patients *p, const int32_t *test_sites, int n_test_sites,
                         double val_fraction, uint64_t seed) {
  PS_REQUIRE(n_test_sites >= 1, "site-held-out split: name at least one test site");
  PS_REQUIRE(val_fraction >= 0 && val_fraction < 1, "site-held-out split: val fraction %g outside [0, 1)", val_fraction);
  PS_TRY(split_alloc(s, p->n));
  uint8_t *held = ps_xcalloc((size_t)p->n, 1);
  int32_t *f = ps_xcalloc((size_t)p->n, sizeof(int32_t));
  if (!held || !f) {
    free(held), free(f), ps_split_free(s);
    PS_FAIL(PS_ERR_MEM, "site split");
  }
  int64_t n_held = 0;
  for (int64_t i = 0; i < p->n; i++)
    for (int j = 0; j < n_test_sites; j++)
      if (p->site[i] == test_sites[j]) held[i] = 1;
  for (int64_t i = 0; i < p->n; i++) n_held += held[i];
  ps_status st = PS_OK;
  if (n_held == 0 || n_held == p->n)
    st = ps_error_set(PS_ERR_ARG, __FILE__, __LINE__, "site-held-out split: the test sites hold %lld of %lld patients "
                      "(need some in test and some left for training)", (long long)n_held, (long long)p->n);
  // validation: a stratified 1/k of the remaining patients with k = round(1 / val_fraction)
  int k = val_fraction > 0 ? (int)(1.0 / val_fraction + 0.5) : 0;
  if (st == PS_OK && k >= 2) st = stratified_folds(p, k, seed, f, held);
  for (int64_t i = 0; st == PS_OK && i < p->n; i++)
    s->part[i] = held[i] ? PS_SPLIT_TEST : (k >= 2 && f[i] == 0) ? PS_SPLIT_VAL : PS_SPLIT_TRAIN;
  free(held), free(f);
  if (st != PS_OK) ps_split_free(s);
  return st;
}

typedef struct {
  const char *id;
  int64_t i;
} id_index;

static int cmp_idx(const void *a, const void *b) {
  const id_index *x = a, *y = b;
  int c = strncmp(x->id, y->id, PS_DATA_ID_LEN);
  return c ? c : (x->i > y->i) - (x->i < y->i);
}

static int64_t find_id(const id_index *sorted, int64_t n, const char *id) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    int c = strncmp(sorted[mid].id, id, PS_DATA_ID_LEN);
    if (c == 0) return sorted[mid].i;
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s) || *s == '"') s++;
  size_t n = strlen(s);
  while (n && (isspace((unsigned char)s[n - 1]) || s[n - 1] == '"')) s[--n] = '\0';
  return s;
}

ps_status ps_split_from_csv(ps_split *s, const ps_patients *p, const char *path, int fold) {
  FILE *f = fopen(path, "r");
  if (!f) PS_FAIL(PS_ERR_IO, "split CSV %s: %s", path, strerror(errno));
  PS_TRY(split_alloc(s, p->n));
  id_index *idx = ps_xcalloc((size_t)p->n, sizeof *idx);
  int32_t *val = ps_xcalloc((size_t)p->n, sizeof(int32_t));
  uint8_t *seen = ps_xcalloc((size_t)p->n, 1);
  ps_status st = idx && val && seen ? PS_OK : ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "split CSV");
  for (int64_t i = 0; st == PS_OK && i < p->n; i++) idx[i] = (id_index){p->id[i], i};
  if (st == PS_OK) qsort(idx, (size_t)p->n, sizeof *idx, cmp_idx);
  char line[1024];
  int64_t lineno = 0;
  int mode = -1; // 0: names, 1: fold numbers
  int32_t max_fold = -1;
  while (st == PS_OK && fgets(line, sizeof line, f)) {
    lineno++;
    char *sep = strpbrk(line, ",\t");
    char *t = trim(line);
    if (!*t || *t == '#') continue;
    if (!sep) {
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "split CSV %s line %lld: expected 'id,split'", path,
                        (long long)lineno);
      break;
    }
    *sep = '\0';
    char *id = trim(line), *v = trim(sep + 1);
    int this_mode;
    int32_t code;
    char *end;
    long num = strtol(v, &end, 10);
    if (*v && !*end && num >= 0 && num < 1000) this_mode = 1, code = (int32_t)num;
    else if (!strcmp(v, "train")) this_mode = 0, code = PS_SPLIT_TRAIN;
    else if (!strcmp(v, "val") || !strcmp(v, "valid") || !strcmp(v, "validation")) this_mode = 0, code = PS_SPLIT_VAL;
    else if (!strcmp(v, "test")) this_mode = 0, code = PS_SPLIT_TEST;
    else if (lineno == 1) continue; // header
    else {
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "split CSV %s line %lld: split '%s' is not train, val, "
                        "test or a fold number", path, (long long)lineno, v);
      break;
    }
    if (mode >= 0 && this_mode != mode) {
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "split CSV %s line %lld: mixes fold numbers and "
                        "train/val/test names", path, (long long)lineno);
      break;
    }
    mode = this_mode;
    int64_t pi = find_id(idx, p->n, id);
    if (pi < 0) {
      st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "split CSV %s line %lld: id '%s' is not in the cohort file",
                        path, (long long)lineno, id);
      break;
    }
    if (seen[pi] && val[pi] != code) {
      st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "split CSV %s line %lld: patient '%s' is listed in two "
                        "splits (leakage)", path, (long long)lineno, id);
      break;
    }
    seen[pi] = 1, val[pi] = code;
    if (code > max_fold) max_fold = code;
  }
  fclose(f);
  if (st == PS_OK && mode < 0) st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "split CSV %s: no rows", path);
  int k = max_fold + 1;
  if (st == PS_OK && mode == 1 && (fold < 0 || fold >= k))
    st = ps_error_set(PS_ERR_ARG, __FILE__, __LINE__, "split CSV %s: fold %d outside the file's folds [0, %d)", path,
                      fold, k);
  for (int64_t i = 0; st == PS_OK && i < p->n; i++) {
    if (!seen[i]) s->part[i] = PS_SPLIT_NONE;
    else if (mode == 0) s->part[i] = (uint8_t)val[i];
    else s->part[i] = val[i] == fold ? PS_SPLIT_TEST : (k > 2 && val[i] == (fold + 1) % k) ? PS_SPLIT_VAL : PS_SPLIT_TRAIN;
  }
  free(idx), free(val), free(seen);
  if (st != PS_OK) ps_split_free(s);
  return st;
}

ps_status ps_split_check(const ps_split *s, const ps_patients *p) {
  PS_REQUIRE(s->n == p->n, "split covers %lld patients, the cohort has %lld", (long long)s->n, (long long)p->n);
  for (int64_t i = 0; i < s->n; i++)
    if (s->part[i] >= PS_SPLIT_PART_COUNT)
      PS_FAIL(PS_ERR_INTERNAL, "split: patient %.*s has part code %d", PS_DATA_ID_LEN, p->id[i], s->part[i]);
  // The same id twice (a patient stored in two rows) in different parts is leakage.
  id_index *idx = ps_xcalloc((size_t)p->n, sizeof *idx);
  if (!idx) PS_FAIL(PS_ERR_MEM, "split check");
  for (int64_t i = 0; i < p->n; i++) idx[i] = (id_index){p->id[i], i};
  qsort(idx, (size_t)p->n, sizeof *idx, cmp_idx);
  for (int64_t i = 1; i < p->n; i++)
    if (!strncmp(idx[i].id, idx[i - 1].id, PS_DATA_ID_LEN) && s->part[idx[i].i] != s->part[idx[i - 1].i]) {
      ps_status st = ps_error_set(PS_ERR_DATA, __FILE__, __LINE__, "split leakage: patient %.*s is in %s (row %lld) "
                                  "and in %s (row %lld)", PS_DATA_ID_LEN, idx[i].id,
                                  ps_split_part_name((ps_split_part)s->part[idx[i - 1].i]), (long long)idx[i - 1].i,
                                  ps_split_part_name((ps_split_part)s->part[idx[i].i]), (long long)idx[i].i);
      free(idx);
      return st;
    }
  free(idx);
  if (ps_split_count(s, PS_SPLIT_TRAIN) == 0) PS_FAIL(PS_ERR_DATA, "split: the training part is empty");
  return PS_OK;
}
