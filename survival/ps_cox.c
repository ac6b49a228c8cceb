// ps_cox: exact, stable Cox partial likelihood (see ps_cox.h for conventions).
// Letters: N patients, G (stratum, time) groups, M micro-batches.
#include "ps_cox.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const ties_names[] = {"efron", "breslow"};
_Static_assert(sizeof ties_names / sizeof ties_names[0] == PS_COX_TIES_COUNT, "ties name table");

const char *ps_cox_ties_name(ps_cox_ties t) { return (t >= 0 && t < PS_COX_TIES_COUNT) ? ties_names[t] : "?"; }

ps_status ps_cox_ties_parse(const char *s, ps_cox_ties *out) {
  for (int i = 0; i < PS_COX_TIES_COUNT; i++)
    if (s && !strcmp(s, ties_names[i])) {
      *out = (ps_cox_ties)i;
      return PS_OK;
    }
  PS_FAIL(PS_ERR_ARG, "ties '%s': expected efron or breslow", s ? s : "(null)");
}

// One sort record: the total key plus the input position.
typedef struct {
  int32_t stratum;
  int32_t pad_;
  double time;
  int64_t index;
  int64_t pos;
} cox_key;

struct ps_cox_work {
  int64_t capacity;
  cox_key *keys, *tmp; // (N) sort buffers
  int64_t *perm;       // (N) sorted position -> input position
  double *time;        // (N) sorted copies
  uint8_t *event;      // (N)
  int32_t *stratum;    // (N)
  int64_t *index;      // (N)
  double *eta;         // (N) sorted eta
  double *grad;        // (N) sorted gradient
  double *gmax;        // (G) running max of eta over the group's risk set
  double *ga;          // (G) sum_r 1/s_r (scaled by exp(gmax))
  double *gb;          // (G) sum_r (1 - r/d)/s_r
  int64_t *gend;       // (G) one past the group's last sorted position
};

ps_status ps_cox_work_create(ps_cox_work **out, int64_t capacity) {
  PS_REQUIRE(out && capacity >= 0, "ps_cox_work_create: bad arguments (capacity %lld)", (long long)capacity);
  ps_cox_work *w = calloc(1, sizeof *w);
  if (!w) PS_FAIL(PS_ERR_MEM, "ps_cox_work_create: out of memory");
  size_t n = (size_t)(capacity > 0 ? capacity : 1);
  w->capacity = capacity;
  w->keys = malloc(n * sizeof *w->keys);
  w->tmp = malloc(n * sizeof *w->tmp);
  w->perm = malloc(n * sizeof *w->perm);
  w->time = malloc(n * sizeof *w->time);
  w->event = malloc(n * sizeof *w->event);
  w->stratum = malloc(n * sizeof *w->stratum);
  w->index = malloc(n * sizeof *w->index);
  w->eta = malloc(n * sizeof *w->eta);
  w->grad = malloc(n * sizeof *w->grad);
  w->gmax = malloc(n * sizeof *w->gmax);
  w->ga = malloc(n * sizeof *w->ga);
  w->gb = malloc(n * sizeof *w->gb);
  w->gend = malloc(n * sizeof *w->gend);
  if (!w->keys || !w->tmp || !w->perm || !w->time || !w->event || !w->stratum || !w->index || !w->eta ||
      !w->grad || !w->gmax || !w->ga || !w->gb || !w->gend) {
    ps_cox_work_destroy(w);
    PS_FAIL(PS_ERR_MEM, "ps_cox_work_create: out of memory for %lld patients", (long long)capacity);
  }
  *out = w;
  return PS_OK;
}

void ps_cox_work_destroy(ps_cox_work *w) {
  if (!w) return;
  free(w->keys), free(w->tmp), free(w->perm), free(w->time), free(w->event), free(w->stratum);
  free(w->index), free(w->eta), free(w->grad), free(w->gmax), free(w->ga), free(w->gb), free(w->gend);
  free(w);
}

int64_t ps_cox_work_capacity(const ps_cox_work *w) { return w ? w->capacity : 0; }

ps_status ps_cox_batch_validate(const ps_cox_batch *b) {
  PS_REQUIRE(b && b->n >= 0 && (b->n == 0 || (b->time && b->event)), "cox batch: missing time/event arrays");
  for (int64_t i = 0; i < b->n; i++) {
    if (!isfinite(b->time[i]) || b->time[i] < 0)
      PS_FAIL(PS_ERR_DATA, "cox batch: patient %lld (index %lld) has time %g; expected a finite value >= 0",
              (long long)i, (long long)(b->index ? b->index[i] : i), b->time[i]);
    if (b->event[i] > 1)
      PS_FAIL(PS_ERR_DATA, "cox batch: patient %lld (index %lld) has event %d; expected 0 or 1", (long long)i,
              (long long)(b->index ? b->index[i] : i), (int)b->event[i]);
  }
  return PS_OK;
}

static inline int key_less(const cox_key *a, const cox_key *b) {
  if (a->stratum != b->stratum) return a->stratum < b->stratum;
  if (a->time != b->time) return a->time < b->time;
  if (a->index != b->index) return a->index < b->index;
  return a->pos < b->pos;
}

// Bottom-up merge sort of keys[0..n) using tmp; the result ends in w->keys.
static void sort_keys(ps_cox_work *w, int64_t n) {
  cox_key *src = w->keys, *dst = w->tmp;
  // Insertion-sort runs of 16 first: fewer passes over memory.
  const int64_t run = 16;
  for (int64_t lo = 0; lo < n; lo += run) {
    int64_t hi = lo + run < n ? lo + run : n;
    for (int64_t i = lo + 1; i < hi; i++) {
      cox_key k = src[i];
      int64_t j = i;
      while (j > lo && key_less(&k, &src[j - 1])) {
        src[j] = src[j - 1];
        j--;
      }
      src[j] = k;
    }
  }
  for (int64_t width = run; width < n; width *= 2) {
    for (int64_t lo = 0; lo < n; lo += 2 * width) {
      int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
      int64_t i = lo, j = mid, k = lo;
      while (i < mid && j < hi) dst[k++] = key_less(&src[j], &src[i]) ? src[j++] : src[i++];
      while (i < mid) dst[k++] = src[i++];
      while (j < hi) dst[k++] = src[j++];
    }
    cox_key *t = src;
    src = dst;
    dst = t;
  }
  if (src != w->keys) memcpy(w->keys, src, (size_t)n * sizeof *src);
}

ps_status ps_cox_sort(ps_cox_work *w, const ps_cox_batch *b, int64_t *perm) {
  PS_REQUIRE(w && b && perm, "ps_cox_sort: null argument");
  PS_REQUIRE(b->n <= w->capacity, "ps_cox_sort: %lld patients exceed the workspace capacity %lld", (long long)b->n,
             (long long)w->capacity);
  int64_t n = b->n;
  for (int64_t i = 0; i < n; i++) {
    cox_key *k = &w->keys[i];
    k->stratum = b->stratum ? b->stratum[i] : 0;
    k->pad_ = 0;
    k->time = b->time[i];
    k->index = b->index ? b->index[i] : i;
    k->pos = i;
  }
  sort_keys(w, n);
  for (int64_t i = 0; i < n; i++) {
    perm[i] = w->keys[i].pos;
    if (i > 0 && w->keys[i].index == w->keys[i - 1].index && w->keys[i].time == w->keys[i - 1].time &&
        w->keys[i].stratum == w->keys[i - 1].stratum)
      PS_FAIL(PS_ERR_ARG, "cox batch: global patient index %lld appears twice (positions %lld and %lld)",
              (long long)w->keys[i].index, (long long)w->keys[i - 1].pos, (long long)w->keys[i].pos);
  }
  return PS_OK;
}

ps_status ps_cox_loss_sorted(ps_cox_work *w, const ps_cox_batch *b, const double *eta, ps_cox_ties ties,
                             ps_cox_result *res, double *grad) {
  PS_REQUIRE(w && b && res && (b->n == 0 || eta), "ps_cox_loss_sorted: null argument");
  PS_REQUIRE(ties >= 0 && ties < PS_COX_TIES_COUNT, "ps_cox_loss_sorted: bad ties mode %d", (int)ties);
  PS_REQUIRE(b->n <= w->capacity, "ps_cox_loss_sorted: %lld patients exceed the workspace capacity %lld",
             (long long)b->n, (long long)w->capacity);
  const int64_t n = b->n;
  const double *time = b->time;
  const uint8_t *event = b->event;
  const int32_t *strat = b->stratum;
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(eta[i])) PS_FAIL(PS_ERR_NUMERIC, "cox loss: eta of patient %lld is %g", (long long)i, eta[i]);

  // Groups: maximal runs of equal (stratum, time).
  int64_t ng = 0;
  for (int64_t i = 0; i < n; i++) {
    int last = (i + 1 == n) || time[i + 1] != time[i] || (strat && strat[i + 1] != strat[i]);
    if (last) w->gend[ng++] = i + 1;
  }

  // Pass 1, backward in time within each stratum: running max M over the risk
  // set, scaled risk-set sum S = sum exp(eta - M), and per group
  // A = sum_r 1/s_r, B = sum_r (1 - r/d)/s_r (both scaled by exp(M)).
  double loglik = 0;
  int64_t events = 0;
  double M = -INFINITY, S = 0;
  for (int64_t g = ng - 1; g >= 0; g--) {
    int64_t lo = g ? w->gend[g - 1] : 0, hi = w->gend[g];
    if (g == ng - 1 || (strat && strat[hi] != strat[hi - 1])) M = -INFINITY, S = 0; // new stratum
    double mg = eta[lo];
    for (int64_t i = lo + 1; i < hi; i++) mg = eta[i] > mg ? eta[i] : mg;
    double Mn = mg > M ? mg : M;
    double sprev = (M == -INFINITY) ? 0 : S * exp(M - Mn);
    double C = 0, D = 0, sum_eta_d = 0;
    int64_t d = 0;
    for (int64_t i = lo; i < hi; i++) {
      double e = exp(eta[i] - Mn);
      if (event[i]) D += e, sum_eta_d += eta[i], d++;
      else C += e;
    }
    M = Mn;
    S = sprev + C + D;
    w->gmax[g] = M;
    double A = 0, B = 0;
    if (d > 0) {
      events += d;
      loglik += sum_eta_d;
      if (ties == PS_COX_BRESLOW || d == 1) {
        loglik -= (double)d * (M + log(S));
        A = B = (double)d / S;
      } else {
        double base = sprev + C; // S0 of the risk set without the tied deaths: no cancellation
        for (int64_t r = 0; r < d; r++) {
          double f = 1.0 - (double)r / (double)d;
          double s = base + f * D;
          loglik -= M + log(s);
          A += 1.0 / s;
          B += f / s;
        }
      }
    }
    w->ga[g] = A;
    w->gb[g] = B;
  }
  res->loglik = loglik;
  res->events = events;
  res->loss = events > 0 ? -loglik / (double)events : 0.0;
  if (!grad) return PS_OK;
  if (events == 0) {
    memset(grad, 0, (size_t)n * sizeof *grad);
    return PS_OK;
  }

  // Pass 2, forward: h_g = sum_{g' <= g} exp(M_g - M_g') A_g' (M_g is
  // non-increasing in time, so every factor is <= 1), then
  // dloglik/deta_k = delta_k - exp(eta_k - M_g) * (h_{g-1} e^{M_g - M_{g-1}} + B_g) for a death,
  //                  delta_k - exp(eta_k - M_g) * h_g                               otherwise.
  const double inv_e = 1.0 / (double)events;
  double h = 0, Mprev = 0;
  for (int64_t g = 0; g < ng; g++) {
    int64_t lo = g ? w->gend[g - 1] : 0, hi = w->gend[g];
    int first = (g == 0) || (strat && strat[lo] != strat[lo - 1]);
    double Mg = w->gmax[g];
    double hb = first ? 0 : h * exp(Mg - Mprev); // before this group
    h = hb + w->ga[g];
    double hd = hb + w->gb[g];
    for (int64_t i = lo; i < hi; i++) {
      double e = exp(eta[i] - Mg);
      double dl = event[i] ? 1.0 - e * hd : -e * h;
      grad[i] = -dl * inv_e;
    }
    Mprev = Mg;
  }
  return PS_OK;
}

// After ps_cox_sort and the event/eta gather: the rest of the key and the core.
static ps_status loss_gather(ps_cox_work *w, const ps_cox_batch *b, ps_cox_ties ties, ps_cox_result *res,
                             int want_grad) {
  int64_t n = b->n;
  for (int64_t s = 0; s < n; s++) {
    const cox_key *k = &w->keys[s];
    w->time[s] = k->time;
    w->stratum[s] = k->stratum;
    w->index[s] = k->index;
  }
  ps_cox_batch sb = {n, w->time, w->event, b->stratum ? w->stratum : NULL, w->index};
  return ps_cox_loss_sorted(w, &sb, w->eta, ties, res, want_grad ? w->grad : NULL);
}

ps_status ps_cox_loss(ps_cox_work *w, const ps_cox_batch *b, const double *eta, ps_cox_ties ties,
                      ps_cox_result *res, double *grad) {
  PS_REQUIRE(w && b && res && (b->n == 0 || eta), "ps_cox_loss: null argument");
  PS_REQUIRE(b->n <= w->capacity, "ps_cox_loss: %lld patients exceed the workspace capacity %lld",
             (long long)b->n, (long long)w->capacity);
  PS_TRY(ps_cox_batch_validate(b));
  PS_TRY(ps_cox_sort(w, b, w->perm));
  for (int64_t s = 0; s < b->n; s++) {
    int64_t p = w->perm[s];
    w->event[s] = b->event[p];
    w->eta[s] = eta[p];
  }
  PS_TRY(loss_gather(w, b, ties, res, grad != NULL));
  if (grad)
    for (int64_t s = 0; s < b->n; s++) grad[w->perm[s]] = w->grad[s];
  return PS_OK;
}

ps_status ps_cox_loss_f32(ps_cox_work *w, const ps_cox_batch *b, const float *eta, ps_cox_ties ties,
                          ps_cox_result *res, float *grad) {
  PS_REQUIRE(w && b && res && (b->n == 0 || eta), "ps_cox_loss_f32: null argument");
  PS_REQUIRE(b->n <= w->capacity, "ps_cox_loss_f32: %lld patients exceed the workspace capacity %lld",
             (long long)b->n, (long long)w->capacity);
  PS_TRY(ps_cox_batch_validate(b));
  PS_TRY(ps_cox_sort(w, b, w->perm));
  for (int64_t s = 0; s < b->n; s++) {
    int64_t p = w->perm[s];
    w->event[s] = b->event[p];
    w->eta[s] = (double)eta[p];
  }
  PS_TRY(loss_gather(w, b, ties, res, grad != NULL));
  if (grad)
    for (int64_t s = 0; s < b->n; s++) grad[w->perm[s]] = (float)w->grad[s];
  return PS_OK;
}

ps_status ps_cox_window(ps_cox_work *w, int n_micro, const ps_cox_batch *micro, const double *const *eta,
                        ps_cox_ties ties, ps_cox_result *res, double *const *grad) {
  PS_REQUIRE(w && res && n_micro >= 0 && (n_micro == 0 || (micro && eta)), "ps_cox_window: null argument");
  int64_t total = 0;
  int any_strata = 0;
  for (int m = 0; m < n_micro; m++) {
    PS_TRY(ps_cox_batch_validate(&micro[m]));
    PS_REQUIRE(micro[m].index, "ps_cox_window: micro-batch %d has no global patient index", m);
    total += micro[m].n;
    any_strata |= micro[m].stratum != NULL;
  }
  PS_REQUIRE(total <= w->capacity, "ps_cox_window: %lld patients exceed the workspace capacity %lld",
             (long long)total, (long long)w->capacity);
  // Keys straight from the micro-batches; pos encodes (micro-batch, row) as a
  // running offset so the scatter below can find each patient.
  int64_t off = 0;
  for (int m = 0; m < n_micro; m++) {
    for (int64_t i = 0; i < micro[m].n; i++) {
      cox_key *k = &w->keys[off + i];
      k->stratum = micro[m].stratum ? micro[m].stratum[i] : 0;
      k->pad_ = 0;
      k->time = micro[m].time[i];
      k->index = micro[m].index[i];
      k->pos = off + i;
    }
    off += micro[m].n;
  }
  sort_keys(w, total);
  for (int64_t s = 0; s < total; s++) {
    const cox_key *k = &w->keys[s];
    if (s > 0 && k->index == w->keys[s - 1].index && k->time == w->keys[s - 1].time &&
        k->stratum == w->keys[s - 1].stratum)
      PS_FAIL(PS_ERR_ARG, "ps_cox_window: global patient index %lld appears twice", (long long)k->index);
    // Locate (micro-batch, row) of the running offset.
    int64_t p = k->pos, m = 0, base = 0;
    while (p >= base + micro[m].n) base += micro[m++].n;
    w->perm[s] = p;
    w->time[s] = k->time;
    w->stratum[s] = k->stratum;
    w->index[s] = k->index;
    w->event[s] = micro[m].event[p - base];
    w->eta[s] = eta[m][p - base];
  }
  ps_cox_batch sb = {total, w->time, w->event, any_strata ? w->stratum : NULL, w->index};
  PS_TRY(ps_cox_loss_sorted(w, &sb, w->eta, ties, res, grad ? w->grad : NULL));
  if (grad)
    for (int64_t s = 0; s < total; s++) {
      int64_t p = w->perm[s], m = 0, base = 0;
      while (p >= base + micro[m].n) base += micro[m++].n;
      grad[m][p - base] = w->grad[s];
    }
  return PS_OK;
}
