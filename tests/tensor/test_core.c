// Tensor views, arena accounting, status messages and the Philox generator
// (known-answer vectors from Random123's kat_vectors for philox4x32_10).
#include <math.h>
#include <string.h>

#include "ps_cuda.h"
#include "ps_rng.h"
#include "ps_tensor.h"
#include "testutil.h"

static int test_philox_kat(void) {
  struct { uint32_t ctr[4], key[2], expect[4]; } kat[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (size_t k = 0; k < sizeof kat / sizeof kat[0]; k++) {
    uint32_t out[4];
    ps_philox4x32(out, kat[k].ctr, kat[k].key);
    for (int i = 0; i < 4; i++)
      TU_CHECK(out[i] == kat[k].expect[i], "philox kat %zu word %d: got %08x want %08x", k, i, out[i], kat[k].expect[i]);
  }
  return 0;
}

static int test_rng_properties(void) {
  ps_rng r = ps_rng_make(42, ps_rng_stream(PS_RNG_TEST, 1, 2, 3));
  ps_rng r2 = ps_rng_make(42, ps_rng_stream(PS_RNG_TEST, 1, 2, 4));
  // Same (seed, stream, index) -> same value, in any order; different stream -> different values.
  float a = ps_rng_uniform(&r, 1000), b = ps_rng_uniform(&r, 5);
  TU_CHECK(a == ps_rng_uniform(&r, 1000) && b == ps_rng_uniform(&r, 5), "counter-based values must be pure");
  int same = 0;
  double mean = 0, var = 0;
  enum { N = 200000 };
  for (int i = 0; i < N; i++) {
    float u = ps_rng_uniform(&r, (uint64_t)i);
    TU_CHECK(u >= 0.0f && u < 1.0f, "uniform out of [0,1): %g", u);
    same += (u == ps_rng_uniform(&r2, (uint64_t)i));
    double z = ps_rng_normal(&r, (uint64_t)i);
    mean += z;
    var += z * z;
  }
  mean /= N;
  var = var / N - mean * mean;
  // 5 sigma bounds for N = 2e5: se(mean) = 0.0022, se(var) ~ 0.0032.
  TU_CHECK(fabs(mean) < 0.012, "normal mean %g", mean);
  TU_CHECK(fabs(var - 1.0) < 0.016, "normal variance %g", var);
  TU_CHECK(same < 100, "streams should differ (%d equal of %d)", same, N);
  int64_t perm[1000];
  int seen[1000] = {0};
  ps_rng_permutation(&r, perm, 1000);
  for (int i = 0; i < 1000; i++) seen[perm[i]]++;
  for (int i = 0; i < 1000; i++) TU_CHECK(seen[i] == 1, "permutation misses %d", i);
  return 0;
}

static int test_views_and_arena(void) {
  ps_arena arena;
  TU_OK(ps_arena_init(&arena, "test", PS_CPU, 4096));
  ps_tensor t, v, bad;
  TU_OK(ps_arena_alloc(&arena, &t, PS_F32, PS_SHAPE(4, 8)));
  TU_CHECK(ps_tensor_numel(&t) == 32 && ps_tensor_nbytes(&t) == 128, "numel/nbytes");
  TU_CHECK(((uintptr_t)t.data % PS_ARENA_ALIGN) == 0, "alignment");
  for (int i = 0; i < 32; i++) ps_f32(&t)[i] = (float)i;
  TU_OK(ps_tensor_view(&v, &t, 8, PS_SHAPE(2, 4)));
  TU_CHECK(ps_f32(&v)[0] == 8.0f && ps_f32(&v)[7] == 15.0f, "view offset");
  TU_CHECK(ps_tensor_view(&bad, &t, 30, PS_SHAPE(4)) == PS_ERR_ARG, "view past the end must fail");
  TU_CHECK(strstr(ps_error_message(), "outside tensor") != NULL, "message names the problem: %s", ps_error_message());
  TU_CHECK(strstr(ps_error_message(), "ps_tensor.c:") != NULL, "message carries file:line: %s", ps_error_message());
  TU_CHECK(ps_tensor_reshape(&bad, &t, PS_SHAPE(5, 7)) == PS_ERR_ARG, "reshape with other numel must fail");
  size_t mark = ps_arena_mark(&arena);
  ps_tensor big;
  TU_CHECK(ps_arena_alloc(&arena, &big, PS_F32, PS_SHAPE(2000)) == PS_ERR_MEM, "arena overflow must fail");
  TU_CHECK(strstr(ps_error_message(), "'test' exhausted") != NULL, "arena name in message: %s", ps_error_message());
  TU_OK(ps_arena_alloc(&arena, &big, PS_U8, PS_SHAPE(100)));
  ps_arena_reset(&arena, mark);
  TU_CHECK(arena.used == mark && arena.peak >= mark + 128, "reset keeps peak");
  TU_OK(ps_tensor_zero(&t));
  TU_CHECK(ps_f32(&t)[31] == 0.0f, "zero");
  ps_arena_free(&arena);
  return 0;
}

static int test_cuda_presence(void) {
  int n = ps_cuda_device_count();
  printf("  CUDA built: %d, visible devices: %d\n", PANSURV_HAVE_CUDA, n);
  TU_CHECK(n >= 0, "device count");
  if (!PANSURV_HAVE_CUDA) {
    void *p;
    TU_CHECK(ps_cuda_malloc(&p, 16) == PS_ERR_UNSUPPORTED, "CUDA calls say 'not built'");
  }
  return 0;
}

int main(void) {
  if (test_philox_kat() || test_rng_properties() || test_views_and_arena() || test_cuda_presence()) return 1;
  return ps_tu_finish("tensor_core");
}
