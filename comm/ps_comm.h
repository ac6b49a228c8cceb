// ps_comm: the communicator. MPI backend on host buffers, NCCL backend on
// device buffers (bootstrapped over MPI). Counts are ELEMENT counts.
// Never knows about layers; the gradient synchronizer works on a flat buffer.
#ifndef PS_COMM_H
#define PS_COMM_H

#include <stdbool.h>
#include <stdint.h>

#include "ps_status.h"
#include "ps_tensor.h" // ps_dtype, ps_device

typedef enum { PS_COMM_AUTO = 0, PS_COMM_MPI, PS_COMM_NCCL, PS_COMM_BACKEND_COUNT } ps_comm_backend;
typedef enum { PS_OP_SUM = 0, PS_OP_MAX, PS_OP_MIN, PS_OP_COUNT } ps_comm_op;
const char *ps_comm_backend_name(ps_comm_backend b);
ps_status ps_comm_backend_parse(const char *s, ps_comm_backend *out);

typedef struct ps_comm ps_comm; // opaque

// How in-flight gradient buckets (MPI backend) make progress during backward.
// THREAD: a progress thread (MPI_THREAD_MULTIPLE) tests them and does the
// ring's additions while the main thread computes or waits on a GPU; it
// sleeps when nothing is in flight. TEST: MPI_Test calls inside
// ps_grad_sync_ready() only (MPI_THREAD_FUNNELED). AUTO: THREAD, or TEST when
// an already-initialized MPI lacks MPI_THREAD_MULTIPLE. Chosen by the
// environment variable PANSURV_COMM_PROGRESS=auto|thread|test (default auto),
// read by ps_comm_init (the options struct stays three fields so existing
// positional initializers keep compiling warning-free).
typedef enum { PS_PROGRESS_AUTO = 0, PS_PROGRESS_THREAD, PS_PROGRESS_TEST, PS_PROGRESS_COUNT } ps_comm_progress;
const char *ps_comm_progress_name(ps_comm_progress p);
ps_status ps_comm_progress_parse(const char *s, ps_comm_progress *out);

// Whether this build has the backend (MPI always; NCCL when built with it).
bool ps_comm_backend_built(ps_comm_backend b);

typedef struct {
  // AUTO: NCCL when `device` is PS_CUDA and NCCL is built, else MPI. MPI with
  // device PS_CUDA binds the GPU but collectives take host buffers.
  ps_comm_backend backend;
  ps_device device;        // where collective buffers live
  int threads_per_rank;    // 0: from OMP_NUM_THREADS / SLURM_CPUS_PER_TASK / cores per local rank
} ps_comm_options;

// Initializes MPI if needed (singleton runs without a launcher work; an MPI
// initialized by someone else is reused), reads rank/size/local rank/local
// size/node count, cross-checks the local rank against SLURM_LOCALID /
// OMPI_COMM_WORLD_LOCAL_RANK, binds the local rank to a GPU when device ==
// PS_CUDA (ps_cuda_bind_local_rank: CUDA_VISIBLE_DEVICES and SLURM's
// --gpus-per-task respected; more ranks per node than GPUs is an error).
// ps_comm_init may be called again after MPI is up (e.g. an NCCL communicator
// beside an MPI one); only the first one finalizes MPI, so finalize it last. Collective: every rank fails together. Collectives of one ps_comm
// are issued in the same order on every rank. Blocking waits are bounded by a
// watchdog of PANSURV_COMM_TIMEOUT seconds (default 600, 0 = off): past it the
// rank exits with status 70 (or the polling call fails) instead of hanging.
ps_status ps_comm_init(ps_comm **out, int *argc, char ***argv, const ps_comm_options *opt);
// Finalizes MPI if ps_comm_init initialized it.
void ps_comm_finalize(ps_comm *c);
// Ends the job from any rank: MPI_Abort on the world (for fatal errors only).
void ps_comm_abort(ps_comm *c, int code);

int ps_comm_rank(const ps_comm *c);
int ps_comm_size(const ps_comm *c);
int ps_comm_local_rank(const ps_comm *c);
int ps_comm_local_size(const ps_comm *c);
int ps_comm_node_count(const ps_comm *c);
int ps_comm_threads(const ps_comm *c);
ps_comm_backend ps_comm_get_backend(const ps_comm *c);
ps_comm_progress ps_comm_get_progress(const ps_comm *c); // THREAD or TEST after init
// GPU bound to this rank (its local rank), -1 unless device == PS_CUDA.
int ps_comm_cuda_device(const ps_comm *c);
// Binds the local rank to a GPU after init, as ps_comm_init does with device
// PS_CUDA (MPI communicators: collectives keep taking host buffers). For a
// launcher that agrees on the device across ranks first. Collective; PS_CPU
// or an already bound communicator: nothing to do.
ps_status ps_comm_bind_device(ps_comm *c, ps_device dev);
// Pointer to this communicator's MPI_Comm (a dup of MPI_COMM_WORLD), for
// libraries that need one (parallel HDF5: H5Pset_fapl_mpio). Cast to MPI_Comm *.
void *ps_comm_mpi_world(ps_comm *c);
// NCCL: the cudaStream_t that produces collective inputs; the communication
// stream waits on an event recorded there (NULL: the legacy default stream).
void ps_comm_set_compute_stream(ps_comm *c, void *cuda_stream);

#define PS_IN_PLACE NULL
// send == PS_IN_PLACE reduces recv in place.
ps_status ps_comm_allreduce(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t, ps_comm_op op);
// recv holds size * count elements, rank r's at offset r * count.
// send == PS_IN_PLACE: this rank's slice is already at its offset in recv (also for allgatherv).
ps_status ps_comm_allgather(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t);
// recv_counts[r] elements from rank r, packed in rank order.
ps_status ps_comm_allgatherv(ps_comm *c, const void *send, int64_t send_count, void *recv,
                             const int64_t *recv_counts, ps_dtype t);
ps_status ps_comm_broadcast(ps_comm *c, void *buf, int64_t count, ps_dtype t, int root);
ps_status ps_comm_barrier(ps_comm *c);

// Status agreement before the next collective: every rank learns the worst
// (highest) status of all ranks in *global. Use it after any step that can
// fail on one rank so that the others do not block in a collective. Returns
// PS_OK unless the agreement itself failed; a rank that was fine but learns
// of a failure gets the message "rank R failed with '<status>'" (the failing
// rank keeps its own message). Pattern:
//   PS_TRY(ps_comm_agree(c, s, &g)); if (g != PS_OK) return g;
ps_status ps_comm_agree(ps_comm *c, ps_status local, ps_status *global);

// Asynchronous variants (at most 64 outstanding per communicator; no malloc).
typedef struct ps_comm_request ps_comm_request;
ps_status ps_comm_iallreduce(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t, ps_comm_op op,
                             ps_comm_request **req);
ps_status ps_comm_test(ps_comm_request *req, bool *done);
ps_status ps_comm_wait(ps_comm_request *req); // frees req

// ---- bucketed gradient synchronization -----------------------------------
// Buckets are slices of one flat gradient buffer, filled from the END of the
// buffer toward the start (backward visits layers in reverse). A bucket's
// all-reduce (sum) starts as soon as every gradient in it is final and runs on
// its own duplicated communicator, overlapping the rest of the backward.
// Bucket b covers elements [max(0, count - (b+1)*E), count - b*E) with
// E = bucket_bytes / 4, so bucket 0 (the last layers) fires first.
//
// MPI backend: an own ring all-reduce (reduce-scatter + all-gather over
// MPI_Isend/Irecv), progressed by the progress thread or by MPI_Test inside
// ready() and finish() (see ps_comm_progress). Deterministic: a bucket of n
// elements is cut into p chunks, chunk k = [k*n/p, (k+1)*n/p), and chunk k is
// summed as (((g_k + g_{k+1}) + g_{k+2}) + ...) over ranks k, k+1, ... mod p,
// whatever the timing; every rank receives the same bits. For p = 2 this
// equals MPI_Allreduce bit for bit (a + b == b + a in IEEE arithmetic).
// NCCL backend: ncclAllReduce per bucket on an own NCCL communicator and
// stream (its summation order is NCCL's: pin NCCL_ALGO/NCCL_PROTO to repeat).
#define PS_GRAD_SYNC_DEFAULT_BUCKET_BYTES (2 << 20) // on this CPU MPI_Allreduce is fastest at 1-4 MB
typedef struct ps_grad_sync ps_grad_sync;
typedef struct {
  double compute_s;   // time between begin and the last ready() call, minus progress work inside ready()
  double comm_wait_s; // time spent blocked in finish() plus progress work inside ready()
  double total_s;     // begin -> finish
  int buckets;
  int started_early;  // buckets whose all-reduce started before finish()
  int done_early;     // buckets complete before finish() was called
} ps_grad_sync_timing;

// grads: host (MPI) or device (NCCL) buffer of `count` floats, reduced in
// place. bucket_bytes <= 0 picks PS_GRAD_SYNC_DEFAULT_BUCKET_BYTES. Collective:
// every rank calls it with the same count and bucket_bytes.
ps_status ps_grad_sync_create(ps_grad_sync **out, ps_comm *c, float *grads, int64_t count, int64_t bucket_bytes);
void ps_grad_sync_destroy(ps_grad_sync *s);
ps_status ps_grad_sync_begin(ps_grad_sync *s);
// Gradients at element offsets [first_final, count) are final: start every
// bucket that lies entirely inside, and drive progress of those in flight.
ps_status ps_grad_sync_ready(ps_grad_sync *s, int64_t first_final);
// Starts what is left, waits for every bucket (bounded by the watchdog
// timeout: a dead peer is an error, not a hang) and reports the timing.
ps_status ps_grad_sync_finish(ps_grad_sync *s, ps_grad_sync_timing *timing);
// Introspection for tests and logs.
int ps_grad_sync_bucket_count(const ps_grad_sync *s);
void ps_grad_sync_bucket_range(const ps_grad_sync *s, int b, int64_t *first, int64_t *end);
bool ps_grad_sync_bucket_started(const ps_grad_sync *s, int b);
bool ps_grad_sync_bucket_done(const ps_grad_sync *s, int b);

#endif
