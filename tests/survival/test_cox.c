// Cox loss against an O(N^2) brute force in long double (Efron, Breslow,
// strata, heavy ties, times at 0), finite differences, |eta| = 1e3, no
// events, input-order invariance (bitwise) and exact window accumulation.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_cox.h"
#include "testutil.h"

// Letters: N patients.
typedef struct {
  int64_t n;
  double *time;     // (N)
  uint8_t *event;   // (N)
  int32_t *stratum; // (N)
  int64_t *index;   // (N)
  double *eta;      // (N)
} data;

static void make_data(data *d, int64_t n, int ntimes, int nstrata, double eta_scale, double pevent, uint64_t seed) {
  d->n = n;
  d->time = malloc(n * sizeof *d->time);
  d->event = malloc(n * sizeof *d->event);
  d->stratum = malloc(n * sizeof *d->stratum);
  d->index = malloc(n * sizeof *d->index);
  d->eta = malloc(n * sizeof *d->eta);
  ps_rng r = ps_rng_make(seed, ps_rng_stream(PS_RNG_TEST, 1, 0, 0));
  for (int64_t i = 0; i < n; i++) {
    d->time[i] = (double)ps_rng_below(&r, 4 * i, ntimes); // includes 0: deaths at day 0
    d->event[i] = ps_rng_uniform(&r, 4 * i + 1) < pevent;
    d->stratum[i] = (int32_t)ps_rng_below(&r, 4 * i + 2, nstrata);
    d->index[i] = 1000 + 7 * i;
    d->eta[i] = eta_scale * (2.0 * ps_rng_uniform_open_f64(&r, 4 * i + 3) - 1.0);
  }
}

static void free_data(data *d) { free(d->time), free(d->event), free(d->stratum), free(d->index), free(d->eta); }

// The textbook definition, O(N^2), in long double (exp(1000) fits).
static long double brute_loglik(const data *d, const double *eta, int use_strata, ps_cox_ties ties, int64_t *events) {
  long double ll = 0;
  *events = 0;
  for (int64_t i = 0; i < d->n; i++) {
    if (!d->event[i]) continue;
    (*events)++;
    // Handle each (stratum, time) group once: at its first death in input order.
    int first = 1;
    for (int64_t j = 0; j < i; j++)
      if (d->event[j] && d->time[j] == d->time[i] && (!use_strata || d->stratum[j] == d->stratum[i])) first = 0;
    if (!first) continue;
    long double risk = 0, dsum = 0, etasum = 0;
    int64_t dcount = 0;
    for (int64_t j = 0; j < d->n; j++) {
      if (use_strata && d->stratum[j] != d->stratum[i]) continue;
      if (d->time[j] >= d->time[i]) risk += expl((long double)eta[j]);
      if (d->time[j] == d->time[i] && d->event[j]) dsum += expl((long double)eta[j]), etasum += eta[j], dcount++;
    }
    ll += etasum;
    for (int64_t r = 0; r < dcount; r++) {
      long double den = ties == PS_COX_BRESLOW ? risk : risk - ((long double)r / dcount) * dsum;
      ll -= logl(den);
    }
  }
  return ll;
}

static int check_case(ps_cox_work *w, const char *name, int64_t n, int ntimes, int nstrata, double scale,
                      double pevent, uint64_t seed, ps_cox_ties ties, int fd) {
  data d;
  make_data(&d, n, ntimes, nstrata, scale, pevent, seed);
  int use_strata = nstrata > 1;
  ps_cox_batch b = {d.n, d.time, d.event, use_strata ? d.stratum : NULL, d.index};
  double *grad = malloc(n * sizeof *grad);
  ps_cox_result res;
  TU_OK(ps_cox_loss(w, &b, d.eta, ties, &res, grad));
  int64_t events;
  long double ll = brute_loglik(&d, d.eta, use_strata, ties, &events);
  double ref_loss = events ? (double)(-ll / events) : 0.0;
  // 1e-12: double accumulation over <= 1e3 terms of a loss of order 1-1e3.
  double rel = fabs(res.loss - ref_loss) / fmax(fabs(ref_loss), 1e-300);
  printf("  %-28s %-7s n=%-5lld events=%-4lld loss=%.15g brute=%.15g rel=%.2e\n", name, ps_cox_ties_name(ties),
         (long long)n, (long long)res.events, res.loss, ref_loss, rel);
  TU_CHECK(res.events == events, "%s: events %lld vs %lld", name, (long long)res.events, (long long)events);
  TU_CHECK(rel <= 1e-12 || (ref_loss == 0 && res.loss == 0), "%s: loss rel err %.3e", name, rel);
  for (int64_t i = 0; i < n; i++) TU_CHECK(isfinite(grad[i]), "%s: grad[%lld] = %g", name, (long long)i, grad[i]);
  if (fd) {
    // Central differences of the brute force; h = 1e-4 on eta of order 1:
    // truncation ~h^2 * third derivative ~ 1e-8, so 1e-6 relative norm.
    double *e2 = malloc(n * sizeof *e2), num = 0, den = 0;
    memcpy(e2, d.eta, n * sizeof *e2);
    const double h = 1e-4;
    for (int64_t i = 0; i < n; i++) {
      int64_t ev;
      e2[i] = d.eta[i] + h;
      long double lp = brute_loglik(&d, e2, use_strata, ties, &ev);
      e2[i] = d.eta[i] - h;
      long double lm = brute_loglik(&d, e2, use_strata, ties, &ev);
      e2[i] = d.eta[i];
      double g = ev ? (double)(-(lp - lm) / (2 * h) / ev) : 0.0;
      num += (g - grad[i]) * (g - grad[i]);
      den += g * g;
    }
    double grel = sqrt(num) / fmax(sqrt(den), 1e-300);
    printf("  %-28s gradient vs finite differences: rel=%.2e\n", name, grel);
    TU_CHECK(grel <= 1e-6, "%s: gradient rel err %.3e", name, grel);
    free(e2);
  }
  // Input order never changes a bit: reverse the patients.
  data r;
  make_data(&r, n, ntimes, nstrata, scale, pevent, seed);
  for (int64_t i = 0; i < n; i++) {
    int64_t j = n - 1 - i;
    r.time[i] = d.time[j], r.event[i] = d.event[j], r.stratum[i] = d.stratum[j], r.index[i] = d.index[j];
    r.eta[i] = d.eta[j];
  }
  ps_cox_batch rb = {r.n, r.time, r.event, use_strata ? r.stratum : NULL, r.index};
  double *rgrad = malloc(n * sizeof *rgrad);
  ps_cox_result rres;
  TU_OK(ps_cox_loss(w, &rb, r.eta, ties, &rres, rgrad));
  TU_CHECK(memcmp(&rres.loss, &res.loss, sizeof(double)) == 0, "%s: reversed input changes the loss", name);
  int same = 1;
  for (int64_t i = 0; i < n; i++) same &= memcmp(&rgrad[i], &grad[n - 1 - i], sizeof(double)) == 0;
  TU_CHECK(same, "%s: reversed input changes a gradient bit", name);
  // Window of 3 uneven micro-batches == the whole batch, bitwise.
  int64_t cut1 = n / 5, cut2 = n / 2;
  ps_cox_batch mb[3] = {{cut1, d.time, d.event, use_strata ? d.stratum : NULL, d.index},
                        {cut2 - cut1, d.time + cut1, d.event + cut1, use_strata ? d.stratum + cut1 : NULL,
                         d.index + cut1},
                        {n - cut2, d.time + cut2, d.event + cut2, use_strata ? d.stratum + cut2 : NULL,
                         d.index + cut2}};
  const double *me[3] = {d.eta, d.eta + cut1, d.eta + cut2};
  double *wgrad = malloc(n * sizeof *wgrad);
  double *mg[3] = {wgrad, wgrad + cut1, wgrad + cut2};
  ps_cox_result wres;
  TU_OK(ps_cox_window(w, 3, mb, me, ties, &wres, mg));
  TU_CHECK(memcmp(&wres.loss, &res.loss, sizeof(double)) == 0, "%s: window loss differs", name);
  TU_CHECK(memcmp(wgrad, grad, n * sizeof(double)) == 0, "%s: window gradient differs", name);
  free(wgrad), free(rgrad), free(grad);
  free_data(&r), free_data(&d);
  return 0;
}

int main(void) {
  uint64_t seed = ps_tu_seed("survival_cox", 20261122);
  ps_cox_work *w;
  TU_OK(ps_cox_work_create(&w, 4096));
  for (int t = 0; t < PS_COX_TIES_COUNT; t++) {
    ps_cox_ties ties = (ps_cox_ties)t;
    if (check_case(w, "heavy_ties", 300, 8, 1, 2.0, 0.6, seed, ties, 1)) return 1;
    if (check_case(w, "heavy_ties_strata", 300, 6, 4, 2.0, 0.7, seed + 1, ties, 1)) return 1;
    if (check_case(w, "few_ties", 400, 100000, 1, 1.0, 0.5, seed + 2, ties, 0)) return 1;
    if (check_case(w, "all_events_one_time", 50, 1, 1, 1.5, 1.0, seed + 3, ties, 1)) return 1;
    if (check_case(w, "eta_1e3", 400, 10, 3, 1000.0, 0.5, seed + 4, ties, 0)) return 1;
    if (check_case(w, "no_events", 100, 10, 2, 1.0, 0.0, seed + 5, ties, 0)) return 1;
  }
  // No events: loss exactly 0, gradient exactly 0.
  {
    data d;
    make_data(&d, 64, 5, 1, 1.0, 0.0, seed);
    ps_cox_batch b = {d.n, d.time, d.event, NULL, d.index};
    double g[64];
    ps_cox_result res;
    TU_OK(ps_cox_loss(w, &b, d.eta, PS_COX_EFRON, &res, g));
    TU_CHECK(res.loss == 0 && res.events == 0, "no events: loss %g", res.loss);
    for (int i = 0; i < 64; i++) TU_CHECK(g[i] == 0, "no events: grad[%d] = %g", i, g[i]);
    // Empty batch.
    ps_cox_batch e = {0, NULL, NULL, NULL, NULL};
    TU_OK(ps_cox_loss(w, &e, NULL, PS_COX_EFRON, &res, NULL));
    TU_CHECK(res.loss == 0, "empty batch");
    // Float interface equals the double one rounded.
    float ef[64], gf[64];
    for (int i = 0; i < 64; i++) d.eta[i] = ef[i] = (float)d.eta[i], d.event[i] = i % 3 == 0;
    TU_OK(ps_cox_loss(w, &b, d.eta, PS_COX_EFRON, &res, g));
    ps_cox_result rf;
    TU_OK(ps_cox_loss_f32(w, &b, ef, PS_COX_EFRON, &rf, gf));
    TU_CHECK(rf.loss == res.loss, "f32 loss");
    for (int i = 0; i < 64; i++) TU_CHECK(gf[i] == (float)g[i], "f32 grad %d", i);
    // Bad inputs: a duplicated index, a negative time, an event of 2, too many patients.
    d.index[5] = d.index[4], d.time[5] = d.time[4];
    TU_CHECK(ps_cox_loss(w, &b, d.eta, PS_COX_EFRON, &res, g) == PS_ERR_ARG, "duplicate index accepted");
    printf("  expected error: %s\n", ps_error_message());
    d.index[5] = 99999;
    d.time[7] = -1;
    TU_CHECK(ps_cox_loss(w, &b, d.eta, PS_COX_EFRON, &res, g) == PS_ERR_DATA, "negative time accepted");
    printf("  expected error: %s\n", ps_error_message());
    d.time[7] = 1;
    d.event[9] = 2;
    TU_CHECK(ps_cox_loss(w, &b, d.eta, PS_COX_EFRON, &res, g) == PS_ERR_DATA, "event 2 accepted");
    d.event[9] = 1;
    ps_cox_batch big = b;
    big.n = 5000;
    TU_CHECK(ps_cox_loss(w, &big, d.eta, PS_COX_EFRON, &res, g) == PS_ERR_ARG, "capacity not checked");
    ps_cox_ties t;
    TU_CHECK(ps_cox_ties_parse("exact", &t) == PS_ERR_ARG, "ties parse");
    free_data(&d);
  }
  ps_cox_work_destroy(w);
  return ps_tu_finish("survival_cox");
}
