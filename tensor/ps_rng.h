// ps_rng: counter-based randomness (Philox4x32-10, Salmon et al. SC'11).
// A random value is a pure function of (seed, stream, counter), so a dropout
// mask, an initial weight or a shuffle does not depend on thread count, rank
// layout or call order: key streams by what they are for, e.g.
//   ps_rng_stream(PS_RNG_DROPOUT, step, patient_id, layer).
#ifndef PS_RNG_H
#define PS_RNG_H

#include <stdint.h>

// Purposes, so two uses never share a stream by accident.
typedef enum {
  PS_RNG_INIT = 1,
  PS_RNG_DROPOUT,
  PS_RNG_SHUFFLE,
  PS_RNG_AUGMENT,
  PS_RNG_TILES,
  PS_RNG_SPLIT,
  PS_RNG_SIM,
  PS_RNG_BOOTSTRAP,
  PS_RNG_NOISE,
  PS_RNG_TEST,
  PS_RNG_PURPOSE_COUNT
} ps_rng_purpose;

typedef struct {
  uint32_t key[2]; // from the seed
  uint64_t stream; // which sequence
} ps_rng;

// The raw block function: 4 random words from a 128-bit counter and 64-bit key.
void ps_philox4x32(uint32_t out[4], const uint32_t counter[4], const uint32_t key[2]);

// A 64-bit stream id mixed from a purpose and up to three ids (splitmix64 chain).
uint64_t ps_rng_stream(ps_rng_purpose purpose, uint64_t a, uint64_t b, uint64_t c);
ps_rng ps_rng_make(uint64_t seed, uint64_t stream);

// Element `index` of the stream: 4 words per Philox block, addressed directly.
uint32_t ps_rng_u32(const ps_rng *r, uint64_t index);
// Uniform in [0, 1) with 24 random bits (exact in float).
float ps_rng_uniform(const ps_rng *r, uint64_t index);
// Uniform in (0, 1) with 53 bits (for log/inverse-CDF in double).
double ps_rng_uniform_open_f64(const ps_rng *r, uint64_t index);
// Standard normal (Box-Muller on elements 2*index, 2*index+1).
double ps_rng_normal(const ps_rng *r, uint64_t index);
// Uniform integer in [0, n) (n > 0; Lemire's multiply, bias < 2^-32·n).
uint64_t ps_rng_below(const ps_rng *r, uint64_t index, uint64_t n);
// Fills perm with a permutation of 0..n-1 (Fisher-Yates driven by r).
void ps_rng_permutation(const ps_rng *r, int64_t *perm, int64_t n);

#endif
