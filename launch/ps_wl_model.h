// ps_wl_model: the multimodal-model workload of `pansurv train` and the
// prediction path of `pansurv eval` (see ps_wl_model.c for the step).
#ifndef PS_WL_MODEL_H
#define PS_WL_MODEL_H

#include "ps_device_plan.h"
#include "ps_train.h"
#include "ps_wl_data.h"

// plan: device, gradient backend and precision (ps_run_setup); comm: the host
// (MPI) communicator, bound to the GPU when plan->device is cuda.
ps_status ps_wl_model_create(void **out, const ps_workload_ops **ops, const ps_config *cfg, const ps_run_plan *plan,
                             ps_comm *comm);
void ps_wl_model_destroy(void *w);
const ps_wl_shape *ps_wl_model_shape(const void *w);
ps_wl_data *ps_wl_model_data(void *w);
// Parameters (and BatchNorm statistics) only, for evaluation.
ps_status ps_wl_model_load_params(void *w, const char *path);

// Called per evaluation batch on each rank with its patients: eta (b), tile
// attention (b, K), modality attention (b, M) with M tokens.
typedef void (*ps_wl_predict_fn)(void *ctx, const ps_wl_batch *b, const float *eta, const float *tile_attn,
                                 const float *mod_attn, int tokens);
// Eval-mode forward over a split; every rank gets the whole split's arrays
// (valid until the next call). Collective.
ps_status ps_wl_model_predict(void *w, ps_wl_part part, ps_wl_predict_fn each, void *ctx, int64_t *n,
                              const double **time, const uint8_t **event, const int32_t **cohort,
                              const int64_t **index, const double **eta);

#endif
