// Direct 3x3 "same" convolution (stride 1, pad 1): layout helpers, the
// portable kernels and the fixed-order lane reduction. The AVX-512 kernels
// (ops_conv_avx512.c) use the same layouts and tiles; tensor/ops_conv.c picks
// the path per product (docs/conv.md).
//
// Dimension letters: C input channels, H/W image height/width, OC output
// channels, OCP = OC rounded up to OB = 8, HP/WP padded plane rows/columns,
// NV 16-wide vectors per output row, CKK = C*9 taps, L = 16 lanes.
//
// Forward: 16 output pixels of a row times OB output channels form a
// register tile; each tap adds (16 shifted inputs) x (OB broadcast weights).
// Input gradient: the forward on dout with the weights transposed and flipped.
// Weight gradient: dw (OC, CKK) += dout (OC, P) · shiftedᵀ (P, CKK) kept as
// 16-lane partials per (output channel, tap), summed over lanes once per call
// (ps_conv_direct_dw_reduce) in a fixed tree, so results depend on the shapes
// and the order of images only.
#include <string.h>

#include "ops_conv_kernels.h"

enum { L = 16, OB = PS_CONV_DIRECT_OB };

ps_conv_direct_dims ps_conv_direct_dims_of(int64_t C, int64_t H, int64_t W, int64_t OC) {
  ps_conv_direct_dims d = {.C = C, .H = H, .W = W, .OC = OC};
  d.NV = (W + L - 1) / L;
  d.HP = H + 2;
  d.WP = d.NV * L + 2;
  d.OCP = (OC + OB - 1) / OB * OB;
  return d;
}

int64_t ps_conv_direct_pad_floats(const ps_conv_direct_dims *d) { return d->C * d->HP * d->WP; }
int64_t ps_conv_direct_wpack_floats(const ps_conv_direct_dims *d) { return d->OCP * d->C * 9; }
int64_t ps_conv_direct_lanes_floats(const ps_conv_direct_dims *d) { return d->OCP * d->C * 9 * L; }

void ps_conv_direct_pad(float *xp, const float *x, const ps_conv_direct_dims *d) {
  const int64_t plane = d->HP * d->WP;
  for (int64_t c = 0; c < d->C; c++) {
    float *p = xp + c * plane;
    memset(p, 0, (size_t)d->WP * sizeof(float));                          // top border row
    memset(p + (d->H + 1) * d->WP, 0, (size_t)d->WP * sizeof(float));     // bottom border row
    for (int64_t h = 0; h < d->H; h++) {
      float *row = p + (h + 1) * d->WP;
      row[0] = 0.0f;
      memcpy(row + 1, x + (c * d->H + h) * d->W, (size_t)d->W * sizeof(float));
      memset(row + 1 + d->W, 0, (size_t)(d->WP - 1 - d->W) * sizeof(float)); // right border and slack
    }
  }
}

void ps_conv_direct_pack_weights(float *wp, const float *w, const ps_conv_direct_dims *d) {
  const int64_t CKK = d->C * 9;
  for (int64_t ob = 0; ob < d->OCP / OB; ob++)
    for (int64_t t = 0; t < CKK; t++)
      for (int64_t j = 0; j < OB; j++) {
        int64_t o = ob * OB + j;
        wp[(ob * CKK + t) * OB + j] = o < d->OC ? w[o * CKK + t] : 0.0f;
      }
}

void ps_conv_direct_pack_weights_dx(float *wp, const float *w, const ps_conv_direct_dims *d) {
  const int64_t CKK = d->C * 9; // d->C: the layer's OC (dout channels); d->OC: the layer's C
  for (int64_t ob = 0; ob < d->OCP / OB; ob++)
    for (int64_t o = 0; o < d->C; o++)
      for (int64_t t = 0; t < 9; t++)
        for (int64_t j = 0; j < OB; j++) {
          int64_t c = ob * OB + j;
          wp[(ob * CKK + o * 9 + t) * OB + j] = c < d->OC ? w[(o * d->OC + c) * 9 + 8 - t] : 0.0f;
        }
}

void ps_conv_direct_forward_c(float *y, const float *xp, const float *wp, const float *b, bool accumulate,
                              const ps_conv_direct_dims *d) {
  const int64_t CKK = d->C * 9, plane = d->HP * d->WP, P = d->H * d->W;
  for (int64_t oh = 0; oh < d->H; oh++)
    for (int64_t s = 0; s < d->NV; s++) {
      const int64_t ow0 = s * L, n = d->W - ow0 < L ? d->W - ow0 : L;
      for (int64_t ob = 0; ob < d->OCP / OB; ob++) {
        float acc[OB][L];
        for (int j = 0; j < OB; j++) {
          int64_t o = ob * OB + j;
          float v = b && o < d->OC ? b[o] : 0.0f;
          for (int l = 0; l < L; l++) acc[j][l] = accumulate && o < d->OC && l < n ? y[o * P + oh * d->W + ow0 + l] : v;
        }
        for (int64_t c = 0; c < d->C; c++)
          for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++) {
              const float *xr = xp + c * plane + (oh + kh) * d->WP + ow0 + kw;
              const float *wt = wp + (ob * CKK + c * 9 + kh * 3 + kw) * OB;
              for (int j = 0; j < OB; j++)
                for (int l = 0; l < L; l++) acc[j][l] += wt[j] * xr[l];
            }
        for (int j = 0; j < OB && ob * OB + j < d->OC; j++)
          memcpy(y + (ob * OB + j) * P + oh * d->W + ow0, acc[j], (size_t)n * sizeof(float));
      }
    }
}

void ps_conv_direct_dw_c(float *lanes, const float *g, const float *xp, const ps_conv_direct_dims *d) {
  const int64_t plane = d->HP * d->WP, P = d->H * d->W, C3 = d->C * 3;
  for (int64_t oh = 0; oh < d->H; oh++)
    for (int64_t s = 0; s < d->NV; s++) {
      const int64_t ow0 = s * L, n = d->W - ow0 < L ? d->W - ow0 : L;
      for (int64_t ob = 0; ob < d->OCP / OB; ob++) {
        float gv[OB][L]; // dout lanes past W or past OC are 0, so their (finite) inputs add nothing
        for (int j = 0; j < OB; j++) {
          int64_t o = ob * OB + j;
          for (int l = 0; l < L; l++) gv[j][l] = o < d->OC && l < n ? g[o * P + oh * d->W + ow0 + l] : 0.0f;
        }
        for (int64_t ck = 0; ck < C3; ck++) {
          const float *xr = xp + (ck / 3) * plane + (oh + ck % 3) * d->WP + ow0;
          float *lt = lanes + (ob * C3 + ck) * OB * 3 * L;
          for (int j = 0; j < OB; j++)
            for (int kw = 0; kw < 3; kw++)
              for (int l = 0; l < L; l++) lt[(j * 3 + kw) * L + l] += gv[j][l] * xr[kw + l];
        }
      }
    }
}

void ps_conv_direct_dw_reduce(float *dw, const float *lanes, const ps_conv_direct_dims *d) {
  const int64_t C3 = d->C * 3, CKK = d->C * 9;
  for (int64_t o = 0; o < d->OC; o++)
    for (int64_t ck = 0; ck < C3; ck++)
      for (int kw = 0; kw < 3; kw++) {
        const float *v = lanes + (((o / OB * C3 + ck) * OB + o % OB) * 3 + kw) * L;
        // Pairwise tree 16 -> 8 -> 4 -> 2 -> 1 (the same order as a 512-bit lane reduction).
        float s8[8], s4[4];
        for (int i = 0; i < 8; i++) s8[i] = v[i] + v[i + 8];
        for (int i = 0; i < 4; i++) s4[i] = s8[i] + s8[i + 4];
        dw[o * CKK + ck * 3 + kw] += (s4[0] + s4[2]) + (s4[1] + s4[3]);
      }
}
