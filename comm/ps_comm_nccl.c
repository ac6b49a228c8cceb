// NCCL backend (built only with PANSURV_HAVE_NCCL): collectives on device
// buffers. The unique id is created on rank 0 and broadcast over MPI; every
// collective runs on a dedicated communication stream that first waits on an
// event recorded on the compute stream (ps_comm_set_compute_stream), so it
// sees every gradient the compute stream produced. Host waits poll the
// stream and ncclCommGetAsyncError; past the timeout the communicator is
// aborted (ncclCommAbort) and the call fails instead of hanging.
#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "ps_comm_internal.h"

#define PS_CUDA_CHECK(call) PS_CHECK_GEN(call, cudaError_t, r == cudaSuccess, PS_ERR_CUDA, cudaGetErrorString(r))
#define PS_NCCL_CHECK(call) PS_CHECK_GEN(call, ncclResult_t, r == ncclSuccess, PS_ERR_CUDA, ncclGetErrorString(r))

struct ps_comm_nccl {
  ncclComm_t comm;
  cudaStream_t stream;                     // communication stream
  cudaEvent_t inputs_ready;                // recorded on the compute stream before each collective
  cudaEvent_t done[PS_COMM_MAX_REQUESTS];  // per request slot: recorded after an iallreduce
  bool aborted;
};

static ncclDataType_t nccl_type(ps_dtype t) {
  switch (t) {
  case PS_F32: return ncclFloat32;
  case PS_F64: return ncclFloat64;
  case PS_I32: return ncclInt32;
  case PS_I64: return ncclInt64;
  default: return ncclUint8;
  }
}

static ncclRedOp_t nccl_op(ps_comm_op op) { return op == PS_OP_MAX ? ncclMax : op == PS_OP_MIN ? ncclMin : ncclSum; }

// Checks the communicator's asynchronous error; aborts it on failure.
static ps_status check_async(ncclComm_t comm, bool *aborted, int rank) {
  ncclResult_t e = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(comm, &e);
  if (r != ncclSuccess) e = r;
  if (e == ncclSuccess || e == ncclInProgress) return PS_OK;
  if (!*aborted) ncclCommAbort(comm);
  *aborted = true;
  PS_FAIL(PS_ERR_CUDA, "rank %d: NCCL communicator failed asynchronously: %s (communicator aborted)", rank,
          ncclGetErrorString(e));
}

// Waits for the comm stream (or an event on it) while polling NCCL's async error; aborts after timeout_s.
static ps_status poll_until(ncclComm_t comm, bool *aborted, cudaStream_t stream, cudaEvent_t ev, double timeout_s,
                            int rank, const char *what) {
  double t0 = ps_comm_now();
  for (;;) {
    cudaError_t q = ev ? cudaEventQuery(ev) : cudaStreamQuery(stream);
    if (q == cudaSuccess) return PS_OK;
    if (q != cudaErrorNotReady)
      PS_FAIL(PS_ERR_CUDA, "rank %d: waiting for %s: %s", rank, what, cudaGetErrorString(q));
    PS_TRY(check_async(comm, aborted, rank));
    if (timeout_s > 0 && ps_comm_now() - t0 > timeout_s) {
      if (!*aborted) ncclCommAbort(comm);
      *aborted = true;
      PS_FAIL(PS_ERR_CUDA, "rank %d: %s did not complete within %.0f s (a peer died or hangs); NCCL communicator "
              "aborted", rank, what, timeout_s);
    }
    sched_yield();
  }
}

ps_status ps_comm_nccl_init(ps_comm *c) {
  ps_comm_nccl *n = calloc(1, sizeof *n);
  if (!n) PS_FAIL(PS_ERR_MEM, "nccl: allocating backend state");
  c->nccl = n;
  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  ps_status local = PS_OK, global = PS_OK;
  if (c->rank == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess)
      local = ps_error_set(PS_ERR_CUDA, __FILE__, __LINE__, "ncclGetUniqueId failed: %s", ncclGetErrorString(r));
  }
  PS_TRY(ps_comm_agree(c, local, &global));
  if (global != PS_OK) return global;
  PS_MPI_CHECK(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, c->world));
  ncclResult_t r = ncclCommInitRank(&n->comm, c->size, id, c->rank);
  if (r != ncclSuccess) {
    n->comm = NULL;
    local = ps_error_set(PS_ERR_CUDA, __FILE__, __LINE__, "rank %d: ncclCommInitRank(%d ranks, GPU %d) failed: %s",
                         c->rank, c->size, c->cuda_device, ncclGetErrorString(r));
  }
  PS_TRY(ps_comm_agree(c, local, &global));
  if (global != PS_OK) return global;
  PS_CUDA_CHECK(cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking));
  PS_CUDA_CHECK(cudaEventCreateWithFlags(&n->inputs_ready, cudaEventDisableTiming));
  for (int i = 0; i < PS_COMM_MAX_REQUESTS; i++)
    PS_CUDA_CHECK(cudaEventCreateWithFlags(&n->done[i], cudaEventDisableTiming));
  return PS_OK;
}

void ps_comm_nccl_finalize(ps_comm *c) {
  ps_comm_nccl *n = c->nccl;
  if (!n) return;
  if (n->comm) {
    if (n->aborted) { /* already torn down by ncclCommAbort */
    } else {
      cudaStreamSynchronize(n->stream);
      ncclCommDestroy(n->comm);
    }
  }
  for (int i = 0; i < PS_COMM_MAX_REQUESTS; i++)
    if (n->done[i]) cudaEventDestroy(n->done[i]);
  if (n->inputs_ready) cudaEventDestroy(n->inputs_ready);
  if (n->stream) cudaStreamDestroy(n->stream);
  free(n);
  c->nccl = NULL;
}

// Orders the comm stream after everything queued so far on the compute stream.
static ps_status order_after_compute(ps_comm *c, cudaStream_t comm_stream, cudaEvent_t ev) {
  PS_CUDA_CHECK(cudaEventRecord(ev, (cudaStream_t)c->compute_stream));
  PS_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, ev, 0));
  return PS_OK;
}

static ps_status sync_blocking(ps_comm *c, const char *what) {
  ps_comm_nccl *n = c->nccl;
  return poll_until(n->comm, &n->aborted, n->stream, NULL, c->timeout_s, c->rank, what);
}

static ps_status usable(ps_comm *c) {
  if (!c->nccl || !c->nccl->comm || c->nccl->aborted)
    PS_FAIL(PS_ERR_CUDA, "rank %d: the NCCL communicator was aborted after an earlier failure", c->rank);
  return PS_OK;
}

ps_status ps_comm_nccl_allreduce(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t, ps_comm_op op) {
  PS_TRY(usable(c));
  ps_comm_nccl *n = c->nccl;
  PS_TRY(order_after_compute(c, n->stream, n->inputs_ready));
  PS_NCCL_CHECK(ncclAllReduce(send ? send : recv, recv, (size_t)count, nccl_type(t), nccl_op(op), n->comm, n->stream));
  return sync_blocking(c, "ncclAllReduce");
}

ps_status ps_comm_nccl_allgather(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t) {
  PS_TRY(usable(c));
  ps_comm_nccl *n = c->nccl;
  // NCCL's in-place form: the send buffer is this rank's slice of recv.
  const void *s = send ? send : (const char *)recv + (size_t)c->rank * (size_t)count * ps_dtype_size(t);
  PS_TRY(order_after_compute(c, n->stream, n->inputs_ready));
  PS_NCCL_CHECK(ncclAllGather(s, recv, (size_t)count, nccl_type(t), n->comm, n->stream));
  return sync_blocking(c, "ncclAllGather");
}

ps_status ps_comm_nccl_allgatherv(ps_comm *c, const void *send, int64_t send_count, void *recv,
                                  const int64_t *recv_counts, ps_dtype t) {
  PS_TRY(usable(c));
  ps_comm_nccl *n = c->nccl;
  size_t es = ps_dtype_size(t), off = 0;
  PS_TRY(order_after_compute(c, n->stream, n->inputs_ready));
  // NCCL has no all-gather-v: one broadcast per rank, fused in a group.
  PS_NCCL_CHECK(ncclGroupStart());
  for (int r = 0; r < c->size; r++) {
    char *dst = (char *)recv + off * es;
    const void *src = (r == c->rank && send) ? send : dst;
    ncclResult_t rr = ncclBroadcast(src, dst, (size_t)recv_counts[r], nccl_type(t), r, n->comm, n->stream);
    if (rr != ncclSuccess) {
      ncclGroupEnd();
      PS_FAIL(PS_ERR_CUDA, "ncclBroadcast(all-gather-v slice of rank %d) failed: %s", r, ncclGetErrorString(rr));
    }
    off += (size_t)recv_counts[r];
  }
  PS_NCCL_CHECK(ncclGroupEnd());
  (void)send_count;
  return sync_blocking(c, "ncclBroadcast group (all-gather-v)");
}

ps_status ps_comm_nccl_broadcast(ps_comm *c, void *buf, int64_t count, ps_dtype t, int root) {
  PS_TRY(usable(c));
  ps_comm_nccl *n = c->nccl;
  PS_TRY(order_after_compute(c, n->stream, n->inputs_ready));
  PS_NCCL_CHECK(ncclBroadcast(buf, buf, (size_t)count, nccl_type(t), root, n->comm, n->stream));
  return sync_blocking(c, "ncclBroadcast");
}

ps_status ps_comm_nccl_iallreduce(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t, ps_comm_op op,
                                  ps_comm_request *req) {
  PS_TRY(usable(c));
  ps_comm_nccl *n = c->nccl;
  int slot = (int)(req - c->requests);
  PS_TRY(order_after_compute(c, n->stream, n->inputs_ready));
  PS_NCCL_CHECK(ncclAllReduce(send ? send : recv, recv, (size_t)count, nccl_type(t), nccl_op(op), n->comm, n->stream));
  PS_CUDA_CHECK(cudaEventRecord(n->done[slot], n->stream));
  req->event = n->done[slot];
  return PS_OK;
}

ps_status ps_comm_nccl_test(ps_comm_request *req, bool *done) {
  ps_comm *c = req->c;
  ps_comm_nccl *n = c->nccl;
  cudaError_t q = cudaEventQuery((cudaEvent_t)req->event);
  if (q == cudaSuccess) {
    *done = true;
    return PS_OK;
  }
  if (q != cudaErrorNotReady) PS_FAIL(PS_ERR_CUDA, "rank %d: ncclAllReduce request: %s", c->rank, cudaGetErrorString(q));
  *done = false;
  return check_async(n->comm, &n->aborted, c->rank);
}

void ps_comm_nccl_abort(ps_comm *c) {
  ps_comm_nccl *n = c->nccl;
  if (n && n->comm && !n->aborted) ncclCommAbort(n->comm);
  if (n) n->aborted = true;
}

// ---- gradient buckets: their own communicator and stream --------------------
struct ps_nccl_grad {
  ps_comm *c;
  ncclComm_t comm; // split from the main NCCL communicator
  cudaStream_t stream;
  cudaEvent_t inputs_ready;
  cudaEvent_t *done; // (nbuckets)
  int nbuckets;
  bool aborted;
};

ps_status ps_nccl_grad_create(ps_nccl_grad **out, ps_comm *c, int nbuckets) {
  PS_TRY(usable(c));
  ps_nccl_grad *g = calloc(1, sizeof *g);
  if (!g) PS_FAIL(PS_ERR_MEM, "nccl: gradient sync state");
  *out = g;
  g->c = c;
  g->nbuckets = nbuckets;
  g->done = calloc((size_t)(nbuckets > 0 ? nbuckets : 1), sizeof *g->done);
  if (!g->done) PS_FAIL(PS_ERR_MEM, "nccl: %d bucket events", nbuckets);
  PS_NCCL_CHECK(ncclCommSplit(c->nccl->comm, 0, c->rank, &g->comm, NULL));
  PS_CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
  PS_CUDA_CHECK(cudaEventCreateWithFlags(&g->inputs_ready, cudaEventDisableTiming));
  for (int k = 0; k < nbuckets; k++) PS_CUDA_CHECK(cudaEventCreateWithFlags(&g->done[k], cudaEventDisableTiming));
  return PS_OK;
}

void ps_nccl_grad_destroy(ps_nccl_grad *g) {
  if (!g) return;
  if (g->comm && !g->aborted) {
    if (g->stream) cudaStreamSynchronize(g->stream);
    ncclCommDestroy(g->comm);
  }
  for (int k = 0; g->done && k < g->nbuckets; k++)
    if (g->done[k]) cudaEventDestroy(g->done[k]);
  if (g->inputs_ready) cudaEventDestroy(g->inputs_ready);
  if (g->stream) cudaStreamDestroy(g->stream);
  free(g->done);
  free(g);
}

ps_status ps_nccl_grad_start(ps_nccl_grad *g, int bucket, float *buf, int64_t count) {
  if (g->aborted) PS_FAIL(PS_ERR_CUDA, "rank %d: gradient NCCL communicator was aborted", g->c->rank);
  PS_TRY(order_after_compute(g->c, g->stream, g->inputs_ready));
  PS_NCCL_CHECK(ncclAllReduce(buf, buf, (size_t)count, ncclFloat32, ncclSum, g->comm, g->stream));
  PS_CUDA_CHECK(cudaEventRecord(g->done[bucket], g->stream));
  return PS_OK;
}

ps_status ps_nccl_grad_test(ps_nccl_grad *g, int bucket, bool *done) {
  cudaError_t q = cudaEventQuery(g->done[bucket]);
  *done = q == cudaSuccess;
  if (q != cudaSuccess && q != cudaErrorNotReady)
    PS_FAIL(PS_ERR_CUDA, "rank %d: gradient bucket %d: %s", g->c->rank, bucket, cudaGetErrorString(q));
  return *done ? PS_OK : check_async(g->comm, &g->aborted, g->c->rank);
}

void ps_nccl_grad_abort(ps_nccl_grad *g) {
  if (g && g->comm && !g->aborted) ncclCommAbort(g->comm);
  if (g) g->aborted = true;
}
