// The toy workload (train.workload: toy): a synthetic data-parallel problem
// with no data file, for testing launchers, checkpoints, resume and
// preemption. P parameters; toy patient i has a target vector t_i (Philox,
// keyed by (seed, i)); the loss of a global batch is the mean over its
// patients of 0.5 * mean_j (p_j - t_ij)^2. Each rank sums the gradient of its
// share of the global batch, the sums are all-reduced, and SGD with momentum
// updates the replicated parameters. The epoch order is a permutation keyed
// by (seed, epoch), so the global batch does not depend on the rank count.
// Validation reports 1 / (1 + loss on 64 held-out toy patients) as a
// surrogate score in (0, 1] (not a C-index) so best/early-stopping logic runs.
#define _POSIX_C_SOURCE 200809L
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_checkpoint.h" // ps_crc32
#include "ps_ckpt_files.h"
#include "ps_h5.h"
#include "ps_rng.h"
#include "ps_train.h"

// P parameters, N toy training patients, V validation patients.
enum { TOY_P = 4096, TOY_N = 512, TOY_V = 64, TOY_VERSION = 1 };
static const char toy_magic[] = "pansurv-toy-checkpoint";

typedef struct {
  const ps_config *cfg;
  ps_comm *comm;
  float *params;   // (P)
  float *velocity; // (P) momentum buffer
  double *grad;    // (P) this rank's sum
  float *gradf;    // (P) all-reduced
  int64_t *perm;   // (N) epoch order
  int64_t perm_epoch;
  int step_ms;     // PANSURV_TOY_STEP_MS: sleep per step (tests that signal a running job)
} toy;

static float target(const toy *t, int64_t patient, int64_t j) {
  ps_rng r = ps_rng_make((uint64_t)t->cfg->train.seed, ps_rng_stream(PS_RNG_SIM, (uint64_t)patient, 0, 0));
  return (float)ps_rng_normal(&r, (uint64_t)j);
}

static int64_t toy_spe(void *w) {
  toy *t = w;
  int64_t s = TOY_N / t->cfg->train.global_batch;
  return s > 0 ? s : 1;
}

static double elapsed(const struct timespec *a) {
  struct timespec b;
  clock_gettime(CLOCK_MONOTONIC, &b);
  return (double)(b.tv_sec - a->tv_sec) + 1e-9 * (double)(b.tv_nsec - a->tv_nsec);
}

static ps_status toy_step(void *w, const ps_train_state *ts, ps_step_stats *out) {
  toy *t = w;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const int64_t B = t->cfg->train.global_batch < TOY_N ? t->cfg->train.global_batch : TOY_N;
  const int R = ps_comm_size(t->comm), r = ps_comm_rank(t->comm);
  if (t->perm_epoch != ts->epoch) {
    ps_rng pr = ps_rng_make((uint64_t)t->cfg->train.seed, ps_rng_stream(PS_RNG_SHUFFLE, (uint64_t)ts->epoch, 0, 0));
    ps_rng_permutation(&pr, t->perm, TOY_N);
    t->perm_epoch = ts->epoch;
  }
  // Rank r takes patients [lo, hi) of the global batch (as even as possible).
  int64_t lo = B * r / R, hi = B * (r + 1) / R;
  memset(t->grad, 0, sizeof(double) * TOY_P);
  double loss_local = 0;
  for (int64_t i = lo; i < hi; i++) {
    int64_t patient = t->perm[(ts->step_in_epoch * B + i) % TOY_N];
    for (int64_t j = 0; j < TOY_P; j++) {
      double d = (double)t->params[j] - (double)target(t, patient, j);
      loss_local += 0.5 * d * d;
      t->grad[j] += d;
    }
  }
  for (int64_t j = 0; j < TOY_P; j++) t->gradf[j] = (float)(t->grad[j] / ((double)B * TOY_P));
  loss_local /= (double)B * TOY_P;
  if (t->step_ms > 0) {
    struct timespec nap = {t->step_ms / 1000, (long)(t->step_ms % 1000) * 1000000L}, rest;
    while (nanosleep(&nap, &rest)) nap = rest; // a stop signal must not cut the step short
  }
  double compute = elapsed(&t0);
  PS_TRY(ps_comm_allreduce(t->comm, PS_IN_PLACE, t->gradf, TOY_P, PS_F32, PS_OP_SUM));
  PS_TRY(ps_comm_allreduce(t->comm, PS_IN_PLACE, &loss_local, 1, PS_F64, PS_OP_SUM));
  double comm = elapsed(&t0) - compute;
  double gn = 0;
  for (int64_t j = 0; j < TOY_P; j++) gn += (double)t->gradf[j] * t->gradf[j];
  gn = sqrt(gn);
  double scale = (t->cfg->train.clip_norm > 0 && gn > t->cfg->train.clip_norm) ? t->cfg->train.clip_norm / gn : 1.0;
  const float lr = (float)t->cfg->optim.lr * TOY_P, mom = (float)t->cfg->optim.momentum;
  for (int64_t j = 0; j < TOY_P; j++) {
    t->velocity[j] = mom * t->velocity[j] + (float)scale * t->gradf[j];
    t->params[j] -= lr * t->velocity[j];
  }
  out->loss = out->cox = loss_local;
  out->recon = 0;
  out->lr = t->cfg->optim.lr;
  out->grad_norm = gn;
  out->compute_s = compute;
  out->comm_s = comm;
  out->io_s = 0;
  out->patients = B;
  return PS_OK;
}

static ps_status toy_validate(void *w, const ps_train_state *ts, double *val_c) {
  toy *t = w;
  (void)ts;
  double loss = 0;
  for (int64_t v = 0; v < TOY_V; v++)
    for (int64_t j = 0; j < TOY_P; j++) {
      double d = (double)t->params[j] - (double)target(t, TOY_N + v, j);
      loss += 0.5 * d * d;
    }
  *val_c = 1.0 / (1.0 + loss / ((double)TOY_V * TOY_P));
  return PS_OK;
}

static uint32_t toy_crc(void *w) {
  toy *t = w;
  return ps_crc32(0, t->params, sizeof(float) * TOY_P);
}

static uint32_t state_crc(const float *params, const float *velocity, const int64_t *counters, const double *scores) {
  uint32_t c = ps_crc32(0, params, sizeof(float) * TOY_P);
  c = ps_crc32(c, velocity, sizeof(float) * TOY_P);
  c = ps_crc32(c, counters, sizeof(int64_t) * 4);
  return ps_crc32(c, scores, sizeof(double) * 2);
}

#define H5_OK(call, what)                                                                          \
  do {                                                                                             \
    if ((call) < 0) {                                                                              \
      s = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "%s: %s failed", path, what);             \
      goto done;                                                                                   \
    }                                                                                              \
  } while (0)

static herr_t write_dataset(hid_t file, const char *name, hid_t type, hsize_t n, const void *data) {
  hid_t sp = H5Screate_simple(1, &n, NULL);
  hid_t ds = H5Dcreate2(file, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  herr_t r = ds < 0 ? -1 : H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  if (ds >= 0) H5Dclose(ds);
  H5Sclose(sp);
  return r;
}

static ps_status toy_save(void *w, const ps_train_state *ts, const char *config_text, const char *path) {
  toy *t = w;
  ps_status s = PS_OK;
  int64_t counters[4] = {ts->step, ts->epoch, ts->step_in_epoch, ts->best_epoch};
  double scores[2] = {ts->best_val_c, ts->last_val_c};
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) PS_FAIL(PS_ERR_HDF5, "%s: cannot create checkpoint file", path);
  H5_OK(write_dataset(f, "params", H5T_NATIVE_FLOAT, TOY_P, t->params), "writing /params");
  H5_OK(write_dataset(f, "velocity", H5T_NATIVE_FLOAT, TOY_P, t->velocity), "writing /velocity");
  H5_OK(write_dataset(f, "counters", H5T_NATIVE_INT64, 4, counters), "writing /counters");
  H5_OK(write_dataset(f, "scores", H5T_NATIVE_DOUBLE, 2, scores), "writing /scores");
  H5_OK(write_dataset(f, "bad_epochs", H5T_NATIVE_INT64, 1, &ts->bad_epochs), "writing /bad_epochs");
  H5_OK(ps_h5_write_attr_str(f, "config", config_text), "writing the config attribute");
  H5_OK(ps_h5_write_attr_str(f, "magic", toy_magic), "writing magic");
  H5_OK(ps_h5_write_attr_i64(f, "version", TOY_VERSION), "writing version");
  H5_OK(ps_h5_write_attr_i64(f, "parameters", TOY_P), "writing parameters");
  H5_OK(ps_h5_write_attr_i64(f, "world_size", ps_comm_size(t->comm)), "writing world_size");
  H5_OK(ps_h5_write_attr_i64(f, "crc32", state_crc(t->params, t->velocity, counters, scores)), "writing crc32");
done:
  if (H5Fclose(f) < 0 && s == PS_OK) s = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "%s: closing failed", path);
  return s;
}

static herr_t read_dataset(hid_t file, const char *name, hid_t type, hsize_t n, void *data) {
  hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
  if (ds < 0) return -1;
  hid_t sp = H5Dget_space(ds);
  hsize_t dims[1] = {0};
  herr_t r = (H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, dims, NULL) == 1 && dims[0] == n)
                 ? H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data)
                 : -1;
  H5Sclose(sp);
  H5Dclose(ds);
  return r;
}

// Reads and checks a whole toy checkpoint into caller buffers.
static ps_status toy_read(const char *path, float *params, float *velocity, int64_t *counters, double *scores,
                          int64_t *bad_epochs) {
  ps_status s = PS_OK;
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); // our messages say what is wrong; no HDF5 stack dumps
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) PS_FAIL(PS_ERR_FORMAT, "%s: not a readable HDF5 file (truncated or corrupt?)", path);
  int64_t version = 0, np = 0, crc = 0;
  char *magic = ps_h5_read_attr_str(f, "magic");
  bool magic_ok = magic && !strcmp(magic, toy_magic);
  free(magic);
  if (!magic_ok) {
    s = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "%s: not a toy-workload checkpoint (magic attribute missing or "
                     "different: written by another model or program?)", path);
    goto done;
  }
  H5_OK(ps_h5_read_attr_i64(f, "version", &version), "reading version");
  if (version != TOY_VERSION) {
    s = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "%s: toy checkpoint version %lld, this pansurv reads %d", path,
                     (long long)version, TOY_VERSION);
    goto done;
  }
  H5_OK(ps_h5_read_attr_i64(f, "parameters", &np), "reading parameters");
  if (np != TOY_P) {
    s = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "%s: %lld parameters, the toy model has %d", path, (long long)np,
                     TOY_P);
    goto done;
  }
  H5_OK(read_dataset(f, "params", H5T_NATIVE_FLOAT, TOY_P, params), "reading /params");
  H5_OK(read_dataset(f, "velocity", H5T_NATIVE_FLOAT, TOY_P, velocity), "reading /velocity");
  H5_OK(read_dataset(f, "counters", H5T_NATIVE_INT64, 4, counters), "reading /counters");
  H5_OK(read_dataset(f, "scores", H5T_NATIVE_DOUBLE, 2, scores), "reading /scores");
  H5_OK(read_dataset(f, "bad_epochs", H5T_NATIVE_INT64, 1, bad_epochs), "reading /bad_epochs");
  H5_OK(ps_h5_read_attr_i64(f, "crc32", &crc), "reading crc32");
  uint32_t want = state_crc(params, velocity, counters, scores);
  if ((uint32_t)crc != want)
    s = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "%s: checksum mismatch (stored %08x, computed %08x): the file "
                     "is corrupt", path, (uint32_t)crc, want);
done:
  H5Fclose(f);
  return s;
}

static ps_status toy_verify(const char *path, void *w) {
  (void)w;
  float *a = malloc(sizeof(float) * TOY_P * 2);
  if (!a) PS_FAIL(PS_ERR_MEM, "verify buffer");
  int64_t counters[4], bad;
  double scores[2];
  ps_status s = toy_read(path, a, a + TOY_P, counters, scores, &bad);
  free(a);
  return s;
}

static ps_status toy_load(void *w, ps_train_state *ts, const char *path) {
  toy *t = w;
  int64_t counters[4], bad = 0;
  double scores[2];
  PS_TRY(toy_read(path, t->params, t->velocity, counters, scores, &bad));
  ts->step = counters[0];
  ts->epoch = counters[1];
  ts->step_in_epoch = counters[2];
  ts->best_epoch = counters[3];
  ts->best_val_c = scores[0];
  ts->last_val_c = scores[1];
  ts->bad_epochs = bad;
  return PS_OK;
}

static void toy_destroy(void *w) {
  toy *t = w;
  if (!t) return;
  free(t->params);
  free(t->velocity);
  free(t->grad);
  free(t->gradf);
  free(t->perm);
  free(t);
}

static const ps_workload_ops toy_ops = {
    "toy", toy_spe, toy_step, toy_validate, toy_save, toy_load, toy_verify, toy_crc, toy_destroy, NULL,
};

ps_status ps_toy_create(void **out, const ps_workload_ops **ops, const ps_config *cfg, ps_comm *comm) {
  toy *t = calloc(1, sizeof *t);
  if (!t) PS_FAIL(PS_ERR_MEM, "toy workload");
  t->cfg = cfg;
  t->comm = comm;
  t->params = calloc(TOY_P, sizeof(float));
  t->velocity = calloc(TOY_P, sizeof(float));
  t->grad = calloc(TOY_P, sizeof(double));
  t->gradf = calloc(TOY_P, sizeof(float));
  t->perm = calloc(TOY_N, sizeof(int64_t));
  t->perm_epoch = -1;
  const char *ms = getenv("PANSURV_TOY_STEP_MS");
  t->step_ms = ms ? atoi(ms) : 0;
  if (!t->params || !t->velocity || !t->grad || !t->gradf || !t->perm) {
    toy_destroy(t);
    PS_FAIL(PS_ERR_MEM, "toy workload buffers");
  }
  if (cfg->train.global_batch > TOY_N) {
    toy_destroy(t);
    PS_FAIL(PS_ERR_CONFIG, "train.global_batch = %d is larger than the toy training split (%d patients)",
            cfg->train.global_batch, TOY_N);
  }
  // Deterministic init from the counter-based RNG.
  ps_rng r = ps_rng_make((uint64_t)cfg->train.seed, ps_rng_stream(PS_RNG_INIT, 0, 0, 0));
  for (int64_t j = 0; j < TOY_P; j++) t->params[j] = (float)(0.1 * ps_rng_normal(&r, (uint64_t)j));
  *out = t;
  *ops = &toy_ops;
  return PS_OK;
}
