// CPU inverted dropout with masks from the counter-based RNG: row r's mask is
// a pure function of (seed, row_streams[r], element index), so it is the same
// whichever rank, thread or row order computes it.
//
// Dimension letters: R rows, D elements per row (the last dim).
#include "ops_internal.h"
#include "ps_rng.h"

ps_status ps_dropout_forward(ps_tensor *out, ps_tensor *mask, const ps_tensor *in, float p, uint64_t seed,
                             const uint64_t *row_streams) {
  static const char op[] = "ps_dropout_forward";
  PS_OPS_CPU(op, out, mask, in);
  PS_OPS_CHECK(op, in, PS_F32, -1);
  int64_t n = ps_tensor_numel(in), D = ps_ops_cols(in), R = ps_ops_rows(in);
  PS_OPS_CHECK(op, out, PS_F32, n);
  PS_OPS_CHECK(op, mask, PS_U8, n);
  PS_REQUIRE(p >= 0.0f && p < 1.0f, "%s: drop probability %g outside [0, 1)", op, p);
  PS_REQUIRE(row_streams || R == 0, "%s: row_streams must give one stream per row (%lld rows)", op, (long long)R);
  const float *x = ps_f32(in);
  float *y = ps_f32(out);
  uint8_t *m = ps_u8(mask);
  const float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)
  for (int64_t r = 0; r < R; r++) {
    ps_rng g = ps_rng_make(seed, row_streams[r]);
    // Element j is ps_rng_uniform(&g, j): word j % 4 of Philox block j / 4 (one block per 4 elements).
    for (int64_t j0 = 0; j0 < D; j0 += 4) {
      uint64_t blk = (uint64_t)j0 / 4;
      uint32_t ctr[4] = {(uint32_t)blk, (uint32_t)(blk >> 32), (uint32_t)g.stream, (uint32_t)(g.stream >> 32)};
      uint32_t words[4];
      ps_philox4x32(words, ctr, g.key);
      for (int64_t j = j0; j < D && j < j0 + 4; j++) {
        float u = (float)(words[j - j0] >> 8) * (1.0f / 16777216.0f);
        uint8_t keep = u >= p;
        m[r * D + j] = keep;
        y[r * D + j] = keep ? x[r * D + j] * scale : 0.0f;
      }
    }
  }
  return PS_OK;
}

ps_status ps_dropout_backward(ps_tensor *din, const ps_tensor *dout, const ps_tensor *mask, float p) {
  static const char op[] = "ps_dropout_backward";
  PS_OPS_CPU(op, din, dout, mask);
  PS_OPS_CHECK(op, dout, PS_F32, -1);
  int64_t n = ps_tensor_numel(dout);
  PS_OPS_CHECK(op, din, PS_F32, n);
  PS_OPS_CHECK(op, mask, PS_U8, n);
  PS_REQUIRE(p >= 0.0f && p < 1.0f, "%s: drop probability %g outside [0, 1)", op, p);
  const float scale = 1.0f / (1.0f - p);
  const float *g = ps_f32(dout);
  const uint8_t *m = ps_u8(mask);
  float *d = ps_f32(din);
#pragma omp parallel for schedule(static) if (n > PS_OPS_PAR_MIN)
  for (int64_t i = 0; i < n; i++)
    if (m[i]) d[i] += g[i] * scale;
  return PS_OK;
}
