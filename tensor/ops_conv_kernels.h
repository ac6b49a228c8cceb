// Hand-written kernels behind the CPU convolution (tensor/ops_conv.c).
// Not a public header. Row-major; see ops_conv_avx512.c and ops_conv_direct.c
// for when each one wins.
#ifndef PS_OPS_CONV_KERNELS_H
#define PS_OPS_CONV_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "ps_ops.h"

// True when the CPU runs AVX-512F (checked once at run time; the build targets plain x86-64).
bool ps_conv_have_avx512(void);
// C (M, N) += A (M, K) · B (N, K)^T.
void ps_conv_gemm_nt_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                            float *C, int64_t ldc);

// Which GEMM the lowering's weight gradient runs on (forward and dcol always
// use OpenBLAS); AUTO picks per shape. Tests and `pansurv bench gemm
// --conv-kernel` force each one.
typedef enum { PS_CONV_KERNEL_AUTO = 0, PS_CONV_KERNEL_BLAS, PS_CONV_KERNEL_AVX512, PS_CONV_KERNEL_COUNT } ps_conv_kernel;
void ps_conv_force_kernel(ps_conv_kernel k);

// ---- direct convolution (no lowered matrix) ---------------------------------------------------
// 3x3, stride 1, pad 1 ("same") convolutions. First written for the
// 3-channel first layer, whose im2col GEMMs have an inner dimension of only
// C*9; the same register tiles also beat the lowering on the reference
// model's other layers (docs/conv.md). The input gradient is the forward
// kernel run on dout with the flipped, transposed weights. Which path each
// product takes: AUTO = direct (AVX-512) for the shapes tensor/ops_conv.c
// measured faster when the CPU has AVX-512F, otherwise the lowering; IM2COL /
// DIRECT force one for every product of an eligible (3x3 same) shape (DIRECT
// falls back to the portable kernels without AVX-512F; other shapes always
// lower); DIRECT_C forces the portable kernels. Tests and `pansurv bench gemm
// --conv-path` use the forcing.
typedef enum {
  PS_CONV_PATH_AUTO = 0,
  PS_CONV_PATH_IM2COL,
  PS_CONV_PATH_DIRECT,
  PS_CONV_PATH_DIRECT_C,
  PS_CONV_PATH_COUNT
} ps_conv_path;
void ps_conv_force_path(ps_conv_path p);
// The products of a convolution: forward, input gradient, weight gradient.
typedef enum { PS_CONV_FWD = 0, PS_CONV_DX, PS_CONV_DW, PS_CONV_PRODUCT_COUNT } ps_conv_product;
// The path a product takes for these shapes now: IM2COL, DIRECT (the AVX-512 kernels) or DIRECT_C (the
// portable ones). Shapes only; data may be NULL.
ps_conv_path ps_conv_path_for(const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p,
                              ps_conv_product what);

// Sizes of one image for the direct kernels. The input is copied into a
// zero-padded plane per channel, (C, HP, WP) with HP = H + 2 and WP =
// NV*16 + 2: every 16-wide load of a tap (output columns [16s, 16s+16) shifted
// by kw in 0..2) stays inside its padded row, so loads need no masks and
// borders need no branches; lanes past W are computed and never stored.
typedef struct {
  int64_t C, H, W, OC; // input channels, image height/width, output channels
  int64_t HP, WP, NV;  // padded plane rows/columns, 16-wide vectors per output row
  int64_t OCP;         // OC rounded up to the register tile's 8 output channels
} ps_conv_direct_dims;

enum { PS_CONV_DIRECT_OB = 8 }; // output channels per register tile (both kernels)

ps_conv_direct_dims ps_conv_direct_dims_of(int64_t C, int64_t H, int64_t W, int64_t OC);
// Workspace of one thread: padded input (C, HP, WP), packed weights (OCP/8, C*9, 8),
// weight-gradient lane partials (OCP/8, C*3, 8, 3, 16).
int64_t ps_conv_direct_pad_floats(const ps_conv_direct_dims *d);
int64_t ps_conv_direct_wpack_floats(const ps_conv_direct_dims *d);
int64_t ps_conv_direct_lanes_floats(const ps_conv_direct_dims *d);
// xp (C, HP, WP) = x (C, H, W) with zero borders.
void ps_conv_direct_pad(float *xp, const float *x, const ps_conv_direct_dims *d);
// wp (OCP/8, C*9, 8) = w (OC, C, 3, 3) regrouped so a tile's 8 weights of one tap are adjacent; zero past OC.
void ps_conv_direct_pack_weights(float *wp, const float *w, const ps_conv_direct_dims *d);
// The same for the input gradient, a "same" convolution of dout (d->C = the layer's OC channels) into
// d->OC = the layer's C channels with w (the layer's (OC, C, 3, 3)) transposed and flipped in both axes.
void ps_conv_direct_pack_weights_dx(float *wp, const float *w, const ps_conv_direct_dims *d);
// y (OC, H, W) = conv(xp, w) (+ b (OC) when b is not NULL), or y += conv(xp, w) when accumulate;
// wp from one of the packings above.
void ps_conv_direct_forward_c(float *y, const float *xp, const float *wp, const float *b, bool accumulate,
                              const ps_conv_direct_dims *d);
void ps_conv_direct_forward_avx512(float *y, const float *xp, const float *wp, const float *b, bool accumulate,
                                   const ps_conv_direct_dims *d);
// lanes (OCP/8, C*3, 8, 3, 16) += per-lane partial sums of dw over the pixels of one image:
// dout g (OC, H, W) times the shifted padded input xp.
void ps_conv_direct_dw_c(float *lanes, const float *g, const float *xp, const ps_conv_direct_dims *d);
// The AVX-512 version takes ng images at once (dout gs[i], padded input xps[i]): each register tile
// passes over all of them, which halves its fixed costs on small images.
void ps_conv_direct_dw_avx512(float *lanes, const float *const *gs, const float *const *xps, int ng,
                              const ps_conv_direct_dims *d);
// dw (OC, C, 3, 3) += the lane partials summed in a fixed order.
void ps_conv_direct_dw_reduce(float *dw, const float *lanes, const ps_conv_direct_dims *d);

#endif
