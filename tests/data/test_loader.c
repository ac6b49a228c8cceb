// Loader: the global batches of an N-rank run equal those of a 1-rank loader (same patients,
// bitwise-identical tensors) for every sampler; prefetch equals no prefetch; each epoch visits the
// part exactly once; sampler guarantees hold; bags and masks; normalization statistics equal a
// brute-force computation and are bitwise identical across rank counts.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data_fixture.h"
#include "testutil.h"

static int rank, size;

// Gathers this rank's rows (row_bytes each) of a field into `all` on rank 0 (in rank order).
static void gather(const void *mine, int64_t b, size_t row_bytes, void *all) {
  int cnt = (int)(b * (int64_t)row_bytes), *counts = calloc((size_t)size, sizeof(int)), *displ = calloc((size_t)size, sizeof(int));
  MPI_Gather(&cnt, 1, MPI_INT, counts, 1, MPI_INT, 0, MPI_COMM_WORLD);
  for (int r = 1; r < size; r++) displ[r] = displ[r - 1] + counts[r - 1];
  MPI_Gatherv(mine, cnt, MPI_BYTE, all, counts, displ, MPI_BYTE, 0, MPI_COMM_WORLD);
  free(counts), free(displ);
}

static int same_batch_field(const char *what, const void *mine, int64_t b, size_t row_bytes, const void *ref,
                            int64_t ref_b, int64_t step) {
  size_t total = (size_t)ref_b * row_bytes;
  uint8_t *all = rank == 0 ? calloc(total + 1, 1) : NULL;
  gather(mine, b, row_bytes, all);
  int ok = 1;
  if (rank == 0) {
    ok = memcmp(all, ref, total) == 0;
    TU_CHECK(ok, "step %lld: %s differs from the 1-rank loader", (long long)step, what);
    free(all);
  }
  return ok;
}

// One epoch of the world loader against a 1-rank reference loader on rank 0.
static int compare_epoch(ps_loader *lw, ps_loader *lref, int64_t epoch, const ps_patients *p, const ps_loader_options *o,
                         int64_t n_part) {
  TU_OK(ps_loader_begin_epoch(lw, epoch));
  if (rank == 0) TU_OK(ps_loader_begin_epoch(lref, epoch));
  int64_t steps = ps_loader_steps_per_epoch(lw);
  if (rank == 0) TU_CHECK(steps == ps_loader_steps_per_epoch(lref), "steps %lld vs %lld", (long long)steps,
                          (long long)ps_loader_steps_per_epoch(lref));
  int64_t seen_total = 0;
  uint8_t *seen = calloc((size_t)p->n, 1);
  int64_t *gidx = calloc((size_t)o->batch_size + 1, sizeof(int64_t));
  for (int64_t s = 0; s < steps; s++) {
    const ps_batch *bw = NULL, *br = NULL;
    TU_OK(ps_loader_next(lw, &bw));
    TU_OK(ps_loader_quiesce(lw)); // HDF5 is not thread-safe: the reference reads only while the worker is idle
    TU_CHECK(bw != NULL, "batch %lld missing", (long long)s);
    if (!bw) break;
    int64_t gb = 0;
    TU_OK(ps_loader_global_batch(lw, epoch, s, gidx, &gb));
    TU_CHECK(bw->global_b == gb && bw->b == gb * (rank + 1) / size - gb * rank / size, "share size");
    for (int64_t i = 0; i < bw->b; i++) TU_CHECK(bw->index[i] == gidx[bw->global_first + i], "share order");
    for (int64_t i = 0; i < gb; i++) {
      TU_CHECK(!seen[gidx[i]], "patient %lld twice in epoch %lld", (long long)gidx[i], (long long)epoch);
      seen[gidx[i]] = 1;
    }
    seen_total += gb;
    if (o->sampler == PS_SAMPLER_STRATIFIED) {
      int64_t per[8] = {0};
      for (int64_t i = 0; i < gb; i++) per[p->cohort[gidx[i]]]++;
      for (int c = 0; c < 8; c++) TU_CHECK(per[c] == 0 || per[c] >= o->min_per_stratum, "stratum %d has %lld", c, (long long)per[c]);
    }
    if (o->sampler == PS_SAMPLER_EVENT_BALANCED) {
      int64_t ev = 0;
      for (int64_t i = 0; i < gb; i++) ev += p->event[gidx[i]];
      TU_CHECK(ev >= o->min_events, "batch %lld has %lld events", (long long)s, (long long)ev);
    }
    if (rank == 0) {
      TU_OK(ps_loader_next(lref, &br));
      TU_CHECK(br && br->b == gb, "reference batch size");
    }
    int64_t rb = rank == 0 && br ? br->b : 0;
    const ps_batch *r = br;
#define CMP(field, row)                                                                           \
  same_batch_field(#field, bw->field, bw->b, (row), r ? (const void *)r->field : NULL, rb, s)
    CMP(index, 8);
    CMP(time, 8);
    CMP(event, 1);
    CMP(cohort, 4);
    CMP(present, PS_MOD_COUNT);
    CMP(omics, (size_t)bw->gs * 4);
    CMP(clinical, (size_t)bw->c * 4);
    CMP(n_tiles, 4);
    CMP(tile_mask, (size_t)bw->k);
    if (bw->tiles) CMP(tiles, (size_t)bw->k * 3 * bw->s * bw->s * 4);
    if (bw->features) CMP(features, (size_t)bw->k * bw->f * 4);
#undef CMP
  }
  const ps_batch *end = (const ps_batch *)1;
  TU_OK(ps_loader_next(lw, &end));
  TU_CHECK(end == NULL, "epoch end");
  if (o->sampler == PS_SAMPLER_STRATIFIED || !o->drop_last) TU_CHECK(seen_total == n_part, "epoch visited %lld of %lld", (long long)seen_total, (long long)n_part);
  free(seen), free(gidx);
  return 0;
}

static int run_file(const char *path, int k_tiles, ps_bag_mode bag) {
  ps_cohort *cw, *cs = NULL;
  TU_OK(ps_cohort_open(&cw, path, MPI_COMM_WORLD));
  const ps_patients *p = ps_cohort_get_patients(cw);
  ps_split sp;
  TU_OK(ps_split_kfold(&sp, p, 4, 1, 7));
  TU_OK(ps_split_check(&sp, p));
  ps_norm nw, ns;
  TU_OK(ps_norm_fit(&nw, cw, &sp, 12, MPI_COMM_WORLD));
  if (rank == 0) {
    TU_OK(ps_cohort_open(&cs, path, MPI_COMM_SELF));
    TU_OK(ps_norm_fit(&ns, cs, &sp, 12, MPI_COMM_SELF));
    size_t a = ps_norm_serialized_size(&nw), b = ps_norm_serialized_size(&ns);
    uint8_t *ba = calloc(a, 1), *bb = calloc(b, 1);
    TU_OK(ps_norm_serialize(&nw, ba, a));
    TU_OK(ps_norm_serialize(&ns, bb, b));
    TU_CHECK(a == b && !memcmp(ba, bb, a), "normalization differs between %d ranks and 1", size);
    ps_norm back;
    TU_OK(ps_norm_deserialize(&back, ba, a));
    TU_CHECK(back.g_sel == nw.g_sel && !memcmp(back.omics_std, nw.omics_std, (size_t)nw.g_sel * 4), "round trip");
    ps_norm_free(&back);
    ba[a / 2] ^= 1;
    TU_CHECK(ps_norm_deserialize(&back, ba, a) == PS_ERR_FORMAT, "corrupt blob rejected");
    free(ba), free(bb);
    // brute force: mean/var of training rows with omics present, and top-variance selection
    const ps_cohort_info *in = ps_cohort_get_info(cs);
    int64_t g = in->g, n = p->n;
    float *all = calloc((size_t)(n * g), 4);
    int64_t *rows = calloc((size_t)n, 8);
    for (int64_t i = 0; i < n; i++) rows[i] = i;
    TU_OK(ps_cohort_read_omics(cs, rows, n, all));
    double *var = calloc((size_t)g, 8), *mean = calloc((size_t)g, 8);
    for (int64_t j = 0; j < g; j++) {
      double s1 = 0, s2 = 0, cnt = 0;
      for (int64_t i = 0; i < n; i++)
        if (sp.part[i] == PS_SPLIT_TRAIN && p->present[i * PS_MOD_COUNT + PS_MOD_OMICS])
          s1 += all[i * g + j], cnt++;
      mean[j] = s1 / cnt;
      for (int64_t i = 0; i < n; i++)
        if (sp.part[i] == PS_SPLIT_TRAIN && p->present[i * PS_MOD_COUNT + PS_MOD_OMICS])
          s2 += (all[i * g + j] - mean[j]) * (all[i * g + j] - mean[j]);
      var[j] = s2 / (cnt - 1);
    }
    double min_sel = INFINITY, max_unsel = -INFINITY;
    for (int64_t j = 0, q = 0; j < g; j++) {
      bool sel = q < nw.g_sel && nw.gene_index[q] == j;
      if (sel) {
        // tolerance: float32 storage of mean/std; sums in double (relative 1e-5)
        TU_CHECK(fabs(nw.omics_mean[q] - mean[j]) <= 1e-5 * (1 + fabs(mean[j])), "mean gene %lld", (long long)j);
        double sd = sqrt(var[j]) > 1e-6 ? sqrt(var[j]) : 1.0;
        TU_CHECK(fabs(nw.omics_std[q] - sd) <= 1e-4 * sd, "std gene %lld: %g vs %g", (long long)j, nw.omics_std[q], sd);
        min_sel = fmin(min_sel, var[j]);
        q++;
      } else {
        max_unsel = fmax(max_unsel, var[j]);
      }
    }
    TU_CHECK(nw.g_sel == (g < 12 ? g : 12) && min_sel >= max_unsel * (1 - 1e-9), "top-variance selection");
    free(all), free(rows), free(var), free(mean);
    ps_norm_free(&ns);
  }
  ps_loader_options o = ps_loader_defaults();
  o.batch_size = 10, o.tiles = k_tiles, o.bag = bag, o.seed = 99, o.min_per_stratum = 2, o.min_events = 2;
  int64_t n_train = ps_split_count(&sp, PS_SPLIT_TRAIN);
  for (int smp = 0; smp < PS_SAMPLER_COUNT; smp++) {
    for (int pf = 0; pf < 2; pf++) {
      o.sampler = (ps_sampler)smp, o.prefetch = pf, o.augment = smp != PS_SAMPLER_SEQUENTIAL;
      o.drop_last = smp == PS_SAMPLER_UNIFORM && pf;
      ps_loader *lw, *lr = NULL;
      TU_OK(ps_loader_create(&lw, cw, &sp, &nw, &o, MPI_COMM_WORLD));
      ps_loader_options ro = o;
      ro.prefetch = false;
      if (rank == 0) TU_OK(ps_loader_create(&lr, cs, &sp, &nw, &ro, MPI_COMM_SELF));
      for (int64_t e = 0; e < 2; e++)
        if (compare_epoch(lw, lr, e, p, &o, n_train)) return 1;
      // resume mid-epoch: begin_epoch_at(e, 2) gives the batches an uninterrupted epoch gives from step 2 on
      ps_loader *lseek = pf ? lw : lr; // with prefetch: every rank checks its own share
      if ((pf || rank == 0) && smp == PS_SAMPLER_UNIFORM) {
        ps_loader *lr = lseek;
        const ps_batch *b;
        int64_t idx_full[64], n_full = 0, idx_seek[64], n_seek = 0;
        TU_OK(ps_loader_begin_epoch(lr, 5));
        for (int s = 0; s < 3; s++) TU_OK(ps_loader_next(lr, &b));
        memcpy(idx_full, b->index, (size_t)b->b * 8), n_full = b->b;
        float t_full = b->tiles ? b->tiles[7] : b->features ? b->features[3] : b->omics[1];
        TU_OK(ps_loader_begin_epoch_at(lr, 5, 2));
        TU_OK(ps_loader_next(lr, &b));
        memcpy(idx_seek, b->index, (size_t)b->b * 8), n_seek = b->b;
        float t_seek = b->tiles ? b->tiles[7] : b->features ? b->features[3] : b->omics[1];
        TU_CHECK(b->step == 2 && n_full == n_seek && !memcmp(idx_full, idx_seek, (size_t)n_full * 8) && t_full == t_seek,
                 "resumed step 2 differs from the uninterrupted one");
        TU_CHECK(ps_loader_begin_epoch_at(lr, 5, 1000) == PS_ERR_ARG, "step beyond the epoch");
        TU_OK(ps_loader_quiesce(lr));
      }
      ps_loader_destroy(lw);
      ps_loader_destroy(lr);
    }
  }
  // bag semantics and values, 1 rank, no augmentation: every valid entry is one of the patient's own tiles
  if (rank == 0) {
    ps_loader *l;
    o.sampler = PS_SAMPLER_SEQUENTIAL, o.prefetch = false, o.augment = false, o.part = PS_SPLIT_TRAIN;
    TU_OK(ps_loader_create(&l, cs, &sp, &nw, &o, MPI_COMM_SELF));
    TU_OK(ps_loader_begin_epoch(l, 3));
    const ps_cohort_info *in = ps_cohort_get_info(cs);
    const ps_batch *b;
    int64_t S = in->tile_size, F = in->feat_dim;
    uint8_t *raw = calloc((size_t)(S * S * 3 + 1), 1);
    float *feat = calloc((size_t)F + 1, 4);
    for (;;) {
      TU_OK(ps_loader_next(l, &b));
      if (!b) break;
      for (int64_t i = 0; i < b->b; i++) {
        int64_t pi = b->index[i], have = p->offset[pi + 1] - p->offset[pi];
        int64_t want = have == 0 ? 0 : (bag == PS_BAG_ALL && have < k_tiles) ? have : k_tiles;
        TU_CHECK(b->n_tiles[i] == want, "patient %lld: %d tiles, expected %lld", (long long)pi, b->n_tiles[i], (long long)want);
        for (int64_t j = 0; j < b->k; j++) {
          TU_CHECK(b->tile_mask[i * b->k + j] == (j < want), "mask");
          if (j >= want) continue;
          int found = 0;
          for (int64_t t = p->offset[pi]; t < p->offset[pi + 1] && !found; t++) {
            if (b->tiles) {
              TU_OK(ps_cohort_read_tiles(cs, &t, 1, raw));
              const float *x = b->tiles + (i * b->k + j) * 3 * S * S;
              int same = 1;
              for (int64_t y = 0; y < S * S && same; y++)
                for (int ch = 0; ch < 3; ch++) {
                  float expect = (raw[y * 3 + ch] / 255.0f - (ch == 1 ? 0.55f : 0.70f)) / (ch == 1 ? 0.20f : 0.15f);
                  if (fabsf(x[ch * S * S + y] - expect) > 1e-5f) same = 0;
                }
              found = same;
            } else {
              TU_OK(ps_cohort_read_features(cs, &t, 1, feat));
              found = !memcmp(feat, b->features + (i * b->k + j) * F, (size_t)F * 4);
            }
          }
          TU_CHECK(found, "patient %lld bag entry %lld is not one of its tiles", (long long)pi, (long long)j);
        }
        if (!b->present[i * PS_MOD_COUNT + PS_MOD_OMICS])
          for (int64_t j = 0; j < b->gs; j++) TU_CHECK(b->omics[i * b->gs + j] == 0.0f, "absent omics row is zero");
        for (int64_t j = 0; j < b->c; j++) TU_CHECK(isfinite(b->clinical[i * b->c + j]), "clinical NaN imputed");
      }
    }
    free(raw), free(feat);
    ps_loader_destroy(l);
    ps_cohort_close(cs);
  }
  ps_norm_free(&nw);
  ps_split_free(&sp);
  ps_cohort_close(cw);
  return 0;
}

int main(int argc, char **argv) {
  // With MPI_THREAD_MULTIPLE (what comm's progress thread asks for) the prefetch thread reads through the
  // MPI-IO handle; otherwise through its own POSIX handle. argv[1] == "multiple" selects the former.
  int provided, want = argc > 1 && !strcmp(argv[1], "multiple") ? MPI_THREAD_MULTIPLE : MPI_THREAD_FUNNELED;
  MPI_Init_thread(&argc, &argv, want, &provided);
  if (provided < want) {
    fprintf(stderr, "data_loader: MPI gives thread level %d < %d\n", provided, want);
    MPI_Finalize();
    return 1;
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int pid = (int)getpid();
  MPI_Bcast(&pid, 1, MPI_INT, 0, MPI_COMM_WORLD);
  char path[128];
  // 1) simulated tiles (16x16), every patient with slides has 3 tiles; K = 4 samples with replacement
  snprintf(path, sizeof path, "data_loader_%d_%d_sim.h5", size, pid);
  ps_sim_options so = ps_sim_defaults();
  so.patients = 83, so.genes = 20, so.tiles = 3, so.tile_size = 16, so.cohorts = 3, so.sites = 4, so.missing = 0.2;
  so.seed = 5;
  ps_cohort_data d;
  int64_t first = so.patients * rank / size, count = so.patients * (rank + 1) / size - first;
  TU_OK(ps_sim_generate(&d, &so, first, count));
  TU_OK(ps_data_write(path, &d, MPI_COMM_WORLD));
  ps_cohort_data_free(&d);
  int rc = run_file(path, 4, PS_BAG_SAMPLE);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) remove(path);
  // 2) features with variable bags (0..3 per patient), bag = all up to K = 2
  snprintf(path, sizeof path, "data_loader_%d_%d_feat.h5", size, pid);
  const int64_t n = 61;
  first = n * rank / size, count = n * (rank + 1) / size - first;
  if (!rc) TU_OK(fx_build(&d, n, 9, 3, PS_SLIDES_FEATURES, first, count));
  if (!rc) TU_OK(ps_data_write(path, &d, MPI_COMM_WORLD));
  if (!rc) ps_cohort_data_free(&d);
  if (!rc) rc = run_file(path, 2, PS_BAG_ALL);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) remove(path);
  int fails = ps_tu_failures, all = 0;
  MPI_Allreduce(&fails, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  ps_tu_failures = all;
  MPI_Finalize();
  return rc ? rc : ps_tu_finish("data_loader");
}
