// Optimizers against hand-computed updates (double precision reference written out from the
// AdamW / SGD formulas, not from the implementation), LR schedules, clipping.
#include <math.h>
#include <string.h>

#include "ps_optim.h"
#include "testutil.h"

int main(void) {
  ps_tu_seed("nn_optim", 0);
  ps_param_table t;
  ps_param_table_init(&t, "parameters", true);
  int iw, ib;
  TU_OK(ps_param_add(&t, &iw, "w", PS_SHAPE(2, 2), true, PS_INIT_ZERO, 2, 2));
  TU_OK(ps_param_add(&t, &ib, "b", PS_SHAPE(2), false, PS_INIT_ZERO, 2, 2));
  TU_OK(ps_param_table_alloc(&t));
  const float w0[4] = {0.5f, -1.0f, 2.0f, 0.0f}, b0[2] = {0.1f, -0.2f};
  const float gw[2][4] = {{0.1f, -0.2f, 0.3f, 0.0f}, {-0.05f, 0.4f, 0.1f, 1.0f}}, gb[2][2] = {{0.5f, -0.5f}, {0.2f, 0.1f}};
  // ---- AdamW, two steps
  memcpy(ps_param_data(&t, iw), w0, sizeof w0);
  memcpy(ps_param_data(&t, ib), b0, sizeof b0);
  ps_optim_config c;
  ps_optim_config_default(&c);
  c.lr = 0.01f, c.weight_decay = 0.1f;
  ps_optim o;
  TU_OK(ps_optim_create(&o, &c, &t));
  double pw[4], pb[2], mw[4] = {0}, vw[4] = {0}, mb[2] = {0}, vb[2] = {0};
  for (int i = 0; i < 4; i++) pw[i] = w0[i];
  for (int i = 0; i < 2; i++) pb[i] = b0[i];
  for (int s = 0; s < 2; s++) {
    memcpy(ps_param_grad(&t, iw), gw[s], sizeof gw[s]);
    memcpy(ps_param_grad(&t, ib), gb[s], sizeof gb[s]);
    TU_OK(ps_optim_step(&o, t.data, t.grad, NULL));
    double bc1 = 1 - pow(0.9, s + 1), bc2 = 1 - pow(0.999, s + 1);
    for (int i = 0; i < 4; i++) {
      pw[i] -= 0.01 * 0.1 * pw[i]; // decoupled decay on the weight
      mw[i] = 0.9 * mw[i] + 0.1 * gw[s][i];
      vw[i] = 0.999 * vw[i] + 0.001 * (double)gw[s][i] * gw[s][i];
      pw[i] -= 0.01 * (mw[i] / bc1) / (sqrt(vw[i] / bc2) + 1e-8);
    }
    for (int i = 0; i < 2; i++) { // no decay on the bias
      mb[i] = 0.9 * mb[i] + 0.1 * gb[s][i];
      vb[i] = 0.999 * vb[i] + 0.001 * (double)gb[s][i] * gb[s][i];
      pb[i] -= 0.01 * (mb[i] / bc1) / (sqrt(vb[i] / bc2) + 1e-8);
    }
  }
  for (int i = 0; i < 4; i++)
    TU_CHECK(fabs(ps_param_data(&t, iw)[i] - pw[i]) < 1e-6, "adamw w[%d] %.8f vs %.8f", i, ps_param_data(&t, iw)[i], pw[i]);
  for (int i = 0; i < 2; i++)
    TU_CHECK(fabs(ps_param_data(&t, ib)[i] - pb[i]) < 1e-6, "adamw b[%d] %.8f vs %.8f", i, ps_param_data(&t, ib)[i], pb[i]);
  // First AdamW step moves every element with a nonzero gradient by ~lr (sign of the gradient).
  ps_optim_free(&o);
  // ---- SGD Nesterov, two steps
  memcpy(ps_param_data(&t, iw), w0, sizeof w0);
  memcpy(ps_param_data(&t, ib), b0, sizeof b0);
  c.kind = PS_OPTIM_SGD, c.lr = 0.1f, c.momentum = 0.9f, c.nesterov = true, c.weight_decay = 0.01f;
  TU_OK(ps_optim_create(&o, &c, &t));
  double bw[4] = {0};
  for (int i = 0; i < 4; i++) pw[i] = w0[i];
  for (int s = 0; s < 2; s++) {
    memcpy(ps_param_grad(&t, iw), gw[s], sizeof gw[s]);
    memcpy(ps_param_grad(&t, ib), gb[s], sizeof gb[s]);
    TU_OK(ps_optim_step(&o, t.data, t.grad, NULL));
    for (int i = 0; i < 4; i++) {
      double g = gw[s][i] + 0.01 * pw[i];
      bw[i] = s == 0 ? g : 0.9 * bw[i] + g;
      pw[i] -= 0.1 * (g + 0.9 * bw[i]);
    }
  }
  for (int i = 0; i < 4; i++)
    TU_CHECK(fabs(ps_param_data(&t, iw)[i] - pw[i]) < 1e-6, "sgd w[%d] %.8f vs %.8f", i, ps_param_data(&t, iw)[i], pw[i]);
  ps_optim_free(&o);
  // ---- schedules
  ps_optim_config s;
  ps_optim_config_default(&s);
  s.lr = 1.0f, s.schedule = PS_LR_WARMUP_COSINE, s.warmup_steps = 4, s.total_steps = 14, s.min_lr_ratio = 0.1f;
  TU_CHECK(fabsf(ps_optim_lr(&s, 0) - 0.25f) < 1e-7, "warm-up step 0: %g", ps_optim_lr(&s, 0));
  TU_CHECK(fabsf(ps_optim_lr(&s, 3) - 1.0f) < 1e-7, "end of warm-up: %g", ps_optim_lr(&s, 3));
  TU_CHECK(fabsf(ps_optim_lr(&s, 8) - 0.55f) < 1e-6, "cosine midpoint: %g", ps_optim_lr(&s, 8));
  TU_CHECK(fabsf(ps_optim_lr(&s, 13) - 0.1f) < 1e-6, "cosine end: %g", ps_optim_lr(&s, 13));
  TU_CHECK(fabsf(ps_optim_lr(&s, 50) - 0.1f) < 1e-6, "past the end: %g", ps_optim_lr(&s, 50));
  // ---- clipping
  float g[3] = {3, 4, 0};
  double n = ps_optim_clip(g, 3, 1.0f);
  TU_CHECK(fabs(n - 5) < 1e-6 && fabsf(g[0] - 0.6f) < 1e-6f && fabsf(g[1] - 0.8f) < 1e-6f, "clip: norm %g, g %g %g", n,
           g[0], g[1]);
  // ---- non-finite gradient: error, parameters untouched
  ps_optim_config_default(&c);
  TU_OK(ps_optim_create(&o, &c, &t));
  float before = ps_param_data(&t, iw)[0];
  ps_param_grad(&t, iw)[1] = NAN;
  ps_status st = ps_optim_step(&o, t.data, t.grad, NULL);
  TU_CHECK(st == PS_ERR_NUMERIC && ps_param_data(&t, iw)[0] == before, "NaN gradient: %s", ps_status_name(st));
  ps_optim_free(&o);
  ps_param_table_free(&t);
  return ps_tu_finish("nn_optim");
}
