#include "testutil.h"

#include <math.h>
#include <stdlib.h>

int ps_tu_failures = 0;

uint64_t ps_tu_seed(const char *test_name, uint64_t fallback) {
  const char *e = getenv("PANSURV_TEST_SEED");
  uint64_t seed = (e && *e) ? strtoull(e, NULL, 0) : fallback;
  printf("%s: seed %llu (replay with PANSURV_TEST_SEED=%llu)\n", test_name, (unsigned long long)seed,
         (unsigned long long)seed);
  return seed;
}

void ps_tu_fill_uniform(float *x, int64_t n, float lo, float hi, uint64_t seed, uint64_t stream) {
  ps_rng r = ps_rng_make(seed, ps_rng_stream(PS_RNG_TEST, stream, 0, 0));
  for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * ps_rng_uniform(&r, (uint64_t)i);
}

void ps_tu_fill_uniform_f64(double *x, int64_t n, double lo, double hi, uint64_t seed, uint64_t stream) {
  ps_rng r = ps_rng_make(seed, ps_rng_stream(PS_RNG_TEST, stream, 1, 0));
  for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * ps_rng_uniform_open_f64(&r, (uint64_t)i);
}

double ps_tu_rel_err(const float *a, const float *b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  return sqrt(num) / fmax(sqrt(den), 1e-30);
}

double ps_tu_rel_err_f64(const double *a, const double *b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return sqrt(num) / fmax(sqrt(den), 1e-300);
}

double ps_tu_gradcheck(const char *name, float *x, const float *analytic, int64_t n, float h, ps_tu_loss_fn loss,
                       void *ctx, int64_t max_probe) {
  int64_t stride = (max_probe > 0 && n > max_probe) ? (n + max_probe - 1) / max_probe : 1;
  double num = 0, den = 0, worst = 0;
  int64_t worst_i = -1;
  for (int64_t i = 0; i < n; i += stride) {
    float saved = x[i];
    x[i] = saved + h;
    double fp = loss(ctx);
    x[i] = saved - h;
    double fm = loss(ctx);
    x[i] = saved;
    // The actual perturbation in float, not h, is what the function saw.
    double fd = (fp - fm) / ((double)(saved + h) - (double)(saved - h));
    double d = fd - analytic[i];
    num += d * d;
    den += fd * fd;
    if (fabs(d) > worst) {
      worst = fabs(d);
      worst_i = i;
    }
  }
  double rel = sqrt(num) / fmax(sqrt(den), 1e-20);
  printf("  gradcheck %-28s n=%-7lld rel_err=%.3e (worst |diff| %.2e at %lld)\n", name, (long long)n, rel, worst,
         (long long)worst_i);
  return rel;
}

int ps_tu_finish(const char *test_name) {
  if (ps_tu_failures) {
    printf("%s: %d failure(s)\n", test_name, ps_tu_failures);
    return 1;
  }
  printf("%s: ok\n", test_name);
  return 0;
}
