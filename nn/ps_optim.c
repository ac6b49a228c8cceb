#include "ps_optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_cuda.h"

static const char *const kind_names[] = {"adamw", "sgd"};
_Static_assert(sizeof(kind_names) / sizeof(kind_names[0]) == PS_OPTIM_COUNT, "optimizer name table");
static const char *const sched_names[] = {"constant", "warmup_cosine"};
_Static_assert(sizeof(sched_names) / sizeof(sched_names[0]) == PS_LR_SCHEDULE_COUNT, "schedule name table");
const char *ps_optim_kind_name(ps_optim_kind k) { return (unsigned)k < PS_OPTIM_COUNT ? kind_names[k] : "?"; }
const char *ps_lr_schedule_name(ps_lr_schedule s) { return (unsigned)s < PS_LR_SCHEDULE_COUNT ? sched_names[s] : "?"; }

ps_status ps_optim_kind_parse(const char *s, ps_optim_kind *out) {
  for (int i = 0; i < PS_OPTIM_COUNT; i++)
    if (!strcmp(s, kind_names[i])) return *out = (ps_optim_kind)i, PS_OK;
  PS_FAIL(PS_ERR_CONFIG, "optimizer '%s': expected adamw or sgd", s);
}
ps_status ps_lr_schedule_parse(const char *s, ps_lr_schedule *out) {
  for (int i = 0; i < PS_LR_SCHEDULE_COUNT; i++)
    if (!strcmp(s, sched_names[i])) return *out = (ps_lr_schedule)i, PS_OK;
  PS_FAIL(PS_ERR_CONFIG, "lr schedule '%s': expected constant or warmup_cosine", s);
}

void ps_optim_config_default(ps_optim_config *c) {
  memset(c, 0, sizeof(*c));
  c->kind = PS_OPTIM_ADAMW;
  c->lr = 1e-3f;
  c->beta1 = 0.9f, c->beta2 = 0.999f, c->eps = 1e-8f;
  c->weight_decay = 1e-2f;
  c->momentum = 0.9f;
  c->schedule = PS_LR_CONSTANT;
}

// Device state: zeroed moments and the decay mask built on the host, uploaded once.
static ps_status create_device(ps_optim *o, const ps_param_table *t) {
  PS_REQUIRE(o->cfg.kind == PS_OPTIM_ADAMW, "optimizer: %s is not available on CUDA (use adamw)",
             ps_optim_kind_name(o->cfg.kind));
  o->device = PS_CUDA;
  size_t nb = (size_t)o->n + 1;
  uint8_t *mask = calloc(nb, 1);
  ps_status s = mask ? PS_OK : ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "optimizer: out of memory for a mask of %lld", (long long)o->n);
  if (s == PS_OK) s = ps_cuda_malloc((void **)&o->m, nb * sizeof(float));
  if (s == PS_OK) s = ps_cuda_malloc((void **)&o->v, nb * sizeof(float));
  if (s == PS_OK) s = ps_cuda_malloc((void **)&o->decay, nb);
  if (s == PS_OK) s = ps_cuda_memset_zero(o->m, nb * sizeof(float));
  if (s == PS_OK) s = ps_cuda_memset_zero(o->v, nb * sizeof(float));
  if (s == PS_OK) {
    for (int i = 0; i < t->count; i++)
      if (t->p[i].decay) memset(mask + t->p[i].offset, 1, (size_t)t->p[i].numel);
    s = ps_cuda_copy_h2d(o->decay, mask, nb);
  }
  free(mask);
  if (s != PS_OK) ps_optim_free(o);
  return s;
}

ps_status ps_optim_create(ps_optim *o, const ps_optim_config *cfg, const ps_param_table *t) {
  memset(o, 0, sizeof(*o));
  PS_REQUIRE(cfg->lr > 0, "optimizer: lr %g must be > 0", cfg->lr);
  PS_REQUIRE(cfg->schedule != PS_LR_WARMUP_COSINE || cfg->total_steps > cfg->warmup_steps,
             "optimizer: warmup_cosine needs total_steps (%lld) > warmup_steps (%lld)", (long long)cfg->total_steps,
             (long long)cfg->warmup_steps);
  o->cfg = *cfg;
  o->n = t->total;
  if (t->device == PS_CUDA) return create_device(o, t);
  o->m = calloc((size_t)o->n + 1, sizeof(float));
  o->v = calloc((size_t)o->n + 1, sizeof(float));
  o->decay = calloc((size_t)o->n + 1, 1);
  if (!o->m || !o->v || !o->decay) {
    ps_optim_free(o);
    PS_FAIL(PS_ERR_MEM, "optimizer: out of memory for %lld elements", (long long)t->total);
  }
  for (int i = 0; i < t->count; i++)
    if (t->p[i].decay) memset(o->decay + t->p[i].offset, 1, (size_t)t->p[i].numel);
  return PS_OK;
}

void ps_optim_free(ps_optim *o) {
  if (o->device == PS_CUDA) {
    ps_cuda_free(o->m);
    ps_cuda_free(o->v);
    ps_cuda_free(o->decay);
  } else {
    free(o->m);
    free(o->v);
    free(o->decay);
  }
  o->m = o->v = NULL;
  o->decay = NULL;
}

float ps_optim_lr(const ps_optim_config *c, int64_t step) {
  if (c->schedule == PS_LR_CONSTANT) return c->lr;
  double t = (double)step + 1;
  if (c->warmup_steps > 0 && t <= (double)c->warmup_steps) return (float)(c->lr * t / (double)c->warmup_steps);
  double prog = (t - (double)c->warmup_steps) / (double)(c->total_steps - c->warmup_steps);
  if (prog > 1) prog = 1;
  double lo = c->lr * c->min_lr_ratio;
  return (float)(lo + (c->lr - lo) * 0.5 * (1.0 + cos(3.14159265358979323846 * prog)));
}

double ps_optim_grad_norm(const float *g, int64_t n) {
  double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
  for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
  return sqrt(s);
}

double ps_optim_clip(float *g, int64_t n, float max_norm) {
  double norm = ps_optim_grad_norm(g, n);
  if (max_norm > 0 && norm > max_norm && isfinite(norm)) {
    float s = (float)(max_norm / norm);
    for (int64_t i = 0; i < n; i++) g[i] *= s;
  }
  return norm;
}

// The CPU step's math on device arrays: norm (double, host), clip by scaling, AdamW.
static ps_status step_device(ps_optim *o, float *p, float *g, double *grad_norm) {
  const ps_optim_config *c = &o->cfg;
  double ss = 0;
  PS_TRY(ps_cuda_sumsq(&ss, g, o->n));
  double norm = sqrt(ss);
  if (grad_norm) *grad_norm = norm;
  if (!isfinite(norm))
    PS_FAIL(PS_ERR_NUMERIC, "optimizer step %lld: gradient norm is %g (parameters left unchanged)",
            (long long)o->step, norm);
  if (c->clip_norm > 0 && norm > c->clip_norm) PS_TRY(ps_cuda_scale_inplace(g, (float)(c->clip_norm / norm), o->n));
  const float lr = ps_optim_lr(c, o->step);
  o->step++;
  const float bc1 = (float)(1.0 - pow(c->beta1, (double)o->step)), bc2 = (float)(1.0 - pow(c->beta2, (double)o->step));
  return ps_cuda_adamw_step(p, g, o->m, o->v, o->decay, o->n, lr, c->beta1, c->beta2, c->eps, c->weight_decay, bc1,
                            bc2);
}

ps_status ps_optim_download(const ps_optim *o, float *m, float *v) {
  size_t bytes = (size_t)o->n * sizeof(float);
  if (o->device == PS_CUDA) {
    PS_TRY(ps_cuda_copy_d2h(m, o->m, bytes));
    return ps_cuda_copy_d2h(v, o->v, bytes);
  }
  memcpy(m, o->m, bytes);
  memcpy(v, o->v, bytes);
  return PS_OK;
}

ps_status ps_optim_upload(ps_optim *o, const float *m, const float *v) {
  size_t bytes = (size_t)o->n * sizeof(float);
  if (o->device == PS_CUDA) {
    PS_TRY(ps_cuda_copy_h2d(o->m, m, bytes));
    return ps_cuda_copy_h2d(o->v, v, bytes);
  }
  memcpy(o->m, m, bytes);
  memcpy(o->v, v, bytes);
  return PS_OK;
}

ps_status ps_optim_step(ps_optim *o, float *p, float *g, double *grad_norm) {
  if (o->device == PS_CUDA) return step_device(o, p, g, grad_norm);
  const ps_optim_config *c = &o->cfg;
  double norm = ps_optim_clip(g, o->n, c->clip_norm);
  if (grad_norm) *grad_norm = norm;
  if (!isfinite(norm))
    PS_FAIL(PS_ERR_NUMERIC, "optimizer step %lld: gradient norm is %g (parameters left unchanged)",
            (long long)o->step, norm);
  const float lr = ps_optim_lr(c, o->step);
  const int64_t n = o->n;
  o->step++;
  if (c->kind == PS_OPTIM_ADAMW) {
    const float b1 = c->beta1, b2 = c->beta2, eps = c->eps, wd = c->weight_decay;
    const float bc1 = (float)(1.0 - pow(b1, (double)o->step)), bc2 = (float)(1.0 - pow(b2, (double)o->step));
    float *m = o->m, *v = o->v;
    const uint8_t *dec = o->decay;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
      if (dec[i]) p[i] -= lr * wd * p[i]; // decoupled weight decay
      m[i] = b1 * m[i] + (1.0f - b1) * g[i];
      v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
      float mh = m[i] / bc1, vh = v[i] / bc2;
      p[i] -= lr * mh / (sqrtf(vh) + eps);
    }
  } else {
    const float mu = c->momentum, wd = c->weight_decay;
    const bool first = o->step == 1;
    float *buf = o->m;
    const uint8_t *dec = o->decay;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
      float gi = g[i] + (dec[i] ? wd * p[i] : 0.0f);
      if (mu != 0.0f) {
        buf[i] = first ? gi : mu * buf[i] + gi;
        gi = c->nesterov ? gi + mu * buf[i] : buf[i];
      }
      p[i] -= lr * gi;
    }
  }
  return PS_OK;
}
