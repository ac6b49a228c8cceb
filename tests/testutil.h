// Test helpers: checks that count failures (a test's exit code is its
// verdict), a replayable seed, random fills and a finite-difference gradient check.
#ifndef PS_TESTUTIL_H
#define PS_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>

#include "ps_rng.h"
#include "ps_status.h"

extern int ps_tu_failures;

#define TU_CHECK(cond, ...)                                                                        \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      ps_tu_failures++;                                                                            \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                               \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fputc('\n', stderr);                                                                         \
    }                                                                                              \
  } while (0)

// A ps_status call that must succeed; on failure prints the library message and aborts the test.
#define TU_OK(call)                                                                                \
  do {                                                                                             \
    ps_status tu_s_ = (call);                                                                      \
    if (tu_s_ != PS_OK) {                                                                          \
      fprintf(stderr, "FAIL %s:%d: %s -> %s\n", __FILE__, __LINE__, #call, ps_error_message());     \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

// Seed from PANSURV_TEST_SEED or `fallback`; printed so a failure can be replayed.
uint64_t ps_tu_seed(const char *test_name, uint64_t fallback);
// Uniform in [lo, hi) from (seed, stream).
void ps_tu_fill_uniform(float *x, int64_t n, float lo, float hi, uint64_t seed, uint64_t stream);
void ps_tu_fill_uniform_f64(double *x, int64_t n, double lo, double hi, uint64_t seed, uint64_t stream);
// ||a - b|| / max(||b||, tiny), in double.
double ps_tu_rel_err(const float *a, const float *b, int64_t n);
double ps_tu_rel_err_f64(const double *a, const double *b, int64_t n);

// Finite-difference gradient check of a scalar function of float inputs.
// loss(ctx) evaluates the scalar (accumulated in double) at the current x.
// Compares analytic[] with central differences of step h on every element
// (or `max_probe` evenly spread elements when n is larger); returns the
// relative-norm error and prints a line with `name`.
typedef double (*ps_tu_loss_fn)(void *ctx);
double ps_tu_gradcheck(const char *name, float *x, const float *analytic, int64_t n, float h, ps_tu_loss_fn loss,
                       void *ctx, int64_t max_probe);

// Exit code for main(): prints "<test>: N failures" / "<test>: ok".
int ps_tu_finish(const char *test_name);

#endif
