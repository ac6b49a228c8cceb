// Hand-written GEMM kernel behind the conv lowering (tensor/ops_conv.c).
// Not a public header. Row-major; see ops_conv_avx512.c for when it wins.
#ifndef PS_OPS_CONV_KERNELS_H
#define PS_OPS_CONV_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

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

#endif
