// C-indices against O(N^2) brute force on random data with heavy ties (exact
// pair counts, the jackknife variance from brute-force per-patient counts,
// Uno's weights from a brute-force censoring KM), strata, bootstrap replay.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_metrics.h"
#include "testutil.h"

// Letters: N patients.
typedef struct {
  double c, var;
  ps_cindex_counts k;
} brute_c;

// G(t-) of the censoring distribution, events leaving before censorings.
static double brute_gminus(int64_t n, const double *time, const uint8_t *event, double t) {
  double g = 1;
  for (int64_t a = 0; a < n; a++) { // each distinct time s < t once
    double s = time[a];
    if (s >= t) continue;
    int first = 1;
    for (int64_t b = 0; b < a; b++) first &= time[b] != s;
    if (!first) continue;
    double nr = 0, c = 0, d = 0;
    for (int64_t b = 0; b < n; b++) nr += time[b] >= s, c += time[b] == s && !event[b], d += time[b] == s && event[b];
    if (c > 0) g *= 1 - c / (nr - d);
  }
  return g;
}

static brute_c brute(int64_t n, const double *time, const uint8_t *event, const double *risk, const int32_t *strat,
                     int uno, double tau) {
  brute_c r = {0};
  double *im = calloc(3 * n, sizeof *im);
  int64_t ne = 0;
  for (int64_t i = 0; i < n; i++) ne += event[i];
  for (int64_t i = 0; i < n; i++) {
    if (!event[i]) continue;
    double w = 1;
    if (uno && ne >= 2) {
      double g = brute_gminus(n, time, event, time[i]);
      w = 1 / (g * g);
      if (tau > 0 && time[i] > tau) w = 0;
    }
    for (int64_t j = 0; j < n; j++) {
      if (j == i || (strat && strat[i] != strat[j])) continue;
      if (time[i] < time[j] || (time[i] == time[j] && !event[j])) {
        int k = risk[i] > risk[j] ? 0 : risk[i] < risk[j] ? 1 : 2;
        im[3 * i + k] += w, im[3 * j + k] += w;
        if (k == 0) r.k.concordant += w;
        else if (k == 1) r.k.discordant += w;
        else r.k.tied_risk += w;
      } else if (time[i] == time[j] && event[j] && i < j) {
        if (risk[i] == risk[j]) r.k.tied_both += w;
        else r.k.tied_time += w;
      }
    }
  }
  double np = r.k.concordant + r.k.discordant + r.k.tied_risk;
  r.c = (r.k.concordant + 0.5 * r.k.tied_risk) / np;
  double somer = (r.k.concordant - r.k.discordant) / np, v = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (im[3 * i] - im[3 * i + 1]) / np - somer / np * (im[3 * i] + im[3 * i + 1] + im[3 * i + 2]);
    v += d * d;
  }
  r.var = v / 4;
  free(im);
  return r;
}

static void compare(const char *name, const ps_cindex *c, const brute_c *b, int exact) {
  // Harrell: integer counts must agree exactly; Uno: weighted sums in a
  // different order, 1e-12 relative. C and var: 1e-12 relative.
  double tol = exact ? 0 : 1e-12;
  const double *x = &c->counts.concordant, *y = &b->k.concordant;
  for (int k = 0; k < 5; k++)
    TU_CHECK(fabs(x[k] - y[k]) <= tol * fmax(1, fabs(y[k])), "%s: count %d: %.17g vs brute %.17g", name, k, x[k], y[k]);
  TU_CHECK(fabs(c->c - b->c) <= 1e-12, "%s: C %.17g vs brute %.17g", name, c->c, b->c);
  TU_CHECK(fabs(c->var - b->var) <= 1e-12 * b->var, "%s: var %.17g vs brute %.17g", name, c->var, b->var);
  printf("  %-24s C=%.12f se=%.6g pairs c/d/tr/tt/tb=%.0f/%.0f/%.0f/%.0f/%.0f\n", name, c->c, c->se,
         c->counts.concordant, c->counts.discordant, c->counts.tied_risk, c->counts.tied_time, c->counts.tied_both);
}

int main(void) {
  uint64_t seed = ps_tu_seed("survival_metrics", 4242);
  enum { N = 400 };
  static double time[N], risk[N];
  static uint8_t event[N];
  static int32_t strat[N];
  for (int rep = 0; rep < 4; rep++) {
    ps_rng r = ps_rng_make(seed + rep, ps_rng_stream(PS_RNG_TEST, 3, 0, 0));
    int nt = rep == 3 ? 100000 : 6 + 5 * rep, nr = rep == 3 ? 1000000 : 4 + rep;
    for (int i = 0; i < N; i++) {
      time[i] = (double)ps_rng_below(&r, 4 * i, nt); // heavy ties in time (and time 0)
      event[i] = ps_rng_uniform(&r, 4 * i + 1) < 0.55f;
      risk[i] = (double)ps_rng_below(&r, 4 * i + 2, nr) - 0.5 * nr; // heavy ties in risk
      strat[i] = (int32_t)ps_rng_below(&r, 4 * i + 3, 3);
    }
    char name[64];
    ps_cindex c;
    brute_c b;
    TU_OK(ps_cindex_compute(PS_CINDEX_HARRELL, N, time, event, risk, NULL, 0, &c));
    b = brute(N, time, event, risk, NULL, 0, 0);
    snprintf(name, sizeof name, "harrell_rep%d", rep);
    compare(name, &c, &b, 1);
    TU_OK(ps_cindex_compute(PS_CINDEX_HARRELL, N, time, event, risk, strat, 0, &c));
    b = brute(N, time, event, risk, strat, 0, 0);
    snprintf(name, sizeof name, "harrell_strata_rep%d", rep);
    compare(name, &c, &b, 1);
    TU_OK(ps_cindex_compute(PS_CINDEX_UNO, N, time, event, risk, NULL, 0, &c));
    b = brute(N, time, event, risk, NULL, 1, 0);
    snprintf(name, sizeof name, "uno_rep%d", rep);
    compare(name, &c, &b, 0);
    double tau = 0.6 * nt;
    TU_OK(ps_cindex_compute(PS_CINDEX_UNO, N, time, event, risk, NULL, tau, &c));
    b = brute(N, time, event, risk, NULL, 1, tau);
    snprintf(name, sizeof name, "uno_tau_rep%d", rep);
    compare(name, &c, &b, 0);
  }
  // Input order does not matter; bootstrap replays bit for bit from its seed.
  {
    ps_cindex a, b2;
    TU_OK(ps_cindex_compute(PS_CINDEX_HARRELL, N, time, event, risk, NULL, 0, &a));
    static double t2[N], r2[N];
    static uint8_t e2[N];
    for (int i = 0; i < N; i++) t2[i] = time[N - 1 - i], r2[i] = risk[N - 1 - i], e2[i] = event[N - 1 - i];
    TU_OK(ps_cindex_compute(PS_CINDEX_HARRELL, N, t2, e2, r2, NULL, 0, &b2));
    TU_CHECK(a.c == b2.c && a.counts.concordant == b2.counts.concordant, "order changes C");
    double lo1, hi1, lo2, hi2;
    TU_OK(ps_cindex_bootstrap(PS_CINDEX_HARRELL, N, time, event, risk, 0, 50, 7, &lo1, &hi1));
    TU_OK(ps_cindex_bootstrap(PS_CINDEX_HARRELL, N, time, event, risk, 0, 50, 7, &lo2, &hi2));
    TU_CHECK(lo1 == lo2 && hi1 == hi2, "bootstrap does not replay");
    TU_CHECK(lo1 < a.c && a.c < hi1, "bootstrap interval [%g, %g] misses C %g", lo1, hi1, a.c);
    printf("  bootstrap(50) [%.6f, %.6f] around %.6f\n", lo1, hi1, a.c);
  }
  // Degenerate inputs: no events -> NaN C with zero counts; bad values rejected.
  {
    double t[3] = {1, 2, 3}, rr[3] = {1, 2, 3};
    uint8_t e[3] = {0, 0, 0};
    ps_cindex c;
    TU_OK(ps_cindex_compute(PS_CINDEX_HARRELL, 3, t, e, rr, NULL, 0, &c));
    TU_CHECK(isnan(c.c) && c.counts.concordant == 0, "no events");
    rr[1] = NAN;
    TU_CHECK(ps_cindex_compute(PS_CINDEX_HARRELL, 3, t, e, rr, NULL, 0, &c) == PS_ERR_DATA, "NaN risk accepted");
    t[0] = -1, rr[1] = 0;
    TU_CHECK(ps_cindex_compute(PS_CINDEX_HARRELL, 3, t, e, rr, NULL, 0, &c) == PS_ERR_DATA, "negative time");
  }
  return ps_tu_finish("survival_metrics");
}
