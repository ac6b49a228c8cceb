#include "ps_rng.h"

#include "ps_philox.h"

#include <math.h>

void ps_philox4x32(uint32_t out[4], const uint32_t counter[4], const uint32_t key[2]) {
  ps_philox4x32_block(out, counter, key); // shared with the CUDA kernels (ps_philox.h)
}

static uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t ps_rng_stream(ps_rng_purpose purpose, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = splitmix64((uint64_t)purpose);
  h = splitmix64(h ^ a);
  h = splitmix64(h ^ b);
  return splitmix64(h ^ c);
}

ps_rng ps_rng_make(uint64_t seed, uint64_t stream) {
  uint64_t k = splitmix64(seed);
  ps_rng r = {.key = {(uint32_t)k, (uint32_t)(k >> 32)}, .stream = stream};
  return r;
}

uint32_t ps_rng_u32(const ps_rng *r, uint64_t index) { return ps_philox_u32(r->key, r->stream, index); }

float ps_rng_uniform(const ps_rng *r, uint64_t index) { return ps_philox_uniform(r->key, r->stream, index); }

double ps_rng_uniform_open_f64(const ps_rng *r, uint64_t index) {
  return ps_philox_open_f64(r->key, r->stream, index); // (0, 1), 53 bits
}

double ps_rng_normal(const ps_rng *r, uint64_t index) { return ps_philox_normal(r->key, r->stream, index); }

uint64_t ps_rng_below(const ps_rng *r, uint64_t index, uint64_t n) {
  uint64_t x = ((uint64_t)ps_rng_u32(r, 2 * index) << 32) | ps_rng_u32(r, 2 * index + 1);
  return (uint64_t)(((unsigned __int128)x * n) >> 64);
}

void ps_rng_permutation(const ps_rng *r, int64_t *perm, int64_t n) {
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)ps_rng_below(r, (uint64_t)i, (uint64_t)(i + 1));
    int64_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}
