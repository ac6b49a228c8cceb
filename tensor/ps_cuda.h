// ps_cuda: the host-side interface to the CUDA backend. Callable from plain C
// in every build; without CUDA (PANSURV_HAVE_CUDA=0) every call reports
// PS_ERR_UNSUPPORTED and ps_cuda_device_count() reports 0 devices.
// The tensor ops (ps_ops.h) dispatch to CUDA by themselves when their tensors
// are tagged PS_CUDA; this header is for memory, streams, device binding, the
// optimizer step and bf16 helpers. Ops run on the legacy default stream, in
// order; a call that returns host values (batch-norm sums) synchronizes.
#ifndef PS_CUDA_H
#define PS_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ps_status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Number of visible devices. Any CUDA error (no driver, no device:
// cudaErrorInsufficientDriver=35 on GPU-less machines) counts as 0 devices.
int ps_cuda_device_count(void);
ps_status ps_cuda_set_device(int device);
ps_status ps_cuda_malloc(void **ptr, size_t nbytes);
void ps_cuda_free(void *ptr);
ps_status ps_cuda_memset_zero(void *ptr, size_t nbytes);
ps_status ps_cuda_copy_h2d(void *dst, const void *src, size_t nbytes);
ps_status ps_cuda_copy_d2h(void *dst, const void *src, size_t nbytes);
ps_status ps_cuda_copy_d2d(void *dst, const void *src, size_t nbytes);
ps_status ps_cuda_synchronize(void);
// true when ptr is device (or managed) memory of this process.
bool ps_cuda_is_device_pointer(const void *ptr);
// out[i] = max(in[i], 0) on device buffers of n floats (the first elementwise kernel).
ps_status ps_cuda_relu_f32(float *out, const float *in, size_t n);
// out[i] = alpha * x[i] + y[i] on device buffers of n floats.
ps_status ps_cuda_axpby_f32(float *out, float alpha, const float *x, const float *y, size_t n);

// ---- device binding ------------------------------------------------------------
// Which visible device a rank uses, from its rank on the node and the node's
// rank count. Pure logic (testable without a GPU):
//   ndev >= local_size            -> device local_rank (one node, all GPUs visible)
//   ndev >= 1, each task sees its own GPUs (SLURM --gpus-per-task: SLURM_GPUS_PER_TASK
//   set, or SLURM_STEP_GPUS lists more GPUs than CUDA_VISIBLE_DEVICES) -> device 0
//   otherwise                     -> PS_ERR_CONFIG: more ranks per node than GPUs.
// env_* are the variables' values or NULL when unset.
ps_status ps_cuda_pick_device(int local_rank, int local_size, int ndev, const char *env_visible,
                              const char *env_step_gpus, const char *env_gpus_per_task, int *device);
// Reads CUDA_VISIBLE_DEVICES, SLURM_STEP_GPUS, SLURM_GPUS_PER_TASK, picks with
// ps_cuda_pick_device and makes the device current (comm/launch call this once
// per rank, before any allocation). PS_ERR_UNSUPPORTED when no device is visible.
ps_status ps_cuda_bind_local_rank(int local_rank, int local_size, int *device);

// ---- pinned host memory, streams, events (next-batch prefetch) -------------------
typedef struct ps_cuda_stream_s *ps_cuda_stream; // a cudaStream_t
typedef struct ps_cuda_event_s *ps_cuda_event;   // a cudaEvent_t
// Page-locked host memory, so H2D copies are truly asynchronous.
ps_status ps_cuda_host_alloc(void **ptr, size_t nbytes);
void ps_cuda_host_free(void *ptr);
// A non-blocking stream (does not synchronize with the default stream the ops use).
ps_status ps_cuda_stream_create(ps_cuda_stream *s);
void ps_cuda_stream_destroy(ps_cuda_stream s);
ps_status ps_cuda_stream_synchronize(ps_cuda_stream s);
// Async copy on `s` (src should be pinned, else CUDA stages it synchronously).
ps_status ps_cuda_copy_h2d_async(void *dst, const void *src, size_t nbytes, ps_cuda_stream s);
ps_status ps_cuda_event_create(ps_cuda_event *e);
void ps_cuda_event_destroy(ps_cuda_event e);
// Record on `s` (NULL = the default stream the ops use).
ps_status ps_cuda_event_record(ps_cuda_event e, ps_cuda_stream s);
// Make stream `s` (NULL = the ops' default stream) wait for `e` without blocking the host.
ps_status ps_cuda_stream_wait_event(ps_cuda_stream s, ps_cuda_event e);
ps_status ps_cuda_event_synchronize(ps_cuda_event e);

// ---- optimizer on the flat parameter arena ---------------------------------------
// AdamW exactly as nn's CPU step, elementwise on device arrays of n floats:
//   if decay[i]: p -= lr*wd*p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   p -= lr * (m / bc1) / (sqrt(v / bc2) + eps)
// bc1 = 1 - b1^t, bc2 = 1 - b2^t computed by the caller (in double, cast to float);
// decay (n) u8 on the device or NULL (= decay everything).
ps_status ps_cuda_adamw_step(float *params, const float *grads, float *m, float *v, const uint8_t *decay,
                             int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                             float bc1, float bc2);
// *sumsq (host) = sum g^2 in double (gradient clipping); synchronizes.
ps_status ps_cuda_sumsq(double *sumsq, const float *g, int64_t n);
// x *= s in place (n floats on the device).
ps_status ps_cuda_scale_inplace(float *x, float s, int64_t n);

// ---- bf16 (mixed precision) --------------------------------------------------------
// bf16 values are uint16_t bit patterns (the top half of an IEEE f32).
// f32 -> bf16 rounds to nearest even (NaN stays NaN); bf16 -> f32 is exact.
ps_status ps_cuda_f32_to_bf16(uint16_t *out, const float *in, int64_t n);
ps_status ps_cuda_bf16_to_f32(float *out, const uint16_t *in, int64_t n);
// Row-major C (M, N) f32 = alpha op(A) op(B) + beta C with A, B bf16 and fp32
// accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F); A is (M, K) or, transposed,
// (K, M); likewise B. Master weights stay f32; only the matrix inputs are bf16.
ps_status ps_cuda_gemm_bf16(float *C, const uint16_t *A, bool trans_a, const uint16_t *B, bool trans_b,
                            int64_t M, int64_t N, int64_t K, float alpha, float beta);
// Bytes of the calling thread's bf16 input scratch of BF16-precision GEMMs
// (ps_ops_set_matmul_precision): grows to the largest GEMM seen, then stays.
// 0 before the first such GEMM and in builds without CUDA.
size_t ps_cuda_bf16_scratch_bytes(void);
// TF32 tensor cores for the f32 GEMMs (off by default: plain fp32, so results
// match the CPU to ~1e-6; on, ~1e-3 relative, 10-bit mantissa inputs).
ps_status ps_cuda_set_tf32(bool enabled);

#ifdef __cplusplus
}
#endif
#endif
