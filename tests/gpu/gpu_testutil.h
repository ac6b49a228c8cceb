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

#endif
