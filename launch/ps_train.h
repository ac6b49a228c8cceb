// ps_train: the training loop around a workload. The loop owns everything a
// run needs that is not the model: run directory, resolved config, resume,
// atomic checkpoints (every N steps, at epoch end, best, on a stop signal),
// stop-signal agreement across ranks, validation-driven early stopping,
// metrics.csv, progress output, summary.json and model_card.md.
// A workload (the multimodal model, or the toy used to test launchers) does
// one optimizer step, validation, and checkpoint I/O of its own state.
#ifndef PS_TRAIN_H
#define PS_TRAIN_H

#include <stdint.h>
#include <stdio.h>

#include "ps_comm.h"
#include "ps_config.h"
#include "ps_status.h"

typedef struct {
  double loss, cox, recon; // global, this step
  double lr, grad_norm;
  double compute_s, comm_s, io_s;
  int64_t patients; // global patients this step
} ps_step_stats;

typedef struct {
  int64_t step;          // optimizer steps done
  int64_t epoch;         // current epoch (0-based)
  int64_t step_in_epoch; // steps done in the current epoch
  double best_val_c;     // NaN before the first validation
  int64_t best_epoch;
  int64_t bad_epochs;    // epochs since best_val_c improved
  double last_val_c;     // NaN before the first validation
} ps_train_state;

typedef struct {
  const char *name;
  int64_t (*steps_per_epoch)(void *w);
  // One optimizer step (global step ts->step, epoch ts->epoch, ts->step_in_epoch). Collective.
  ps_status (*step)(void *w, const ps_train_state *ts, ps_step_stats *out);
  // Validation score (Harrell C for the model), identical on every rank. Collective.
  ps_status (*validate)(void *w, const ps_train_state *ts, double *val_c);
  // Writes the whole checkpoint file at `path` (rank 0 only; the state is replicated).
  ps_status (*save)(void *w, const ps_train_state *ts, const char *config_text, const char *path);
  // Loads a verified checkpoint (every rank).
  ps_status (*load)(void *w, ps_train_state *ts, const char *path);
  // Checksum/format check of a file (any rank, no collectives).
  ps_status (*verify)(const char *path, void *w);
  // CRC-32 of the parameters (determinism and resume tests compare it).
  uint32_t (*param_crc)(void *w);
  void (*destroy)(void *w);
  // Optional: markdown lines describing the data (cohorts, split sizes) for model_card.md.
  void (*card)(void *w, FILE *f);
} ps_workload_ops;

typedef struct {
  const char *resume; // NULL, "auto" or a checkpoint path
  int quiet;          // no progress output
} ps_train_options;

// Creates the toy workload (synthetic parameter vector, no data).
ps_status ps_toy_create(void **out, const ps_workload_ops **ops, const ps_config *cfg, ps_comm *comm);

// Runs training to the end. Returns PS_OK, or PS_ERR_INTERRUPTED after a stop
// signal (checkpoint written), or an error (agreed across ranks).
ps_status ps_train_run(const ps_config *cfg, ps_comm *comm, void *w, const ps_workload_ops *ops,
                       const ps_train_options *opt);

// Agreement after a step that can fail on some ranks (collective): every rank gets the
// worst status; ranks that were fine get a message pointing at the others.
ps_status ps_train_agree(ps_comm *c, ps_status local);
// Monotonic wall clock in seconds (step timers).
double ps_train_now_s(void);

// Run directory: log.run_dir/NAME with NAME = log.name, else job-$SLURM_JOB_ID
// (array: job-<array job>_<task>), else run-<UTC time> (rank 0 picks, broadcast).
ps_status ps_run_dir(const ps_config *cfg, ps_comm *comm, char *out, size_t len);

#endif
