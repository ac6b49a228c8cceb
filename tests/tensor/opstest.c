#include "opstest.h"

ps_arena ot_arena;
uint64_t ot_seed;
uint64_t ot_stream;

ps_tensor ot_zeros(ps_dtype dt, int ndim, const int64_t *shape) {
  ps_tensor t;
  if (ps_arena_alloc(&ot_arena, &t, dt, ndim, shape) != PS_OK) {
    fprintf(stderr, "test arena: %s\n", ps_error_message());
    exit(1);
  }
  memset(t.data, 0, ps_tensor_nbytes(&t));
  return t;
}

ps_tensor ot_uniform(float lo, float hi, int ndim, const int64_t *shape) {
  ps_tensor t = ot_zeros(PS_F32, ndim, shape);
  ps_tu_fill_uniform(ps_f32(&t), ps_tensor_numel(&t), lo, hi, ot_seed, ++ot_stream);
  return t;
}

void ot_away_from_zero(ps_tensor *t, float gap) {
  float *x = ps_f32(t);
  for (int64_t i = 0; i < ps_tensor_numel(t); i++)
    if (fabsf(x[i]) < gap) x[i] = x[i] < 0 ? x[i] - gap : x[i] + gap;
}

ps_tensor ot_copy(const ps_tensor *t) {
  ps_tensor c = ot_zeros(t->dtype, t->ndim, t->shape);
  memcpy(c.data, t->data, ps_tensor_nbytes(t));
  return c;
}

static double ot_loss_eval(void *p) {
  ot_loss *l = p;
  ps_status s = l->fwd(l->ctx);
  if (s != PS_OK) {
    fprintf(stderr, "forward failed inside gradcheck: %s\n", ps_error_message());
    exit(1);
  }
  double acc = 0;
  for (int64_t i = 0; i < ps_tensor_numel(l->out); i++) acc += (double)ps_f32(l->w)[i] * ps_f32(l->out)[i];
  return acc;
}

double ot_gradcheck(const char *name, ps_tensor *x, const ps_tensor *analytic, float h, double tol, ot_loss *l) {
  double e = ps_tu_gradcheck(name, ps_f32(x), ps_f32(analytic), ps_tensor_numel(x), h, ot_loss_eval, l, 4000);
  TU_CHECK(e < tol, "%s: relative gradient error %.3e >= tolerance %.1e", name, e, tol);
  return e;
}

void ot_expect_close(const char *what, const float *got, const double *want, int64_t n, double atol, double rtol) {
  double worst = 0;
  int64_t wi = -1;
  for (int64_t i = 0; i < n; i++) {
    double r = fabs((double)got[i] - want[i]) / (atol + rtol * fabs(want[i]));
    if (!(r <= worst)) { // also catches NaN
      worst = r;
      wi = i;
    }
  }
  printf("  %-40s n=%-7lld worst scaled error %.3f\n", what, (long long)n, worst);
  TU_CHECK(worst <= 1.0, "%s: element %lld got %.9g want %.9g (atol %.1e rtol %.1e)", what, (long long)wi,
           wi >= 0 ? got[wi] : 0.0, wi >= 0 ? want[wi] : 0.0, atol, rtol);
}

int ot_main(int argc, char **argv, const ot_case *cases) {
  const char *only = argc > 1 ? argv[1] : NULL;
  int ran = 0, skipped = 0;
  if (ps_arena_init(&ot_arena, "test", PS_CPU, (size_t)256 << 20) != PS_OK) {
    fprintf(stderr, "%s\n", ps_error_message());
    return 1;
  }
  for (const ot_case *c = cases; c->name; c++) {
    if (only && strcmp(only, c->name)) continue;
    ot_seed = ps_tu_seed(c->name, 20261122);
    ot_stream = 0;
    ps_arena_reset(&ot_arena, 0);
    ran++;
    int r = c->fn();
    if (r == OT_SKIP) skipped++;
    else if (r) ps_tu_failures++;
  }
  ps_arena_free(&ot_arena);
  if (!ran) {
    fprintf(stderr, "no test named '%s'\n", only ? only : "");
    return 2;
  }
  int rc = ps_tu_finish(only ? only : "tensor ops");
  return rc == 0 && skipped == ran ? OT_SKIP : rc; // every case skipped: CTest reports it as skipped
}
