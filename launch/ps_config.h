// ps_config: the run configuration. One YAML file (libyaml), strict: every key
// comes from one table (ps_config_keys) that drives loading, validation,
// `--set section.key=value` overrides, the resolved-config printer and the
// docs check (docs/config.md is compared to the table by a test).
#ifndef PS_CONFIG_H
#define PS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ps_status.h"

enum { PS_CFG_STR_MAX = 1024, PS_CFG_LIST_MAX = 8 };

typedef enum { PS_CFG_SPLIT_RANDOM = 0, PS_CFG_SPLIT_KFOLD, PS_CFG_SPLIT_SITE, PS_CFG_SPLIT_FILE, PS_CFG_SPLIT_COUNT } ps_cfg_split_kind;
typedef enum { PS_CFG_MOD_CLINICAL = 0, PS_CFG_MOD_OMICS, PS_CFG_MOD_SLIDES, PS_CFG_MOD_COUNT } ps_cfg_modality;
typedef enum { PS_CFG_SLIDE_TILES = 0, PS_CFG_SLIDE_FEATURES, PS_CFG_SLIDE_INPUT_COUNT } ps_cfg_slide_input;
typedef enum { PS_CFG_BAG_SAMPLE = 0, PS_CFG_BAG_ALL, PS_CFG_BAG_COUNT } ps_cfg_bag_mode;
typedef enum { PS_CFG_TIES_EFRON = 0, PS_CFG_TIES_BRESLOW, PS_CFG_TIES_COUNT } ps_cfg_ties;
typedef enum { PS_CFG_STRATA_NONE = 0, PS_CFG_STRATA_COHORT, PS_CFG_STRATA_COUNT } ps_cfg_strata;
typedef enum { PS_CFG_OPTIM_ADAMW = 0, PS_CFG_OPTIM_SGD, PS_CFG_OPTIM_COUNT } ps_cfg_optim_name;
typedef enum { PS_CFG_SCHED_CONSTANT = 0, PS_CFG_SCHED_COSINE, PS_CFG_SCHED_COUNT } ps_cfg_schedule;
typedef enum { PS_CFG_PREC_FP32 = 0, PS_CFG_PREC_BF16, PS_CFG_PREC_COUNT } ps_cfg_precision;
typedef enum { PS_CFG_DEV_AUTO = 0, PS_CFG_DEV_CPU, PS_CFG_DEV_CUDA, PS_CFG_DEV_COUNT } ps_cfg_device_choice;
typedef enum { PS_CFG_WORKLOAD_MODEL = 0, PS_CFG_WORKLOAD_TOY, PS_CFG_WORKLOAD_COUNT } ps_cfg_workload;
typedef enum { PS_CFG_BACKEND_AUTO = 0, PS_CFG_BACKEND_MPI, PS_CFG_BACKEND_NCCL, PS_CFG_BACKEND_COUNT } ps_cfg_backend_choice;

typedef struct {
  char path[PS_CFG_STR_MAX];       // cohort HDF5 file
  int split;                       // ps_cfg_split_kind
  char split_file[PS_CFG_STR_MAX]; // CSV id -> train/val/test or fold
  int fold;                        // held-out fold (kfold) or site index (site)
  int folds;                       // k
  double val_fraction;
  double test_fraction;
  int modalities[PS_CFG_LIST_MAX]; // ps_cfg_modality, n_modalities used
  int n_modalities;
  int tiles;       // tiles per patient (bag: sample)
  int slide_input; // ps_cfg_slide_input
  int bag;         // ps_cfg_bag_mode
  int genes;       // top-variance genes kept (0: all)
  bool augment;
} ps_config_data;

typedef struct {
  int embed_dim;
  int omics_hidden;
  double omics_dropout;
  double omics_noise;
  int cnn_channels[PS_CFG_LIST_MAX];
  int n_cnn_channels;
  int norm_groups; // 0: SyncBN; > 0: GroupNorm groups
  int tile_size;
  int feature_dim;
  int attn_hidden;
  int clinical_hidden;
  int fusion_layers;
  int fusion_heads;
} ps_config_model;

typedef struct {
  int ties;   // ps_cfg_ties
  int strata; // ps_cfg_strata
  double lambda_recon;
} ps_config_loss;

typedef struct {
  int name; // ps_cfg_optim_name
  double lr;
  double weight_decay;
  double momentum;
  bool nesterov;
  double beta1, beta2, eps;
  int schedule; // ps_cfg_schedule
  int warmup_steps;
  double min_lr;
} ps_config_optim;

typedef struct {
  int epochs;
  int global_batch;
  int accumulation;
  double clip_norm;
  int patience;
  int64_t seed;
  int precision; // ps_cfg_precision
  int threads;
  int device;   // ps_cfg_device_choice
  int workload; // ps_cfg_workload
  int max_steps;
} ps_config_train;

typedef struct {
  int backend; // ps_cfg_backend_choice
  double bucket_mb;
} ps_config_comm;

typedef struct {
  char dir[PS_CFG_STR_MAX];
  int every_steps;
  int keep;
} ps_config_ckpt;

typedef struct {
  int every_steps;
  char run_dir[PS_CFG_STR_MAX];
  char name[PS_CFG_STR_MAX];
} ps_config_log;

typedef struct {
  ps_config_data data;
  ps_config_model model;
  ps_config_loss loss;
  ps_config_optim optim;
  ps_config_train train;
  ps_config_comm comm;
  ps_config_ckpt checkpoint;
  ps_config_log log;
  char source[PS_CFG_STR_MAX]; // file it came from ("" for defaults only)
} ps_config;

// ---- the key table -----------------------------------------------------
typedef enum {
  PS_CFG_BOOL = 0,
  PS_CFG_INT,
  PS_CFG_INT64,
  PS_CFG_FLOAT,
  PS_CFG_STRING,
  PS_CFG_ENUM,
  PS_CFG_ENUM_LIST,
  PS_CFG_INT_LIST,
  PS_CFG_TYPE_COUNT
} ps_cfg_type;
const char *ps_cfg_type_name(ps_cfg_type t);

typedef struct {
  const char *section;
  const char *key;
  ps_cfg_type type;
  size_t offset;          // into ps_config
  size_t count_offset;    // lists: offset of the int element count
  double min, max;        // numeric range (inclusive); lists: per element
  const char *const *choices; // ENUM/ENUM_LIST: NULL-terminated names, index = enum value
  const char *def;        // default, written as in YAML
  const char *doc;
} ps_cfg_key;

extern const ps_cfg_key ps_config_keys[];
extern const size_t ps_config_key_count;

// Defaults from the table.
void ps_config_defaults(ps_config *c);
// Loads a YAML file over defaults. Errors name file:line:column.
ps_status ps_config_load(ps_config *c, const char *path);
// Same from text in memory (e.g. the config stored in a checkpoint); `name` labels messages.
ps_status ps_config_load_text(ps_config *c, const char *text, const char *name);
// "section.key=value" (value parsed as the key's type; lists as a,b,c or [a, b, c]).
ps_status ps_config_set(ps_config *c, const char *assignment);
// Cross-key checks (e.g. folds > fold, test_fraction + val_fraction < 1).
ps_status ps_config_validate(const ps_config *c);
// Resolved config as YAML that ps_config_load reads back to the same values.
void ps_config_print(const ps_config *c, FILE *f);
// Same, into a malloc'ed string (caller frees).
char *ps_config_to_string(const ps_config *c);
// Reference table in markdown (one row per key); docs/config.md embeds it.
void ps_config_print_markdown(FILE *f);
// Levenshtein distance (for "did you mean").
int ps_config_edit_distance(const char *a, const char *b);
const char *ps_config_enum_name(const char *section, const char *key, int value);

#endif
