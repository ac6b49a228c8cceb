// Shared helpers for the tensor op tests: a per-test arena, seeded fills,
// a finite-difference check of "loss = sum(w * out)" and a runner that maps
// CTest names (tensor_<op>_<what>) to test functions.
#ifndef PS_OPSTEST_H
#define PS_OPSTEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_ops.h"
#include "testutil.h"

extern ps_arena ot_arena;   // reset before every test
extern uint64_t ot_seed;    // printed, overridable with PANSURV_TEST_SEED
extern uint64_t ot_stream;  // next fill stream, so every fill differs

ps_tensor ot_zeros(ps_dtype dt, int ndim, const int64_t *shape);
ps_tensor ot_uniform(float lo, float hi, int ndim, const int64_t *shape);
#define OT_ZEROS(...) ot_zeros(PS_F32, PS_SHAPE(__VA_ARGS__))
#define OT_RAND(lo, hi, ...) ot_uniform(lo, hi, PS_SHAPE(__VA_ARGS__))
// A uniform fill whose entries all satisfy |x| >= gap (kept away from a kink at 0).
void ot_away_from_zero(ps_tensor *t, float gap);
ps_tensor ot_copy(const ps_tensor *t);

// loss(x) = sum_i w_i * out_i (double), out produced by fwd(ctx); dL/dout = w.
typedef struct {
  ps_status (*fwd)(void *ctx);
  void *ctx;
  const ps_tensor *out;
  const ps_tensor *w;
} ot_loss;
// Finite-difference check of `analytic` (dL/dx) for input x; fails when the
// relative-norm error reaches tol. Returns the error.
double ot_gradcheck(const char *name, ps_tensor *x, const ps_tensor *analytic, float h, double tol, ot_loss *l);
// Max |a - b| / (atol + rtol |b|) against a double reference; fails above 1.
void ot_expect_close(const char *what, const float *got, const double *want, int64_t n, double atol, double rtol);

typedef struct {
  const char *name; // CTest name, e.g. tensor_gemm_forward
  int (*fn)(void);
} ot_case;
// main(): runs the case named argv[1] (or all with no argument) and returns the verdict.
// A case returns 0 (pass), OT_SKIP (cannot run here, e.g. no GPU) or anything else (fail).
// ot_main exits OT_SKIP when every case it ran skipped (CTest: SKIP_RETURN_CODE 77).
#define OT_SKIP 77
int ot_main(int argc, char **argv, const ot_case *cases);

#endif
