// Bucketed gradient all-reduce overlapped with the backward pass.
// MPI: a deterministic ring all-reduce per bucket (see ps_comm.h) as a state
// machine over MPI_Isend/MPI_Irecv on a duplicated communicator. p ranks,
// bucket of n elements, p chunks; 2(p-1) steps: p-1 reduce-scatter steps then
// p-1 all-gather steps. Progress: either MPI_Test from ready()/finish() on the
// main thread (TEST), or a progress thread (THREAD) that owns every MPI call
// on the bucket communicator; the main thread only releases buckets to it
// (under a mutex) and waits for them in finish().
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps_comm_internal.h"

typedef enum { BUCKET_IDLE = 0, BUCKET_RUNNING, BUCKET_DONE } bucket_state;

typedef struct {
  int64_t first, end; // element range [first, end) of the gradient buffer
  _Atomic int state;  // bucket_state; written by whoever progresses it, read by the main thread
  int step;           // 0 .. 2(p-1)-1 while running
  MPI_Request req[2]; // recv, send of the current step
  float *scratch;     // (max chunk) incoming partial sums of the reduce-scatter
} bucket;

struct ps_grad_sync {
  ps_comm *c;
  MPI_Comm comm; // dup: buckets never interleave with collectives on c->world
  float *grads;  // (count)
  int64_t count;
  int64_t bucket_elems;
  int nbuckets;
  bucket *b;        // (nbuckets)
  float *scratch;   // one block for every bucket's scratch
  bool in_step;     // between begin and finish
  double t_begin, t_last_ready, progress_s;
  int started_early;
  // Progress thread (THREAD mode): everything below mu is guarded by it.
  bool threaded;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t wake;   // main -> thread: buckets released or stop
  pthread_cond_t moved;  // thread -> main: a bucket completed or failed
  int released;          // buckets 0..released-1 may start
  int64_t gen;           // step counter (begin())
  bool stop;
  ps_status err;         // the thread's failure, with its message
  char errmsg[1024];
  int64_t moves;         // completed steps, for the no-progress timeout
#if PS_COMM_WITH_NCCL
  ps_nccl_grad *nccl;
#endif
};

static inline int64_t chunk_lo(int64_t n, int p, int k) { return (int64_t)k * n / p; }
static inline int mod(int a, int p) { return ((a % p) + p) % p; }

// Posts the receive and send of bucket `k`'s current step.
static ps_status post_step(ps_grad_sync *s, int k) {
  bucket *bk = &s->b[k];
  int p = s->c->size, r = s->c->rank, step = bk->step;
  int64_t n = bk->end - bk->first;
  float *g = s->grads + bk->first;
  int left = mod(r - 1, p), right = mod(r + 1, p);
  int send_chunk, recv_chunk;
  float *recv_to;
  if (step < p - 1) { // reduce-scatter: partial sums arrive into scratch
    send_chunk = mod(r - step, p);
    recv_chunk = mod(r - step - 1, p);
    recv_to = bk->scratch;
  } else { // all-gather: final chunks arrive in place
    int a = step - (p - 1);
    send_chunk = mod(r + 1 - a, p);
    recv_chunk = mod(r - a, p);
    recv_to = g + chunk_lo(n, p, recv_chunk);
  }
  int64_t rlo = chunk_lo(n, p, recv_chunk), rn = chunk_lo(n, p, recv_chunk + 1) - rlo;
  int64_t slo = chunk_lo(n, p, send_chunk), sn = chunk_lo(n, p, send_chunk + 1) - slo;
  // One tag per bucket: steps of a bucket are ordered by MPI's non-overtaking rule.
  PS_MPI_CHECK(MPI_Irecv(recv_to, (int)rn, MPI_FLOAT, left, k, s->comm, &bk->req[0]));
  PS_MPI_CHECK(MPI_Isend(g + slo, (int)sn, MPI_FLOAT, right, k, s->comm, &bk->req[1]));
  return PS_OK;
}

// Completes the current step if both its messages are done, then posts the
// next; repeats while steps complete. *progressed says whether anything moved.
static ps_status advance(ps_grad_sync *s, int k, bool *progressed) {
  bucket *bk = &s->b[k];
  int p = s->c->size, r = s->c->rank;
  while (bk->state == BUCKET_RUNNING) {
    int flag = 0;
    PS_MPI_CHECK(MPI_Testall(2, bk->req, &flag, MPI_STATUSES_IGNORE));
    if (!flag) return PS_OK;
    *progressed = true;
    if (bk->step < p - 1) { // fixed order: partial (ranks k..r-1) + own
      int64_t n = bk->end - bk->first;
      int ch = mod(r - bk->step - 1, p);
      int64_t lo = chunk_lo(n, p, ch), m = chunk_lo(n, p, ch + 1) - lo;
      float *g = s->grads + bk->first + lo;
      const float *in = bk->scratch;
      for (int64_t i = 0; i < m; i++) g[i] = in[i] + g[i];
    }
    if (++bk->step == 2 * (p - 1)) {
      bk->state = BUCKET_DONE;
      return PS_OK;
    }
    PS_TRY(post_step(s, k));
  }
  return PS_OK;
}

// Adds which bucket and ring step failed to an MPI error.
static ps_status with_context(ps_status st, const ps_grad_sync *s, int k) {
  if (st == PS_OK) return st;
  return ps_error_wrap(st, "rank %d, gradient bucket %d [%lld, %lld), ring step %d of %d", s->c->rank, k,
                       (long long)s->b[k].first, (long long)s->b[k].end, s->b[k].step, 2 * (s->c->size - 1));
}

static ps_status start_bucket(ps_grad_sync *s, int k) {
  bucket *bk = &s->b[k];
#if PS_COMM_WITH_NCCL
  if (s->nccl) {
    PS_TRY(ps_nccl_grad_start(s->nccl, k, s->grads + bk->first, bk->end - bk->first));
    bk->state = BUCKET_RUNNING;
    return PS_OK;
  }
#endif
  if (s->c->size == 1 || bk->end == bk->first) {
    bk->state = BUCKET_DONE;
    return PS_OK;
  }
  bk->state = BUCKET_RUNNING;
  bk->step = 0;
  return with_context(post_step(s, k), s, k);
}

static ps_status progress(ps_grad_sync *s, bool *progressed) {
  for (int k = 0; k < s->nbuckets; k++) {
    if (s->b[k].state != BUCKET_RUNNING) continue;
#if PS_COMM_WITH_NCCL
    if (s->nccl) {
      bool done = false;
      PS_TRY(ps_nccl_grad_test(s->nccl, k, &done));
      if (done) {
        s->b[k].state = BUCKET_DONE;
        *progressed = true;
      }
      continue;
    }
#endif
    PS_TRY(with_context(advance(s, k, progressed), s, k));
  }
  return PS_OK;
}

static ps_status dup_comm(ps_comm *c, MPI_Comm *out) {
  PS_MPI_CHECK(MPI_Comm_dup(c->world, out));
  PS_MPI_CHECK(MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN));
  return PS_OK;
}

static int count_state(const ps_grad_sync *s, bucket_state st) {
  int n = 0;
  for (int k = 0; k < s->nbuckets; k++) n += s->b[k].state == (int)st;
  return n;
}

// The progress thread: starts released buckets in order and advances those
// in flight; sleeps on `wake` when nothing is in flight, polls every ~20 us
// while something is (leaving the cores to compute threads in between).
static void *progress_main(void *arg) {
  ps_grad_sync *s = arg;
  int posted = 0;
  int64_t gen = -1;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->stop) {
      if (gen != s->gen) gen = s->gen, posted = 0; // a new step: begin() reset the buckets
      if (s->err == PS_OK && (posted < s->released || count_state(s, BUCKET_RUNNING) > 0)) break;
      pthread_cond_wait(&s->wake, &s->mu);
    }
    if (s->stop) break;
    int rel = s->released;
    pthread_mutex_unlock(&s->mu);
    ps_status st = PS_OK;
    bool moved = false;
    while (st == PS_OK && posted < rel) {
      st = start_bucket(s, posted++);
      moved = true;
    }
    if (st == PS_OK) st = progress(s, &moved);
    pthread_mutex_lock(&s->mu);
    if (st != PS_OK) {
      s->err = st;
      snprintf(s->errmsg, sizeof s->errmsg, "%s", ps_error_message());
    }
    if (moved || st != PS_OK) {
      s->moves++;
      pthread_cond_broadcast(&s->moved);
    } else if (count_state(s, BUCKET_RUNNING) > 0) {
      pthread_mutex_unlock(&s->mu);
      struct timespec nap = {0, 20000};
      nanosleep(&nap, NULL);
      pthread_mutex_lock(&s->mu);
    }
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static ps_status thread_error(ps_grad_sync *s) {
  return ps_error_set(s->err, __FILE__, __LINE__, "gradient progress thread: %s", s->errmsg);
}

ps_status ps_grad_sync_create(ps_grad_sync **out, ps_comm *c, float *grads, int64_t count, int64_t bucket_bytes) {
  PS_REQUIRE(out && c, "grad_sync_create: out or communicator is NULL");
  PS_REQUIRE(count >= 0 && (count == 0 || grads), "grad_sync_create: %lld gradients at %p", (long long)count,
             (void *)grads);
  *out = NULL;
  if (bucket_bytes <= 0) bucket_bytes = PS_GRAD_SYNC_DEFAULT_BUCKET_BYTES;
  int64_t e = bucket_bytes / (int64_t)sizeof(float);
  PS_REQUIRE(e >= 1 && e <= (int64_t)1 << 30, "grad_sync_create: bucket of %lld bytes: expected 4 B .. 4 GiB",
             (long long)bucket_bytes);
  // Every rank must cut the same buckets, or the rings would pair mismatched slices.
  int64_t mine[2] = {count, e}, lo[2], hi[2];
  PS_MPI_CHECK(MPI_Allreduce(mine, lo, 2, MPI_INT64_T, MPI_MIN, c->world));
  PS_MPI_CHECK(MPI_Allreduce(mine, hi, 2, MPI_INT64_T, MPI_MAX, c->world));
  if (lo[0] != hi[0] || lo[1] != hi[1])
    PS_FAIL(PS_ERR_ARG, "grad_sync_create: ranks disagree on the gradient count (%lld..%lld) or bucket size "
            "(%lld..%lld floats); every rank must build the same model", (long long)lo[0], (long long)hi[0],
            (long long)lo[1], (long long)hi[1]);

  ps_grad_sync *s = calloc(1, sizeof *s);
  if (!s) PS_FAIL(PS_ERR_MEM, "grad_sync_create: allocating the synchronizer");
  s->c = c;
  s->grads = grads;
  s->count = count;
  s->bucket_elems = e;
  s->nbuckets = (int)((count + e - 1) / e);
  s->comm = MPI_COMM_NULL;
  ps_status st = PS_OK;
  s->b = calloc((size_t)(s->nbuckets > 0 ? s->nbuckets : 1), sizeof *s->b);
  if (!s->b) st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "grad_sync_create: %d buckets", s->nbuckets);
  int64_t scratch_total = 0;
  for (int k = 0; st == PS_OK && k < s->nbuckets; k++) {
    bucket *bk = &s->b[k];
    bk->end = count - (int64_t)k * e;
    bk->first = bk->end - e > 0 ? bk->end - e : 0;
    bk->req[0] = bk->req[1] = MPI_REQUEST_NULL;
    int64_t n = bk->end - bk->first;
    scratch_total += (n + c->size - 1) / c->size; // the largest chunk
  }
  if (st == PS_OK && c->backend == PS_COMM_MPI && c->size > 1) {
    s->scratch = malloc((size_t)(scratch_total > 0 ? scratch_total : 1) * sizeof(float));
    if (!s->scratch)
      st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "grad_sync_create: %lld floats of receive scratch",
                        (long long)scratch_total);
    int64_t off = 0;
    for (int k = 0; st == PS_OK && k < s->nbuckets; k++) {
      s->b[k].scratch = s->scratch + off;
      off += (s->b[k].end - s->b[k].first + c->size - 1) / c->size;
    }
  }
  if (st == PS_OK) {
    st = dup_comm(c, &s->comm);
  }
#if PS_COMM_WITH_NCCL
  if (st == PS_OK && c->backend == PS_COMM_NCCL) st = ps_nccl_grad_create(&s->nccl, c, s->nbuckets);
#endif
  if (st == PS_OK && c->backend == PS_COMM_MPI && c->progress == PS_PROGRESS_THREAD && c->size > 1) {
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->moved, NULL);
    unsigned long th = 0;
    if (ps_comm_thread_start(&th, progress_main, s) != 0) {
      pthread_cond_destroy(&s->moved);
      pthread_cond_destroy(&s->wake);
      pthread_mutex_destroy(&s->mu);
      st = ps_error_set(PS_ERR_INTERNAL, __FILE__, __LINE__, "grad_sync_create: cannot start the progress thread");
    } else {
      s->thread = (pthread_t)th;
      s->threaded = true;
    }
  }
  if (st != PS_OK) {
    ps_grad_sync_destroy(s);
    return st;
  }
  *out = s;
  return PS_OK;
}

void ps_grad_sync_destroy(ps_grad_sync *s) {
  if (!s) return;
  if (s->threaded) {
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_cond_destroy(&s->moved);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->mu);
  }
#if PS_COMM_WITH_NCCL
  ps_nccl_grad_destroy(s->nccl);
#endif
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    // Buckets still in flight (an aborted step): cancel nothing, just drop our handles.
    for (int k = 0; s->b && k < s->nbuckets; k++)
      for (int i = 0; i < 2; i++)
        if (s->b[k].req[i] != MPI_REQUEST_NULL) MPI_Request_free(&s->b[k].req[i]);
    if (s->comm != MPI_COMM_NULL) MPI_Comm_free(&s->comm);
  }
  free(s->scratch);
  free(s->b);
  free(s);
}

ps_status ps_grad_sync_begin(ps_grad_sync *s) {
  PS_REQUIRE(s, "grad_sync_begin: NULL");
  PS_REQUIRE(!s->in_step, "grad_sync_begin: the previous step was not finished");
  if (s->threaded) {
    pthread_mutex_lock(&s->mu);
    ps_status err = s->err;
    s->released = 0;
    s->gen++;
    pthread_mutex_unlock(&s->mu);
    if (err != PS_OK) return thread_error(s);
  }
  for (int k = 0; k < s->nbuckets; k++) {
    PS_REQUIRE(s->b[k].state != BUCKET_RUNNING, "grad_sync_begin: bucket %d still in flight", k);
    s->b[k].state = BUCKET_IDLE;
  }
  s->in_step = true;
  s->t_begin = s->t_last_ready = ps_comm_now();
  s->progress_s = 0;
  s->started_early = 0;
  return PS_OK;
}

ps_status ps_grad_sync_ready(ps_grad_sync *s, int64_t first_final) {
  PS_REQUIRE(s && s->in_step, "grad_sync_ready: called outside begin/finish");
  PS_REQUIRE(first_final >= 0 && first_final <= s->count, "grad_sync_ready: offset %lld outside [0, %lld]",
             (long long)first_final, (long long)s->count);
  double t0 = ps_comm_now();
  if (s->threaded) { // hand the complete buckets to the progress thread
    int k = 0;
    while (k < s->nbuckets && s->b[k].first >= first_final) k++;
    pthread_mutex_lock(&s->mu);
    if (k > s->released) {
      s->started_early += k - s->released;
      s->released = k;
      pthread_cond_signal(&s->wake);
    }
    ps_status err = s->err;
    pthread_mutex_unlock(&s->mu);
    double t1 = ps_comm_now();
    s->progress_s += t1 - t0;
    s->t_last_ready = t1;
    return err == PS_OK ? PS_OK : thread_error(s);
  }
  // Buckets are ordered from the end: start them in order while they are complete.
  for (int k = 0; k < s->nbuckets && s->b[k].first >= first_final; k++)
    if (s->b[k].state == BUCKET_IDLE) {
      PS_TRY(start_bucket(s, k));
      s->started_early++;
    }
  bool moved = false;
  PS_TRY(progress(s, &moved));
  double t1 = ps_comm_now();
  s->progress_s += t1 - t0;
  s->t_last_ready = t1;
  return PS_OK;
}

ps_status ps_grad_sync_finish(ps_grad_sync *s, ps_grad_sync_timing *timing) {
  PS_REQUIRE(s && s->in_step, "grad_sync_finish: called without begin");
  double t0 = ps_comm_now();
  int done_early = 0;
  for (int k = 0; k < s->nbuckets; k++) done_early += s->b[k].state == BUCKET_DONE;
  ps_comm *c = s->c;
  if (s->threaded) {
    pthread_mutex_lock(&s->mu);
    s->released = s->nbuckets;
    pthread_cond_signal(&s->wake);
    int64_t seen = s->moves;
    double last_move = ps_comm_now();
    while (s->err == PS_OK && count_state(s, BUCKET_DONE) < s->nbuckets) {
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_nsec += 100 * 1000 * 1000;
      if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
      pthread_cond_timedwait(&s->moved, &s->mu, &until);
      double now = ps_comm_now();
      if (s->moves != seen) seen = s->moves, last_move = now;
      else if (c->timeout_s > 0 && now - last_move > c->timeout_s) {
        int running = s->nbuckets - count_state(s, BUCKET_DONE);
        pthread_mutex_unlock(&s->mu);
        PS_FAIL(PS_ERR_MPI, "rank %d: gradient all-reduce made no progress for %.0f s (%d buckets in flight): a "
                "peer died or hangs", c->rank, c->timeout_s, running);
      }
    }
    ps_status err = s->err;
    pthread_mutex_unlock(&s->mu);
    if (err != PS_OK) return thread_error(s);
  }
  for (int k = 0; k < s->nbuckets; k++)
    if (s->b[k].state == BUCKET_IDLE) PS_TRY(start_bucket(s, k));
  double last_move = ps_comm_now();
  for (;;) {
    int running = 0;
    for (int k = 0; k < s->nbuckets; k++) running += s->b[k].state == BUCKET_RUNNING;
    if (!running) break;
    bool moved = false;
    PS_TRY(progress(s, &moved));
    double now = ps_comm_now();
    if (moved) last_move = now;
    else if (c->timeout_s > 0 && now - last_move > c->timeout_s) {
#if PS_COMM_WITH_NCCL
      ps_nccl_grad_abort(s->nccl);
#endif
      PS_FAIL(PS_ERR_MPI, "rank %d: gradient all-reduce made no progress for %.0f s (%d buckets in flight): a peer "
              "died or hangs", c->rank, c->timeout_s, running);
    } else sched_yield(); // ranks may share cores (mpi_yield_when_idle)
  }
  double t1 = ps_comm_now();
  s->in_step = false;
  if (timing) {
    timing->compute_s = s->t_last_ready - s->t_begin - s->progress_s;
    timing->comm_wait_s = (t1 - t0) + s->progress_s;
    timing->total_s = t1 - s->t_begin;
    timing->buckets = s->nbuckets;
    timing->started_early = s->started_early;
    timing->done_early = done_early;
  }
  return PS_OK;
}

int ps_grad_sync_bucket_count(const ps_grad_sync *s) { return s->nbuckets; }
void ps_grad_sync_bucket_range(const ps_grad_sync *s, int b, int64_t *first, int64_t *end) {
  *first = s->b[b].first;
  *end = s->b[b].end;
}
// THREAD mode: "started" means released to the progress thread (it posts the first messages asynchronously).
bool ps_grad_sync_bucket_started(const ps_grad_sync *s, int b) {
  if (s->threaded) {
    pthread_mutex_lock((pthread_mutex_t *)&s->mu);
    bool r = b < s->released;
    pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
    return r;
  }
  return s->b[b].state != BUCKET_IDLE;
}
bool ps_grad_sync_bucket_done(const ps_grad_sync *s, int b) { return s->b[b].state == BUCKET_DONE; }
