// Per-plane element-wise kernels of the fused CPU conv block (nn/ps_layers.c): the passes over the
// pre-norm map z that surround the convolution. One channel plane of one tile at a time: z is
// (H, W) row-major, the pooled map and argmax (H/2, W/2). Two implementations with the same
// result: a portable one (the reference, any x86-64 or other CPU) and an AVX-512 one
// (ps_convblock_cpu.c) chosen at run time. They are equal as floats (==; at most the sign of an
// exact zero differs): the portable loops are written in the AVX-512 code's lane order (16 float
// lanes, flushed to double in a fixed order), so a CPU without AVX-512 gets the same numbers.
#pragma once
#include <stdbool.h>
#include <stdint.h>

// sum and sum of squares of x (n): 16 float lanes per block of 1024, lanes flushed to 16 double
// accumulators per block, summed in lane order at the end. Deterministic (depends on n only).
void ps_cb_sum_sumsq(const float *x, int64_t n, double *s, double *ss);

// pool (H/2, W/2) = max over each 2x2 window of relu(z * sc + sh); argmax = the first winner's
// index in its window (0..3, row-major), 0 when every value is <= 0; zwin (H/2, W/2) = the
// winner's z, so that the backward sums read a quarter of the map.
void ps_cb_norm_relu_pool(float *pool, uint8_t *argmax, float *zwin, const float *z, float sc, float sh, int64_t h,
                          int64_t w);

// BatchNorm backward sums over one pooled plane (OH, OW) of the winners' z (zwin) and dpool:
// dy = dpool where zwin * sc + sh > 0 (the ReLU passes), else 0; *sdy = sum dy, *sdz = sum dy * zwin
// (only winners carry gradient). Per pooled row, 16 float lanes (lane = column mod 16), flushed to
// double.
void ps_cb_bwd_sums(double *sdy, double *sdz, const float *zwin, const float *dpool, float sc, float sh, int64_t oh,
                    int64_t ow);

// dz (H, W) = c0 + c1 * z, plus g * dpool at each window's winner that passes the ReLU.
void ps_cb_bwd_dz(float *dz, const float *z, const float *dpool, const uint8_t *argmax, float sc, float sh, float g,
                  float c0, float c1, int64_t h, int64_t w);

// Which implementation runs: AVX-512 when the CPU has AVX-512F/BW/VL, unless forced portable.
bool ps_cb_have_avx512(void);
// Tests and benchmarks: force the portable kernels (true) or back to automatic (false).
void ps_cb_force_portable(bool portable);
