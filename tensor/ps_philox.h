// Philox4x32-10 block function shared by host and device code, so dropout
// masks computed by the CUDA kernels are bit-identical to the CPU's
// (ps_rng.c's ps_philox4x32 is this function). Plain C11 and CUDA C++.
#ifndef PS_PHILOX_H
#define PS_PHILOX_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define PS_HOST_DEVICE __host__ __device__
#else
#define PS_HOST_DEVICE
#endif

#define PS_PHILOX_M0 0xD2511F53u
#define PS_PHILOX_M1 0xCD9E8D57u
#define PS_PHILOX_W0 0x9E3779B9u
#define PS_PHILOX_W1 0xBB67AE85u

static inline PS_HOST_DEVICE void ps_philox4x32_block(uint32_t out[4], const uint32_t counter[4],
                                                      const uint32_t key[2]) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = (uint64_t)PS_PHILOX_M0 * c0, p1 = (uint64_t)PS_PHILOX_M1 * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += PS_PHILOX_W0;
    k1 += PS_PHILOX_W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// Word `index` of a stream (seed key, 64-bit stream id): word index % 4 of block index / 4.
static inline PS_HOST_DEVICE uint32_t ps_philox_u32(const uint32_t key[2], uint64_t stream, uint64_t index) {
  uint64_t blk = index >> 2;
  uint32_t ctr[4] = {(uint32_t)blk, (uint32_t)(blk >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
  uint32_t w[4];
  ps_philox4x32_block(w, ctr, key);
  return w[index & 3];
}

// Element j of a dropout/uniform stream mapped to [0, 1) with 24 bits (exact in float), as ps_rng_uniform.
static inline PS_HOST_DEVICE float ps_philox_uniform(const uint32_t key[2], uint64_t stream, uint64_t j) {
  return (float)(ps_philox_u32(key, stream, j) >> 8) * (1.0f / 16777216.0f);
}

// Element `index` as a double in the open interval (0, 1) from 53 bits of words 2i, 2i+1.
static inline PS_HOST_DEVICE double ps_philox_open_f64(const uint32_t key[2], uint64_t stream, uint64_t index) {
  uint64_t hi = ps_philox_u32(key, stream, 2 * index), lo = ps_philox_u32(key, stream, 2 * index + 1);
  return ((double)(((hi << 32) | lo) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// Standard normal number `index` (Box-Muller on open uniforms 2i, 2i+1): ps_rng_normal, and the
// model's input noise on the device, so CPU and GPU draw the same noise.
static inline PS_HOST_DEVICE double ps_philox_normal(const uint32_t key[2], uint64_t stream, uint64_t index) {
  double u1 = ps_philox_open_f64(key, stream, 2 * index), u2 = ps_philox_open_f64(key, stream, 2 * index + 1);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
