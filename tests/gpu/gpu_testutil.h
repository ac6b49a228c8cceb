// Shared by the GPU op tests: the skip rule and device copies of host tensors
// (test-only allocations, freed by gpu_dev_free_all at the end of each case).
#ifndef PS_GPU_TESTUTIL_H
#define PS_GPU_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>

#include "opstest.h"
#include "ps_cuda.h"

// 1 (after printing SKIP and why) when no device is visible: the case returns OT_SKIP.
static int gpu_skip(const char *name) {
  if (ps_cuda_device_count() > 0) return 0;
  printf("SKIP %s: %s\n", name,
         PANSURV_HAVE_CUDA ? "no CUDA device visible (no GPU or driver)" : "built without CUDA");
  return 1;
}

enum { GPU_MAX_DEV = 256 };
static void *gpu_dev_ptrs[GPU_MAX_DEV];
static ps_tensor gpu_dev_pool[GPU_MAX_DEV];
static int gpu_ndev;

// A device tensor holding a copy of host tensor h (NULL -> NULL); exits on failure.
static ps_tensor *gpu_dev(const ps_tensor *h) {
  if (!h) return NULL;
  if (gpu_ndev >= GPU_MAX_DEV) abort();
  void *p = NULL;
  size_t nb = ps_tensor_nbytes(h);
  if (ps_cuda_malloc(&p, nb ? nb : 4) != PS_OK || (nb && ps_cuda_copy_h2d(p, h->data, nb) != PS_OK)) {
    fprintf(stderr, "FAIL: device copy: %s\n", ps_error_message());
    exit(1);
  }
  gpu_dev_ptrs[gpu_ndev] = p;
  ps_tensor *t = &gpu_dev_pool[gpu_ndev++];
  *t = *h;
  t->data = p;
  t->device = PS_CUDA;
  return t;
}

static void gpu_dev_free_all(void) {
  for (int i = 0; i < gpu_ndev; i++) ps_cuda_free(gpu_dev_ptrs[i]);
  gpu_ndev = 0;
}

// One random conv case run on both devices from the same inputs: forward and backward
// (din, dw, db) on the host into out/din/dw/db and on the GPU into Out/Din/Dw/Db.
typedef struct {
  ps_tensor out, din, dw, db;
  ps_tensor *Out, *Din, *Dw, *Db;
} gpu_conv_pair;

static int gpu_conv_pair_run(gpu_conv_pair *r, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OC, int64_t K,
                             ps_conv2d_params p) {
  ps_tensor in = OT_RAND(-1, 1, N, C, H, W), w = OT_RAND(-1, 1, OC, C, K, K), b = OT_RAND(-1, 1, OC);
  int64_t OH = (H + 2 * p.pad_h - K) / p.stride_h + 1, OW = (W + 2 * p.pad_w - K) / p.stride_w + 1;
  r->out = OT_ZEROS(N, OC, OH, OW);
  ps_tensor g = OT_RAND(-1, 1, N, OC, OH, OW);
  r->din = OT_RAND(-1, 1, N, C, H, W), r->dw = OT_RAND(-1, 1, OC, C, K, K), r->db = OT_RAND(-1, 1, OC);
  ps_tensor *In = gpu_dev(&in), *Wt = gpu_dev(&w);
  r->Out = gpu_dev(&r->out), r->Din = gpu_dev(&r->din), r->Dw = gpu_dev(&r->dw), r->Db = gpu_dev(&r->db);
  int64_t wc = ps_conv2d_workspace_floats(&in, &w, &p), wg = ps_conv2d_workspace_floats(In, Wt, &p);
  TU_CHECK(wc > 0 && wg > 0, "workspace sizes %lld / %lld", (long long)wc, (long long)wg);
  ps_tensor ws = OT_ZEROS(wc), wsg = OT_ZEROS(wg);
  ps_tensor *Wsg = gpu_dev(&wsg);
  TU_OK(ps_conv2d_forward(r->Out, In, Wt, gpu_dev(&b), &p, Wsg));
  TU_OK(ps_conv2d_backward(r->Din, r->Dw, r->Db, gpu_dev(&g), In, Wt, &p, Wsg));
  TU_OK(ps_conv2d_forward(&r->out, &in, &w, &b, &p, &ws));
  TU_OK(ps_conv2d_backward(&r->din, &r->dw, &r->db, &g, &in, &w, &p, &ws));
  return 0;
}

#endif
