// The sharded batch loader. The plan of global batches is a pure function of (seed, epoch, split), the
// same on every rank; rank r of P takes positions [gb*r/P, gb*(r+1)/P) of each global batch, and every
// patient's tensors depend only on (seed, epoch, patient), so the concatenated shares are bitwise
// identical for any rank count. Reads are independent (no collectives per step).
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ps_data_internal.h"
#include "ps_rng.h"
#include "ps_tensor.h"

static const char *const sampler_names[] = {"uniform", "stratified", "event_balanced", "sequential"};
_Static_assert(sizeof sampler_names / sizeof sampler_names[0] == PS_SAMPLER_COUNT, "sampler_names");
const char *ps_sampler_name(ps_sampler s) { return (s >= 0 && s < PS_SAMPLER_COUNT) ? sampler_names[s] : "?"; }
ps_status ps_sampler_parse(const char *s, ps_sampler *out) {
  for (int i = 0; i < PS_SAMPLER_COUNT; i++)
    if (!strcmp(s, sampler_names[i])) {
      *out = (ps_sampler)i;
      return PS_OK;
    }
  PS_FAIL(PS_ERR_CONFIG, "unknown sampler '%s' (expected uniform, stratified, event_balanced or sequential)", s);
}

ps_loader_options ps_loader_defaults(void) {
  return (ps_loader_options){.part = PS_SPLIT_TRAIN, .batch_size = 32, .tiles = 8, .bag = PS_BAG_SAMPLE,
                             .sampler = PS_SAMPLER_UNIFORM, .min_per_stratum = 2, .min_events = 1, .augment = true,
                             .drop_last = false, .prefetch = true, .seed = 1};
}

// Per-channel normalization of tiles (H&E-typical means/SDs of RGB in [0, 1]).
static const float TILE_MEAN[3] = {0.70f, 0.55f, 0.70f};
static const float TILE_STD[3] = {0.15f, 0.20f, 0.15f};

typedef enum { JOB_IDLE = 0, JOB_PENDING, JOB_DONE, JOB_QUIT } job_state;

struct ps_loader {
  ps_cohort *c;
  const ps_split *split;
  const ps_norm *nm;
  ps_loader_options o;
  int rank, size;
  ps_cohort_info info;
  const ps_patients *p;
  // plan
  int64_t n_part;       // patients in the part
  int64_t *members;     // (n_part) their indices, ascending
  int64_t *order;       // (n_part) this epoch's order
  int64_t *batch_start; // (steps + 1) global batch boundaries in `order`
  int64_t steps, epoch, step;
  int64_t *scratch_i64; // (n_part) plan scratch
  // buffers (one arena)
  ps_arena arena;
  ps_batch buf[2];
  float *raw_omics;     // (b_max, G)
  uint8_t *raw_tile;    // (S, S, 3)
  int64_t *tile_rows;   // (b_max * K)
  // reading handle: the cohort's MPI-IO one, or a private POSIX one for the prefetch thread
  ps_h5_bulk own;
  bool own_open;
  ps_h5_bulk *bulk;
  // prefetch
  bool thread_started;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  job_state job;
  int job_buf;
  int64_t job_step;
  ps_status job_status;
  char job_msg[1024];
  int cur;
  double stall_s;
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---- the plan -------------------------------------------------------------------------------------

static void shuffle(int64_t *a, int64_t n, const ps_rng *r, int64_t *tmp) {
  ps_rng_permutation(r, tmp, n);
  for (int64_t i = 0; i < n; i++) tmp[i] = a[tmp[i]];
  memcpy(a, tmp, (size_t)n * sizeof *a);
}

static ps_status plan_epoch(ps_loader *l, int64_t epoch) {
  const ps_patients *p = l->p;
  int64_t n = l->n_part, B = l->o.batch_size;
  int64_t *ord = l->order, *tmp = l->scratch_i64;
  memcpy(ord, l->members, (size_t)n * sizeof *ord);
  ps_rng r = ps_rng_make(l->o.seed, ps_rng_stream(PS_RNG_SHUFFLE, (uint64_t)epoch, 0, 0));
  int64_t nb = 0;
  if (l->o.sampler == PS_SAMPLER_UNIFORM || l->o.sampler == PS_SAMPLER_SEQUENTIAL) {
    if (l->o.sampler == PS_SAMPLER_UNIFORM) shuffle(ord, n, &r, tmp);
    nb = l->o.drop_last ? n / B : (n + B - 1) / B;
    for (int64_t i = 0; i <= nb; i++) l->batch_start[i] = i * B < n ? i * B : n;
    if (l->o.drop_last) l->batch_start[nb] = nb * B;
  } else if (l->o.sampler == PS_SAMPLER_EVENT_BALANCED) {
    // events and censored shuffled separately, then dealt so every batch gets floor or ceil of its share
    int64_t ne = 0, nc = 0;
    for (int64_t i = 0; i < n; i++)
      if (p->event[ord[i]]) tmp[ne++] = ord[i];
    for (int64_t i = 0; i < n; i++)
      if (!p->event[ord[i]]) tmp[ne + nc++] = ord[i];
    ps_rng re = ps_rng_make(l->o.seed, ps_rng_stream(PS_RNG_SHUFFLE, (uint64_t)epoch, 1, 0));
    ps_rng rc = ps_rng_make(l->o.seed, ps_rng_stream(PS_RNG_SHUFFLE, (uint64_t)epoch, 2, 0));
    shuffle(tmp, ne, &re, ord);
    shuffle(tmp + ne, nc, &rc, ord);
    nb = l->o.drop_last ? n / B : (n + B - 1) / B; // drop_last with n < B: no batch at all
    int64_t used = l->o.drop_last ? nb * B : n, ie = 0, ic = 0, pos = 0;
    for (int64_t b = 0; b < nb; b++) {
      int64_t size = (b + 1) * used / nb - b * used / nb;
      int64_t e_want = (b + 1) * ne / nb - b * ne / nb;
      if (e_want > size) e_want = size;
      l->batch_start[b] = pos;
      for (int64_t k = 0; k < size; k++) {
        bool take_event = (k < e_want && ie < ne) || ic >= nc;
        ord[pos++] = take_event ? tmp[ie++] : tmp[ne + ic++];
      }
    }
    l->batch_start[nb] = pos;
  } else { // stratified: chunks of >= m patients of one cohort, chunks shuffled, packed whole into batches
    int64_t m = l->o.min_per_stratum, nch = 0, pos = 0;
    int32_t max_c = 0;
    for (int64_t i = 0; i < n; i++) max_c = p->cohort[ord[i]] > max_c ? p->cohort[ord[i]] : max_c;
    // chunk boundaries stored in batch_start temporarily (at most n chunks)
    int64_t *chunk_start = l->batch_start + 0;
    int64_t *chunk_len = tmp + n; // scratch has room for 3n
    int64_t *sorted = tmp + 2 * n;
    for (int32_t c = 0; c <= max_c; c++) {
      int64_t k = 0;
      for (int64_t i = 0; i < n; i++)
        if (p->cohort[ord[i]] == c) sorted[pos + k++] = ord[i];
      if (!k) continue;
      ps_rng rs = ps_rng_make(l->o.seed, ps_rng_stream(PS_RNG_SHUFFLE, (uint64_t)epoch, 3, (uint64_t)c));
      shuffle(sorted + pos, k, &rs, tmp);
      int64_t nchunks = k / m > 0 ? k / m : 1;
      for (int64_t j = 0; j < nchunks; j++) {
        chunk_start[nch] = pos + j * k / nchunks;
        chunk_len[nch] = (j + 1) * k / nchunks - j * k / nchunks;
        nch++;
      }
      pos += k;
    }
    ps_rng rp = ps_rng_make(l->o.seed, ps_rng_stream(PS_RNG_SHUFFLE, (uint64_t)epoch, 4, 0));
    ps_rng_permutation(&rp, tmp, nch); // tmp[0..nch) = chunk order (tmp's first n free again)
    // whole chunks per batch, so global batch sizes vary (drop_last does not apply here)
    int64_t out = 0, bstart = 0;
    int64_t *starts = ps_xcalloc((size_t)nch + 2, sizeof(int64_t)); // once per epoch, not per step
    if (!starts) PS_FAIL(PS_ERR_MEM, "stratified plan");
    for (int64_t j = 0; j < nch; j++) {
      int64_t ch = tmp[j];
      if (out - bstart + chunk_len[ch] > B && out > bstart) starts[nb++] = bstart, bstart = out;
      for (int64_t k = 0; k < chunk_len[ch]; k++) ord[out++] = sorted[chunk_start[ch] + k];
    }
    if (out > bstart) starts[nb++] = bstart;
    starts[nb] = out;
    memcpy(l->batch_start, starts, (size_t)(nb + 1) * sizeof(int64_t));
    free(starts);
  }
  l->steps = nb;
  l->epoch = epoch;
  l->step = 0;
  return PS_OK;
}

ps_status ps_loader_global_batch(const ps_loader *l, int64_t epoch, int64_t step, int64_t *idx, int64_t *n) {
  PS_REQUIRE(epoch == l->epoch, "ps_loader_global_batch: epoch %lld is not the current one (%lld)", (long long)epoch,
             (long long)l->epoch);
  PS_REQUIRE(step >= 0 && step < l->steps, "step %lld outside [0, %lld)", (long long)step, (long long)l->steps);
  *n = l->batch_start[step + 1] - l->batch_start[step];
  memcpy(idx, l->order + l->batch_start[step], (size_t)*n * sizeof(int64_t));
  return PS_OK;
}

int64_t ps_loader_steps_per_epoch(const ps_loader *l) { return l->steps; }
double ps_loader_stall_seconds(const ps_loader *l) { return l->stall_s; }

// ---- filling one batch ----------------------------------------------------------------------------

// Tile transform: flips, 90-degree rotation, then brightness/contrast/hue jitter, then normalization.
typedef struct {
  int rot, flip_x;
  float bright, contrast;
  float hue[9]; // RGB rotation about the grey axis
} tile_aug;

static void make_aug(tile_aug *a, const ps_loader *l, int64_t patient, int slot) {
  memset(a, 0, sizeof *a);
  a->contrast = 1.0f;
  for (int i = 0; i < 3; i++) a->hue[i * 3 + i] = 1.0f;
  if (!l->o.augment) return;
  ps_rng r = ps_rng_make(l->o.seed, ps_rng_stream(PS_RNG_AUGMENT, (uint64_t)l->epoch, (uint64_t)patient, (uint64_t)slot));
  a->rot = (int)ps_rng_below(&r, 0, 4);
  a->flip_x = ps_rng_u32(&r, 4) & 1u;
  a->bright = 0.2f * ps_rng_uniform(&r, 5) - 0.1f;
  a->contrast = 0.8f + 0.4f * ps_rng_uniform(&r, 6);
  // hue: rotation by theta about (1,1,1)/sqrt(3) (Rodrigues), |theta| <= 0.1 rad
  float th = 0.2f * ps_rng_uniform(&r, 7) - 0.1f, cs = cosf(th), sn = sinf(th), k = 1.0f / 3.0f,
        q = sqrtf(k) * sn;
  float d = cs + k * (1 - cs), o1 = k * (1 - cs) - q, o2 = k * (1 - cs) + q;
  float m[9] = {d, o1, o2, o2, d, o1, o1, o2, d};
  memcpy(a->hue, m, sizeof m);
}

static void transform_tile(const uint8_t *src, int s, const tile_aug *a, float *dst /* (3, S, S) */) {
  size_t plane = (size_t)s * s;
  for (int y = 0; y < s; y++)
    for (int x = 0; x < s; x++) {
      // output (y, x) <- source after flip then rotation by rot * 90 degrees
      int sx = a->flip_x ? s - 1 - x : x, sy = y, tx, ty;
      switch (a->rot) {
      case 1: tx = sy, ty = s - 1 - sx; break;
      case 2: tx = s - 1 - sx, ty = s - 1 - sy; break;
      case 3: tx = s - 1 - sy, ty = sx; break;
      default: tx = sx, ty = sy; break;
      }
      const uint8_t *px = src + ((size_t)ty * s + tx) * 3;
      float v[3] = {px[0] * (1.0f / 255.0f), px[1] * (1.0f / 255.0f), px[2] * (1.0f / 255.0f)};
      for (int ch = 0; ch < 3; ch++) {
        float h = a->hue[ch * 3] * v[0] + a->hue[ch * 3 + 1] * v[1] + a->hue[ch * 3 + 2] * v[2];
        h = (h - 0.5f) * a->contrast + 0.5f + a->bright;
        dst[ch * plane + (size_t)y * s + x] = (h - TILE_MEAN[ch]) / TILE_STD[ch];
      }
    }
}

// Bag of one patient: tile rows into rows[0..K), returns the valid count.
static int pick_tiles(const ps_loader *l, int64_t patient, int64_t *rows) {
  int64_t first = l->p->offset[patient], have = l->p->offset[patient + 1] - first;
  int k = l->o.tiles;
  if (have <= 0) return 0;
  ps_rng r = ps_rng_make(l->o.seed, ps_rng_stream(PS_RNG_TILES, (uint64_t)l->epoch, (uint64_t)patient, 0));
  if (have >= k) { // without replacement: rejection of repeats (k is small), counter-indexed draws
    uint64_t ctr = 0;
    for (int i = 0; i < k; i++) {
      int64_t j = -1;
      for (int tries = 0; tries < 64 && j < 0; tries++) {
        j = (int64_t)ps_rng_below(&r, ctr++, (uint64_t)have);
        for (int q = 0; q < i; q++)
          if (rows[q] == j) {
            j = -1;
            break;
          }
      }
      for (int64_t cand = 0; j < 0; cand++) { // astronomically rare: smallest index not chosen yet
        j = cand;
        for (int q = 0; q < i; q++)
          if (rows[q] == cand) j = -1;
      }
      rows[i] = j;
    }
    for (int i = 0; i < k; i++) rows[i] += first;
    return k;
  }
  if (l->o.bag == PS_BAG_ALL) {
    for (int64_t i = 0; i < have; i++) rows[i] = first + i;
    return (int)have;
  }
  for (int i = 0; i < k; i++) rows[i] = first + (int64_t)ps_rng_below(&r, (uint64_t)i, (uint64_t)have);
  return k;
}

static ps_status fill_batch(ps_loader *l, ps_batch *bt, int64_t step) {
  int64_t s0 = l->batch_start[step], gb = l->batch_start[step + 1] - s0;
  int64_t lo = gb * l->rank / l->size, hi = gb * (l->rank + 1) / l->size, b = hi - lo;
  bt->epoch = l->epoch, bt->step = step, bt->b = b, bt->global_b = gb, bt->global_first = lo;
  const ps_patients *p = l->p;
  for (int64_t i = 0; i < b; i++) {
    int64_t pi = l->order[s0 + lo + i];
    bt->index[i] = pi, bt->time[i] = p->time[pi], bt->event[i] = p->event[pi];
    bt->cohort[i] = p->cohort[pi], bt->site[i] = p->site[pi];
    memcpy(bt->present + i * PS_MOD_COUNT, p->present + pi * PS_MOD_COUNT, PS_MOD_COUNT);
  }
  int64_t G = l->info.g, C = l->info.c;
  PS_TRY(ps_h5_read_rows(l->bulk->omics, l->bulk->dxpl, H5T_NATIVE_FLOAT, bt->index, b, G, 2, l->raw_omics,
                         "/omics/rnaseq"));
  ps_norm_apply_omics(l->nm, l->raw_omics, b, bt->omics);
  PS_TRY(ps_h5_read_rows(l->bulk->clinical, l->bulk->dxpl, H5T_NATIVE_FLOAT, bt->index, b, C, 2, bt->clinical,
                         "/clinical/x"));
  ps_norm_apply_clinical(l->nm, bt->clinical, b);
  for (int64_t i = 0; i < b; i++) {
    if (!bt->present[i * PS_MOD_COUNT + PS_MOD_OMICS]) memset(bt->omics + i * bt->gs, 0, (size_t)bt->gs * sizeof(float));
    if (!bt->present[i * PS_MOD_COUNT + PS_MOD_CLINICAL]) memset(bt->clinical + i * C, 0, (size_t)C * sizeof(float));
  }
  if (l->info.slides == PS_SLIDES_NONE) {
    memset(bt->n_tiles, 0, (size_t)b * sizeof(int32_t));
    memset(bt->tile_mask, 0, (size_t)(b * bt->k));
    return PS_OK;
  }
  int64_t K = bt->k, S = bt->s, F = bt->f;
  size_t tile_elems = (size_t)3 * S * S;
  for (int64_t i = 0; i < b; i++) {
    int64_t *rows = l->tile_rows + i * K;
    int nv = pick_tiles(l, bt->index[i], rows);
    bt->n_tiles[i] = nv;
    for (int64_t j = 0; j < K; j++) bt->tile_mask[i * K + j] = j < nv;
    if (l->info.slides == PS_SLIDES_TILES) {
      for (int64_t j = 0; j < K; j++) {
        float *dst = bt->tiles + ((size_t)i * K + j) * tile_elems;
        if (j >= nv) {
          memset(dst, 0, tile_elems * sizeof(float));
          continue;
        }
        PS_TRY(ps_h5_read_rows(l->bulk->tiles, l->bulk->dxpl, H5T_NATIVE_UINT8, rows + j, 1, (int64_t)tile_elems, 4,
                               l->raw_tile, "/slides/tiles"));
        tile_aug a;
        make_aug(&a, l, bt->index[i], (int)j);
        transform_tile(l->raw_tile, (int)S, &a, dst);
      }
    } else {
      float *dst = bt->features + (size_t)i * K * F;
      PS_TRY(ps_h5_read_rows(l->bulk->features, l->bulk->dxpl, H5T_NATIVE_FLOAT, rows, nv, F, 2, dst,
                             "/slides/features"));
      memset(dst + (size_t)nv * F, 0, (size_t)(K - nv) * F * sizeof(float));
    }
  }
  return PS_OK;
}

// ---- prefetch thread ------------------------------------------------------------------------------

static void *worker(void *arg) {
  ps_loader *l = arg;
  pthread_mutex_lock(&l->mu);
  for (;;) {
    while (l->job != JOB_PENDING && l->job != JOB_QUIT) pthread_cond_wait(&l->cv, &l->mu);
    if (l->job == JOB_QUIT) break;
    int bi = l->job_buf;
    int64_t step = l->job_step;
    pthread_mutex_unlock(&l->mu);
    ps_status st = fill_batch(l, &l->buf[bi], step);
    pthread_mutex_lock(&l->mu);
    l->job_status = st;
    if (st != PS_OK) snprintf(l->job_msg, sizeof l->job_msg, "%s", ps_error_message());
    l->job = JOB_DONE;
    pthread_cond_broadcast(&l->cv);
  }
  pthread_mutex_unlock(&l->mu);
  return NULL;
}

static void launch_job(ps_loader *l, int bi, int64_t step) {
  pthread_mutex_lock(&l->mu);
  l->job = JOB_PENDING, l->job_buf = bi, l->job_step = step;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
}

static ps_status wait_job(ps_loader *l) {
  pthread_mutex_lock(&l->mu);
  while (l->job == JOB_PENDING) pthread_cond_wait(&l->cv, &l->mu);
  ps_status st = PS_OK;
  if (l->job == JOB_DONE) {
    st = l->job_status;
    l->job = JOB_IDLE;
  }
  pthread_mutex_unlock(&l->mu);
  if (st != PS_OK) return ps_error_set(st, __FILE__, __LINE__, "prefetch: %s", l->job_msg);
  return PS_OK;
}

ps_status ps_loader_quiesce(ps_loader *l) {
  if (!l->thread_started) return PS_OK;
  pthread_mutex_lock(&l->mu);
  while (l->job == JOB_PENDING) pthread_cond_wait(&l->cv, &l->mu);
  pthread_mutex_unlock(&l->mu);
  return PS_OK; // a finished job's status is reported by the ps_loader_next that consumes it
}

// ---- lifecycle ------------------------------------------------------------------------------------

static ps_status alloc_batches(ps_loader *l) {
  int64_t bmax = (l->o.batch_size + l->size - 1) / l->size;
  int64_t gs = l->nm->g_sel, C = l->info.c, K = l->o.tiles, S = l->info.tile_size, F = l->info.feat_dim;
  bool tiles = l->info.slides == PS_SLIDES_TILES, feats = l->info.slides == PS_SLIDES_FEATURES;
  size_t per = ps_arena_footprint((size_t)bmax * 8) * 3 + ps_arena_footprint((size_t)bmax) +
               ps_arena_footprint((size_t)bmax * 4) * 3 + ps_arena_footprint((size_t)bmax * PS_MOD_COUNT) +
               ps_arena_footprint((size_t)(bmax * gs) * 4) + ps_arena_footprint((size_t)(bmax * C) * 4) +
               ps_arena_footprint((size_t)(bmax * K)) +
               (tiles ? ps_arena_footprint((size_t)(bmax * K) * 3 * S * S * 4) : 0) +
               (feats ? ps_arena_footprint((size_t)(bmax * K * F) * 4) : 0);
  size_t extra = 64 * 64 + ps_arena_footprint((size_t)(bmax * l->info.g) * 4) + ps_arena_footprint((size_t)S * S * 3 + 1) +
                 ps_arena_footprint((size_t)(bmax * K) * 8);
  PS_TRY(ps_arena_init(&l->arena, "loader batches", PS_CPU, 2 * (per + 64 * 16) + extra));
  for (int i = 0; i < 2; i++) {
    ps_batch *b = &l->buf[i];
    b->b_max = bmax, b->gs = gs, b->c = C, b->k = K, b->s = tiles ? S : 0, b->f = feats ? F : 0;
    void *v;
#define A(field, bytes)                                                                            \
  do {                                                                                             \
    size_t nb_ = (size_t)(bytes);                                                                  \
    PS_TRY(ps_arena_alloc_bytes(&l->arena, nb_ ? nb_ : 1, &v));                                    \
    b->field = v;                                                                                  \
  } while (0)
    A(index, bmax * 8);
    A(time, bmax * 8);
    A(event, bmax);
    A(cohort, bmax * 4);
    A(site, bmax * 4);
    A(present, bmax * PS_MOD_COUNT);
    A(omics, bmax * gs * 4);
    A(clinical, bmax * C * 4);
    A(n_tiles, bmax * 4);
    A(tile_mask, bmax * K);
    if (tiles) A(tiles, bmax * K * 3 * S * S * 4);
    if (feats) A(features, bmax * K * F * 4);
#undef A
  }
  void *v;
  PS_TRY(ps_arena_alloc_bytes(&l->arena, (size_t)(bmax * l->info.g) * 4 + 4, &v));
  l->raw_omics = v;
  PS_TRY(ps_arena_alloc_bytes(&l->arena, (size_t)S * S * 3 + 1, &v));
  l->raw_tile = v;
  PS_TRY(ps_arena_alloc_bytes(&l->arena, (size_t)(bmax * K) * 8 + 8, &v));
  l->tile_rows = v;
  return PS_OK;
}

static ps_status loader_init(ps_loader *l) {
  const ps_patients *p = l->p;
  PS_REQUIRE(l->split->n == p->n, "loader: split of %lld patients for a cohort of %lld", (long long)l->split->n,
             (long long)p->n);
  PS_REQUIRE(l->nm->g_in == l->info.g && l->nm->c == l->info.c,
             "loader: normalization was fitted on %lld genes / %lld clinical columns, the file has %lld / %lld",
             (long long)l->nm->g_in, (long long)l->nm->c, (long long)l->info.g, (long long)l->info.c);
  PS_REQUIRE(l->o.batch_size >= 1 && l->o.tiles >= 1, "loader: batch size and tiles must be >= 1");
  PS_REQUIRE(l->o.sampler != PS_SAMPLER_STRATIFIED || (l->o.min_per_stratum >= 1 && 2 * l->o.min_per_stratum - 1 <= l->o.batch_size),
             "loader: stratified sampler needs 1 <= min_per_stratum and 2*min_per_stratum-1 <= batch size (%d, %lld)",
             l->o.min_per_stratum, (long long)l->o.batch_size);
  l->n_part = ps_split_count(l->split, l->o.part);
  PS_REQUIRE(l->n_part > 0, "loader: the %s part of the split is empty", ps_split_part_name(l->o.part));
  l->members = ps_xcalloc((size_t)l->n_part, sizeof(int64_t));
  l->order = ps_xcalloc((size_t)l->n_part, sizeof(int64_t));
  l->batch_start = ps_xcalloc((size_t)l->n_part + 2, sizeof(int64_t));
  l->scratch_i64 = ps_xcalloc((size_t)l->n_part * 3, sizeof(int64_t));
  if (!l->members || !l->order || !l->batch_start || !l->scratch_i64) PS_FAIL(PS_ERR_MEM, "loader plan");
  int64_t k = 0;
  for (int64_t i = 0; i < p->n; i++)
    if (l->split->part[i] == l->o.part) l->members[k++] = i;
  if (l->o.sampler == PS_SAMPLER_EVENT_BALANCED) {
    int64_t ne = 0;
    for (int64_t i = 0; i < l->n_part; i++) ne += p->event[l->members[i]];
    int64_t nb = l->o.drop_last ? l->n_part / l->o.batch_size : (l->n_part + l->o.batch_size - 1) / l->o.batch_size;
    if (nb < 1) nb = 1;
    PS_REQUIRE(ne / nb >= l->o.min_events, "loader: %lld events over %lld batches cannot give %d events per batch "
               "(lower min_events or raise the batch size)", (long long)ne, (long long)nb, l->o.min_events);
  }
  PS_TRY(alloc_batches(l));
  l->bulk = ps_cohort_bulk(l->c);
  if (l->o.prefetch) {
    int level = MPI_THREAD_SINGLE, inited = 0;
    MPI_Initialized(&inited);
    if (inited) MPI_Query_thread(&level);
    if (level < MPI_THREAD_MULTIPLE) {
      // a private POSIX handle: the worker's reads make no MPI calls
      hid_t f = H5Fopen(ps_cohort_path(l->c), H5F_ACC_RDONLY, H5P_DEFAULT);
      if (f < 0) PS_FAIL(PS_ERR_IO, "loader: cannot open %s for the prefetch thread", ps_cohort_path(l->c));
      l->own = (ps_h5_bulk){.file = f, .omics = -1, .clinical = -1, .tiles = -1, .features = -1, .dxpl = -1};
      ps_status st = ps_h5_bulk_open(&l->own, f, &l->info);
      if (st != PS_OK) {
        H5Fclose(f);
        return st;
      }
      l->own_open = true;
      l->bulk = &l->own;
    }
    if (pthread_mutex_init(&l->mu, NULL) || pthread_cond_init(&l->cv, NULL) ||
        pthread_create(&l->thread, NULL, worker, l))
      PS_FAIL(PS_ERR_INTERNAL, "loader: cannot start the prefetch thread");
    l->thread_started = true;
  }
  return plan_epoch(l, 0);
}

ps_status ps_loader_create(ps_loader **out, ps_cohort *c, const ps_split *s, const ps_norm *nm,
                           const ps_loader_options *opt, MPI_Comm comm) {
  *out = NULL;
  ps_loader *l = ps_xcalloc(1, sizeof *l);
  if (!l) PS_FAIL(PS_ERR_MEM, "loader");
  l->c = c, l->split = s, l->nm = nm, l->o = *opt, l->info = *ps_cohort_get_info(c), l->p = ps_cohort_get_patients(c);
  MPI_Comm_rank(comm, &l->rank);
  MPI_Comm_size(comm, &l->size);
  l->epoch = -1;
  ps_status st = ps_data_agree(comm, loader_init(l));
  if (st != PS_OK) {
    ps_loader_destroy(l);
    return st;
  }
  *out = l;
  return PS_OK;
}

void ps_loader_destroy(ps_loader *l) {
  if (!l) return;
  if (l->thread_started) {
    pthread_mutex_lock(&l->mu);
    while (l->job == JOB_PENDING) pthread_cond_wait(&l->cv, &l->mu);
    l->job = JOB_QUIT;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
  }
  if (l->own_open) {
    ps_h5_bulk_close(&l->own);
    H5Fclose(l->own.file);
  }
  ps_arena_free(&l->arena);
  free(l->members), free(l->order), free(l->batch_start), free(l->scratch_i64);
  free(l);
}

ps_status ps_loader_begin_epoch_at(ps_loader *l, int64_t epoch, int64_t step) {
  PS_TRY(ps_loader_quiesce(l));
  if (l->thread_started) {
    pthread_mutex_lock(&l->mu);
    l->job = JOB_IDLE; // drop a prefetched batch of the previous epoch
    pthread_mutex_unlock(&l->mu);
  }
  PS_TRY(plan_epoch(l, epoch));
  PS_REQUIRE(step >= 0 && step <= l->steps, "loader: step %lld outside epoch %lld's [0, %lld]", (long long)step,
             (long long)epoch, (long long)l->steps);
  l->step = step;
  l->cur = 0;
  if (l->thread_started && step < l->steps) launch_job(l, 0, step);
  return PS_OK;
}

ps_status ps_loader_begin_epoch(ps_loader *l, int64_t epoch) { return ps_loader_begin_epoch_at(l, epoch, 0); }

ps_status ps_loader_next(ps_loader *l, const ps_batch **out) {
  *out = NULL;
  if (l->step >= l->steps) return PS_OK;
  double t0 = now_s();
  if (l->thread_started) {
    ps_status st = wait_job(l);
    l->stall_s += now_s() - t0;
    PS_TRY(st);
    int ready = l->cur;
    if (l->step + 1 < l->steps) launch_job(l, 1 - ready, l->step + 1);
    l->cur = 1 - ready;
    *out = &l->buf[ready];
  } else {
    ps_status st = fill_batch(l, &l->buf[0], l->step);
    l->stall_s += now_s() - t0;
    PS_TRY(st);
    *out = &l->buf[0];
  }
  l->step++;
  return PS_OK;
}
