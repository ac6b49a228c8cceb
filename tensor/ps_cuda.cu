// The CUDA runtime side of tensor/: device allocator, copies, device binding,
// pinned memory / streams / events for prefetch, the per-thread cuBLAS handle
// and scratch, the AdamW step and the bf16 helpers. Compiled only when CUDA is
// found (PANSURV_HAVE_CUDA=1); ps_cuda_none.c stands in otherwise.
#include <cuda_bf16.h>
#include <stdlib.h>
#include <string.h>

#include "ps_cuda.h"
#include "ps_cuda_internal.h"
#include "ps_cuda_ops.h" // ps_ops_get_matmul_precision

extern "C" int ps_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

extern "C" ps_status ps_cuda_set_device(int device) {
  PS_CUDA_CHECK(cudaSetDevice(device));
  return PS_OK;
}

extern "C" ps_status ps_cuda_malloc(void **ptr, size_t nbytes) {
  PS_CUDA_CHECK(cudaMalloc(ptr, nbytes));
  return PS_OK;
}

extern "C" void ps_cuda_free(void *ptr) { cudaFree(ptr); }

extern "C" ps_status ps_cuda_memset_zero(void *ptr, size_t nbytes) {
  PS_CUDA_CHECK(cudaMemset(ptr, 0, nbytes));
  return PS_OK;
}

extern "C" ps_status ps_cuda_copy_h2d(void *dst, const void *src, size_t nbytes) {
  PS_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyHostToDevice));
  return PS_OK;
}

extern "C" ps_status ps_cuda_copy_d2h(void *dst, const void *src, size_t nbytes) {
  PS_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDeviceToHost));
  return PS_OK;
}

extern "C" ps_status ps_cuda_copy_d2d(void *dst, const void *src, size_t nbytes) {
  PS_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDeviceToDevice));
  return PS_OK;
}

extern "C" ps_status ps_cuda_synchronize(void) {
  PS_CUDA_CHECK(cudaDeviceSynchronize());
  return PS_OK;
}

extern "C" bool ps_cuda_is_device_pointer(const void *ptr) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, ptr) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

__global__ static void relu_kernel(float *out, const float *in, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

__global__ static void axpby_kernel(float *out, float alpha, const float *x, const float *y, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = alpha * x[i] + y[i];
}

extern "C" ps_status ps_cuda_relu_f32(float *out, const float *in, size_t n) {
  relu_kernel<<<ps_cuda_grid((int64_t)n), PS_CUDA_BLOCK>>>(out, in, n);
  PS_CUDA_LAUNCHED();
  return PS_OK;
}

extern "C" ps_status ps_cuda_axpby_f32(float *out, float alpha, const float *x, const float *y, size_t n) {
  axpby_kernel<<<ps_cuda_grid((int64_t)n), PS_CUDA_BLOCK>>>(out, alpha, x, y, n);
  PS_CUDA_LAUNCHED();
  return PS_OK;
}

// ---- per-thread cuBLAS handle and scratch ----------------------------------------

static thread_local cublasHandle_t tl_blas = nullptr;
static thread_local bool tl_tf32 = false;
static thread_local int tl_blas_tf32 = -1; // math mode the handle has (-1: not set yet)

// TF32 for this thread: ps_cuda_set_tf32 on this thread, or the process-wide
// matmul precision (ps_ops_set_matmul_precision) set to TF32.
bool ps_cuda_tf32_enabled(void) { return tl_tf32 || ps_ops_get_matmul_precision() == PS_MATMUL_TF32; }

ps_status ps_cuda_blas_handle(cublasHandle_t *h) {
  if (!tl_blas) PS_CUBLAS_CHECK(cublasCreate(&tl_blas));
  // Plain fp32 unless asked: TF32 would change results at the 1e-3 level.
  int want = ps_cuda_tf32_enabled() ? 1 : 0;
  if (want != tl_blas_tf32) {
    PS_CUBLAS_CHECK(cublasSetMathMode(tl_blas, want ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    tl_blas_tf32 = want;
  }
  *h = tl_blas;
  return PS_OK;
}

extern "C" ps_status ps_cuda_set_tf32(bool enabled) {
  tl_tf32 = enabled;
  return PS_OK; // the handle picks the mode up on its next use
}

static thread_local void *tl_scratch[PS_CUDA_SCRATCH_COUNT];
static thread_local size_t tl_scratch_cap[PS_CUDA_SCRATCH_COUNT];

ps_status ps_cuda_scratch_in(ps_cuda_scratch_slot slot, size_t nbytes, void **p) {
  if ((unsigned)slot >= PS_CUDA_SCRATCH_COUNT) PS_FAIL(PS_ERR_ARG, "device scratch slot %d out of range", (int)slot);
  if (nbytes > tl_scratch_cap[slot]) {
    size_t cap = nbytes < 4096 ? 4096 : nbytes + nbytes / 2;
    if (tl_scratch[slot]) PS_CUDA_CHECK(cudaFree(tl_scratch[slot])); // synchronizes: kernels using the old buffer are done
    tl_scratch[slot] = nullptr;
    tl_scratch_cap[slot] = 0;
    PS_CUDA_CHECK(cudaMalloc(&tl_scratch[slot], cap));
    tl_scratch_cap[slot] = cap;
  }
  *p = tl_scratch[slot];
  return PS_OK;
}

size_t ps_cuda_scratch_capacity(ps_cuda_scratch_slot slot) {
  return (unsigned)slot < PS_CUDA_SCRATCH_COUNT ? tl_scratch_cap[slot] : 0;
}

// ---- device binding ---------------------------------------------------------------

extern "C" ps_status ps_cuda_bind_local_rank(int local_rank, int local_size, int *device) {
  int dev = -1;
  PS_TRY(ps_cuda_pick_device(local_rank, local_size, ps_cuda_device_count(), getenv("CUDA_VISIBLE_DEVICES"),
                             getenv("SLURM_STEP_GPUS"), getenv("SLURM_GPUS_PER_TASK"), &dev));
  PS_TRY(ps_cuda_set_device(dev));
  if (device) *device = dev;
  return PS_OK;
}

// ---- pinned memory, streams, events ------------------------------------------------

extern "C" ps_status ps_cuda_host_alloc(void **ptr, size_t nbytes) {
  PS_CUDA_CHECK(cudaMallocHost(ptr, nbytes));
  return PS_OK;
}
extern "C" void ps_cuda_host_free(void *ptr) {
  if (ptr) cudaFreeHost(ptr);
}
extern "C" ps_status ps_cuda_stream_create(ps_cuda_stream *s) {
  cudaStream_t st = nullptr;
  PS_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  *s = (ps_cuda_stream)st;
  return PS_OK;
}
extern "C" void ps_cuda_stream_destroy(ps_cuda_stream s) {
  if (s) cudaStreamDestroy((cudaStream_t)s);
}
extern "C" ps_status ps_cuda_stream_synchronize(ps_cuda_stream s) {
  PS_CUDA_CHECK(cudaStreamSynchronize((cudaStream_t)s));
  return PS_OK;
}
extern "C" ps_status ps_cuda_copy_h2d_async(void *dst, const void *src, size_t nbytes, ps_cuda_stream s) {
  PS_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, (cudaStream_t)s));
  return PS_OK;
}
extern "C" ps_status ps_cuda_event_create(ps_cuda_event *e) {
  cudaEvent_t ev = nullptr;
  PS_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  *e = (ps_cuda_event)ev;
  return PS_OK;
}
extern "C" void ps_cuda_event_destroy(ps_cuda_event e) {
  if (e) cudaEventDestroy((cudaEvent_t)e);
}
extern "C" ps_status ps_cuda_event_record(ps_cuda_event e, ps_cuda_stream s) {
  PS_CUDA_CHECK(cudaEventRecord((cudaEvent_t)e, (cudaStream_t)s));
  return PS_OK;
}
extern "C" ps_status ps_cuda_stream_wait_event(ps_cuda_stream s, ps_cuda_event e) {
  PS_CUDA_CHECK(cudaStreamWaitEvent((cudaStream_t)s, (cudaEvent_t)e, 0));
  return PS_OK;
}
extern "C" ps_status ps_cuda_event_synchronize(ps_cuda_event e) {
  PS_CUDA_CHECK(cudaEventSynchronize((cudaEvent_t)e));
  return PS_OK;
}

// ---- optimizer ------------------------------------------------------------------------

__global__ static void adamw_kernel(float *p, const float *g, float *m, float *v, const uint8_t *dec, int64_t n,
                                    float lr, float b1, float b2, float eps, float wd, float bc1, float bc2) {
  PS_CUDA_FOR(i, n) {
    float pi = p[i], gi = g[i];
    if (!dec || dec[i]) pi -= lr * wd * pi; // decoupled weight decay
    float mi = b1 * m[i] + (1.0f - b1) * gi, vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float mh = mi / bc1, vh = vi / bc2;
    p[i] = pi - lr * mh / (sqrtf(vh) + eps);
  }
}

extern "C" ps_status ps_cuda_adamw_step(float *params, const float *grads, float *m, float *v, const uint8_t *decay,
                                        int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                                        float bc1, float bc2) {
  PS_REQUIRE(n >= 0 && bc1 > 0 && bc2 > 0, "ps_cuda_adamw_step: n=%lld bc1=%g bc2=%g (need n >= 0, bc > 0)",
             (long long)n, bc1, bc2);
  if (n == 0) return PS_OK;
  adamw_kernel<<<ps_cuda_grid(n), PS_CUDA_BLOCK>>>(params, grads, m, v, decay, n, lr, beta1, beta2, eps,
                                                   weight_decay, bc1, bc2);
  PS_CUDA_LAUNCHED();
  return PS_OK;
}

__global__ static void sumsq_kernel(double *out, const float *g, int64_t n) {
  __shared__ double sh[32];
  double s = 0;
  PS_CUDA_FOR(i, n) s += (double)g[i] * g[i];
  s = ps_block_sum(s, sh);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

extern "C" ps_status ps_cuda_sumsq(double *sumsq, const float *g, int64_t n) {
  unsigned blocks = ps_cuda_grid(n) > 1024 ? 1024 : ps_cuda_grid(n);
  void *scr = nullptr;
  PS_TRY(ps_cuda_scratch(blocks * sizeof(double), &scr));
  sumsq_kernel<<<blocks, PS_CUDA_BLOCK>>>((double *)scr, g, n);
  PS_CUDA_LAUNCHED();
  double part[1024];
  PS_CUDA_CHECK(cudaMemcpy(part, scr, blocks * sizeof(double), cudaMemcpyDeviceToHost));
  double s = 0;
  for (unsigned b = 0; b < blocks; b++) s += part[b]; // fixed order: deterministic
  *sumsq = s;
  return PS_OK;
}

__global__ static void scale_inplace_kernel(float *x, float s, int64_t n) {
  PS_CUDA_FOR(i, n) x[i] *= s;
}

extern "C" ps_status ps_cuda_scale_inplace(float *x, float s, int64_t n) {
  if (n <= 0) return PS_OK;
  scale_inplace_kernel<<<ps_cuda_grid(n), PS_CUDA_BLOCK>>>(x, s, n);
  PS_CUDA_LAUNCHED();
  return PS_OK;
}

// ---- bf16 ------------------------------------------------------------------------------

__global__ static void f32_to_bf16_kernel(__nv_bfloat16 *out, const float *in, int64_t n) {
  PS_CUDA_FOR(i, n) out[i] = __float2bfloat16_rn(in[i]);
}
__global__ static void bf16_to_f32_kernel(float *out, const __nv_bfloat16 *in, int64_t n) {
  PS_CUDA_FOR(i, n) out[i] = __bfloat162float(in[i]);
}

extern "C" ps_status ps_cuda_f32_to_bf16(uint16_t *out, const float *in, int64_t n) {
  if (n <= 0) return PS_OK;
  f32_to_bf16_kernel<<<ps_cuda_grid(n), PS_CUDA_BLOCK>>>((__nv_bfloat16 *)out, in, n);
  PS_CUDA_LAUNCHED();
  return PS_OK;
}

extern "C" ps_status ps_cuda_bf16_to_f32(float *out, const uint16_t *in, int64_t n) {
  if (n <= 0) return PS_OK;
  bf16_to_f32_kernel<<<ps_cuda_grid(n), PS_CUDA_BLOCK>>>(out, (const __nv_bfloat16 *)in, n);
  PS_CUDA_LAUNCHED();
  return PS_OK;
}

extern "C" ps_status ps_cuda_gemm_bf16(float *C, const uint16_t *A, bool trans_a, const uint16_t *B, bool trans_b,
                                       int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  PS_REQUIRE(M >= 0 && N >= 0 && K >= 0 && M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX,
             "ps_cuda_gemm_bf16: sizes (%lld, %lld, %lld) outside the cuBLAS int range", (long long)M, (long long)N,
             (long long)K);
  if (M == 0 || N == 0) return PS_OK;
  cublasHandle_t h;
  PS_TRY(ps_cuda_blas_handle(&h));
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap operands.
  int lda = (int)(trans_a ? M : K), ldb = (int)(trans_b ? K : N);
  if (lda < 1) lda = 1; // K == 0: cuBLAS still checks leading dimensions
  PS_CUBLAS_CHECK(cublasGemmEx(h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N,
                               (int)M, (int)K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C, CUDA_R_32F,
                               (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return PS_OK;
}
