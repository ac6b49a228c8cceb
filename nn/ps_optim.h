// ps_optim: optimizers over the flat parameter arena. One pass over one buffer; the
// per-element weight-decay flag comes from the parameter table (norm scales, biases and
// embeddings are not decayed). Schedules: constant, linear warm-up + cosine decay.
// On a CUDA parameter table the state (m, v, decay mask) lives on the device and the
// step runs there (tensor's ps_cuda_adamw_step, ps_cuda_sumsq, ps_cuda_scale_inplace:
// the CPU step's formulas); only AdamW is offered on CUDA (SGD is refused at create).
#ifndef PS_OPTIM_H
#define PS_OPTIM_H

#include <stdbool.h>
#include <stdint.h>

#include "ps_param.h"
#include "ps_status.h"

typedef enum { PS_OPTIM_ADAMW = 0, PS_OPTIM_SGD, PS_OPTIM_COUNT } ps_optim_kind;
typedef enum { PS_LR_CONSTANT = 0, PS_LR_WARMUP_COSINE, PS_LR_SCHEDULE_COUNT } ps_lr_schedule;
const char *ps_optim_kind_name(ps_optim_kind k);
const char *ps_lr_schedule_name(ps_lr_schedule s);
ps_status ps_optim_kind_parse(const char *s, ps_optim_kind *out);
ps_status ps_lr_schedule_parse(const char *s, ps_lr_schedule *out);

typedef struct {
  ps_optim_kind kind;
  float lr;
  float beta1, beta2, eps; // AdamW (0.9, 0.999, 1e-8)
  float weight_decay;      // AdamW: decoupled (p -= lr*wd*p); SGD: L2 added to the gradient (PyTorch)
  float momentum;          // SGD
  bool nesterov;           // SGD
  ps_lr_schedule schedule;
  int64_t warmup_steps, total_steps;
  float min_lr_ratio; // cosine floor as a fraction of lr
  float clip_norm;    // global-norm clipping threshold; <= 0: off
} ps_optim_config;

void ps_optim_config_default(ps_optim_config *c); // AdamW lr 1e-3, wd 1e-2, constant, no clipping

typedef struct {
  ps_optim_config cfg;
  int64_t n;        // elements (the arena's total)
  ps_device device; // of m, v, decay (the parameter table's)
  float *m, *v;     // (n) first/second moments; SGD uses m as the momentum buffer
  uint8_t *decay;   // (n) 1 where weight decay applies
  int64_t step;     // updates done so far
} ps_optim;

ps_status ps_optim_create(ps_optim *o, const ps_optim_config *cfg, const ps_param_table *t);
void ps_optim_free(ps_optim *o);
// Learning rate of update number step (0-based) under the schedule.
float ps_optim_lr(const ps_optim_config *cfg, int64_t step);
// L2 norm of g (accumulated in double).
double ps_optim_grad_norm(const float *g, int64_t n);
// Scales g so that its norm is at most max_norm (if max_norm > 0); returns the norm before clipping.
double ps_optim_clip(float *g, int64_t n, float max_norm);
// One update (clipping included when cfg.clip_norm > 0). grads are modified only by clipping.
// Returns PS_ERR_NUMERIC if the gradient norm is not finite (parameters untouched).
// params/grads are arenas on the optimizer's device (the table's data/grad).
ps_status ps_optim_step(ps_optim *o, float *params, float *grads, double *grad_norm);
// The moments as host arrays of n floats (checkpoints), on any device.
ps_status ps_optim_download(const ps_optim *o, float *m, float *v);
ps_status ps_optim_upload(ps_optim *o, const float *m, const float *v);

#endif
