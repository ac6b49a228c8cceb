// pansurv sim: a pan-cancer cohort with known ground truth (docs/simulator.md).
// Every random draw is keyed by (seed, what, patient[, gene/tile]) through ps_rng,
// so a patient's data never depends on how rows are split across ranks.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ps_data_internal.h"
#include "ps_rng.h"

// Latent factors per patient (all N(0, 1), independent):
//   Z_OM0, Z_OM1  seen only through RNA-seq      Z_SL0 nucleus density, Z_SL1 nucleus size (slides only)
//   Z_SHARED      RNA-seq programme + stain hue  Z_NUIS0, Z_NUIS1 RNA-seq structure without effect on survival
enum { Z_OM0, Z_OM1, Z_SL0, Z_SL1, Z_SHARED, Z_NUIS0, Z_NUIS1, Z_COUNT };
// Log-hazard coefficients (per SD of each factor; age per 10 years; stage per stage).
static const double BETA[Z_COUNT] = {0.55, 0.35, 0.55, 0.35, 0.35, 0.0, 0.0};
#define BETA_AGE 0.30
#define BETA_STAGE 0.35
#define WEIBULL_SHAPE 1.3
#define MEDIAN_DAYS 1200.0
#define COHORT_BASELINE_SD 0.5 // SD of log baseline hazard across cohorts
#define BACKGROUND_TILE_RATE 0.2
#define SIM_MAX_TILE 1024 // largest tile side
// Omics factors that load on genes.
static const int OMICS_Z[] = {Z_OM0, Z_OM1, Z_SHARED, Z_NUIS0, Z_NUIS1};
#define N_OMICS_Z 5

// Sub-streams of PS_RNG_SIM.
enum { SS_GLOBAL = 1, SS_PATIENT, SS_COUNTS, SS_TILE, SS_CENSOR };
#define GLOBAL_ID UINT64_MAX

ps_sim_options ps_sim_defaults(void) {
  return (ps_sim_options){.patients = 3000, .cohorts = 4, .sites = 12, .genes = 500, .tiles = 8, .tile_size = 32,
                          .censoring = 0.5, .missing = 0.1, .seed = 1};
}

typedef struct {
  double z[Z_COUNT];
  double age;   // years (may be missing)
  int stage;    // 1..4
  int sex;      // 0/1
  int cohort, site;
  bool present[PS_MOD_COUNT];
  bool age_missing, stage_missing;
  double eta;   // log relative hazard (without the cohort baseline)
  double t_event;
} patient_latent;

static ps_rng prng(const ps_sim_options *o, int sub, uint64_t a, uint64_t b) {
  return ps_rng_make(o->seed, ps_rng_stream(PS_RNG_SIM, (uint64_t)sub, a, b));
}

static double cohort_log_baseline(const ps_sim_options *o, int c) {
  ps_rng r = prng(o, SS_GLOBAL, GLOBAL_ID, 100);
  return COHORT_BASELINE_SD * ps_rng_normal(&r, (uint64_t)c);
}

static void draw_patient(const ps_sim_options *o, int64_t p, patient_latent *L) {
  ps_rng r = prng(o, SS_PATIENT, (uint64_t)p, 0);
  uint64_t k = 0;
  for (int i = 0; i < Z_COUNT; i++) L->z[i] = ps_rng_normal(&r, k++);
  L->cohort = (int)ps_rng_below(&r, 100, (uint64_t)o->cohorts);
  L->site = (int)ps_rng_below(&r, 101, (uint64_t)o->sites);
  double age = 60.0 + 10.0 * ps_rng_normal(&r, k++);
  L->age = age < 20 ? 20 : age > 90 ? 90 : age;
  L->stage = 1 + (int)ps_rng_below(&r, 102, 4);
  L->sex = ps_rng_uniform(&r, 400) < 0.5f;
  for (int m = 0; m < PS_MOD_COUNT; m++) L->present[m] = ps_rng_uniform(&r, 410 + (uint64_t)m) >= o->missing;
  if (!L->present[0] && !L->present[1] && !L->present[2]) L->present[PS_MOD_CLINICAL] = true; // nobody has nothing
  L->age_missing = ps_rng_uniform(&r, 420) < 0.5 * o->missing;
  L->stage_missing = ps_rng_uniform(&r, 421) < o->missing;
  double eta = BETA_AGE * (L->age - 60.0) / 10.0 + BETA_STAGE * (L->stage - 2.5);
  for (int i = 0; i < Z_COUNT; i++) eta += BETA[i] * L->z[i];
  L->eta = eta;
  // Weibull PH: S(t) = exp(-lambda_c t^k exp(eta)), lambda_c = ln2 / median^k * exp(cohort baseline).
  double lam = log(2.0) / pow(MEDIAN_DAYS, WEIBULL_SHAPE) * exp(cohort_log_baseline(o, L->cohort));
  double u = ps_rng_uniform_open_f64(&r, 300);
  L->t_event = pow(-log(u) / (lam * exp(eta)), 1.0 / WEIBULL_SHAPE);
}

// Exponential censoring rate mu so that P(C < T) over the cohort equals `target` (bisection on log mu).
static double calibrate_censoring(const ps_sim_options *o, const double *t_event, int64_t n) {
  if (o->censoring <= 0 || n == 0) return 0;
  ps_rng r = prng(o, SS_CENSOR, GLOBAL_ID, 0);
  double lo = -30, hi = 5;
  for (int it = 0; it < 80; it++) {
    double mid = 0.5 * (lo + hi), mu = exp(mid);
    int64_t cens = 0;
    for (int64_t p = 0; p < n; p++) cens += -log(ps_rng_uniform_open_f64(&r, (uint64_t)p)) / mu < t_event[p];
    if ((double)cens / (double)n < o->censoring) lo = mid;
    else hi = mid;
  }
  return exp(0.5 * (lo + hi));
}

// ---- RNA-seq ------------------------------------------------------------------------------------

typedef struct {
  int64_t g;
  float *base;    // (G) log mean expression
  float *load;    // (G, N_OMICS_Z) loadings (sparse)
  float *cohort;  // (cohorts, G) cohort-specific offsets
  float *site;    // (sites, G) batch effects
} omics_params;

static ps_status omics_params_make(omics_params *op, const ps_sim_options *o) {
  int64_t g = o->genes;
  op->g = g;
  op->base = ps_xcalloc((size_t)g, sizeof(float));
  op->load = ps_xcalloc((size_t)g * N_OMICS_Z, sizeof(float));
  op->cohort = ps_xcalloc((size_t)(o->cohorts * g), sizeof(float));
  op->site = ps_xcalloc((size_t)(o->sites * g), sizeof(float));
  if (!op->base || !op->load || !op->cohort || !op->site) PS_FAIL(PS_ERR_MEM, "sim: omics parameters");
  ps_rng r = prng(o, SS_GLOBAL, GLOBAL_ID, 1);
  for (int64_t j = 0; j < g; j++) {
    op->base[j] = (float)(1.2 * ps_rng_normal(&r, (uint64_t)j));
    for (int l = 0; l < N_OMICS_Z; l++) {
      uint64_t k = (uint64_t)(j * N_OMICS_Z + l);
      // 25% of genes load on each factor, with |w| around 0.6 on the log scale.
      bool on = ps_rng_uniform(&r, (1ull << 40) + k) < 0.25f;
      op->load[j * N_OMICS_Z + l] = on ? (float)(0.6 * ps_rng_normal(&r, (1ull << 41) + k)) : 0.0f;
    }
  }
  for (int64_t i = 0; i < o->cohorts * g; i++) op->cohort[i] = (float)(0.5 * ps_rng_normal(&r, (1ull << 42) + (uint64_t)i));
  for (int64_t i = 0; i < o->sites * g; i++) op->site[i] = (float)(0.25 * ps_rng_normal(&r, (1ull << 43) + (uint64_t)i));
  return PS_OK;
}

static void omics_params_free(omics_params *op) {
  free(op->base), free(op->load), free(op->cohort), free(op->site);
}

// Marsaglia-Tsang gamma(alpha >= 1, scale 1); each attempt uses its own counter block.
// Normals and uniforms come from two streams at index base + attempt (base = 64 * gene).
static double gamma_draw(const ps_rng *rn, const ps_rng *ru, uint64_t base, double alpha) {
  double d = alpha - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
  for (uint64_t a = 0; a < 64; a++) {
    double x = ps_rng_normal(rn, base + a), v = 1.0 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    double u = ps_rng_uniform_open_f64(ru, base + a);
    if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
  }
  return alpha; // practically unreachable (acceptance ~0.98 per attempt)
}

// Poisson: inversion below 30, normal approximation above (counts there are large anyway).
static double poisson_draw(const ps_rng *r, uint64_t idx, double lam) {
  if (lam < 30.0) {
    double u = ps_rng_uniform_open_f64(r, idx), p = exp(-lam), f = p;
    int k = 0;
    while (u > f && k < 200) {
      k++;
      p *= lam / k;
      f += p;
    }
    return k;
  }
  double x = floor(lam + sqrt(lam) * ps_rng_normal(r, idx) + 0.5);
  return x < 0 ? 0 : x;
}

#define NB_DISPERSION 0.15 // variance = mean + phi mean^2
#define LIB_SIZE 2.0e7

static void render_omics(const ps_sim_options *o, const omics_params *op, int64_t p, const patient_latent *L,
                         float *row, double *work /* (G) */) {
  int64_t g = op->g;
  // separate streams so library size, gamma and Poisson draws never share counter words
  ps_rng r = prng(o, SS_COUNTS, (uint64_t)p, 0), rg = prng(o, SS_COUNTS, (uint64_t)p, 1),
         rp = prng(o, SS_COUNTS, (uint64_t)p, 2), ru = prng(o, SS_COUNTS, (uint64_t)p, 3);
  double zmax = -1e300;
  for (int64_t j = 0; j < g; j++) {
    double m = op->base[j] + op->cohort[L->cohort * g + j] + op->site[L->site * g + j];
    for (int l = 0; l < N_OMICS_Z; l++) m += op->load[j * N_OMICS_Z + l] * L->z[OMICS_Z[l]];
    work[j] = m;
    if (m > zmax) zmax = m;
  }
  double sum = 0;
  for (int64_t j = 0; j < g; j++) sum += (work[j] = exp(work[j] - zmax));
  double lib = LIB_SIZE * exp(0.3 * ps_rng_normal(&r, 0)), total = 0;
  for (int64_t j = 0; j < g; j++) {
    double mean = lib * work[j] / sum;
    // negative binomial = Poisson(mean * Gamma(1/phi, phi))
    double lam = mean * NB_DISPERSION * gamma_draw(&rg, &ru, (uint64_t)j * 64, 1.0 / NB_DISPERSION);
    work[j] = poisson_draw(&rp, (uint64_t)j, lam);
    total += work[j];
  }
  for (int64_t j = 0; j < g; j++) row[j] = (float)log2(work[j] / (total > 0 ? total : 1) * 1e6 + 1.0);
}

// ---- tiles --------------------------------------------------------------------------------------

static inline uint32_t hash32(uint32_t x) {
  x ^= x >> 16, x *= 0x7feb352dU, x ^= x >> 15, x *= 0x846ca68bU, x ^= x >> 16;
  return x;
}

static inline uint8_t clamp_u8(double v) { return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)(v + 0.5); }

// One H&E-like tile, (S, S, 3) RGB: eosin background with fibres, hematoxylin nuclei whose density follows
// Z_SL0, size Z_SL1 and colour Z_SHARED; the site shifts the stain of the whole tile. Background tiles are
// mostly glass.
static void render_tile(const ps_sim_options *o, int64_t p, int j, const patient_latent *L, uint8_t *img) {
  int s = o->tile_size;
  ps_rng r = prng(o, SS_TILE, (uint64_t)p, (uint64_t)j);
  ps_rng rs = prng(o, SS_GLOBAL, GLOBAL_ID, 200 + (uint64_t)L->site);
  double site_shift[3];
  for (int ch = 0; ch < 3; ch++) site_shift[ch] = 10.0 * ps_rng_normal(&rs, (uint64_t)ch);
  bool background = ps_rng_uniform(&r, 0) < BACKGROUND_TILE_RATE;
  double bg[3] = {236, 178, 206}; // eosin-pink stroma
  if (background) bg[0] = 243, bg[1] = 238, bg[2] = 241;
  double nuc[3] = {92 + 22 * L->z[Z_SHARED], 48, 128 - 22 * L->z[Z_SHARED]}; // hue follows the shared factor
  uint32_t hseed = ps_rng_u32(&r, 1);
  // faint fibre texture in stroma: 10 sin(0.35 x + 0.21 y + phase), by the angle-sum rule (no sin per pixel)
  double sx[SIM_MAX_TILE], cx[SIM_MAX_TILE], phase = (double)(hseed & 0xFF);
  for (int x = 0; x < s; x++) sx[x] = sin(0.35 * x), cx[x] = cos(0.35 * x);
  for (int y = 0; y < s; y++) {
    double sy = sin(0.21 * y + phase), cy = cos(0.21 * y + phase);
    for (int x = 0; x < s; x++) {
      uint32_t h = hash32(hseed ^ (uint32_t)(y * s + x) * 0x9E3779B1u);
      double noise = (double)(h & 0xFF) / 255.0 - 0.5;
      double fibre = background ? 0 : 10.0 * (sx[x] * cy + cx[x] * sy);
      uint8_t *px = img + ((size_t)y * s + x) * 3;
      for (int ch = 0; ch < 3; ch++) px[ch] = clamp_u8(bg[ch] + fibre * (ch == 1 ? 1.0 : 0.5) + 12 * noise + site_shift[ch]);
    }
  }
  // density: ~14 nuclei per 32x32 at z = 0, area-scaled; size in tile units so the signal is resolution-free
  double area = (double)s * s / (32.0 * 32.0);
  double dens = background ? 0.5 : 14.0 * exp(0.55 * L->z[Z_SL0]);
  int count = (int)poisson_draw(&r, 2, dens * area);
  if (count > 400) count = 400;
  double radius = (double)s / 32.0 * 2.2 * exp(0.25 * L->z[Z_SL1]);
  for (int b = 0; b < count; b++) {
    uint64_t k = 64 + (uint64_t)b * 4; // after the words used above (u32 0..11)
    double cx = ps_rng_uniform(&r, k) * s, cy = ps_rng_uniform(&r, k + 1) * s;
    double rr = radius * (0.75 + 0.5 * ps_rng_uniform(&r, k + 2));
    double dark = 0.8 + 0.4 * ps_rng_uniform(&r, k + 3);
    int x0 = (int)floor(cx - rr - 1), x1 = (int)ceil(cx + rr + 1), y0 = (int)floor(cy - rr - 1),
        y1 = (int)ceil(cy + rr + 1);
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > s) x1 = s;
    if (y1 > s) y1 = s;
    for (int y = y0; y < y1; y++)
      for (int x = x0; x < x1; x++) {
        double dx = x + 0.5 - cx, dy = y + 0.5 - cy, d2 = (dx * dx + dy * dy) / (rr * rr);
        if (d2 >= 1.0) continue;
        double a = d2 < 0.6 ? 1.0 : (1.0 - d2) / 0.4; // soft edge
        uint8_t *px = img + ((size_t)y * s + x) * 3;
        for (int ch = 0; ch < 3; ch++)
          px[ch] = clamp_u8((1 - a) * px[ch] + a * (nuc[ch] * dark + site_shift[ch]));
      }
  }
}

// ---- the cohort ---------------------------------------------------------------------------------

ps_status ps_sim_generate(ps_cohort_data *d, const ps_sim_options *o, int64_t first, int64_t count) {
  PS_REQUIRE(o->patients >= 1 && o->cohorts >= 1 && o->sites >= 1 && o->genes >= 1 && o->tiles >= 1 &&
                 o->tile_size >= 8,
             "sim: need patients, cohorts, sites, genes, tiles >= 1 and tile size >= 8 (got N=%lld C=%d S=%d G=%lld "
             "K=%d P=%d)", (long long)o->patients, o->cohorts, o->sites, (long long)o->genes, o->tiles, o->tile_size);
  PS_REQUIRE(o->censoring >= 0 && o->censoring < 1, "sim: --censoring must be in [0, 1), got %g", o->censoring);
  PS_REQUIRE(o->missing >= 0 && o->missing < 1, "sim: --missing must be in [0, 1), got %g", o->missing);
  PS_REQUIRE(o->cohorts <= 99 && o->sites <= 9999 && o->tile_size <= SIM_MAX_TILE,
             "sim: at most 99 cohorts, 9999 sites and tiles of %d pixels", SIM_MAX_TILE);
  int64_t n = o->patients;
  int64_t c_cols = 3 + o->cohorts; // age, stage, sex, cohort one-hot
  patient_latent *lat = ps_xcalloc((size_t)n, sizeof *lat);
  double *tev = ps_xcalloc((size_t)n, sizeof(double));
  if (!lat || !tev) {
    free(lat), free(tev);
    PS_FAIL(PS_ERR_MEM, "sim: latent table for %lld patients", (long long)n);
  }
  int64_t n_slides = 0;
  for (int64_t p = 0; p < n; p++) {
    draw_patient(o, p, &lat[p]);
    tev[p] = lat[p].t_event;
    n_slides += lat[p].present[PS_MOD_SLIDES];
  }
  ps_status st = ps_cohort_data_alloc(d, n, o->genes, c_cols, PS_SLIDES_TILES, o->tile_size, 0, n_slides, o->cohorts,
                                      o->sites, true);
  if (st != PS_OK) {
    free(lat), free(tev);
    return st;
  }
  double mu = calibrate_censoring(o, tev, n);
  ps_rng rc = prng(o, SS_CENSOR, GLOBAL_ID, 0);
  int64_t slide = 0;
  for (int64_t p = 0; p < n; p++) {
    const patient_latent *L = &lat[p];
    snprintf(d->id[p], PS_DATA_ID_LEN, "SIM-%07lld", (long long)p);
    double cens = mu > 0 ? -log(ps_rng_uniform_open_f64(&rc, (uint64_t)p)) / mu : INFINITY;
    d->time[p] = L->t_event < cens ? L->t_event : cens;
    d->event[p] = L->t_event <= cens;
    d->cohort[p] = L->cohort;
    d->site[p] = L->site;
    d->omics_present[p] = L->present[PS_MOD_OMICS];
    d->clinical_present[p] = L->present[PS_MOD_CLINICAL];
    d->log_hazard[p] = L->eta + cohort_log_baseline(o, L->cohort);
    int64_t k = L->present[PS_MOD_SLIDES] ? o->tiles : 0;
    d->offset[p + 1] = d->offset[p] + k;
    if (k) {
      snprintf(d->slide_files[slide], PS_DATA_NAME_LEN, "sim-%07lld.svs", (long long)p);
      d->slide_dims[slide * 2] = 4LL * o->tile_size;
      d->slide_dims[slide * 2 + 1] = (int64_t)((o->tiles + 3) / 4) * o->tile_size;
      d->slide_mpp[slide] = 0.5;
      slide++;
    }
  }
  for (int c = 0; c < o->cohorts; c++) snprintf(d->cohort_names[c], PS_DATA_NAME_LEN, "SIM%02d", c + 1);
  for (int s = 0; s < o->sites; s++) snprintf(d->site_names[s], PS_DATA_NAME_LEN, "S%04d", s + 1);
  for (int64_t j = 0; j < o->genes; j++) snprintf(d->genes[j], PS_DATA_NAME_LEN, "GENE%05lld", (long long)j + 1);
  snprintf(d->clinical_names[0], PS_DATA_NAME_LEN, "age");
  snprintf(d->clinical_names[1], PS_DATA_NAME_LEN, "stage");
  snprintf(d->clinical_names[2], PS_DATA_NAME_LEN, "sex_male");
  for (int c = 0; c < o->cohorts; c++) snprintf(d->clinical_names[3 + c], PS_DATA_NAME_LEN, "type_SIM%02d", c + 1);

  st = ps_cohort_data_alloc_bulk(d, first, count);
  omics_params op = {0};
  double *work = ps_xcalloc((size_t)o->genes, sizeof(double));
  if (st == PS_OK && !work) st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "sim: work buffer");
  if (st == PS_OK) st = omics_params_make(&op, o);
  // slide index of each patient with slides (global numbering)
  int64_t slide_of_first = 0;
  for (int64_t p = 0; p < first; p++) slide_of_first += lat[p].present[PS_MOD_SLIDES];
  size_t tile_bytes = (size_t)o->tile_size * o->tile_size * 3;
  for (int64_t i = 0; st == PS_OK && i < count; i++) {
    int64_t p = first + i;
    const patient_latent *L = &lat[p];
    float *orow = d->omics + i * o->genes;
    if (L->present[PS_MOD_OMICS]) render_omics(o, &op, p, L, orow, work);
    float *crow = d->clinical + i * c_cols;
    if (L->present[PS_MOD_CLINICAL]) {
      crow[0] = L->age_missing ? NAN : (float)L->age;
      crow[1] = L->stage_missing ? NAN : (float)L->stage;
      crow[2] = (float)L->sex;
      for (int c = 0; c < o->cohorts; c++) crow[3 + c] = c == L->cohort ? 1.0f : 0.0f;
    } else {
      for (int64_t j = 0; j < c_cols; j++) crow[j] = NAN;
    }
    if (L->present[PS_MOD_SLIDES]) {
      for (int j = 0; j < o->tiles; j++) {
        int64_t t = d->offset[p] + j - d->bulk_t0;
        render_tile(o, p, j, L, d->tiles + (size_t)t * tile_bytes);
        d->coords[t * 3] = (int32_t)slide_of_first;
        d->coords[t * 3 + 1] = (j % 4) * o->tile_size;
        d->coords[t * 3 + 2] = (j / 4) * o->tile_size;
      }
      slide_of_first++;
    }
  }
  omics_params_free(&op);
  free(work);
  free(lat);
  free(tev);
  if (st != PS_OK) ps_cohort_data_free(d);
  return st;
}

ps_status ps_sim_variance_decomposition(const ps_sim_options *o, ps_sim_variance *v) {
  // Population variances of the terms of log_hazard (factors independent; age ~ N(60, 10) clipped to
  // [20, 90] is treated as unclipped: the clipping moves < 0.1% of the mass; stage uniform on 1..4 has
  // variance 1.25). Shared factor counts toward both omics and slides.
  double om = BETA[Z_OM0] * BETA[Z_OM0] + BETA[Z_OM1] * BETA[Z_OM1];
  double sl = BETA[Z_SL0] * BETA[Z_SL0] + BETA[Z_SL1] * BETA[Z_SL1];
  double sh = BETA[Z_SHARED] * BETA[Z_SHARED];
  double cl = BETA_AGE * BETA_AGE + BETA_STAGE * BETA_STAGE * 1.25;
  // cohort baselines: the realized between-cohort variance for this seed
  double mean = 0, var = 0;
  for (int c = 0; c < o->cohorts; c++) mean += cohort_log_baseline(o, c) / o->cohorts;
  for (int c = 0; c < o->cohorts; c++) {
    double dlt = cohort_log_baseline(o, c) - mean;
    var += dlt * dlt / o->cohorts;
  }
  v->omics_only = om;
  v->slides_only = sl;
  v->shared = sh;
  v->clinical = cl;
  v->cohort = var;
  v->total = om + sl + sh + cl + var;
  return PS_OK;
}
