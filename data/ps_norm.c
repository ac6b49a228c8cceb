// Normalization statistics from the training split only.
// Sums are formed per fixed block of NORM_BLOCK training patients (in file order) and each block is
// owned by one rank; an MPI sum over buffers where every block is non-zero on exactly one rank adds
// only zeros, so the statistics are bitwise identical for any rank count.
#include <math.h>
#include <string.h>

#include "ps_data_internal.h"

#define NORM_BLOCK 128
#define STD_FLOOR 1e-6
static const char NORM_MAGIC[8] = {'P', 'S', 'N', 'O', 'R', 'M', '0', '1'};
#define NORM_VERSION 1u

void ps_norm_free(ps_norm *nm) {
  if (!nm) return;
  free(nm->gene_index), free(nm->omics_mean), free(nm->omics_std), free(nm->clin_mean), free(nm->clin_std);
  memset(nm, 0, sizeof *nm);
}

static ps_status norm_alloc(ps_norm *nm, int64_t g_in, int64_t g_sel, int64_t c) {
  memset(nm, 0, sizeof *nm);
  nm->g_in = g_in, nm->g_sel = g_sel, nm->c = c;
  nm->gene_index = ps_xcalloc((size_t)g_sel, sizeof(int32_t));
  nm->omics_mean = ps_xcalloc((size_t)g_sel, sizeof(float));
  nm->omics_std = ps_xcalloc((size_t)g_sel, sizeof(float));
  nm->clin_mean = ps_xcalloc((size_t)c, sizeof(float));
  nm->clin_std = ps_xcalloc((size_t)c, sizeof(float));
  if (!nm->gene_index || !nm->omics_mean || !nm->omics_std || !nm->clin_mean || !nm->clin_std) {
    ps_norm_free(nm);
    PS_FAIL(PS_ERR_MEM, "normalization of %lld genes, %lld clinical columns", (long long)g_sel, (long long)c);
  }
  return PS_OK;
}

typedef struct {
  const double *var;
  int64_t i;
} var_ref;

static int cmp_var_desc(const void *a, const void *b) {
  const var_ref *x = a, *y = b;
  double vx = x->var[x->i], vy = y->var[y->i];
  if (vx != vy) return vx > vy ? -1 : 1;
  return (x->i > y->i) - (x->i < y->i);
}

static int cmp_i32(const void *a, const void *b) { return (*(const int32_t *)a > *(const int32_t *)b) - (*(const int32_t *)a < *(const int32_t *)b); }

ps_status ps_norm_fit(ps_norm *nm, ps_cohort *c, const ps_split *s, int64_t top_genes, MPI_Comm comm) {
  const ps_cohort_info *in = ps_cohort_get_info(c);
  const ps_patients *p = ps_cohort_get_patients(c);
  PS_REQUIRE(s->n == p->n, "normalization: split of %lld patients for a cohort of %lld", (long long)s->n,
             (long long)p->n);
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int64_t g = in->g, cc = in->c;
  int64_t n_train = ps_split_count(s, PS_SPLIT_TRAIN);
  int64_t n_blocks = (n_train + NORM_BLOCK - 1) / NORM_BLOCK;
  // per block: omics sum, sumsq, count (G each) and clinical sum, sumsq, count (C each)
  int64_t stride = 3 * g + 3 * cc;
  double *acc = ps_xcalloc((size_t)(n_blocks * stride), sizeof(double));
  int64_t *train = ps_xcalloc((size_t)n_train, sizeof(int64_t));
  float *om = ps_xcalloc((size_t)(NORM_BLOCK * g), sizeof(float)), *cl = ps_xcalloc((size_t)(NORM_BLOCK * cc), sizeof(float));
  ps_status st = acc && train && om && cl ? PS_OK : ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "normalization sums");
  int64_t k = 0;
  for (int64_t i = 0; st == PS_OK && i < p->n; i++)
    if (s->part[i] == PS_SPLIT_TRAIN) train[k++] = i;
  for (int64_t b = rank; st == PS_OK && b < n_blocks; b += size) {
    int64_t r0 = b * NORM_BLOCK, n = n_train - r0 < NORM_BLOCK ? n_train - r0 : NORM_BLOCK;
    double *a = acc + b * stride;
    st = ps_cohort_read_omics(c, train + r0, n, om);
    if (st == PS_OK) st = ps_cohort_read_clinical(c, train + r0, n, cl);
    for (int64_t i = 0; st == PS_OK && i < n; i++) {
      int64_t pi = train[r0 + i];
      if (p->present[pi * PS_MOD_COUNT + PS_MOD_OMICS])
        for (int64_t j = 0; j < g; j++) {
          double v = om[i * g + j];
          a[j] += v, a[g + j] += v * v, a[2 * g + j] += 1;
        }
      if (p->present[pi * PS_MOD_COUNT + PS_MOD_CLINICAL])
        for (int64_t j = 0; j < cc; j++) {
          double v = cl[i * cc + j];
          if (isnan(v)) continue;
          a[3 * g + j] += v, a[3 * g + cc + j] += v * v, a[3 * g + 2 * cc + j] += 1;
        }
    }
  }
  free(om), free(cl), free(train);
  st = ps_data_agree(comm, st);
  if (st == PS_OK && n_blocks > 0 &&
      MPI_Allreduce(MPI_IN_PLACE, acc, (int)(n_blocks * stride), MPI_DOUBLE, MPI_SUM, comm) != MPI_SUCCESS)
    st = ps_error_set(PS_ERR_MPI, __FILE__, __LINE__, "reducing normalization sums");
  if (st != PS_OK) {
    free(acc);
    return st;
  }
  // blocks summed in block order: identical on every rank and for every rank count
  double *tot = ps_xcalloc((size_t)stride, sizeof(double)), *var = ps_xcalloc((size_t)g, sizeof(double));
  var_ref *order = ps_xcalloc((size_t)g, sizeof *order);
  if (!tot || !var || !order) {
    free(acc), free(tot), free(var), free(order);
    PS_FAIL(PS_ERR_MEM, "normalization totals");
  }
  for (int64_t b = 0; b < n_blocks; b++)
    for (int64_t j = 0; j < stride; j++) tot[j] += acc[b * stride + j];
  free(acc);
  int64_t g_sel = top_genes > 0 && top_genes < g ? top_genes : g;
  st = norm_alloc(nm, g, g_sel, cc);
  double *mean = tot; // reuse
  for (int64_t j = 0; st == PS_OK && j < g; j++) {
    double n = tot[2 * g + j];
    double m = n > 0 ? tot[j] / n : 0, v = n > 1 ? (tot[g + j] - n * m * m) / (n - 1) : 0;
    var[j] = v > 0 ? v : 0;
    mean[j] = m;
    order[j] = (var_ref){var, j};
  }
  if (st == PS_OK) {
    qsort(order, (size_t)g, sizeof *order, cmp_var_desc);
    for (int64_t j = 0; j < g_sel; j++) nm->gene_index[j] = (int32_t)order[j].i;
    qsort(nm->gene_index, (size_t)g_sel, sizeof(int32_t), cmp_i32);
    for (int64_t j = 0; j < g_sel; j++) {
      int32_t gi = nm->gene_index[j];
      double sd = sqrt(var[gi]);
      nm->omics_mean[j] = (float)mean[gi];
      nm->omics_std[j] = (float)(sd > STD_FLOOR ? sd : 1.0);
    }
    for (int64_t j = 0; j < cc; j++) {
      double n = tot[3 * g + 2 * cc + j], s1 = tot[3 * g + j], s2 = tot[3 * g + cc + j];
      double m = n > 0 ? s1 / n : 0, v = n > 1 ? (s2 - n * m * m) / (n - 1) : 0;
      double sd = v > 0 ? sqrt(v) : 0;
      nm->clin_mean[j] = (float)m;
      nm->clin_std[j] = (float)(sd > STD_FLOOR ? sd : 1.0);
    }
  }
  free(tot), free(var), free(order);
  return st;
}

void ps_norm_apply_omics(const ps_norm *nm, const float *raw, int64_t n, float *out) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < nm->g_sel; j++)
      out[i * nm->g_sel + j] = (raw[i * nm->g_in + nm->gene_index[j]] - nm->omics_mean[j]) / nm->omics_std[j];
}

void ps_norm_apply_clinical(const ps_norm *nm, float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < nm->c; j++) {
      float v = x[i * nm->c + j];
      x[i * nm->c + j] = isnan(v) ? 0.0f : (v - nm->clin_mean[j]) / nm->clin_std[j];
    }
}

// Blob: magic[8] u32 version, i64 g_in, g_sel, c, i32 gene_index[g_sel], f32 omics_mean, omics_std [g_sel],
// f32 clin_mean, clin_std [c], u32 crc32 of everything before it. Little-endian host layout.
size_t ps_norm_serialized_size(const ps_norm *nm) {
  return 8 + 4 + 3 * 8 + (size_t)nm->g_sel * 12 + (size_t)nm->c * 8 + 4;
}

ps_status ps_norm_serialize(const ps_norm *nm, void *buf, size_t len) {
  size_t need = ps_norm_serialized_size(nm);
  PS_REQUIRE(len >= need, "normalization blob needs %zu bytes, buffer has %zu", need, len);
  uint8_t *o = buf;
  uint32_t ver = NORM_VERSION;
  memcpy(o, NORM_MAGIC, 8), o += 8;
  memcpy(o, &ver, 4), o += 4;
  int64_t h[3] = {nm->g_in, nm->g_sel, nm->c};
  memcpy(o, h, 24), o += 24;
  memcpy(o, nm->gene_index, (size_t)nm->g_sel * 4), o += nm->g_sel * 4;
  memcpy(o, nm->omics_mean, (size_t)nm->g_sel * 4), o += nm->g_sel * 4;
  memcpy(o, nm->omics_std, (size_t)nm->g_sel * 4), o += nm->g_sel * 4;
  memcpy(o, nm->clin_mean, (size_t)nm->c * 4), o += nm->c * 4;
  memcpy(o, nm->clin_std, (size_t)nm->c * 4), o += nm->c * 4;
  uint32_t crc = ps_data_crc32(buf, (size_t)(o - (uint8_t *)buf));
  memcpy(o, &crc, 4);
  return PS_OK;
}

ps_status ps_norm_deserialize(ps_norm *nm, const void *buf, size_t len) {
  const uint8_t *b = buf;
  if (len < 40 || memcmp(b, NORM_MAGIC, 8) != 0)
    PS_FAIL(PS_ERR_FORMAT, "normalization blob: bad magic (not written by ps_norm_serialize)");
  uint32_t ver;
  memcpy(&ver, b + 8, 4);
  if (ver != NORM_VERSION)
    PS_FAIL(PS_ERR_FORMAT, "normalization blob: version %u, this build reads %u (refit on the training split)", ver,
            NORM_VERSION);
  int64_t h[3];
  memcpy(h, b + 12, 24);
  if (h[0] < 0 || h[1] < 0 || h[2] < 0 || h[1] > h[0] || h[1] > (int64_t)len || h[2] > (int64_t)len)
    PS_FAIL(PS_ERR_FORMAT, "normalization blob: bad sizes");
  ps_norm tmp = {.g_sel = h[1], .c = h[2]};
  size_t need = ps_norm_serialized_size(&tmp);
  if (len < need) PS_FAIL(PS_ERR_FORMAT, "normalization blob: %zu bytes, expected %zu", len, need);
  uint32_t crc;
  memcpy(&crc, b + need - 4, 4);
  if (crc != ps_data_crc32(b, need - 4))
    PS_FAIL(PS_ERR_FORMAT, "normalization blob: checksum mismatch (corrupt checkpoint?)");
  PS_TRY(norm_alloc(nm, h[0], h[1], h[2]));
  const uint8_t *o = b + 36;
  memcpy(nm->gene_index, o, (size_t)h[1] * 4), o += h[1] * 4;
  memcpy(nm->omics_mean, o, (size_t)h[1] * 4), o += h[1] * 4;
  memcpy(nm->omics_std, o, (size_t)h[1] * 4), o += h[1] * 4;
  memcpy(nm->clin_mean, o, (size_t)h[2] * 4), o += h[2] * 4;
  memcpy(nm->clin_std, o, (size_t)h[2] * 4);
  for (int64_t j = 0; j < h[1]; j++)
    if (nm->gene_index[j] < 0 || nm->gene_index[j] >= h[0]) {
      ps_norm_free(nm);
      PS_FAIL(PS_ERR_FORMAT, "normalization blob: gene index out of range");
    }
  return PS_OK;
}
