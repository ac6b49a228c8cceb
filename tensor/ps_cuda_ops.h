// The CUDA side of the tensor ops: launchers called by the op functions in
// ops_*.c after their (device-independent) argument checks, on pointers into
// device memory. Semantics are the CPU ops' (ps_ops.h), including "backward
// accumulates". Not a public header; built only with PANSURV_HAVE_CUDA=1.
//
// Dimension letters as in ps_ops.h: R rows, L/D columns, O/A/In the outer, axis
// and inner extents of a reduction, NC planes, S spatial size per channel.
#ifndef PS_CUDA_OPS_H
#define PS_CUDA_OPS_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "ps_ops.h" // a C header without its own extern "C"

// row-major C (M, N) = alpha op(A) op(B) + beta C (+ bias (N), applied as the CPU does: C = beta C + bias, then beta = 1)
ps_status ps_cuda_op_gemm(float *C, const float *A, bool ta, const float *B, bool tb, const float *bias, float alpha,
                          float beta, int64_t M, int64_t N, int64_t K);
ps_status ps_cuda_op_colsum_add(float *out, const float *g, int64_t R, int64_t D); // out (D) += sum over rows
typedef enum { PS_CUDA_EW_ADD = 0, PS_CUDA_EW_MUL, PS_CUDA_EW_COUNT } ps_cuda_ew;
ps_status ps_cuda_op_binary(ps_cuda_ew op, float *out, const float *a, const float *b, int64_t n);
// y1 += s x and y2 += s x, each skipped when NULL.
ps_status ps_cuda_op_axpy2(float *y1, float *y2, float s, const float *x, int64_t n);
// da += g b, db += g a (each skipped when NULL).
ps_status ps_cuda_op_mul_backward(float *da, float *db, const float *g, const float *a, const float *b, int64_t n);
// din += g, dv (D) += column sums of g (R, D) (each skipped when NULL).
ps_status ps_cuda_op_add_rowvec_backward(float *din, float *dv, const float *g, int64_t R, int64_t D);
ps_status ps_cuda_op_scale(float *out, float s, const float *x, int64_t n);            // out = s x
ps_status ps_cuda_op_add_rowvec(float *out, const float *x, const float *v, int64_t R, int64_t D);
ps_status ps_cuda_op_act_forward(float *out, const float *x, ps_activation act, int64_t n);
ps_status ps_cuda_op_act_backward(float *din, const float *g, const float *x, const float *y, ps_activation act,
                                  int64_t n);
ps_status ps_cuda_op_softmax_forward(float *y, const float *x, const uint8_t *mask, int64_t R, int64_t L);
ps_status ps_cuda_op_softmax_backward(float *din, const float *g, const float *y, int64_t R, int64_t L);
ps_status ps_cuda_op_logsumexp_forward(float *y, const float *x, const uint8_t *mask, int64_t R, int64_t L);
ps_status ps_cuda_op_logsumexp_backward(float *din, const float *g, const float *x, const float *y,
                                        const uint8_t *mask, int64_t R, int64_t L);
ps_status ps_cuda_op_reduce_forward(float *y, const float *x, int64_t O, int64_t A, int64_t In, double scale);
ps_status ps_cuda_op_reduce_backward(float *din, const float *g, int64_t O, int64_t A, int64_t In, float scale);
ps_status ps_cuda_op_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                                       const float *beta, int64_t N, int64_t D, float eps);
ps_status ps_cuda_op_layernorm_backward(float *din, float *dgamma, float *dbeta, const float *g, const float *x,
                                        const float *mean, const float *rstd, const float *gamma, int64_t N,
                                        int64_t D);
// Batch norm on (N, C, S); host double arrays of C as in ps_ops.h.
ps_status ps_cuda_op_bn_stats(double *sum, double *sumsq, const float *x, int64_t N, int64_t C, int64_t S);
ps_status ps_cuda_op_bn_forward_apply(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                                      const float *beta, const double *sum, const double *sumsq, int64_t count,
                                      float eps, float momentum, float *running_mean, float *running_var, int64_t N,
                                      int64_t C, int64_t S);
ps_status ps_cuda_op_bn_forward_eval(float *y, const float *x, const float *gamma, const float *beta,
                                     const float *running_mean, const float *running_var, float eps, int64_t N,
                                     int64_t C, int64_t S);
ps_status ps_cuda_op_bn_backward_reduce(double *sum_dy, double *sum_dy_xhat, const float *g, const float *x,
                                        const float *mean, const float *rstd, int64_t N, int64_t C, int64_t S);
ps_status ps_cuda_op_bn_backward_apply(float *din, float *dgamma, float *dbeta, const float *g, const float *x,
                                       const float *mean, const float *rstd, const float *gamma, const double *sum_dy,
                                       const double *sum_dy_xhat, const double *ldy, const double *ldx,
                                       int64_t count, int64_t N, int64_t C, int64_t S);
ps_status ps_cuda_op_maxpool_forward(float *y, int32_t *argmax, const float *x, int64_t NC, int64_t H, int64_t W,
                                     int k, int s, int64_t OH, int64_t OW);
ps_status ps_cuda_op_maxpool_backward(float *din, const float *g, const int32_t *argmax, int64_t NC, int64_t H,
                                      int64_t W, int64_t OH, int64_t OW);
ps_status ps_cuda_op_avgpool_forward(float *y, const float *x, int64_t NC, int64_t HW);
ps_status ps_cuda_op_avgpool_backward(float *din, const float *g, int64_t NC, int64_t HW);
// row_streams: host array of R stream ids (uploaded per call).
ps_status ps_cuda_op_dropout_forward(float *y, uint8_t *mask, const float *x, float p, uint64_t seed,
                                     const uint64_t *row_streams, int64_t R, int64_t D);
ps_status ps_cuda_op_dropout_backward(float *din, const float *g, const uint8_t *mask, float p, int64_t n);
// Convolution on checked tensors (ps_ops.h contract); workspace as planned by ps_conv2d_workspace_floats.
ps_status ps_cuda_op_conv2d_forward(ps_tensor *out, const ps_tensor *in, const ps_tensor *w, const ps_tensor *b,
                                    const ps_conv2d_params *p, ps_tensor *workspace);
ps_status ps_cuda_op_conv2d_backward(ps_tensor *din, ps_tensor *dw, ps_tensor *db, const ps_tensor *dout,
                                     const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p,
                                     ps_tensor *workspace);
// Workspace floats the CUDA convolution needs (one lowered image, or cuDNN's
// largest forward/backward workspace when built with cuDNN); -1 on bad shapes.
int64_t ps_cuda_op_conv2d_workspace_floats(const ps_tensor *in, const ps_tensor *w, const ps_conv2d_params *p);

#ifdef __cplusplus
}
#endif
#endif
