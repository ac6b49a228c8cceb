#define _POSIX_C_SOURCE 200809L
#include "ps_json.h"
#include "ps_train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ps_ckpt_files.h"
#include "ps_signal.h"

enum { PATH_MAX_ = PS_CKPT_PATH_MAX };

// dir/name into out (n bytes); a path too long is cut, and then fails to open with a clear name.
static void path_join(char *out, size_t n, const char *dir, const char *name) {
  int r = snprintf(out, n, "%s/%s", dir, name);
  if (r < 0 || (size_t)r >= n) out[n - 1] = '\0';
}

double ps_train_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

ps_status ps_train_agree(ps_comm *c, ps_status local) {
  ps_status global = PS_OK;
  ps_status s = ps_comm_agree(c, local, &global);
  if (s != PS_OK) return s;
  if (global != PS_OK && local == PS_OK)
    return ps_error_set(global, __FILE__, __LINE__, "another rank failed (%s); see rank 0's message",
                        ps_status_name(global));
  return global;
}


static ps_status bcast_string(ps_comm *c, char *buf, size_t len) {
  return ps_comm_broadcast(c, buf, (int64_t)len, PS_U8, 0);
}

ps_status ps_run_dir(const ps_config *cfg, ps_comm *comm, char *out, size_t len) {
  char name[PS_CFG_STR_MAX];
  if (ps_comm_rank(comm) == 0) {
    const char *job = getenv("SLURM_JOB_ID");
    const char *arr = getenv("SLURM_ARRAY_JOB_ID");
    const char *task = getenv("SLURM_ARRAY_TASK_ID");
    if (cfg->log.name[0]) snprintf(name, sizeof name, "%s", cfg->log.name);
    else if (arr && *arr && task && *task) snprintf(name, sizeof name, "job-%s_%s", arr, task);
    else if (job && *job) snprintf(name, sizeof name, "job-%s", job);
    else {
      time_t t = time(NULL);
      struct tm tm;
      gmtime_r(&t, &tm);
      strftime(name, sizeof name, "run-%Y%m%d-%H%M%S", &tm);
    }
    snprintf(out, len, "%s/%s", cfg->log.run_dir, name);
  }
  return bcast_string(comm, out, len);
}

// ---- learning-rate / formatting helpers -----------------------------------
static void fmt_duration(char *out, size_t len, double s) {
  if (!(s >= 0) || s > 1e7) snprintf(out, len, "--");
  else if (s >= 3600) snprintf(out, len, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
  else snprintf(out, len, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

// metrics.csv: on resume keep the rows up to the resumed step (later rows
// belong to steps that are redone) and append from there.
static const char metrics_header[] = "step,epoch,loss,cox,recon,lr,grad_norm,val_c,compute_s,comm_s,io_s\n";

static ps_status metrics_open(FILE **out, const char *path, int64_t resumed_step) {
  *out = NULL;
  char *keep = NULL;
  size_t keep_len = 0;
  if (resumed_step > 0) {
    FILE *old = fopen(path, "r");
    if (old) {
      FILE *mem = open_memstream(&keep, &keep_len);
      char line[4096];
      int first = 1;
      while (mem && fgets(line, sizeof line, old)) {
        if (first) {
          first = 0;
          continue;
        }
        long long st = strtoll(line, NULL, 10);
        if (st <= resumed_step) fputs(line, mem);
      }
      if (mem) fclose(mem);
      fclose(old);
    }
  }
  FILE *f = fopen(path, "w");
  if (!f) {
    free(keep);
    PS_FAIL(PS_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
  }
  fputs(metrics_header, f);
  if (keep) fwrite(keep, 1, keep_len, f);
  free(keep);
  fflush(f);
  *out = f;
  return PS_OK;
}

static void metrics_row(FILE *f, const ps_train_state *ts, const ps_step_stats *st, double val_c) {
  if (!f) return;
  fprintf(f, "%lld,%lld,%.9g,%.9g,%.9g,%.9g,%.9g,", (long long)ts->step, (long long)ts->epoch, st->loss, st->cox,
          st->recon, st->lr, st->grad_norm);
  if (isfinite(val_c)) fprintf(f, "%.9g", val_c);
  fprintf(f, ",%.6f,%.6f,%.6f\n", st->compute_s, st->comm_s, st->io_s);
  fflush(f);
}

// ---- checkpoints -------------------------------------------------------------
typedef struct {
  void *w;
  const ps_workload_ops *ops;
  const ps_train_state *ts;
  const char *config_text;
} save_ctx;

static ps_status write_ckpt(const char *tmp_path, void *vctx) {
  save_ctx *sc = vctx;
  return sc->ops->save(sc->w, sc->ts, sc->config_text, tmp_path);
}

static ps_status verify_ckpt(const char *path, void *vctx) {
  save_ctx *sc = vctx;
  return sc->ops->verify(path, sc->w);
}

// Rank 0 writes; the status is agreed so every rank sees a failed write.
static ps_status save_step_ckpt(ps_comm *c, const char *dir, int keep, save_ctx *sc, int64_t step, char *written) {
  ps_status s = PS_OK;
  if (ps_comm_rank(c) == 0) s = ps_ckpt_save_step(dir, step, keep, write_ckpt, sc, written);
  return ps_train_agree(c, s);
}

static ps_status save_named_ckpt(ps_comm *c, const char *dir, const char *name, save_ctx *sc) {
  ps_status s = PS_OK;
  if (ps_comm_rank(c) == 0) s = ps_ckpt_write_atomic(dir, name, write_ckpt, sc);
  return ps_train_agree(c, s);
}

static void note_stderr(const char *msg, void *ctx) {
  (void)ctx;
  fprintf(stderr, "pansurv train: %s\n", msg);
}

// Picks the checkpoint to resume from on rank 0 and broadcasts the path.
static ps_status choose_resume(ps_comm *c, const char *resume, const char *ckpt_dir, save_ctx *sc, char *path,
                               int *found) {
  ps_status s = PS_OK;
  int32_t f = 0;
  path[0] = '\0';
  if (ps_comm_rank(c) == 0) {
    if (!strcmp(resume, "auto")) {
      int fnd = 0;
      s = ps_ckpt_find_latest_valid(ckpt_dir, verify_ckpt, sc, note_stderr, NULL, path, &fnd);
      f = fnd;
      if (s == PS_OK && !fnd)
        fprintf(stderr, "pansurv train: --resume auto: no valid checkpoint in %s, starting from scratch\n", ckpt_dir);
    } else {
      struct stat st;
      if (stat(resume, &st))
        s = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "--resume %s: %s", resume, strerror(errno));
      else if ((s = sc->ops->verify(resume, sc->w)) != PS_OK)
        s = ps_error_wrap(s, "--resume %s: refusing this checkpoint", resume);
      else {
        snprintf(path, PATH_MAX_, "%s", resume);
        f = 1;
      }
    }
  }
  PS_TRY(ps_train_agree(c, s));
  PS_TRY(ps_comm_broadcast(c, &f, 1, PS_I32, 0));
  PS_TRY(bcast_string(c, path, PATH_MAX_));
  *found = f;
  return PS_OK;
}

// ---- outputs people read -----------------------------------------------------
static void write_summary(const char *run_dir, const ps_config *cfg, ps_comm *c, const ps_train_state *ts,
                          const ps_step_stats *last, const char *stopped, double wall_s, uint32_t crc,
                          const char *workload, int64_t patients_seen) {
  char p[PATH_MAX_];
  path_join(p, sizeof p, run_dir, "summary.json");
  FILE *f = fopen(p, "w");
  if (!f) return;
  fprintf(f, "{\n  \"run_dir\": ");
  ps_json_string(f, run_dir);
  fprintf(f, ",\n  \"workload\": ");
  ps_json_string(f, workload);
  fprintf(f, ",\n  \"stopped\": ");
  ps_json_string(f, stopped);
  fprintf(f, ",\n  \"steps\": %lld,\n  \"epochs_completed\": %lld,\n  \"world_size\": %d,\n", (long long)ts->step,
          (long long)ts->epoch, ps_comm_size(c));
  fprintf(f, "  \"global_batch\": %d,\n  \"final_loss\": ", cfg->train.global_batch);
  ps_json_number(f, last->loss);
  fprintf(f, ",\n  \"best_val_c\": ");
  ps_json_number(f, ts->best_val_c);
  fprintf(f, ",\n  \"best_epoch\": %lld,\n  \"last_val_c\": ", (long long)ts->best_epoch);
  ps_json_number(f, ts->last_val_c);
  fprintf(f, ",\n  \"wall_s\": %.3f,\n  \"patients_per_s\": ", wall_s);
  ps_json_number(f, wall_s > 0 ? (double)patients_seen / wall_s : NAN);
  fprintf(f, ",\n  \"param_crc32\": \"%08x\"\n}\n", crc);
  fclose(f);
}

static void write_model_card(const char *run_dir, const ps_config *cfg, ps_comm *c, const ps_train_state *ts,
                             const char *workload, void *w, const ps_workload_ops *ops) {
  char p[PATH_MAX_];
  path_join(p, sizeof p, run_dir, "model_card.md");
  FILE *f = fopen(p, "w");
  if (!f) return;
  fprintf(f, "# Model card: %s\n\n", run_dir);
  fprintf(f, "## Data\n- cohort file: `%s`\n- split: %s (fold %d of %d, val %.2f, test %.2f)\n- modalities:", cfg->data.path,
          ps_config_enum_name("data", "split", cfg->data.split), cfg->data.fold, cfg->data.folds, cfg->data.val_fraction,
          cfg->data.test_fraction);
  for (int i = 0; i < cfg->data.n_modalities; i++)
    fprintf(f, " %s", ps_config_enum_name("data", "modalities", cfg->data.modalities[i]));
  fprintf(f, "\n");
  if (ops->card) ops->card(w, f);
  fprintf(f, "\n## Training\n- workload: %s\n- %lld optimizer steps, %lld epochs completed, global batch %d, %d ranks\n",
          workload, (long long)ts->step, (long long)ts->epoch, cfg->train.global_batch, ps_comm_size(c));
  fprintf(f, "- loss: Cox partial likelihood (%s ties, strata %s) + %g x omics reconstruction\n",
          ps_config_enum_name("loss", "ties", cfg->loss.ties), ps_config_enum_name("loss", "strata", cfg->loss.strata),
          cfg->loss.lambda_recon);
  fprintf(f, "- optimizer: %s, lr %g, weight decay %g, schedule %s\n",
          ps_config_enum_name("optim", "name", cfg->optim.name), cfg->optim.lr, cfg->optim.weight_decay,
          ps_config_enum_name("optim", "schedule", cfg->optim.schedule));
  fprintf(f, "\n## Metrics\n- best validation C-index: ");
  if (isfinite(ts->best_val_c)) fprintf(f, "%.4f (epoch %lld)\n", ts->best_val_c, (long long)ts->best_epoch);
  else fprintf(f, "none recorded\n");
  fprintf(f, "- test metrics with confidence intervals: `pansurv eval` appends them below and writes metrics.json\n");
  fprintf(f, "\n## Limitations\n- Trained on the cohorts listed above only; performance on other sites, scanners or "
             "populations is unknown until evaluated there.\n- The C-index measures ranking, not calibration.\n");
  if (!strcmp(workload, "toy"))
    fprintf(f, "- This run used the toy workload (train.workload: toy): it tests the launcher and is not a model.\n");
  fclose(f);
}

static void progress(FILE *out, int tty, const ps_train_state *ts, int64_t total, const ps_step_stats *st,
                     double rate_pps, double eta_s, int every) {
  char eta[32];
  fmt_duration(eta, sizeof eta, eta_s);
  char val[32] = "--";
  if (isfinite(ts->last_val_c)) snprintf(val, sizeof val, "%.4f", ts->last_val_c);
  if (tty) {
    int width = 24, done = total > 0 ? (int)((double)width * (double)ts->step / (double)total) : 0;
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < done ? '#' : '.';
    bar[width] = '\0';
    fprintf(out, "\r[%s] step %lld/%lld ep %lld | %.1f pat/s | loss %.4f | val C %s | ETA %s   ", bar,
            (long long)ts->step, (long long)total, (long long)ts->epoch, rate_pps, st->loss, val, eta);
    fflush(out);
  } else if (ts->step % every == 0 || ts->step == total) {
    fprintf(out, "step %lld/%lld epoch %lld loss %.6f lr %.3g grad_norm %.4g val_c %s %.1f patients/s eta %s\n",
            (long long)ts->step, (long long)total, (long long)ts->epoch, st->loss, st->lr, st->grad_norm, val,
            rate_pps, eta);
    fflush(out);
  }
}

// ---- the loop -------------------------------------------------------------------
ps_status ps_train_run(const ps_config *cfg, ps_comm *c, void *w, const ps_workload_ops *ops,
                       const ps_train_options *opt) {
  const int rank = ps_comm_rank(c);
  const double t0 = ps_train_now_s();
  ps_signal_install();

  char run_dir[PATH_MAX_], ckpt_dir[PATH_MAX_];
  PS_TRY(ps_run_dir(cfg, c, run_dir, sizeof run_dir));
  if (cfg->checkpoint.dir[0]) snprintf(ckpt_dir, sizeof ckpt_dir, "%s", cfg->checkpoint.dir);
  else path_join(ckpt_dir, sizeof ckpt_dir, run_dir, "checkpoints");

  char *config_text = ps_config_to_string(cfg);
  if (!config_text) PS_FAIL(PS_ERR_MEM, "printing the resolved config");
  ps_status s = PS_OK;
  if (rank == 0) {
    s = ps_ckpt_mkdirs(run_dir);
    if (s == PS_OK) s = ps_ckpt_mkdirs(ckpt_dir);
    if (s == PS_OK) ps_ckpt_clean_temps(ckpt_dir);
    if (s == PS_OK) {
      char p[PATH_MAX_];
      path_join(p, sizeof p, run_dir, "config.yaml");
      FILE *f = fopen(p, "w");
      if (!f) s = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "cannot write '%s': %s", p, strerror(errno));
      else {
        fputs(config_text, f);
        fclose(f);
      }
    }
    if (s == PS_OK && !opt->quiet) {
      printf("pansurv train: run directory %s (%d ranks, workload %s)\n--- resolved config ---\n%s---\n", run_dir,
             ps_comm_size(c), ops->name, config_text);
      fflush(stdout);
    }
  }
  if ((s = ps_train_agree(c, s)) != PS_OK) {
    free(config_text);
    return s;
  }

  ps_train_state ts = {0};
  ts.best_val_c = NAN;
  ts.last_val_c = NAN;
  save_ctx sc = {w, ops, &ts, config_text};
  if (opt->resume) {
    char path[PATH_MAX_];
    int found = 0;
    s = choose_resume(c, opt->resume, ckpt_dir, &sc, path, &found);
    if (s == PS_OK && found) {
      s = ps_train_agree(c, ops->load(w, &ts, path));
      if (s == PS_OK && rank == 0 && !opt->quiet) {
        printf("pansurv train: resumed from %s at step %lld (epoch %lld)\n", path, (long long)ts.step,
               (long long)ts.epoch);
        fflush(stdout);
      }
    }
    if (s != PS_OK) {
      free(config_text);
      return s;
    }
  }

  const int64_t spe = ops->steps_per_epoch(w);
  int64_t total = (int64_t)cfg->train.epochs * spe;
  if (cfg->train.max_steps > 0 && cfg->train.max_steps < total) total = cfg->train.max_steps;

  FILE *metrics = NULL;
  if (rank == 0) {
    char p[PATH_MAX_];
    path_join(p, sizeof p, run_dir, "metrics.csv");
    s = metrics_open(&metrics, p, ts.step);
  }
  if ((s = ps_train_agree(c, s)) != PS_OK) {
    if (metrics) fclose(metrics);
    free(config_text);
    return s;
  }

  // mpirun gives ranks a pseudo-terminal even when its own output is a file:
  // PANSURV_PROGRESS=plain|bar overrides the guess.
  const char *pm = getenv("PANSURV_PROGRESS");
  int tty = rank == 0 && !opt->quiet && isatty(STDOUT_FILENO);
  if (pm && !strcmp(pm, "plain")) tty = 0;
  if (pm && !strcmp(pm, "bar")) tty = rank == 0 && !opt->quiet;
  ps_step_stats st = {0};
  st.loss = NAN;
  const char *stopped = "completed";
  int64_t last_saved = ts.step, patients = 0;
  const int64_t start_step = ts.step;
  const double t_loop = ps_train_now_s();
  while (ts.step < total) {
    s = ops->step(w, &ts, &st);
    if (s != PS_OK) break; // the workload agrees on its own status
    ts.step++;
    ts.step_in_epoch++;
    patients += st.patients;
    double val_c = NAN;
    int epoch_end = ts.step_in_epoch >= spe;
    if (epoch_end) {
      if ((s = ops->validate(w, &ts, &val_c)) != PS_OK) break;
      ts.last_val_c = val_c;
    }
    if (rank == 0) {
      metrics_row(metrics, &ts, &st, val_c);
      double el = ps_train_now_s() - t_loop;
      double rate = el > 0 ? (double)patients / el : 0;
      double eta = (ts.step > start_step) ? el / (double)(ts.step - start_step) * (double)(total - ts.step) : NAN;
      if (!opt->quiet) progress(stdout, tty, &ts, total, &st, rate, eta, cfg->log.every_steps);
    }
    int early_stop = 0;
    if (epoch_end) {
      ts.epoch++;
      ts.step_in_epoch = 0;
      if (isfinite(val_c) && (!isfinite(ts.best_val_c) || val_c > ts.best_val_c)) {
        ts.best_val_c = val_c;
        ts.best_epoch = ts.epoch - 1;
        ts.bad_epochs = 0;
        if ((s = save_named_ckpt(c, ckpt_dir, "best.h5", &sc)) != PS_OK) break;
      } else if (isfinite(val_c)) {
        ts.bad_epochs++;
        early_stop = cfg->train.patience > 0 && ts.bad_epochs >= cfg->train.patience;
      }
    }
    // Every rank must stop at the same step: the flag is all-reduced each step.
    int32_t flag = ps_signal_pending() ? 1 : 0;
    if ((s = ps_comm_allreduce(c, PS_IN_PLACE, &flag, 1, PS_I32, PS_OP_MAX)) != PS_OK) break;
    int periodic = cfg->checkpoint.every_steps > 0 && ts.step % cfg->checkpoint.every_steps == 0;
    if (epoch_end || periodic || flag || early_stop || ts.step == total) {
      if ((s = save_step_ckpt(c, ckpt_dir, cfg->checkpoint.keep, &sc, ts.step, NULL)) != PS_OK) break;
      last_saved = ts.step;
    }
    if (flag) {
      stopped = "signal";
      break;
    }
    if (early_stop) {
      stopped = "early_stopping";
      break;
    }
  }
  if (tty) printf("\n");
  if (s == PS_OK && last_saved != ts.step) s = save_step_ckpt(c, ckpt_dir, cfg->checkpoint.keep, &sc, ts.step, NULL);
  if (metrics) fclose(metrics);
  uint32_t crc = ops->param_crc(w);
  if (s == PS_OK && rank == 0) {
    write_summary(run_dir, cfg, c, &ts, &st, stopped, ps_train_now_s() - t0, crc, ops->name, patients);
    write_model_card(run_dir, cfg, c, &ts, ops->name, w, ops);
    if (!opt->quiet) {
      printf("pansurv train: %s at step %lld; param crc32 %08x; outputs in %s\n", stopped, (long long)ts.step, crc,
             run_dir);
      if (!strcmp(stopped, "signal"))
        printf("pansurv train: stopped by signal after writing a checkpoint; exit status %d; continue with "
               "--resume auto\n", PS_EXIT_PREEMPTED);
      fflush(stdout);
    }
  }
  free(config_text);
  if (s == PS_OK && !strcmp(stopped, "signal"))
    return ps_error_set(PS_ERR_INTERRUPTED, __FILE__, __LINE__, "stopped by signal %d at step %lld (checkpoint written)",
                        ps_signal_pending(), (long long)ts.step);
  return s;
}
