// Splits: k-fold stratified by cohort x event (each patient tests once, strata balanced), site-held-out,
// explicit CSV (names and folds, unknown ids, a patient in two splits), and the leakage assertion.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_data.h"
#include "testutil.h"

#define N 200

static char ids[N][PS_DATA_ID_LEN];
static double times[N];
static uint8_t events[N], present[N * PS_MOD_COUNT];
static int32_t cohorts[N], sites[N];

static ps_patients make(void) {
  for (int i = 0; i < N; i++) {
    snprintf(ids[i], PS_DATA_ID_LEN, "P%03d", i);
    times[i] = i, events[i] = (uint8_t)(i % 3 == 0), cohorts[i] = i % 4 == 3 ? 2 : i % 2, sites[i] = i % 5;
  }
  return (ps_patients){.n = N, .id = ids, .time = times, .event = events, .cohort = cohorts, .site = sites,
                       .present = present};
}

int main(void) {
  ps_patients p = make();
  const int k = 5;
  int tested[N] = {0};
  for (int f = 0; f < k; f++) {
    ps_split s;
    TU_OK(ps_split_kfold(&s, &p, k, f, 3));
    TU_OK(ps_split_check(&s, &p));
    int64_t nt = ps_split_count(&s, PS_SPLIT_TEST), nv = ps_split_count(&s, PS_SPLIT_VAL);
    TU_CHECK(nt >= N / k - 1 && nt <= N / k + 1 && nv >= N / k - 1 && nv <= N / k + 1, "fold sizes %lld %lld",
             (long long)nt, (long long)nv);
    // stratification: each (cohort, event) stratum's share in test is within one patient of stratum/k
    for (int c = 0; c < 3; c++)
      for (int e = 0; e < 2; e++) {
        int in = 0, all = 0;
        for (int i = 0; i < N; i++)
          if (cohorts[i] == c && events[i] == e) all++, in += s.part[i] == PS_SPLIT_TEST;
        TU_CHECK(abs(in * k - all) <= k, "stratum (%d,%d): %d of %d in test", c, e, in, all);
      }
    for (int i = 0; i < N; i++) tested[i] += s.part[i] == PS_SPLIT_TEST;
    ps_split_free(&s);
  }
  for (int i = 0; i < N; i++) TU_CHECK(tested[i] == 1, "patient %d tested %d times over the folds", i, tested[i]);
  // site-held-out
  ps_split s;
  int32_t held[] = {1, 3};
  TU_OK(ps_split_sites(&s, &p, held, 2, 0.2, 4));
  TU_OK(ps_split_check(&s, &p));
  for (int i = 0; i < N; i++) TU_CHECK((s.part[i] == PS_SPLIT_TEST) == (sites[i] == 1 || sites[i] == 3), "site %d", i);
  int64_t nv = ps_split_count(&s, PS_SPLIT_VAL);
  TU_CHECK(nv >= 120 / 5 - 1 && nv <= 120 / 5 + 1, "val %lld of the 120 non-held", (long long)nv);
  ps_split_free(&s);
  int32_t all_sites[] = {0, 1, 2, 3, 4};
  TU_CHECK(ps_split_sites(&s, &p, all_sites, 5, 0.2, 4) == PS_ERR_ARG, "holding out every site is an error");
  // CSV by names
  char path[64];
  snprintf(path, sizeof path, "data_split_%d.csv", (int)getpid());
  FILE *f = fopen(path, "w");
  fprintf(f, "bcr_patient_barcode,split\n");
  for (int i = 0; i < N; i += 2) fprintf(f, "%s,%s\n", ids[i], i % 10 == 0 ? "test" : i % 10 == 2 ? "val" : "train");
  fclose(f);
  TU_OK(ps_split_from_csv(&s, &p, path, 0));
  TU_OK(ps_split_check(&s, &p));
  TU_CHECK(s.part[0] == PS_SPLIT_TEST && s.part[2] == PS_SPLIT_VAL && s.part[4] == PS_SPLIT_TRAIN && s.part[1] == PS_SPLIT_NONE,
           "CSV parts");
  ps_split_free(&s);
  // CSV by folds
  f = fopen(path, "w");
  for (int i = 0; i < N; i++) fprintf(f, "%s\t%d\n", ids[i], i % 4);
  fclose(f);
  TU_OK(ps_split_from_csv(&s, &p, path, 2));
  TU_CHECK(s.part[2] == PS_SPLIT_TEST && s.part[3] == PS_SPLIT_VAL && s.part[0] == PS_SPLIT_TRAIN, "CSV folds");
  ps_split_free(&s);
  // errors: unknown id, a patient in two splits
  f = fopen(path, "w");
  fprintf(f, "P000,train\nNOPE,test\n");
  fclose(f);
  TU_CHECK(ps_split_from_csv(&s, &p, path, 0) == PS_ERR_DATA && strstr(ps_error_message(), "NOPE"), "unknown id: %s",
           ps_error_message());
  f = fopen(path, "w");
  fprintf(f, "P000,train\nP001,val\nP000,test\n");
  fclose(f);
  TU_CHECK(ps_split_from_csv(&s, &p, path, 0) == PS_ERR_DATA && strstr(ps_error_message(), "two splits"),
           "two splits: %s", ps_error_message());
  remove(path);
  // leakage: the same patient stored in two rows lands in two parts
  TU_OK(ps_split_kfold(&s, &p, k, 0, 3));
  int a = -1, b = -1;
  for (int i = 0; i < N && b < 0; i++)
    if (s.part[i] == PS_SPLIT_TRAIN && a < 0) a = i;
    else if (a >= 0 && s.part[i] == PS_SPLIT_TEST) b = i;
  memcpy(ids[b], ids[a], PS_DATA_ID_LEN);
  TU_CHECK(ps_split_check(&s, &p) == PS_ERR_DATA && strstr(ps_error_message(), "leakage"), "leakage: %s",
           ps_error_message());
  ps_split_free(&s);
  return ps_tu_finish("data_split");
}
