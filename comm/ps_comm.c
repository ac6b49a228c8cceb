// ps_comm: MPI core. Initialization from any launcher (mpirun, srun
// --mpi=pmix, or none: a singleton), typed collectives, status agreement,
// asynchronous all-reduce and the watchdog. Thread level: MPI_THREAD_MULTIPLE
// when gradient buckets use the progress thread (it calls MPI beside the main
// thread), MPI_THREAD_FUNNELED when they are progressed by MPI_Test calls from
// ps_grad_sync_ready() (see ps_comm_progress).
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps_comm_internal.h"
#include "ps_cuda.h"

static const char *const backend_names[] = {"auto", "mpi", "nccl"};
_Static_assert(sizeof backend_names / sizeof backend_names[0] == PS_COMM_BACKEND_COUNT,
               "backend_names must cover every ps_comm_backend");

const char *ps_comm_backend_name(ps_comm_backend b) {
  return (b >= 0 && b < PS_COMM_BACKEND_COUNT) ? backend_names[b] : "unknown";
}

static const char *const progress_names[] = {"auto", "thread", "test"};
_Static_assert(sizeof progress_names / sizeof progress_names[0] == PS_PROGRESS_COUNT,
               "progress_names must cover every ps_comm_progress");

const char *ps_comm_progress_name(ps_comm_progress p) {
  return (p >= 0 && p < PS_PROGRESS_COUNT) ? progress_names[p] : "unknown";
}

ps_status ps_comm_progress_parse(const char *s, ps_comm_progress *out) {
  for (int p = 0; p < PS_PROGRESS_COUNT; p++)
    if (s && !strcmp(s, progress_names[p])) {
      *out = (ps_comm_progress)p;
      return PS_OK;
    }
  PS_FAIL(PS_ERR_ARG, "unknown progress mode '%s' (expected auto, thread or test)", s ? s : "(null)");
}

ps_status ps_comm_backend_parse(const char *s, ps_comm_backend *out) {
  for (int b = 0; b < PS_COMM_BACKEND_COUNT; b++)
    if (s && !strcmp(s, backend_names[b])) {
      *out = (ps_comm_backend)b;
      return PS_OK;
    }
  PS_FAIL(PS_ERR_ARG, "unknown communicator backend '%s' (expected auto, mpi or nccl)", s ? s : "(null)");
}

const char *ps_mpi_error_string(int code) {
  static _Thread_local char buf[MPI_MAX_ERROR_STRING + 32];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) snprintf(buf, sizeof buf, "MPI error code %d", code);
  return buf;
}

double ps_comm_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

MPI_Datatype ps_comm_mpi_type(ps_dtype t) {
  switch (t) {
  case PS_F32: return MPI_FLOAT;
  case PS_F64: return MPI_DOUBLE;
  case PS_I32: return MPI_INT32_T;
  case PS_I64: return MPI_INT64_T;
  case PS_U8: return MPI_UINT8_T;
  default: return MPI_DATATYPE_NULL;
  }
}

MPI_Op ps_comm_mpi_op(ps_comm_op op) {
  switch (op) {
  case PS_OP_SUM: return MPI_SUM;
  case PS_OP_MAX: return MPI_MAX;
  case PS_OP_MIN: return MPI_MIN;
  default: return MPI_OP_NULL;
  }
}

// ---- watchdog ---------------------------------------------------------------
// Open MPI's launcher already ends the job when a rank dies; the watchdog is
// the second line of defence for waits that never complete (e.g. a peer stuck
// outside MPI, or a launcher that does not notice a lost node).
static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *watchdog_main(void *arg) {
  ps_comm *c = arg;
  while (!atomic_load(&c->watch_stop)) {
    struct timespec nap = {0, 200 * 1000 * 1000};
    nanosleep(&nap, NULL);
    int64_t deadline = atomic_load(&c->watch_deadline_ns);
    if (deadline && now_ns() > deadline) {
      const char *what = atomic_load(&c->watch_what);
      fprintf(stderr,
              "pansurv comm: rank %d: %s did not complete within %.0f s (a peer died or hangs); exiting "
              "(set PANSURV_COMM_TIMEOUT to change the bound)\n",
              c->rank, what ? what : "a collective", c->timeout_s);
      fflush(stderr);
      _exit(70); // the launcher sees a rank exit without MPI_Finalize and ends the job
    }
  }
  return NULL;
}

void ps_comm_watch_begin(ps_comm *c, const char *what) {
  if (!c->watch_running) return;
  atomic_store(&c->watch_what, what);
  atomic_store(&c->watch_deadline_ns, now_ns() + (int64_t)(c->timeout_s * 1e9));
}

void ps_comm_watch_end(ps_comm *c) {
  if (c->watch_running) atomic_store(&c->watch_deadline_ns, 0);
}

_Static_assert(sizeof(pthread_t) <= sizeof(unsigned long), "pthread_t is stored in an unsigned long");

int ps_comm_thread_start(unsigned long *thread, void *(*fn)(void *), void *arg) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t th;
  int rc = pthread_create(&th, NULL, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc == 0) *thread = (unsigned long)th;
  return rc;
}

// ---- init ------------------------------------------------------------------
static int env_int(const char *name, int fallback) {
  const char *v = getenv(name);
  if (!v || !*v) return fallback;
  char *end = NULL;
  long x = strtol(v, &end, 10);
  return (end && *end == '\0' && x >= 0 && x <= INT_MAX) ? (int)x : -2; // -2: malformed
}

// Cores this rank may use: its affinity mask when the launcher bound it to
// fewer cores than the node has, else the node's cores shared among its ranks.
static int cores_per_rank(int local_size) {
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  if (online < 1) online = 1;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < online) return CPU_COUNT(&set);
  long per = online / local_size;
  return per > 0 ? (int)per : 1;
}

// Threads per rank: explicit option, else OMP_NUM_THREADS, else
// SLURM_CPUS_PER_TASK, else the cores this rank may run on shared among the
// ranks of its node (affinity masks are per rank when the launcher binds).
static ps_status resolve_threads(ps_comm *c, int requested) {
  if (requested > 0) {
    c->threads = requested;
    return PS_OK;
  }
  PS_REQUIRE(requested == 0, "threads_per_rank=%d: expected >= 0 (0 = automatic)", requested);
  const char *names[] = {"OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"};
  for (int i = 0; i < 2; i++) {
    int v = env_int(names[i], -1);
    PS_REQUIRE(v != -2 && v != 0, "%s='%s': expected a positive integer", names[i], getenv(names[i]));
    if (v > 0) {
      c->threads = v;
      return PS_OK;
    }
  }
  c->threads = cores_per_rank(c->local_size);
  return PS_OK;
}

static ps_status cross_check_local_rank(const ps_comm *c) {
  const char *names[] = {"SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"};
  for (int i = 0; i < 2; i++) {
    int v = env_int(names[i], -1);
    if (v == -1) continue;
    if (v == -2)
      PS_FAIL(PS_ERR_MPI, "%s='%s' is not a non-negative integer", names[i], getenv(names[i]));
    if (v != c->local_rank)
      PS_FAIL(PS_ERR_MPI,
              "rank %d: %s=%d but MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) gives local rank %d of %d; "
              "the launcher and MPI disagree about which ranks share a node (stale environment from an "
              "outer job, or a launcher/MPI mismatch: launch with 'srun --mpi=pmix' or 'mpirun')",
              c->rank, names[i], v, c->local_rank, c->local_size);
  }
  return PS_OK;
}

static ps_status init_mpi_state(ps_comm *c, int *argc, char ***argv, ps_comm_progress want) {
  int inited = 0, finalized = 0;
  PS_MPI_CHECK(MPI_Initialized(&inited));
  PS_MPI_CHECK(MPI_Finalized(&finalized));
  if (finalized) PS_FAIL(PS_ERR_MPI, "MPI was already finalized; ps_comm_init must run before MPI_Finalize");
  const char *env = getenv("PANSURV_COMM_PROGRESS");
  if (env && *env) PS_TRY(ps_comm_progress_parse(env, &want));
  PS_REQUIRE(want >= 0 && want < PS_PROGRESS_COUNT, "progress mode %d out of range", (int)want);
  int level = want == PS_PROGRESS_TEST ? MPI_THREAD_FUNNELED : MPI_THREAD_MULTIPLE;
  if (!inited) {
    PS_MPI_CHECK(MPI_Init_thread(argc, argv, level, &c->thread_level));
    c->we_initialized_mpi = true;
  } else {
    PS_MPI_CHECK(MPI_Query_thread(&c->thread_level));
  }
  if (c->thread_level < MPI_THREAD_FUNNELED)
    PS_FAIL(PS_ERR_MPI, "MPI provides thread level %d; pansurv needs MPI_THREAD_FUNNELED (%d): OpenMP threads run "
            "beside the MPI-calling main thread", c->thread_level, MPI_THREAD_FUNNELED);
  if (want == PS_PROGRESS_THREAD && c->thread_level < MPI_THREAD_MULTIPLE)
    PS_FAIL(PS_ERR_MPI, "progress mode 'thread' needs MPI_THREAD_MULTIPLE but MPI provides level %d; use "
            "PANSURV_COMM_PROGRESS=test or an MPI built with thread support", c->thread_level);
  c->progress = c->thread_level >= MPI_THREAD_MULTIPLE && want != PS_PROGRESS_TEST ? PS_PROGRESS_THREAD
                                                                                   : PS_PROGRESS_TEST;
  PS_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &c->world));
  PS_MPI_CHECK(MPI_Comm_set_errhandler(c->world, MPI_ERRORS_RETURN));
  PS_MPI_CHECK(MPI_Comm_rank(c->world, &c->rank));
  PS_MPI_CHECK(MPI_Comm_size(c->world, &c->size));
  PS_MPI_CHECK(MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &c->node));
  PS_MPI_CHECK(MPI_Comm_set_errhandler(c->node, MPI_ERRORS_RETURN));
  PS_MPI_CHECK(MPI_Comm_rank(c->node, &c->local_rank));
  PS_MPI_CHECK(MPI_Comm_size(c->node, &c->local_size));
  int leader = c->local_rank == 0;
  PS_MPI_CHECK(MPI_Allreduce(&leader, &c->nodes, 1, MPI_INT, MPI_SUM, c->world));
  return PS_OK;
}

// Local rank -> GPU (ps_cuda_pick_device): every rank of the node sees every GPU, or SLURM's
// --gpus-per-task gave each task its own; more ranks per node than GPUs otherwise is an error.
// Collective: every rank learns whether all succeeded.
static ps_status bind_cuda(ps_comm *c) {
  ps_status local = PS_OK, global = PS_OK;
  int dev = -1;
  if (ps_cuda_device_count() == 0)
    local = ps_error_set(PS_ERR_UNSUPPORTED, __FILE__, __LINE__, "rank %d (local %d): device cuda requested but no "
                         "GPU is visible", c->rank, c->local_rank);
  else if ((local = ps_cuda_bind_local_rank(c->local_rank, c->local_size, &dev)) == PS_OK)
    c->cuda_device = dev;
  else
    ps_error_wrap(local, "rank %d (local rank %d of %d on this node)", c->rank, c->local_rank, c->local_size);
  PS_TRY(ps_comm_agree(c, local, &global));
  return global;
}

static ps_status init_rest(ps_comm *c, const ps_comm_options *opt) {
  // Every rank checks, then all agree, so a mismatch on one node cannot leave the others blocked later.
  ps_status local = cross_check_local_rank(c), global = PS_OK;
  PS_TRY(ps_comm_agree(c, local, &global));
  if (global != PS_OK) return global;

  c->counts = calloc((size_t)c->size, sizeof *c->counts);
  c->displs = calloc((size_t)c->size, sizeof *c->displs);
  if (!c->counts || !c->displs) PS_FAIL(PS_ERR_MEM, "comm: allgatherv scratch for %d ranks", c->size);

  local = resolve_threads(c, opt ? opt->threads_per_rank : 0);
  PS_TRY(ps_comm_agree(c, local, &global));
  if (global != PS_OK) return global;

  c->device = opt ? opt->device : PS_CPU;
  ps_comm_backend want = opt ? opt->backend : PS_COMM_AUTO;
  PS_REQUIRE(want >= 0 && want < PS_COMM_BACKEND_COUNT, "comm backend %d out of range", (int)want);
  PS_REQUIRE(c->device >= 0 && c->device < PS_DEVICE_COUNT, "comm device %d out of range", (int)c->device);
  if (want == PS_COMM_AUTO) want = (c->device == PS_CUDA && PS_COMM_WITH_NCCL) ? PS_COMM_NCCL : PS_COMM_MPI;
  if (want == PS_COMM_NCCL && !PS_COMM_WITH_NCCL)
    PS_FAIL(PS_ERR_UNSUPPORTED, "comm backend nccl requested but this pansurv was built without NCCL "
            "(configure with -DPANSURV_NCCL=ON and a CUDA toolkit that has NCCL)");
  if (want == PS_COMM_NCCL && c->device != PS_CUDA)
    PS_FAIL(PS_ERR_ARG, "comm backend nccl needs device cuda (collective buffers on the GPU)");
  // MPI with device cuda: the GPU is bound, collectives take host buffers (the caller stages device data).
  c->backend = want;

  c->cuda_device = -1;
  if (c->device == PS_CUDA) PS_TRY(bind_cuda(c));
#if PS_COMM_WITH_NCCL
  if (c->backend == PS_COMM_NCCL) PS_TRY(ps_comm_nccl_init(c));
#endif
  return PS_OK;
}

ps_status ps_comm_init(ps_comm **out, int *argc, char ***argv, const ps_comm_options *opt) {
  PS_REQUIRE(out, "ps_comm_init: out is NULL");
  *out = NULL;
  ps_comm *c = calloc(1, sizeof *c);
  if (!c) PS_FAIL(PS_ERR_MEM, "comm: allocating the communicator");
  c->world = MPI_COMM_NULL;
  c->node = MPI_COMM_NULL;
  ps_status s = init_mpi_state(c, argc, argv, PS_PROGRESS_AUTO);
  if (s == PS_OK) {
    int t = env_int("PANSURV_COMM_TIMEOUT", 600);
    if (t < 0) s = ps_error_set(PS_ERR_CONFIG, __FILE__, __LINE__, "PANSURV_COMM_TIMEOUT='%s': expected seconds "
                                "(0 disables the watchdog)", getenv("PANSURV_COMM_TIMEOUT"));
    c->timeout_s = t;
  }
  if (s == PS_OK) s = init_rest(c, opt);
  if (s == PS_OK && c->timeout_s > 0) {
    if (ps_comm_thread_start(&c->watch_thread, watchdog_main, c) == 0) c->watch_running = true;
  }
  if (s != PS_OK) {
    ps_comm_finalize(c);
    return s;
  }
  *out = c;
  return PS_OK;
}

void ps_comm_finalize(ps_comm *c) {
  if (!c) return;
  if (c->watch_running) {
    atomic_store(&c->watch_stop, 1);
    pthread_join((pthread_t)c->watch_thread, NULL);
  }
#if PS_COMM_WITH_NCCL
  ps_comm_nccl_finalize(c);
#endif
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    if (c->node != MPI_COMM_NULL) MPI_Comm_free(&c->node);
    if (c->world != MPI_COMM_NULL) MPI_Comm_free(&c->world);
    if (c->we_initialized_mpi) MPI_Finalize();
  }
  free(c->counts);
  free(c->displs);
  free(c);
}

void ps_comm_abort(ps_comm *c, int code) {
  fflush(stdout);
  fflush(stderr);
  MPI_Abort(c && c->world != MPI_COMM_NULL ? c->world : MPI_COMM_WORLD, code ? code : 1);
  _exit(code ? code : 1); // MPI_Abort does not return; this is for a broken MPI
}

int ps_comm_rank(const ps_comm *c) { return c->rank; }
int ps_comm_size(const ps_comm *c) { return c->size; }
int ps_comm_local_rank(const ps_comm *c) { return c->local_rank; }
int ps_comm_local_size(const ps_comm *c) { return c->local_size; }
int ps_comm_node_count(const ps_comm *c) { return c->nodes; }
int ps_comm_threads(const ps_comm *c) { return c->threads; }
ps_comm_backend ps_comm_get_backend(const ps_comm *c) { return c->backend; }
ps_comm_progress ps_comm_get_progress(const ps_comm *c) { return c->progress; }
int ps_comm_cuda_device(const ps_comm *c) { return c->cuda_device; }

ps_status ps_comm_bind_device(ps_comm *c, ps_device dev) {
  PS_REQUIRE(c, "ps_comm_bind_device: communicator is NULL");
  PS_REQUIRE(dev >= 0 && dev < PS_DEVICE_COUNT, "ps_comm_bind_device: device %d out of range", (int)dev);
  if (dev != PS_CUDA || c->cuda_device >= 0) return PS_OK; // nothing to bind, or bound already
  PS_REQUIRE(c->backend == PS_COMM_MPI, "ps_comm_bind_device: only an MPI communicator binds after init");
  c->device = PS_CUDA;
  ps_status s = bind_cuda(c);
  if (s != PS_OK) c->device = PS_CPU;
  return s;
}
bool ps_comm_backend_built(ps_comm_backend b) {
  return b == PS_COMM_MPI || b == PS_COMM_AUTO || (b == PS_COMM_NCCL && PS_COMM_WITH_NCCL);
}
void *ps_comm_mpi_world(ps_comm *c) { return &c->world; }
void ps_comm_set_compute_stream(ps_comm *c, void *cuda_stream) { c->compute_stream = cuda_stream; }

// ---- collectives -----------------------------------------------------------
static ps_status check_args(const ps_comm *c, int64_t count, ps_dtype t, const char *what) {
  PS_REQUIRE(c, "%s: communicator is NULL", what);
  PS_REQUIRE(count >= 0, "%s: element count %lld is negative", what, (long long)count);
  PS_REQUIRE(t >= 0 && t < PS_DTYPE_COUNT, "%s: dtype %d out of range", what, (int)t);
  return PS_OK;
}

// MPI counts are int: large buffers go in slices of at most this many elements.
enum { PS_MPI_MAX_SLICE = 1 << 30 };

ps_status ps_comm_allreduce(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t, ps_comm_op op) {
  PS_TRY(check_args(c, count, t, "allreduce"));
  PS_REQUIRE(op >= 0 && op < PS_OP_COUNT, "allreduce: op %d out of range", (int)op);
  PS_REQUIRE(count == 0 || recv, "allreduce: recv is NULL for %lld elements", (long long)count);
#if PS_COMM_WITH_NCCL
  if (c->backend == PS_COMM_NCCL) return ps_comm_nccl_allreduce(c, send, recv, count, t, op);
#endif
  size_t es = ps_dtype_size(t);
  for (int64_t off = 0; off < count; off += PS_MPI_MAX_SLICE) {
    int n = (int)(count - off < PS_MPI_MAX_SLICE ? count - off : PS_MPI_MAX_SLICE);
    const void *s = send == PS_IN_PLACE ? MPI_IN_PLACE : (const char *)send + (size_t)off * es;
    PS_MPI_CHECK_WATCHED(c, MPI_Allreduce(s, (char *)recv + (size_t)off * es, n, ps_comm_mpi_type(t),
                                          ps_comm_mpi_op(op), c->world));
  }
  return PS_OK;
}

ps_status ps_comm_allgather(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t) {
  PS_TRY(check_args(c, count, t, "allgather"));
  PS_REQUIRE(count <= INT_MAX && count * c->size <= INT_MAX,
             "allgather: %lld elements per rank x %d ranks exceeds MPI's int counts", (long long)count, c->size);
#if PS_COMM_WITH_NCCL
  if (c->backend == PS_COMM_NCCL) return ps_comm_nccl_allgather(c, send, recv, count, t);
#endif
  const void *s = send == PS_IN_PLACE ? MPI_IN_PLACE : send;
  PS_MPI_CHECK_WATCHED(c, MPI_Allgather(s, (int)count, ps_comm_mpi_type(t), recv, (int)count, ps_comm_mpi_type(t),
                                        c->world));
  return PS_OK;
}

ps_status ps_comm_allgatherv(ps_comm *c, const void *send, int64_t send_count, void *recv, const int64_t *recv_counts,
                             ps_dtype t) {
  PS_TRY(check_args(c, send_count, t, "allgatherv"));
  PS_REQUIRE(recv_counts, "allgatherv: recv_counts is NULL");
  PS_REQUIRE(recv_counts[c->rank] == send_count,
             "allgatherv: rank %d sends %lld elements but recv_counts[%d] = %lld", c->rank, (long long)send_count,
             c->rank, (long long)recv_counts[c->rank]);
  int64_t off = 0;
  for (int r = 0; r < c->size; r++) {
    PS_REQUIRE(recv_counts[r] >= 0, "allgatherv: recv_counts[%d] = %lld is negative", r, (long long)recv_counts[r]);
    PS_REQUIRE(off + recv_counts[r] <= INT_MAX, "allgatherv: %lld total elements exceed MPI's int displacements",
               (long long)(off + recv_counts[r]));
    c->counts[r] = (int)recv_counts[r];
    c->displs[r] = (int)off;
    off += recv_counts[r];
  }
#if PS_COMM_WITH_NCCL
  if (c->backend == PS_COMM_NCCL) return ps_comm_nccl_allgatherv(c, send, send_count, recv, recv_counts, t);
#endif
  const void *s = send == PS_IN_PLACE ? MPI_IN_PLACE : send;
  PS_MPI_CHECK_WATCHED(c, MPI_Allgatherv(s, (int)send_count, ps_comm_mpi_type(t), recv, c->counts, c->displs,
                                         ps_comm_mpi_type(t), c->world));
  return PS_OK;
}

ps_status ps_comm_broadcast(ps_comm *c, void *buf, int64_t count, ps_dtype t, int root) {
  PS_TRY(check_args(c, count, t, "broadcast"));
  PS_REQUIRE(root >= 0 && root < c->size, "broadcast: root %d outside [0, %d)", root, c->size);
#if PS_COMM_WITH_NCCL
  if (c->backend == PS_COMM_NCCL) return ps_comm_nccl_broadcast(c, buf, count, t, root);
#endif
  size_t es = ps_dtype_size(t);
  for (int64_t off = 0; off < count; off += PS_MPI_MAX_SLICE) {
    int n = (int)(count - off < PS_MPI_MAX_SLICE ? count - off : PS_MPI_MAX_SLICE);
    PS_MPI_CHECK_WATCHED(c, MPI_Bcast((char *)buf + (size_t)off * es, n, ps_comm_mpi_type(t), root, c->world));
  }
  return PS_OK;
}

ps_status ps_comm_barrier(ps_comm *c) {
  PS_REQUIRE(c, "barrier: communicator is NULL");
  PS_MPI_CHECK_WATCHED(c, MPI_Barrier(c->world));
  return PS_OK;
}

ps_status ps_comm_agree(ps_comm *c, ps_status local, ps_status *global) {
  PS_REQUIRE(c && global, "agree: communicator or result is NULL");
  // MAXLOC: the worst status and the lowest rank that reported it.
  struct { int status, rank; } in = {(int)local, c->rank}, res;
  PS_MPI_CHECK_WATCHED(c, MPI_Allreduce(&in, &res, 1, MPI_2INT, MPI_MAXLOC, c->world));
  *global = (ps_status)res.status;
  // A rank that failed keeps its own message; the others learn who failed.
  if (res.status != PS_OK && local == PS_OK)
    ps_error_set(*global, __FILE__, __LINE__, "rank %d failed with '%s' (its own message is in its log)", res.rank,
                 ps_status_name(*global));
  return PS_OK;
}

// ---- asynchronous ------------------------------------------------------------
static ps_status take_request(ps_comm *c, ps_comm_request **out) {
  for (int i = 0; i < PS_COMM_MAX_REQUESTS; i++)
    if (!c->requests[i].used) {
      ps_comm_request *q = &c->requests[i];
      memset(q, 0, sizeof *q);
      q->c = c;
      q->used = true;
      q->mpi = MPI_REQUEST_NULL;
      *out = q;
      return PS_OK;
    }
  PS_FAIL(PS_ERR_INTERNAL, "comm: more than %d asynchronous requests outstanding (each needs ps_comm_wait)",
          PS_COMM_MAX_REQUESTS);
}

ps_status ps_comm_iallreduce(ps_comm *c, const void *send, void *recv, int64_t count, ps_dtype t, ps_comm_op op,
                             ps_comm_request **req) {
  PS_TRY(check_args(c, count, t, "iallreduce"));
  PS_REQUIRE(op >= 0 && op < PS_OP_COUNT, "iallreduce: op %d out of range", (int)op);
  PS_REQUIRE(req, "iallreduce: req is NULL");
  PS_REQUIRE(count <= INT_MAX, "iallreduce: %lld elements exceed MPI's int count", (long long)count);
  ps_comm_request *q = NULL;
  PS_TRY(take_request(c, &q));
#if PS_COMM_WITH_NCCL
  if (c->backend == PS_COMM_NCCL) {
    q->is_nccl = true;
    ps_status s = ps_comm_nccl_iallreduce(c, send, recv, count, t, op, q);
    if (s != PS_OK) q->used = false;
    else *req = q;
    return s;
  }
#endif
  const void *s = send == PS_IN_PLACE ? MPI_IN_PLACE : send;
  q->used = false; // until the call succeeded
  PS_MPI_CHECK(MPI_Iallreduce(s, recv, (int)count, ps_comm_mpi_type(t), ps_comm_mpi_op(op), c->world, &q->mpi));
  q->used = true;
  *req = q;
  return PS_OK;
}

ps_status ps_comm_test(ps_comm_request *req, bool *done) {
  PS_REQUIRE(req && req->used && done, "comm_test: request is NULL or already waited on");
#if PS_COMM_WITH_NCCL
  if (req->is_nccl) return ps_comm_nccl_test(req, done);
#endif
  int flag = 0;
  PS_MPI_CHECK(MPI_Test(&req->mpi, &flag, MPI_STATUS_IGNORE));
  *done = flag != 0;
  return PS_OK;
}

ps_status ps_comm_wait(ps_comm_request *req) {
  PS_REQUIRE(req && req->used, "comm_wait: request is NULL or already waited on");
  ps_comm *c = req->c;
  // Poll rather than block so the watchdog bound also covers NCCL (which has no MPI request).
  bool done = false;
  double t0 = ps_comm_now();
  ps_status s = PS_OK;
  while (s == PS_OK && !done) {
    s = ps_comm_test(req, &done);
    if (s == PS_OK && !done && c->timeout_s > 0 && ps_comm_now() - t0 > c->timeout_s) {
#if PS_COMM_WITH_NCCL
      if (req->is_nccl) ps_comm_nccl_abort(c);
#endif
      s = ps_error_set(PS_ERR_MPI, __FILE__, __LINE__, "rank %d: asynchronous all-reduce did not complete within "
                       "%.0f s (a peer died or hangs)", c->rank, c->timeout_s);
    }
    if (s == PS_OK && !done) sched_yield();
  }
  req->used = false;
  return s;
}
