#define _POSIX_C_SOURCE 200809L // open_memstream
#include "ps_config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

static const char *const type_names[] = {"bool", "int", "int", "float", "string", "enum", "list of enum",
                                         "list of int"};
_Static_assert(sizeof type_names / sizeof type_names[0] == PS_CFG_TYPE_COUNT, "type_names");
const char *ps_cfg_type_name(ps_cfg_type t) { return (t >= 0 && t < PS_CFG_TYPE_COUNT) ? type_names[t] : "?"; }

static const char *const split_names[] = {"random", "kfold", "site", "file", NULL};
static const char *const modality_names[] = {"clinical", "omics", "slides", NULL};
static const char *const slide_input_names[] = {"tiles", "features", NULL};
static const char *const bag_names[] = {"sample", "all", NULL};
static const char *const ties_names[] = {"efron", "breslow", NULL};
static const char *const strata_names[] = {"none", "cohort", NULL};
static const char *const optim_names[] = {"adamw", "sgd", NULL};
static const char *const sched_names[] = {"constant", "cosine", NULL};
static const char *const prec_names[] = {"fp32", "bf16", NULL};
static const char *const device_names[] = {"auto", "cpu", "cuda", NULL};
static const char *const workload_names[] = {"model", "toy", NULL};
static const char *const backend_names[] = {"auto", "mpi", "nccl", NULL};
#define NAMES_MATCH(arr, n) _Static_assert(sizeof arr / sizeof arr[0] == (n) + 1, #arr " must cover its enum")
NAMES_MATCH(split_names, PS_CFG_SPLIT_COUNT);
NAMES_MATCH(modality_names, PS_CFG_MOD_COUNT);
NAMES_MATCH(slide_input_names, PS_CFG_SLIDE_INPUT_COUNT);
NAMES_MATCH(bag_names, PS_CFG_BAG_COUNT);
NAMES_MATCH(ties_names, PS_CFG_TIES_COUNT);
NAMES_MATCH(strata_names, PS_CFG_STRATA_COUNT);
NAMES_MATCH(optim_names, PS_CFG_OPTIM_COUNT);
NAMES_MATCH(sched_names, PS_CFG_SCHED_COUNT);
NAMES_MATCH(prec_names, PS_CFG_PREC_COUNT);
NAMES_MATCH(device_names, PS_CFG_DEV_COUNT);
NAMES_MATCH(workload_names, PS_CFG_WORKLOAD_COUNT);
NAMES_MATCH(backend_names, PS_CFG_BACKEND_COUNT);

#define OFF(f) offsetof(ps_config, f)
#define BIG 1e300
// clang-format off
const ps_cfg_key ps_config_keys[] = {
  {"data", "path", PS_CFG_STRING, OFF(data.path), 0, 0, 0, NULL, "\"\"", "cohort HDF5 file (pansurv sim / pansurv prep output); required for training"},
  {"data", "split", PS_CFG_ENUM, OFF(data.split), 0, 0, 0, split_names, "random", "how patients are split: random (seeded, by val/test fractions), kfold (fold of folds is validation), site (held-out site index fold), file (split_file)"},
  {"data", "split_file", PS_CFG_STRING, OFF(data.split_file), 0, 0, 0, NULL, "\"\"", "CSV id,split (train/val/test or a fold number) when split is file"},
  {"data", "fold", PS_CFG_INT, OFF(data.fold), 0, 0, 1000, NULL, "0", "held-out fold (kfold) or held-out site index (site); `pansurv cv` sets it per fold"},
  {"data", "folds", PS_CFG_INT, OFF(data.folds), 0, 2, 1000, NULL, "5", "number of folds k for kfold splits and `pansurv cv`"},
  {"data", "val_fraction", PS_CFG_FLOAT, OFF(data.val_fraction), 0, 0, 0.9, NULL, "0.15", "fraction of patients in the validation split (random split; with kfold, of the training folds)"},
  {"data", "test_fraction", PS_CFG_FLOAT, OFF(data.test_fraction), 0, 0, 0.9, NULL, "0.15", "fraction of patients in the test split (random and kfold splits)"},
  {"data", "modalities", PS_CFG_ENUM_LIST, OFF(data.modalities), OFF(data.n_modalities), 0, 0, modality_names, "[clinical, omics, slides]", "modalities the model uses (any non-empty subset)"},
  {"data", "tiles", PS_CFG_INT, OFF(data.tiles), 0, 1, 65536, NULL, "16", "tiles per patient in a bag (bag: sample draws this many, with replacement when fewer)"},
  {"data", "slide_input", PS_CFG_ENUM, OFF(data.slide_input), 0, 0, 0, slide_input_names, "tiles", "slide representation: tiles (RGB images through the tile CNN) or features (precomputed, CLAM layout)"},
  {"data", "bag", PS_CFG_ENUM, OFF(data.bag), 0, 0, 0, bag_names, "sample", "sample: K tiles per patient; all: every tile of the patient (variable bag size)"},
  {"data", "genes", PS_CFG_INT, OFF(data.genes), 0, 0, 1000000, NULL, "0", "top-variance genes kept, chosen on the training split (0: all genes)"},
  {"data", "augment", PS_CFG_BOOL, OFF(data.augment), 0, 0, 0, NULL, "true", "tile augmentation (flips, 90 degree rotations, colour jitter) during training"},

  {"model", "embed_dim", PS_CFG_INT, OFF(model.embed_dim), 0, 1, 65536, NULL, "128", "D: width of every modality embedding and fusion token"},
  {"model", "omics_hidden", PS_CFG_INT, OFF(model.omics_hidden), 0, 1, 65536, NULL, "512", "hidden width of the omics autoencoder (G -> hidden -> D -> hidden -> G)"},
  {"model", "omics_dropout", PS_CFG_FLOAT, OFF(model.omics_dropout), 0, 0, 0.95, NULL, "0.1", "dropout inside the omics encoder"},
  {"model", "omics_noise", PS_CFG_FLOAT, OFF(model.omics_noise), 0, 0, 10, NULL, "0", "std of Gaussian input noise (denoising autoencoder; 0: off)"},
  {"model", "cnn_channels", PS_CFG_INT_LIST, OFF(model.cnn_channels), OFF(model.n_cnn_channels), 1, 4096, NULL, "[32, 64, 128]", "output channels of the tile CNN blocks (conv3x3 + norm + ReLU + maxpool2x2)"},
  {"model", "norm_groups", PS_CFG_INT, OFF(model.norm_groups), 0, 0, 4096, NULL, "0", "tile CNN normalization: 0 = BatchNorm synchronized across ranks; G > 0 = GroupNorm with G groups (per tile, exact under gradient accumulation)"},
  {"model", "tile_size", PS_CFG_INT, OFF(model.tile_size), 0, 8, 1024, NULL, "64", "tile edge in pixels (must equal the cohort's tile size)"},
  {"model", "feature_dim", PS_CFG_INT, OFF(model.feature_dim), 0, 1, 65536, NULL, "1024", "F: precomputed tile feature width (slide_input: features)"},
  {"model", "attn_hidden", PS_CFG_INT, OFF(model.attn_hidden), 0, 1, 65536, NULL, "64", "hidden size of gated attention pooling over tiles"},
  {"model", "clinical_hidden", PS_CFG_INT, OFF(model.clinical_hidden), 0, 1, 65536, NULL, "64", "hidden width of the clinical MLP"},
  {"model", "fusion_layers", PS_CFG_INT, OFF(model.fusion_layers), 0, 0, 64, NULL, "1", "self-attention layers over modality tokens (0: mean of tokens)"},
  {"model", "fusion_heads", PS_CFG_INT, OFF(model.fusion_heads), 0, 1, 64, NULL, "4", "attention heads in fusion (must divide embed_dim)"},

  {"loss", "ties", PS_CFG_ENUM, OFF(loss.ties), 0, 0, 0, ties_names, "efron", "tie handling of the Cox partial likelihood"},
  {"loss", "strata", PS_CFG_ENUM, OFF(loss.strata), 0, 0, 0, strata_names, "none", "separate risk sets per cohort (cancer type) or one risk set"},
  {"loss", "lambda_recon", PS_CFG_FLOAT, OFF(loss.lambda_recon), 0, 0, 1e6, NULL, "0.1", "weight of the omics reconstruction MSE in the total loss"},

  {"optim", "name", PS_CFG_ENUM, OFF(optim.name), 0, 0, 0, optim_names, "adamw", "optimizer"},
  {"optim", "lr", PS_CFG_FLOAT, OFF(optim.lr), 0, 0, 10, NULL, "0.001", "peak learning rate"},
  {"optim", "weight_decay", PS_CFG_FLOAT, OFF(optim.weight_decay), 0, 0, 10, NULL, "0.0001", "decoupled weight decay (AdamW) or L2 (SGD); never applied to norm scales and biases"},
  {"optim", "momentum", PS_CFG_FLOAT, OFF(optim.momentum), 0, 0, 0.9999, NULL, "0.9", "SGD momentum"},
  {"optim", "nesterov", PS_CFG_BOOL, OFF(optim.nesterov), 0, 0, 0, NULL, "false", "SGD Nesterov momentum"},
  {"optim", "beta1", PS_CFG_FLOAT, OFF(optim.beta1), 0, 0, 0.9999, NULL, "0.9", "AdamW first-moment decay"},
  {"optim", "beta2", PS_CFG_FLOAT, OFF(optim.beta2), 0, 0, 0.999999, NULL, "0.999", "AdamW second-moment decay"},
  {"optim", "eps", PS_CFG_FLOAT, OFF(optim.eps), 0, 1e-30, 1, NULL, "1e-08", "AdamW epsilon"},
  {"optim", "schedule", PS_CFG_ENUM, OFF(optim.schedule), 0, 0, 0, sched_names, "cosine", "learning-rate schedule after warm-up: constant or cosine decay to min_lr"},
  {"optim", "warmup_steps", PS_CFG_INT, OFF(optim.warmup_steps), 0, 0, 100000000, NULL, "0", "linear warm-up from 0 to lr over this many optimizer steps"},
  {"optim", "min_lr", PS_CFG_FLOAT, OFF(optim.min_lr), 0, 0, 10, NULL, "0", "final learning rate of the cosine schedule"},

  {"train", "epochs", PS_CFG_INT, OFF(train.epochs), 0, 1, 1000000, NULL, "20", "passes over the training split"},
  {"train", "global_batch", PS_CFG_INT, OFF(train.global_batch), 0, 1, 100000000, NULL, "64", "patients per optimizer step over all ranks (the Cox risk set); independent of the rank count"},
  {"train", "accumulation", PS_CFG_INT, OFF(train.accumulation), 0, 1, 4096, NULL, "1", "micro-batches per optimizer step (exact Cox coupling: one extra forward pass)"},
  {"train", "clip_norm", PS_CFG_FLOAT, OFF(train.clip_norm), 0, 0, 1e30, NULL, "1", "global gradient-norm clipping threshold (0: off)"},
  {"train", "patience", PS_CFG_INT, OFF(train.patience), 0, 0, 1000000, NULL, "0", "early stopping: epochs without a better validation C-index (0: off)"},
  {"train", "seed", PS_CFG_INT64, OFF(train.seed), 0, 0, 9.2e18, NULL, "1", "seed of every random stream (init, shuffle, dropout, augmentation)"},
  {"train", "precision", PS_CFG_ENUM, OFF(train.precision), 0, 0, 0, prec_names, "fp32", "matmul precision: fp32, or bf16 (GPU only: GEMM inputs rounded to bf16 with fp32 accumulation; weights, activations, optimizer state and the loss stay fp32/fp64; see docs/gpu.md)"},
  {"train", "threads", PS_CFG_INT, OFF(train.threads), 0, 0, 4096, NULL, "0", "threads per rank (0: OMP_NUM_THREADS, SLURM_CPUS_PER_TASK or cores per local rank)"},
  {"train", "device", PS_CFG_ENUM, OFF(train.device), 0, 0, 0, device_names, "auto", "auto (cuda when this build has CUDA and every rank sees a GPU, else cpu), cpu, or cuda (an error without a visible GPU); one rank per GPU"},
  {"train", "workload", PS_CFG_ENUM, OFF(train.workload), 0, 0, 0, workload_names, "model", "model: train the multimodal model; toy: a synthetic parameter vector with no data, for testing launchers, checkpoints and preemption"},
  {"train", "max_steps", PS_CFG_INT, OFF(train.max_steps), 0, 0, 2000000000, NULL, "0", "stop after this many optimizer steps (0: epochs decide); the learning-rate schedule still spans train.epochs"},

  {"comm", "backend", PS_CFG_ENUM, OFF(comm.backend), 0, 0, 0, backend_names, "auto", "gradient all-reduce: auto (nccl when the model is on a GPU and NCCL is built, else mpi), mpi (a GPU model's gradients are staged through host memory, not overlapped) or nccl (GPU only); SyncBN and Cox-loss collectives always use MPI on host values"},
  {"comm", "bucket_mb", PS_CFG_FLOAT, OFF(comm.bucket_mb), 0, 0.0625, 4096, NULL, "4", "gradient all-reduce bucket size in MiB"},

  {"checkpoint", "dir", PS_CFG_STRING, OFF(checkpoint.dir), 0, 0, 0, NULL, "\"\"", "checkpoint directory (empty: RUN_DIR/checkpoints)"},
  {"checkpoint", "every_steps", PS_CFG_INT, OFF(checkpoint.every_steps), 0, 0, 100000000, NULL, "0", "checkpoint every N optimizer steps (0: only at epoch end and on a stop signal)"},
  {"checkpoint", "keep", PS_CFG_INT, OFF(checkpoint.keep), 0, 1, 100000, NULL, "3", "step checkpoints kept (older ones are deleted; best.h5 is kept apart)"},

  {"log", "every_steps", PS_CFG_INT, OFF(log.every_steps), 0, 1, 100000000, NULL, "10", "a plain progress line every N steps when stdout is not a terminal"},
  {"log", "run_dir", PS_CFG_STRING, OFF(log.run_dir), 0, 0, 0, NULL, "runs", "parent of run directories"},
  {"log", "name", PS_CFG_STRING, OFF(log.name), 0, 0, 0, NULL, "\"\"", "run name (empty: job-$SLURM_JOB_ID under SLURM, else run-<UTC time>); the run directory is RUN_DIR/NAME"},
};
// clang-format on
const size_t ps_config_key_count = sizeof ps_config_keys / sizeof ps_config_keys[0];

static const char *const section_names[] = {"data", "model", "loss", "optim", "train", "comm", "checkpoint", "log"};
enum { N_SECTIONS = sizeof section_names / sizeof section_names[0] };

int ps_config_edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 255 || lb > 255) return 1000;
  int row[256];
  for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
  for (size_t i = 1; i <= la; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= lb; j++) {
      int up = row[j];
      int sub = diag + (a[i - 1] != b[j - 1]);
      int best = up + 1 < row[j - 1] + 1 ? up + 1 : row[j - 1] + 1;
      row[j] = sub < best ? sub : best;
      diag = up;
    }
  }
  return row[lb];
}

static const ps_cfg_key *find_key(const char *section, const char *key) {
  for (size_t i = 0; i < ps_config_key_count; i++)
    if (!strcmp(ps_config_keys[i].section, section) && !strcmp(ps_config_keys[i].key, key)) return &ps_config_keys[i];
  return NULL;
}

static bool section_known(const char *s) {
  for (int i = 0; i < N_SECTIONS; i++)
    if (!strcmp(section_names[i], s)) return true;
  return false;
}

static const char *closest_section(const char *s) {
  const char *best = section_names[0];
  int bd = 1 << 30;
  for (int i = 0; i < N_SECTIONS; i++) {
    int d = ps_config_edit_distance(s, section_names[i]);
    if (d < bd) bd = d, best = section_names[i];
  }
  return best;
}

// Closest "section.key" over all keys; compares against the key alone and the
// dotted name, so a key put in the wrong section is found too.
static void closest_key(const char *section, const char *key, char *out, size_t len) {
  char dotted[512];
  snprintf(dotted, sizeof dotted, "%s.%s", section, key);
  int bd = 1 << 30;
  for (size_t i = 0; i < ps_config_key_count; i++) {
    const ps_cfg_key *k = &ps_config_keys[i];
    char full[512];
    snprintf(full, sizeof full, "%s.%s", k->section, k->key);
    int d = ps_config_edit_distance(dotted, full);
    int d2 = ps_config_edit_distance(key, k->key) + (strcmp(section, k->section) ? 1 : 0);
    if (d2 < d) d = d2;
    if (d < bd) bd = d, snprintf(out, len, "%s", full);
  }
}

const char *ps_config_enum_name(const char *section, const char *key, int value) {
  const ps_cfg_key *k = find_key(section, key);
  if (!k || !k->choices) return "?";
  for (int i = 0; k->choices[i]; i++)
    if (i == value) return k->choices[i];
  return "?";
}

static void choices_text(const ps_cfg_key *k, char *out, size_t len, const char *sep) {
  size_t n = 0;
  out[0] = '\0';
  for (int i = 0; k->choices[i]; i++) n += (size_t)snprintf(out + n, n < len ? len - n : 0, "%s%s", i ? sep : "", k->choices[i]);
}

// `sep` separates choices ("|" in messages, ", " inside markdown tables).
static void range_text_sep(const ps_cfg_key *k, char *out, size_t len, const char *sep) {
  switch (k->type) {
  case PS_CFG_BOOL: snprintf(out, len, "true%sfalse", sep); break;
  case PS_CFG_INT:
  case PS_CFG_INT64:
  case PS_CFG_INT_LIST: snprintf(out, len, "%.0f..%.0f", k->min, k->max); break;
  case PS_CFG_FLOAT: snprintf(out, len, "%g..%g", k->min, k->max); break;
  case PS_CFG_STRING: snprintf(out, len, "any"); break;
  case PS_CFG_ENUM:
  case PS_CFG_ENUM_LIST: choices_text(k, out, len, sep); break;
  default: snprintf(out, len, "?");
  }
}

static void range_text(const ps_cfg_key *k, char *out, size_t len) { range_text_sep(k, out, len, "|"); }

// ---- scalar parsing -------------------------------------------------------
// `where` is "file:line:col" or "--set"; every error names the key and what was expected.
static ps_status bad_value(const char *where, const ps_cfg_key *k, const char *v) {
  char range[512];
  range_text(k, range, sizeof range);
  PS_FAIL(PS_ERR_CONFIG, "%s: %s.%s = '%s': expected %s in %s", where, k->section, k->key, v, ps_cfg_type_name(k->type),
          range);
}

static ps_status parse_int(const char *where, const ps_cfg_key *k, const char *v, int64_t *out) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (!*v || *end || errno) return bad_value(where, k, v);
  if ((double)x < k->min || (double)x > k->max) return bad_value(where, k, v);
  *out = x;
  return PS_OK;
}

static ps_status parse_enum(const char *where, const ps_cfg_key *k, const char *v, int *out) {
  for (int i = 0; k->choices[i]; i++)
    if (!strcmp(k->choices[i], v)) {
      *out = i;
      return PS_OK;
    }
  return bad_value(where, k, v);
}

static ps_status set_scalar(ps_config *c, const ps_cfg_key *k, const char *v, const char *where) {
  char *p = (char *)c + k->offset;
  switch (k->type) {
  case PS_CFG_BOOL:
    if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on")) *(bool *)p = true;
    else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off")) *(bool *)p = false;
    else return bad_value(where, k, v);
    return PS_OK;
  case PS_CFG_INT: {
    int64_t x = 0;
    PS_TRY(parse_int(where, k, v, &x));
    *(int *)p = (int)x;
    return PS_OK;
  }
  case PS_CFG_INT64: {
    int64_t x = 0;
    PS_TRY(parse_int(where, k, v, &x));
    *(int64_t *)p = x;
    return PS_OK;
  }
  case PS_CFG_FLOAT: {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !isfinite(x) || x < k->min || x > k->max) return bad_value(where, k, v);
    *(double *)p = x;
    return PS_OK;
  }
  case PS_CFG_STRING:
    if (strlen(v) >= PS_CFG_STR_MAX)
      PS_FAIL(PS_ERR_CONFIG, "%s: %s.%s: string longer than %d characters", where, k->section, k->key, PS_CFG_STR_MAX - 1);
    snprintf(p, PS_CFG_STR_MAX, "%s", v);
    return PS_OK;
  case PS_CFG_ENUM: return parse_enum(where, k, v, (int *)p);
  default: PS_FAIL(PS_ERR_CONFIG, "%s: %s.%s expects a %s, got a scalar '%s'", where, k->section, k->key, ps_cfg_type_name(k->type), v);
  }
}

static ps_status set_list(ps_config *c, const ps_cfg_key *k, const char *const *items, int n, const char *where) {
  int *vals = (int *)((char *)c + k->offset);
  int *count = (int *)((char *)c + k->count_offset);
  if (n < 1 || n > PS_CFG_LIST_MAX)
    PS_FAIL(PS_ERR_CONFIG, "%s: %s.%s: expected 1..%d elements, got %d", where, k->section, k->key, PS_CFG_LIST_MAX, n);
  int tmp[PS_CFG_LIST_MAX];
  for (int i = 0; i < n; i++) {
    if (k->type == PS_CFG_ENUM_LIST) {
      PS_TRY(parse_enum(where, k, items[i], &tmp[i]));
      for (int j = 0; j < i; j++)
        if (tmp[j] == tmp[i]) PS_FAIL(PS_ERR_CONFIG, "%s: %s.%s: '%s' listed twice", where, k->section, k->key, items[i]);
    } else {
      int64_t x = 0;
      PS_TRY(parse_int(where, k, items[i], &x));
      tmp[i] = (int)x;
    }
  }
  memset(vals, 0, sizeof(int) * PS_CFG_LIST_MAX); // unused slots zero: configs compare with memcmp
  memcpy(vals, tmp, sizeof(int) * (size_t)n);
  *count = n;
  return PS_OK;
}

static bool is_list(const ps_cfg_key *k) { return k->type == PS_CFG_ENUM_LIST || k->type == PS_CFG_INT_LIST; }

// A default or --set value for a list: "a,b" or "[a, b]".
static ps_status set_list_text(ps_config *c, const ps_cfg_key *k, const char *text, const char *where) {
  char buf[PS_CFG_STR_MAX];
  snprintf(buf, sizeof buf, "%s", text);
  char *s = buf;
  while (*s == ' ') s++;
  if (*s == '[') {
    s++;
    char *e = strrchr(s, ']');
    if (!e) return bad_value(where, k, text);
    *e = '\0';
  }
  const char *items[PS_CFG_LIST_MAX + 1];
  int n = 0;
  for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
    while (*tok == ' ') tok++;
    char *e = tok + strlen(tok);
    while (e > tok && e[-1] == ' ') *--e = '\0';
    if (!*tok) continue;
    if (n == PS_CFG_LIST_MAX + 1) break;
    items[n++] = tok;
  }
  return set_list(c, k, items, n, where);
}

void ps_config_defaults(ps_config *c) {
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < ps_config_key_count; i++) {
    const ps_cfg_key *k = &ps_config_keys[i];
    const char *d = k->def;
    char buf[64];
    if (!strcmp(d, "\"\"")) d = "";
    ps_status s = is_list(k) ? set_list_text(c, k, d, "default") : set_scalar(c, k, d, "default");
    if (s != PS_OK) {
      // A bad default is a bug in the table; the docs/config tests catch it.
      snprintf(buf, sizeof buf, "%s.%s", k->section, k->key);
      fprintf(stderr, "pansurv: internal error: bad default for %s: %s\n", buf, ps_error_message());
      abort();
    }
  }
}

// ---- YAML loading -----------------------------------------------------------
static void where_of(char *out, size_t len, const char *path, const yaml_node_t *n) {
  snprintf(out, len, "%s:%zu:%zu", path, n->start_mark.line + 1, n->start_mark.column + 1);
}

static ps_status load_section(ps_config *c, yaml_document_t *doc, const char *path, const char *section,
                              yaml_node_t *map) {
  char where[PS_CFG_STR_MAX + 64];
  if (map->type != YAML_MAPPING_NODE) {
    where_of(where, sizeof where, path, map);
    PS_FAIL(PS_ERR_CONFIG, "%s: section '%s' must be a mapping of key: value", where, section);
  }
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *kn = yaml_document_get_node(doc, p->key);
    yaml_node_t *vn = yaml_document_get_node(doc, p->value);
    where_of(where, sizeof where, path, kn);
    if (kn->type != YAML_SCALAR_NODE) PS_FAIL(PS_ERR_CONFIG, "%s: keys in section '%s' must be plain words", where, section);
    const char *key = (const char *)kn->data.scalar.value;
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
      yaml_node_t *prev = yaml_document_get_node(doc, q->key);
      if (prev->type == YAML_SCALAR_NODE && !strcmp((const char *)prev->data.scalar.value, key))
        PS_FAIL(PS_ERR_CONFIG, "%s: %s.%s given twice (first at line %zu)", where, section, key, prev->start_mark.line + 1);
    }
    const ps_cfg_key *k = find_key(section, key);
    if (!k) {
      char best[512];
      closest_key(section, key, best, sizeof best);
      PS_FAIL(PS_ERR_CONFIG, "%s: unknown key '%s.%s' (did you mean '%s'?)", where, section, key, best);
    }
    where_of(where, sizeof where, path, vn);
    if (is_list(k)) {
      if (vn->type == YAML_SCALAR_NODE) {
        PS_TRY(set_list_text(c, k, (const char *)vn->data.scalar.value, where));
        continue;
      }
      if (vn->type != YAML_SEQUENCE_NODE)
        PS_FAIL(PS_ERR_CONFIG, "%s: %s.%s expects a %s", where, section, key, ps_cfg_type_name(k->type));
      const char *items[PS_CFG_LIST_MAX + 1];
      int n = 0;
      for (yaml_node_item_t *it = vn->data.sequence.items.start; it < vn->data.sequence.items.top; it++) {
        yaml_node_t *e = yaml_document_get_node(doc, *it);
        if (e->type != YAML_SCALAR_NODE)
          PS_FAIL(PS_ERR_CONFIG, "%s: %s.%s: list elements must be scalars", where, section, key);
        if (n <= PS_CFG_LIST_MAX) items[n] = (const char *)e->data.scalar.value;
        n++;
      }
      PS_TRY(set_list(c, k, items, n, where));
    } else {
      if (vn->type != YAML_SCALAR_NODE)
        PS_FAIL(PS_ERR_CONFIG, "%s: %s.%s expects a %s, got a %s", where, section, key, ps_cfg_type_name(k->type),
                vn->type == YAML_SEQUENCE_NODE ? "list" : "mapping");
      const char *v = (const char *)vn->data.scalar.value;
      // A quoted number stays a string: "lr: '0.1'" is a type error, as in typed YAML.
      if (k->type != PS_CFG_STRING && k->type != PS_CFG_ENUM && vn->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return bad_value(where, k, v);
      PS_TRY(set_scalar(c, k, v, where));
    }
  }
  return PS_OK;
}

// Loads from an initialized parser (file or string input); `path` names the source in messages.
static ps_status load_parser(ps_config *c, yaml_parser_t *parser, const char *path) {
  yaml_document_t doc;
  if (!yaml_parser_load(parser, &doc))
    PS_FAIL(PS_ERR_CONFIG, "%s:%zu:%zu: YAML syntax error: %s", path, parser->problem_mark.line + 1,
            parser->problem_mark.column + 1, parser->problem ? parser->problem : "unknown");
  ps_status s = PS_OK;
  char where[PS_CFG_STR_MAX + 64];
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (!root) {
    s = ps_error_set(PS_ERR_CONFIG, __FILE__, __LINE__, "%s: empty config file", path);
  } else if (root->type != YAML_MAPPING_NODE) {
    where_of(where, sizeof where, path, root);
    s = ps_error_set(PS_ERR_CONFIG, __FILE__, __LINE__, "%s: the config must be a mapping of sections", where);
  } else {
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; s == PS_OK && p < root->data.mapping.pairs.top; p++) {
      yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
      where_of(where, sizeof where, path, kn);
      const char *name = kn->type == YAML_SCALAR_NODE ? (const char *)kn->data.scalar.value : "";
      if (!section_known(name)) {
        s = ps_error_set(PS_ERR_CONFIG, __FILE__, __LINE__, "%s: unknown section '%s' (did you mean '%s'?)", where,
                         name, closest_section(name));
        break;
      }
      for (yaml_node_pair_t *q = root->data.mapping.pairs.start; q < p; q++) {
        yaml_node_t *prev = yaml_document_get_node(&doc, q->key);
        if (prev->type == YAML_SCALAR_NODE && !strcmp((const char *)prev->data.scalar.value, name)) {
          s = ps_error_set(PS_ERR_CONFIG, __FILE__, __LINE__, "%s: section '%s' given twice", where, name);
          break;
        }
      }
      if (s == PS_OK) {
        yaml_node_t *vn = yaml_document_get_node(&doc, p->value);
        // "section:" with nothing under it is an empty (null) scalar: allowed, nothing set.
        if (!(vn->type == YAML_SCALAR_NODE && vn->data.scalar.length == 0))
          s = load_section(c, &doc, path, name, vn);
      }
    }
  }
  yaml_document_delete(&doc);
  if (s == PS_OK) snprintf(c->source, sizeof c->source, "%s", path);
  return s;
}

ps_status ps_config_load(ps_config *c, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) PS_FAIL(PS_ERR_IO, "cannot open config '%s': %s", path, strerror(errno));
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) {
    fclose(f);
    PS_FAIL(PS_ERR_MEM, "libyaml: cannot initialize a parser");
  }
  yaml_parser_set_input_file(&parser, f);
  ps_status s = load_parser(c, &parser, path);
  yaml_parser_delete(&parser);
  fclose(f);
  return s;
}

ps_status ps_config_load_text(ps_config *c, const char *text, const char *name) {
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) PS_FAIL(PS_ERR_MEM, "libyaml: cannot initialize a parser");
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
  ps_status s = load_parser(c, &parser, name);
  yaml_parser_delete(&parser);
  return s;
}

ps_status ps_config_set(ps_config *c, const char *assignment) {
  const char *eq = strchr(assignment, '=');
  const char *dot = strchr(assignment, '.');
  if (!eq || !dot || dot > eq)
    PS_FAIL(PS_ERR_CONFIG, "--set '%s': expected section.key=value (e.g. --set train.epochs=5)", assignment);
  char section[128], key[128];
  size_t ls = (size_t)(dot - assignment), lk = (size_t)(eq - dot - 1);
  if (ls >= sizeof section || lk >= sizeof key) PS_FAIL(PS_ERR_CONFIG, "--set '%s': name too long", assignment);
  memcpy(section, assignment, ls);
  section[ls] = '\0';
  memcpy(key, dot + 1, lk);
  key[lk] = '\0';
  if (!section_known(section))
    PS_FAIL(PS_ERR_CONFIG, "--set %s: unknown section '%s' (did you mean '%s'?)", assignment, section, closest_section(section));
  const ps_cfg_key *k = find_key(section, key);
  if (!k) {
    char best[512];
    closest_key(section, key, best, sizeof best);
    PS_FAIL(PS_ERR_CONFIG, "--set %s: unknown key '%s.%s' (did you mean '%s'?)", assignment, section, key, best);
  }
  const char *v = eq + 1;
  return is_list(k) ? set_list_text(c, k, v, "--set") : set_scalar(c, k, v, "--set");
}

ps_status ps_config_validate(const ps_config *c) {
  const char *src = c->source[0] ? c->source : "config";
  if (c->data.split == PS_CFG_SPLIT_KFOLD && c->data.fold >= c->data.folds)
    PS_FAIL(PS_ERR_CONFIG, "%s: data.fold = %d must be below data.folds = %d", src, c->data.fold, c->data.folds);
  if (c->data.split == PS_CFG_SPLIT_FILE && !c->data.split_file[0])
    PS_FAIL(PS_ERR_CONFIG, "%s: data.split is file but data.split_file is empty", src);
  if (c->data.val_fraction + c->data.test_fraction >= 0.95)
    PS_FAIL(PS_ERR_CONFIG, "%s: data.val_fraction + data.test_fraction = %g leaves too little training data (expected < 0.95)",
            src, c->data.val_fraction + c->data.test_fraction);
  if (c->model.embed_dim % c->model.fusion_heads)
    PS_FAIL(PS_ERR_CONFIG, "%s: model.fusion_heads = %d must divide model.embed_dim = %d", src, c->model.fusion_heads,
            c->model.embed_dim);
  if (c->train.global_batch % c->train.accumulation)
    PS_FAIL(PS_ERR_CONFIG, "%s: train.accumulation = %d must divide train.global_batch = %d", src, c->train.accumulation,
            c->train.global_batch);
  if (c->optim.min_lr > c->optim.lr)
    PS_FAIL(PS_ERR_CONFIG, "%s: optim.min_lr = %g exceeds optim.lr = %g", src, c->optim.min_lr, c->optim.lr);
  if (c->train.precision == PS_CFG_PREC_BF16 && c->train.device == PS_CFG_DEV_CPU)
    PS_FAIL(PS_ERR_CONFIG, "%s: train.precision bf16 needs train.device cuda or auto", src);
  if (c->train.workload == PS_CFG_WORKLOAD_MODEL && !c->data.path[0])
    PS_FAIL(PS_ERR_CONFIG, "%s: data.path is empty (the cohort HDF5 file to train on)", src);
  return PS_OK;
}

// ---- printing -------------------------------------------------------------
static void print_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

static void print_value(FILE *f, const ps_config *c, const ps_cfg_key *k) {
  const char *p = (const char *)c + k->offset;
  switch (k->type) {
  case PS_CFG_BOOL: fputs(*(const bool *)p ? "true" : "false", f); break;
  case PS_CFG_INT: fprintf(f, "%d", *(const int *)p); break;
  case PS_CFG_INT64: fprintf(f, "%lld", (long long)*(const int64_t *)p); break;
  case PS_CFG_FLOAT: fprintf(f, "%.17g", *(const double *)p); break;
  case PS_CFG_STRING: print_string(f, p); break;
  case PS_CFG_ENUM: fputs(k->choices[*(const int *)p], f); break;
  case PS_CFG_ENUM_LIST:
  case PS_CFG_INT_LIST: {
    const int *v = (const int *)p;
    int n = *(const int *)((const char *)c + k->count_offset);
    fputc('[', f);
    for (int i = 0; i < n; i++) {
      if (i) fputs(", ", f);
      if (k->type == PS_CFG_ENUM_LIST) fputs(k->choices[v[i]], f);
      else fprintf(f, "%d", v[i]);
    }
    fputc(']', f);
    break;
  }
  default: break;
  }
}

void ps_config_print(const ps_config *c, FILE *f) {
  const char *section = "";
  for (size_t i = 0; i < ps_config_key_count; i++) {
    const ps_cfg_key *k = &ps_config_keys[i];
    if (strcmp(section, k->section)) fprintf(f, "%s%s:\n", i ? "\n" : "", section = k->section);
    fprintf(f, "  %s: ", k->key);
    print_value(f, c, k);
    fputc('\n', f);
  }
}

char *ps_config_to_string(const ps_config *c) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return NULL;
  ps_config_print(c, f);
  fclose(f);
  return buf;
}

void ps_config_print_markdown(FILE *f) {
  fprintf(f, "| key | type | range | default | meaning |\n|---|---|---|---|---|\n");
  for (size_t i = 0; i < ps_config_key_count; i++) {
    const ps_cfg_key *k = &ps_config_keys[i];
    char range[512];
    range_text_sep(k, range, sizeof range, ", ");
    fprintf(f, "| `%s.%s` | %s | %s | `%s` | %s |\n", k->section, k->key, ps_cfg_type_name(k->type), range, k->def,
            k->doc);
  }
}
