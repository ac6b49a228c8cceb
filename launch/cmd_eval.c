// pansurv eval --checkpoint C --data D [--split test|val|train] --out DIR
//              [--times t1,t2,...] [--bootstrap N] [--run-dir R]
// Predictions, metrics and plots of a trained model on one split of a cohort.
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ps_checkpoint.h"
#include "ps_ckpt_files.h"
#include "ps_commands.h"
#include "ps_json.h"
#include "ps_comm.h"
#include "ps_config.h"
#include "ps_device_plan.h"
#include "ps_metrics.h"
#include "ps_signal.h"
#include "ps_wl_model.h"

enum { TOPK = 3, MAXM = 3, EXTRA = MAXM + 2 * TOPK, MAX_TIMES = 16 };

typedef struct {
  double *rows; // (n_local, EXTRA): modality attention (M), top-K tile (entry, weight) pairs
  int64_t n, cap;
  int64_t kmax; // K_max: row length of the tile attention
  int64_t c;    // C clinical columns appended to each row (normalized values; 0 when absent)
  int width;    // EXTRA + C
  int tokens;
} collect_ctx;

static void collect(void *vctx, const ps_wl_batch *b, const float *eta, const float *tile_attn, const float *mod_attn,
                    int tokens) {
  collect_ctx *c = vctx;
  (void)eta;
  c->tokens = tokens;
  for (int64_t i = 0; i < b->b && c->n < c->cap; i++, c->n++) {
    double *r = c->rows + c->n * c->width;
    for (int64_t j = 0; j < c->c; j++) r[EXTRA + j] = b->clinical_present[i] ? b->clinical[i * c->c + j] : 0.0;
    for (int m = 0; m < MAXM; m++) r[m] = m < tokens && mod_attn ? mod_attn[i * tokens + m] : NAN;
    int K = b->n_tiles ? b->n_tiles[i] : 0;
    for (int t = 0; t < TOPK; t++) r[MAXM + 2 * t] = -1, r[MAXM + 2 * t + 1] = NAN;
    if (!tile_attn || K <= 0) continue;
    // top-K entries of this patient's bag by attention weight; rows of tile_attn are (K_max)
    uint8_t used[4096] = {0};
    for (int t = 0; t < TOPK && t < K; t++) {
      int best = -1;
      float bw = -1;
      for (int k = 0; k < K && k < 4096; k++) {
        float wv = tile_attn[(int64_t)i * c->kmax + k];
        if (!used[k] && wv > bw) bw = wv, best = k;
      }
      if (best < 0) break;
      used[best] = 1;
      r[MAXM + 2 * t] = best;
      r[MAXM + 2 * t + 1] = bw;
    }
  }
}

// clinical_<part>.csv: id,time,event,<clinical columns> (training-normalized values,
// missing -> 0 = training mean), for classical baselines on the same split.
static void write_clinical(const char *out, const char *part, ps_wl_data *wd, int64_t n, const int64_t *ix,
                           const double *t, const uint8_t *ev, const double *rows, int width, int64_t c) {
  char p[4300];
  snprintf(p, sizeof p, "%s/clinical_%s.csv", out, part);
  FILE *f = fopen(p, "w");
  if (!f) return;
  fprintf(f, "id,time,event");
  for (int64_t j = 0; j < c; j++) fprintf(f, ",%.64s", ps_wl_data_clinical_name(wd, j));
  fprintf(f, "\n");
  for (int64_t i = 0; i < n; i++) {
    fprintf(f, "%.32s,%.9g,%d", ps_wl_data_patient_id(wd, ix[i]), t[i], ev[i]);
    for (int64_t j = 0; j < c; j++) fprintf(f, ",%.7g", rows[i * width + EXTRA + j]);
    fprintf(f, "\n");
  }
  fclose(f);
}

static int parse_times(const char *s, double *t, int max) {
  int n = 0;
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", s);
  for (char *tok = strtok(buf, ","); tok && n < max; tok = strtok(NULL, ",")) {
    char *end;
    double v = strtod(tok, &end);
    if (*end || !(v > 0)) return -1;
    t[n++] = v;
  }
  return n;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// gnuplot script -> PNG; returns 0 on success. Plots are optional outputs:
// a missing gnuplot is reported, not fatal.
static int gnuplot(const char *out_dir, const char *name, const char *script) {
  char sp[4200], cmd[8600];
  snprintf(sp, sizeof sp, "%s/%s.gp", out_dir, name);
  FILE *f = fopen(sp, "w");
  if (!f) return 1;
  fprintf(f, "set terminal pngcairo size 900,600 noenhanced\nset output '%s/%s.png'\n%s", out_dir, name, script);
  fclose(f);
  snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>>'%s/gnuplot.log'", sp, out_dir);
  int rc = system(cmd);
  if (rc == 0) remove(sp);
  return rc;
}

static void usage(FILE *f) {
  fprintf(f, "usage: pansurv eval --checkpoint C --data D [--split test|val|train] --out DIR\n"
             "                    [--times t1,t2,...] [--bootstrap N] [--run-dir R] [--device auto|cpu|cuda]\n\n"
             "Writes DIR/predictions.csv (id, cohort, risk, S(t) at --times, modality attention),\n"
             "DIR/metrics.json (Harrell C overall/per cohort with bootstrap CI, Uno C, td-AUC, Brier/IBS,\n"
             "log-rank of risk groups split at the training-set median risk), DIR/top_tiles.csv and PNG plots\n"
             "(km_risk_groups, learning_curves, per_cohort_c, modality_attention). The split is recomputed\n"
             "from the checkpoint's config (data.split, train.seed) on D. --device (default auto) replaces the\n"
             "checkpoint's train.device; evaluation computes in fp32 (train.precision is not applied).\n");
}

int ps_cmd_eval(int argc, char **argv) {
  const char *ckpt = NULL, *data = NULL, *out = NULL, *split = "test", *times_s = NULL, *run_dir = NULL;
  const char *device = "auto";
  int bootstrap = 200;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "pansurv eval: %s needs a value\n", a);
      return PS_EXIT_USAGE;
    }
    if (!strcmp(a, "--checkpoint")) ckpt = argv[++i];
    else if (!strcmp(a, "--data")) data = argv[++i];
    else if (!strcmp(a, "--out")) out = argv[++i];
    else if (!strcmp(a, "--split")) split = argv[++i];
    else if (!strcmp(a, "--times")) times_s = argv[++i];
    else if (!strcmp(a, "--bootstrap")) bootstrap = atoi(argv[++i]);
    else if (!strcmp(a, "--run-dir")) run_dir = argv[++i];
    else if (!strcmp(a, "--device")) device = argv[++i];
    else {
      fprintf(stderr, "pansurv eval: unknown option '%s'\n", a);
      usage(stderr);
      return PS_EXIT_USAGE;
    }
  }
  if (!ckpt || !data || !out) {
    fprintf(stderr, "pansurv eval: --checkpoint, --data and --out are required\n");
    usage(stderr);
    return PS_EXIT_USAGE;
  }
  ps_wl_part part = !strcmp(split, "test") ? PS_WL_TEST : !strcmp(split, "val") ? PS_WL_VAL
                    : !strcmp(split, "train") ? PS_WL_TRAIN : PS_WL_PART_COUNT;
  if (part == PS_WL_PART_COUNT) {
    fprintf(stderr, "pansurv eval: --split %s: expected test, val or train\n", split);
    return PS_EXIT_USAGE;
  }
  double times[MAX_TIMES];
  int nt = 0;
  if (times_s && (nt = parse_times(times_s, times, MAX_TIMES)) < 0) {
    fprintf(stderr, "pansurv eval: --times %s: expected positive numbers separated by commas\n", times_s);
    return PS_EXIT_USAGE;
  }

  // The model's config comes from the checkpoint (verified first).
  ps_config cfg;
  ps_config_defaults(&cfg);
  uint32_t crc = 0;
  char *text = NULL;
  ps_status s = ps_checkpoint_verify(ckpt, &crc);
  if (s == PS_OK) s = ps_checkpoint_read_config(ckpt, &text);
  if (s == PS_OK) {
    s = ps_config_load_text(&cfg, text, ckpt);
    if (s != PS_OK) ps_error_wrap(s, "the config stored in %s", ckpt);
  }
  free(text);
  char set[PS_CFG_STR_MAX + 16];
  snprintf(set, sizeof set, "data.path=%s", data);
  if (s == PS_OK) s = ps_config_set(&cfg, set);
  if (s == PS_OK) s = ps_config_set(&cfg, "train.workload=model");
  // A model trained on GPUs is evaluated wherever this runs: the device is this
  // command's choice; no gradients are exchanged (mpi: no NCCL communicator is
  // set up for nothing) and the predictions are computed in fp32.
  snprintf(set, sizeof set, "train.device=%s", device);
  if (s == PS_OK && (s = ps_config_set(&cfg, set)) != PS_OK) ps_error_wrap(s, "--device %s", device);
  if (s == PS_OK) s = ps_config_set(&cfg, "comm.backend=mpi");
  if (s == PS_OK) s = ps_config_set(&cfg, "train.precision=fp32");
  if (s != PS_OK) {
    fprintf(stderr, "pansurv eval: %s\n", ps_error_message());
    return PS_EXIT_ERROR;
  }
  ps_comm *comm = NULL;
  ps_run_plan plan;
  if ((s = ps_run_setup(&cfg, &plan, &comm, &argc, &argv)) != PS_OK) {
    const char *re = getenv("OMPI_COMM_WORLD_RANK") ? getenv("OMPI_COMM_WORLD_RANK") : getenv("SLURM_PROCID");
    ps_run_setup_fail("eval", &comm, re ? atoi(re) : 0);
    return PS_EXIT_ERROR;
  }
  const int rank = ps_comm_rank(comm), R = ps_comm_size(comm);
  void *w = NULL;
  const ps_workload_ops *ops = NULL;
  int code = PS_EXIT_ERROR;
  collect_ctx cc = {0};
  int64_t *cnt = calloc((size_t)R, sizeof *cnt);
  char (*tt_id)[40] = NULL; // top-attention tiles (rank 0), written after the cohort is closed
  int64_t *tt_row = NULL, tt_n = 0;
  int *tt_entry = NULL, *tt_rankk = NULL;
  double *tt_w = NULL;
  double *all_extra = NULL, *train_extra = NULL, *train_eta = NULL, *train_time = NULL;
  uint8_t *train_event = NULL;
  ps_status g = PS_OK;
  s = ps_wl_model_create(&w, &ops, &cfg, &plan, comm);
  if (s == PS_OK) {
    s = ps_wl_model_load_params(w, ckpt);
    if (s != PS_OK) ps_error_wrap(s, "checkpoint %s does not fit the model built for %s", ckpt, data);
  }
  if (ps_comm_agree(comm, s, &g) != PS_OK || g != PS_OK) {
    if (s != PS_OK) fprintf(stderr, "pansurv eval: rank %d: %s\n", rank, ps_error_message());
    goto done;
  }
  if (rank == 0) {
    if ((s = ps_ckpt_mkdirs(out)) != PS_OK) fprintf(stderr, "pansurv eval: %s\n", ps_error_message());
  }
  if (ps_comm_agree(comm, s, &g) != PS_OK || g != PS_OK) goto done;
  const ps_wl_shape *sh = ps_wl_model_shape(w);
  ps_wl_data *wd = ps_wl_model_data(w);
  // Training split first: median risk (groups), Breslow baseline and censoring G.
  int64_t ntr = 0;
  const double *t, *e_eta;
  const uint8_t *ev;
  const int32_t *co_;
  const int64_t *ix;
  collect_ctx ct_ = {0};
  ct_.cap = sh->n_total;
  ct_.kmax = sh->max_tiles;
  ct_.c = sh->clinical;
  ct_.width = EXTRA + (int)sh->clinical;
  ct_.rows = calloc((size_t)ct_.cap * (size_t)ct_.width, sizeof(double));
  if ((s = ps_wl_model_predict(w, PS_WL_TRAIN, collect, &ct_, &ntr, &t, &ev, &co_, &ix, &e_eta)) != PS_OK) goto fail;
  train_extra = calloc((size_t)(ntr > 0 ? ntr : 1) * (size_t)ct_.width, sizeof(double));
  {
    int64_t m2 = ct_.n * ct_.width;
    if ((s = ps_comm_allgather(comm, &m2, cnt, 1, PS_I64)) != PS_OK) goto fail;
    if ((s = ps_comm_allgatherv(comm, ct_.rows, m2, train_extra, cnt, PS_F64)) != PS_OK) goto fail;
  }
  free(ct_.rows);
  if (rank == 0) write_clinical(out, "train", wd, ntr, ix, t, ev, train_extra, ct_.width, sh->clinical);
  train_eta = malloc(sizeof(double) * (size_t)ntr);
  train_time = malloc(sizeof(double) * (size_t)ntr);
  train_event = malloc((size_t)ntr);
  memcpy(train_eta, e_eta, sizeof(double) * (size_t)ntr);
  memcpy(train_time, t, sizeof(double) * (size_t)ntr);
  memcpy(train_event, ev, (size_t)ntr);
  cc.cap = sh->n_total;
  cc.kmax = sh->max_tiles;
  cc.c = sh->clinical;
  cc.width = EXTRA + (int)sh->clinical;
  cc.rows = calloc((size_t)cc.cap * (size_t)cc.width, sizeof(double));
  int64_t n = 0;
  if ((s = ps_wl_model_predict(w, part, collect, &cc, &n, &t, &ev, &co_, &ix, &e_eta)) != PS_OK) goto fail;
  // gather the per-patient extras in the same rank order as the predictions
  all_extra = calloc((size_t)(n > 0 ? n : 1) * (size_t)cc.width, sizeof(double));
  int64_t mine = cc.n * cc.width;
  if ((s = ps_comm_allgather(comm, &mine, cnt, 1, PS_I64)) != PS_OK) goto fail;
  if ((s = ps_comm_allgatherv(comm, cc.rows, mine, all_extra, cnt, PS_F64)) != PS_OK) goto fail;
  if (rank == 0) write_clinical(out, split, wd, n, ix, t, ev, all_extra, cc.width, sh->clinical);
  if (rank == 0) {
    // ---- metrics ----
    double *sorted = malloc(sizeof(double) * (size_t)ntr);
    memcpy(sorted, train_eta, sizeof(double) * (size_t)ntr);
    qsort(sorted, (size_t)ntr, sizeof(double), cmp_double);
    double median = ntr ? (ntr % 2 ? sorted[ntr / 2] : 0.5 * (sorted[ntr / 2 - 1] + sorted[ntr / 2])) : 0;
    free(sorted);
    if (nt == 0) { // default times: quartiles of the event times of the evaluated split
      double *et = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
      int64_t ne = 0;
      for (int64_t i = 0; i < n; i++)
        if (ev[i]) et[ne++] = t[i];
      qsort(et, (size_t)ne, sizeof(double), cmp_double);
      for (int q = 1; q <= 3 && ne > 0; q++) times[nt++] = et[ne * q / 4];
      free(et);
    }
    ps_cindex hc, uc;
    double lo = NAN, hi = NAN;
    s = ps_cindex_compute(PS_CINDEX_HARRELL, n, t, ev, e_eta, NULL, 0, &hc);
    if (s == PS_OK) s = ps_cindex_compute(PS_CINDEX_UNO, n, t, ev, e_eta, NULL, 0, &uc);
    if (s == PS_OK && bootstrap > 0)
      s = ps_cindex_bootstrap(PS_CINDEX_HARRELL, n, t, ev, e_eta, 0, bootstrap, (uint64_t)cfg.train.seed, &lo, &hi);
    ps_breslow base = {0};
    ps_censor_km gkm = {0};
    double auc[MAX_TIMES], brier[MAX_TIMES], ibs = NAN;
    int have_ipcw = 0;
    int64_t ipcw_n = 0;
    double *ipcw_t = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1)), *ipcw_r = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    uint8_t *ipcw_e = malloc((size_t)(n > 0 ? n : 1));
    if (s == PS_OK && ps_breslow_fit(ntr, train_time, train_event, train_eta, &base) == PS_OK &&
        ps_censor_km_fit(ntr, train_time, train_event, &gkm) == PS_OK) {
      // IPCW needs G > 0: keep evaluated patients followed no longer than the
      // training set's last time with G > 0 (as scikit-survival requires).
      double tmax = 0;
      for (int64_t u = 0; u < gkm.u; u++)
        if (gkm.g[u] > 0) tmax = gkm.time[u];
      for (int64_t i = 0; i < n; i++)
        if (t[i] < tmax) ipcw_t[ipcw_n] = t[i], ipcw_e[ipcw_n] = ev[i], ipcw_r[ipcw_n] = e_eta[i], ipcw_n++;
      have_ipcw = ps_td_auc(&gkm, ipcw_n, ipcw_t, ipcw_e, ipcw_r, nt, times, auc) == PS_OK;
      if (have_ipcw && nt >= 2 &&
          ps_brier(&gkm, &base, ipcw_n, ipcw_t, ipcw_e, ipcw_r, nt, times, brier, &ibs) != PS_OK)
        ibs = NAN;
      else if (nt < 2) ibs = NAN;
      if (!have_ipcw) fprintf(stderr, "pansurv eval: note: td-AUC/Brier skipped: %s\n", ps_error_message());
    }
    int32_t *grp = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) grp[i] = e_eta[i] > median;
    ps_logrank lr = {0};
    int have_lr = s == PS_OK && ps_logrank_test(n, t, ev, grp, 2, &lr) == PS_OK;
    if (s != PS_OK) {
      fprintf(stderr, "pansurv eval: %s\n", ps_error_message());
      free(grp);
      goto fail_rank0;
    }
    // per cohort
    int nco = sh->n_cohorts;
    double *pc = calloc((size_t)nco, sizeof(double));
    int64_t *pn = calloc((size_t)nco, sizeof(int64_t));
    double *ct = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1)), *ce = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    uint8_t *cv = malloc((size_t)(n > 0 ? n : 1));
    for (int c = 0; c < nco; c++) {
      int64_t k = 0;
      for (int64_t i = 0; i < n; i++)
        if (co_[i] == c) ct[k] = t[i], cv[k] = ev[i], ce[k] = e_eta[i], k++;
      ps_cindex ci;
      pn[c] = k;
      pc[c] = (k > 1 && ps_cindex_compute(PS_CINDEX_HARRELL, k, ct, cv, ce, NULL, 0, &ci) == PS_OK) ? ci.c : NAN;
    }
    // oracle on the same patients (simulated data)
    double oracle = NAN;
    const double *truth = ps_wl_data_truth(wd);
    if (truth) {
      for (int64_t i = 0; i < n; i++) ce[i] = truth[ix[i]];
      ps_cindex oc;
      if (ps_cindex_compute(PS_CINDEX_HARRELL, n, t, ev, ce, NULL, 0, &oc) == PS_OK) oracle = oc.c;
    }
    int64_t events = 0;
    for (int64_t i = 0; i < n; i++) events += ev[i];
    // ---- files ----
    char p[4300];
    snprintf(p, sizeof p, "%s/metrics.json", out);
    FILE *f = fopen(p, "w");
    if (!f) {
      fprintf(stderr, "pansurv eval: cannot write %s: %s\n", p, strerror(errno));
      goto fail_rank0;
    }
    fprintf(f, "{\n  \"checkpoint\": \"%s\",\n  \"data\": \"%s\",\n  \"split\": \"%s\",\n  \"n\": %lld,\n  \"events\": %lld,\n",
            ckpt, data, split, (long long)n, (long long)events);
    fprintf(f, "  \"harrell_c\": ");
    ps_json_number(f, hc.c);
    fprintf(f, ",\n  \"harrell_c_se\": ");
    ps_json_number(f, hc.se);
    fprintf(f, ",\n  \"harrell_c_ci95\": [");
    ps_json_number(f, lo);
    fprintf(f, ", ");
    ps_json_number(f, hi);
    fprintf(f, "],\n  \"bootstrap\": %d,\n  \"uno_c\": ", bootstrap);
    ps_json_number(f, uc.c);
    fprintf(f, ",\n  \"td_auc\": {");
    for (int k = 0; k < nt; k++) {
      fprintf(f, "%s\"%g\": ", k ? ", " : "", times[k]);
      ps_json_number(f, have_ipcw ? auc[k] : NAN);
    }
    fprintf(f, "},\n  \"brier\": {");
    for (int k = 0; k < nt && nt >= 2; k++) {
      fprintf(f, "%s\"%g\": ", k ? ", " : "", times[k]);
      ps_json_number(f, have_ipcw ? brier[k] : NAN);
    }
    fprintf(f, "},\n  \"ipcw_n\": %lld,\n  \"ibs\": ", (long long)ipcw_n);
    ps_json_number(f, ibs);
    fprintf(f, ",\n  \"logrank\": {\"groups\": \"risk above/below the training-set median %.6g\", \"chisq\": ", median);
    ps_json_number(f, have_lr ? lr.chisq : NAN);
    fprintf(f, ", \"df\": %d, \"p\": ", have_lr ? lr.df : 0);
    ps_json_number(f, have_lr ? lr.p : NAN);
    fprintf(f, "},\n  \"per_cohort\": {");
    for (int c = 0; c < nco; c++) {
      fprintf(f, "%s\"%.64s\": {\"n\": %lld, \"harrell_c\": ", c ? ", " : "", ps_wl_data_cohort_name(wd, c), (long long)pn[c]);
      ps_json_number(f, pc[c]);
      fprintf(f, "}");
    }
    fprintf(f, "},\n  \"oracle_c\": ");
    ps_json_number(f, oracle);
    fprintf(f, ",\n  \"param_crc32\": \"%08x\"\n}\n", crc);
    fclose(f);
    // predictions.csv and top_tiles.csv
    static const char *tok_names[MAXM] = {"omics", "slides", "clinical"}; // nn token order
    snprintf(p, sizeof p, "%s/predictions.csv", out);
    f = fopen(p, "w");
    if (!f) {
      fprintf(stderr, "pansurv eval: cannot write into %s\n", out);
      goto fail_rank0;
    }
    tt_id = malloc(sizeof(char[40]) * (size_t)(n * TOPK + 1));
    tt_row = malloc(sizeof(int64_t) * (size_t)(n * TOPK + 1));
    tt_entry = malloc(sizeof(int) * (size_t)(n * TOPK + 1));
    tt_rankk = malloc(sizeof(int) * (size_t)(n * TOPK + 1));
    tt_w = malloc(sizeof(double) * (size_t)(n * TOPK + 1));
    fprintf(f, "id,cohort,time,event,risk,risk_group");
    for (int k = 0; k < nt; k++) fprintf(f, ",surv_%g", times[k]);
    for (int m = 0; m < cc.tokens && m < MAXM; m++) fprintf(f, ",attn_token%d", m);
    fprintf(f, "\n");
    double mod_sum[MAXM] = {0};
    int64_t mod_n[MAXM] = {0};
    for (int64_t i = 0; i < n; i++) {
      char id[40];
      snprintf(id, sizeof id, "%.32s", ps_wl_data_patient_id(wd, ix[i]));
      fprintf(f, "%s,%.64s,%.6g,%d,%.9g,%s", id, ps_wl_data_cohort_name(wd, co_[i]), t[i], ev[i], e_eta[i],
              e_eta[i] > median ? "high" : "low");
      for (int k = 0; k < nt; k++) fprintf(f, ",%.6g", base.u ? ps_breslow_surv(&base, times[k], e_eta[i]) : NAN);
      const double *r = all_extra + i * cc.width;
      for (int m = 0; m < cc.tokens && m < MAXM; m++) {
        fprintf(f, ",%.6g", r[m]);
        if (isfinite(r[m]) && r[m] > 0) mod_sum[m] += r[m], mod_n[m]++;
      }
      fprintf(f, "\n");
      for (int k = 0; k < TOPK && tt_id; k++)
        if (r[MAXM + 2 * k] >= 0) {
          snprintf(tt_id[tt_n], 40, "%s", id);
          tt_rankk[tt_n] = k + 1;
          tt_entry[tt_n] = (int)r[MAXM + 2 * k];
          tt_w[tt_n] = r[MAXM + 2 * k + 1];
          tt_row[tt_n] = ps_wl_data_tile_row(wd, ix[i], tt_entry[tt_n]);
          tt_n++;
        }
    }
    fclose(f);
    (void)tok_names;
    // ---- plots (gnuplot) ----
    int plot_fail = 0;
    ps_km km[2] = {{0}};
    for (int gi = 0; gi < 2; gi++) {
      int64_t k = 0;
      for (int64_t i = 0; i < n; i++)
        if (grp[i] == gi) ct[k] = t[i], cv[k] = ev[i], k++;
      if (k == 0 || ps_km_fit(k, ct, cv, &km[gi]) != PS_OK) continue;
      snprintf(p, sizeof p, "%s/km_%s.dat", out, gi ? "high" : "low");
      FILE *kf = fopen(p, "w");
      if (!kf) continue;
      fprintf(kf, "0 1\n");
      for (int64_t u = 0; u < km[gi].u; u++) fprintf(kf, "%g %g\n", km[gi].time[u], km[gi].surv[u]);
      fclose(kf);
      ps_km_free(&km[gi]);
    }
    char script[4096];
    snprintf(script, sizeof script,
             "set title 'Kaplan-Meier by predicted risk (split at training median), log-rank p = %.3g'\n"
             "set xlabel 'days'\nset ylabel 'survival'\nset yrange [0:1.02]\nset key top right\n"
             "plot '%s/km_low.dat' with steps lw 2 title 'low risk', '%s/km_high.dat' with steps lw 2 title 'high risk'\n",
             have_lr ? lr.p : NAN, out, out);
    plot_fail |= gnuplot(out, "km_risk_groups", script);
    // per-cohort C
    snprintf(p, sizeof p, "%s/per_cohort_c.dat", out);
    f = fopen(p, "w");
    for (int c = 0; f && c < nco; c++) fprintf(f, "\"%.64s\" %g\n", ps_wl_data_cohort_name(wd, c), isfinite(pc[c]) ? pc[c] : 0);
    if (f) fclose(f);
    snprintf(script, sizeof script,
             "set title 'Harrell C-index per cohort (%s split; overall %.4f)'\nset style fill solid 0.6\n"
             "set boxwidth 0.6\nset yrange [0.4:1]\nset ylabel 'C-index'\nunset key\n"
             "plot '%s/per_cohort_c.dat' using 0:2:xtic(1) with boxes\n", split, hc.c, out);
    plot_fail |= gnuplot(out, "per_cohort_c", script);
    // modality attention (mean over patients that have the token)
    snprintf(p, sizeof p, "%s/modality_attention.dat", out);
    f = fopen(p, "w");
    for (int m = 0; f && m < cc.tokens && m < MAXM; m++) fprintf(f, "\"token %d\" %g\n", m, mod_n[m] ? mod_sum[m] / (double)mod_n[m] : 0);
    if (f) fclose(f);
    snprintf(script, sizeof script,
             "set title 'Mean fusion attention per modality token (enabled modalities in model order: omics, slides, clinical)'\n"
             "set style fill solid 0.6\nset boxwidth 0.6\nset yrange [0:1]\nunset key\n"
             "plot '%s/modality_attention.dat' using 0:2:xtic(1) with boxes\n", out);
    plot_fail |= gnuplot(out, "modality_attention", script);
    // learning curves from the run's metrics.csv
    char metrics[4300];
    if (run_dir) snprintf(metrics, sizeof metrics, "%s/metrics.csv", run_dir);
    else { // CKPT is RUN_DIR/checkpoints/NAME.h5
      snprintf(metrics, sizeof metrics, "%s", ckpt);
      for (int up = 0; up < 2; up++) {
        char *sl = strrchr(metrics, '/');
        if (sl) *sl = '\0';
        else snprintf(metrics, sizeof metrics, ".");
      }
      strncat(metrics, "/metrics.csv", sizeof metrics - strlen(metrics) - 1);
    }
    struct stat st;
    // Test metrics with their interval go into the run's model card too.
    char card[4400];
    snprintf(card, sizeof card, "%.4300s", metrics);
    char *slash = strrchr(card, '/');
    if (slash) snprintf(slash, sizeof card - (size_t)(slash - card), "/model_card.md");
    if (stat(card, &st) == 0) {
      FILE *mc = fopen(card, "a");
      if (mc) {
        fprintf(mc, "\n## Evaluation (`pansurv eval`, %s split of %s)\n- n %lld, events %lld\n"
                    "- Harrell C-index %.4f (95%% bootstrap CI %.4f-%.4f, %d resamples), Uno C %.4f\n"
                    "- log-rank between risk groups split at the training-set median: p = %.3g\n",
                split, data, (long long)n, (long long)events, hc.c, lo, hi, bootstrap, uc.c, have_lr ? lr.p : NAN);
        for (int c = 0; c < nco; c++)
          fprintf(mc, "- cohort %.64s: n %lld, Harrell C %.4f\n", ps_wl_data_cohort_name(wd, c), (long long)pn[c], pc[c]);
        if (isfinite(oracle)) fprintf(mc, "- oracle C-index (true log-hazard, simulated data) %.4f\n", oracle);
        fclose(mc);
      }
    }
    if (stat(metrics, &st) == 0) {
      snprintf(script, sizeof script,
               "set datafile separator ','\nset key autotitle columnhead\nset xlabel 'step'\nset ylabel 'loss'\n"
               "set y2label 'validation C'\nset y2tics\nset ytics nomirror\nset title 'Learning curves'\n"
               "plot '%s' using 1:3 with lines title 'loss', '' using 1:4 with lines title 'cox', "
               "'' using 1:8 axes x1y2 with linespoints pt 7 title 'val C'\n", metrics);
      plot_fail |= gnuplot(out, "learning_curves", script);
    } else {
      fprintf(stderr, "pansurv eval: note: no %s, learning curves not drawn (pass --run-dir)\n", metrics);
    }
    if (plot_fail) fprintf(stderr, "pansurv eval: note: some plots failed (see %s/gnuplot.log; is gnuplot installed?)\n", out);
    printf("pansurv eval: %s split: n %lld, events %lld, Harrell C %.4f [%.4f, %.4f], Uno C %.4f, log-rank p %.3g\n",
           split, (long long)n, (long long)events, hc.c, lo, hi, uc.c, have_lr ? lr.p : NAN);
    if (isfinite(oracle)) printf("pansurv eval: oracle C-index (true log-hazard) on the same patients %.4f\n", oracle);
    printf("pansurv eval: outputs in %s (metrics.json, predictions.csv, top_tiles.csv, *.png)\n", out);
    free(pc), free(pn), free(ct), free(ce), free(cv), free(grp), free(ipcw_t), free(ipcw_r), free(ipcw_e);
    if (have_lr) ps_logrank_free(&lr);
    if (base.u) ps_breslow_free(&base);
    if (gkm.u) ps_censor_km_free(&gkm);
    code = PS_EXIT_OK;
    goto done_rank0;
  fail_rank0:
    code = PS_EXIT_ERROR;
  done_rank0:;
  } else {
    code = PS_EXIT_OK;
  }
  goto done;
fail:
  fprintf(stderr, "pansurv eval: rank %d: %s\n", rank, ps_error_message());
  code = PS_EXIT_ERROR;
done:
  if (ops) ops->destroy(w);
  ops = NULL;
  if (rank == 0 && code == PS_EXIT_OK && tt_id) { // top_tiles.csv with level-0 coordinates where known
    int32_t *xy = malloc(sizeof(int32_t) * 3 * (size_t)(tt_n + 1));
    if (xy && ps_wl_read_tile_coords(data, tt_row, tt_n, xy) != PS_OK)
      fprintf(stderr, "pansurv eval: note: tile coordinates not available: %s\n", ps_error_message());
    char p[4300];
    snprintf(p, sizeof p, "%s/top_tiles.csv", out);
    FILE *tt = fopen(p, "w");
    if (tt && xy) {
      fprintf(tt, "id,rank,bag_entry,attention,tile_row,slide,x,y\n");
      for (int64_t i = 0; i < tt_n; i++)
        fprintf(tt, "%s,%d,%d,%.6g,%lld,%d,%d,%d\n", tt_id[i], tt_rankk[i], tt_entry[i], tt_w[i], (long long)tt_row[i],
                xy[3 * i], xy[3 * i + 1], xy[3 * i + 2]);
    }
    if (tt) fclose(tt);
    free(xy);
  }
  free(tt_id), free(tt_row), free(tt_entry), free(tt_rankk), free(tt_w);
  free(cc.rows), free(cnt), free(all_extra), free(train_extra), free(train_eta), free(train_time), free(train_event);
  if (ops) ops->destroy(w);
  ps_comm_finalize(comm);
  return code;
}
