// Private to comm/: the communicator struct shared by the MPI core
// (ps_comm.c), the gradient synchronizer (ps_grad_sync.c) and the NCCL
// backend (ps_comm_nccl.c, built only with PS_COMM_WITH_NCCL).
#ifndef PS_COMM_INTERNAL_H
#define PS_COMM_INTERNAL_H

#include <mpi.h>
#include <stdatomic.h>

#include "ps_comm.h"

// Checks an MPI call (communicators use MPI_ERRORS_RETURN), naming the call
// and MPI's own description of the error code.
const char *ps_mpi_error_string(int code);
#define PS_MPI_CHECK(call) PS_CHECK_GEN(call, int, r == MPI_SUCCESS, PS_ERR_MPI, ps_mpi_error_string(r))
// The same around a blocking call that the watchdog bounds (the watch ends
// before the result is checked, so an error return never leaves it armed).
#define PS_MPI_CHECK_WATCHED(c, call)                                                              \
  do {                                                                                             \
    ps_comm_watch_begin((c), #call);                                                               \
    PS_CHECK_GEN(call, int, (ps_comm_watch_end(c), r == MPI_SUCCESS), PS_ERR_MPI, ps_mpi_error_string(r)); \
  } while (0)

// Outstanding asynchronous requests per communicator (a pool, so that
// iallreduce allocates nothing inside a training step).
enum { PS_COMM_MAX_REQUESTS = 64 };

typedef struct ps_comm_nccl ps_comm_nccl; // ps_comm_nccl.c

struct ps_comm_request {
  ps_comm *c;
  bool used;
  bool is_nccl;
  MPI_Request mpi;
  void *event; // NCCL: cudaEvent_t recorded on the comm stream after the collective
};

struct ps_comm {
  MPI_Comm world; // dup of MPI_COMM_WORLD, MPI_ERRORS_RETURN
  MPI_Comm node;  // ranks sharing memory with this one (MPI_COMM_TYPE_SHARED)
  int rank, size;
  int local_rank, local_size;
  int nodes;
  int threads;
  int thread_level; // provided by MPI_Init_thread / MPI_Query_thread
  int cuda_device;  // -1 unless device == PS_CUDA
  ps_comm_backend backend;
  ps_comm_progress progress; // THREAD or TEST (resolved)
  ps_device device;
  bool we_initialized_mpi;
  double timeout_s; // watchdog bound on blocking waits (PANSURV_COMM_TIMEOUT, seconds; 0 = off)
  int *counts;      // (size) scratch for allgatherv
  int *displs;      // (size)
  ps_comm_request requests[PS_COMM_MAX_REQUESTS];
  ps_comm_nccl *nccl;
  void *compute_stream; // cudaStream_t the comm stream orders after (NULL: legacy default stream)
  // Watchdog: deadline (monotonic ns) of the blocking call in progress, 0 when none.
  _Atomic int64_t watch_deadline_ns;
  _Atomic int watch_stop;
  const char *_Atomic watch_what;
  bool watch_running;
  unsigned long watch_thread; // pthread_t
};

MPI_Datatype ps_comm_mpi_type(ps_dtype t);
MPI_Op ps_comm_mpi_op(ps_comm_op op);
double ps_comm_now(void);
// pthread_create with every signal blocked in the new thread, so signals meant
// for the process (SIGUSR1 preemption notices, SIGTERM) reach the main thread.
int ps_comm_thread_start(unsigned long *thread, void *(*fn)(void *), void *arg);
// Watchdog guards around a blocking MPI call: if it does not return within
// timeout_s the process prints what it was waiting for and exits non-zero
// (the launcher then ends the job).
void ps_comm_watch_begin(ps_comm *c, const char *what);
void ps_comm_watch_end(ps_comm *c);

#if PS_COMM_WITH_NCCL
ps_status ps_comm_nccl_init(ps_comm *c);
void ps_comm_nccl_finalize(ps_comm *c);
ps_status ps_comm_nccl_allreduce(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t, ps_comm_op op);
ps_status ps_comm_nccl_allgather(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t);
ps_status ps_comm_nccl_allgatherv(ps_comm *c, const void *send, int64_t send_count, void *recv,
                                  const int64_t *recv_counts, ps_dtype t);
ps_status ps_comm_nccl_broadcast(ps_comm *c, void *buf, int64_t count, ps_dtype t, int root);
ps_status ps_comm_nccl_iallreduce(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t,
                                  ps_comm_op op, ps_comm_request *req);
ps_status ps_comm_nccl_test(ps_comm_request *req, bool *done);
void ps_comm_nccl_abort(ps_comm *c); // after a timeout: ncclCommAbort, later calls fail
// Gradient buckets: a second NCCL communicator and stream.
typedef struct ps_nccl_grad ps_nccl_grad;
ps_status ps_nccl_grad_create(ps_nccl_grad **out, ps_comm *c, int nbuckets);
void ps_nccl_grad_destroy(ps_nccl_grad *g);
ps_status ps_nccl_grad_start(ps_nccl_grad *g, int bucket, float *buf, int64_t count);
ps_status ps_nccl_grad_test(ps_nccl_grad *g, int bucket, bool *done);
void ps_nccl_grad_abort(ps_nccl_grad *g); // after a timeout: ncclCommAbort
#endif

#endif
