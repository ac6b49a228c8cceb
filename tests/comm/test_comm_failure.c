// A 2-rank job where the last rank dies mid-run. Driven by rank_failure.sh,
// which asserts the job ends non-zero within the bound and leaves nothing.
// Usage: test_comm_failure kill|hang|hangblock TAG
//   kill: the last rank SIGKILLs itself while the others sit in all-reduces
//         (Open MPI's launcher must end the job);
//   hang: the last rank SIGSTOPs itself (alive but silent: the launcher sees
//         nothing), while the others are in the bucketed sync, whose polling
//         loop gives up after PANSURV_COMM_TIMEOUT and returns an error;
//   hangblock: the same, but the others sit in a blocking MPI_Allreduce, so
//         only the watchdog thread can end them.
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_comm.h"
#include "testutil.h"

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "kill") && strcmp(mode, "hang") && strcmp(mode, "hangblock")) {
    fprintf(stderr, "usage: test_comm_failure kill|hang|hangblock TAG\n");
    return 2;
  }
  ps_comm *c = NULL;
  ps_comm_options opt = {PS_COMM_MPI, PS_CPU, 0};
  TU_OK(ps_comm_init(&c, &argc, &argv, &opt));
  int me = ps_comm_rank(c), p = ps_comm_size(c);
  enum { N = 1 << 18 };
  float *x = calloc(N, sizeof(float));
  if (!x) return 1;
  ps_grad_sync *s = NULL;
  TU_OK(ps_grad_sync_create(&s, c, x, N, 256 << 10));
  for (int it = 0;; it++) {
    // Even iterations use the bucketed path, odd ones the blocking all-reduce.
    if (it == (strcmp(mode, "hangblock") ? 50 : 51) && me == p - 1) {
      fprintf(stderr, "rank %d: %s now\n", me, mode);
      raise(strcmp(mode, "kill") ? SIGSTOP : SIGKILL);
    }
    // Alternate the plain and the bucketed path so both meet the failure.
    if (it % 2) TU_OK(ps_comm_allreduce(c, PS_IN_PLACE, x, N, PS_F32, PS_OP_SUM));
    else {
      ps_grad_sync_timing tm;
      TU_OK(ps_grad_sync_begin(s));
      TU_OK(ps_grad_sync_ready(s, 0));
      TU_OK(ps_grad_sync_finish(s, &tm));
    }
  }
}
