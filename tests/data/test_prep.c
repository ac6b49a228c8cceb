// pansurv prep on real inputs made here: a TCGA-CDR-style clinical TSV with missing tokens, duplicates
// and rows without an endpoint; an RNA-seq matrix in both orientations (plain TSV and gzip CSV) with
// normal samples, duplicate aliquots, a blood cancer (sample type 03) and an unmatched sample;
// pyramidal tiled TIFFs written by vips from drawn images (tissue disk on glass) read through OpenSlide;
// CLAM feature files. Checks the report, every value, tissue detection and the per-slide cap.
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "ps_data.h"
#include "ps_prep.h"
#include "testutil.h"

static char dir[256];

static void write_file(const char *name, const char *text) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  fputs(text, f);
  fclose(f);
}

static const char *CLIN =
    "bcr_patient_barcode\ttype\tage_at_initial_pathologic_diagnosis\tgender\tajcc_pathologic_tumor_stage\tOS\tOS.time\tDSS\tDSS.time\n"
    "TCGA-AA-0001\tBRCA\t50\tFEMALE\tStage I\t1\t100\t1\t100\n"
    "TCGA-AA-0002\tBRCA\t[Not Available]\tFEMALE\tStage II\t0\t200\t0\t200\n"
    "TCGA-BB-0003\tBRCA\t61\tMALE\t[Discrepancy]\t1\t300\t[Not Available]\t\n"
    "TCGA-BB-0004\tLAML\t70\tMALE\t[Not Applicable]\t0\t400\t0\t400\n"
    "TCGA-CC-0005\tLAML\t45\tFEMALE\tNA\t1\t#N/A\t1\t10\n"
    "TCGA-CC-0006\tLAML\t33\t[Unknown]\tStage I\t0\t600\t0\t600\n"
    "TCGA-AA-0001\tBRCA\t99\tFEMALE\tStage II\t0\t999\t0\t999\n";

// samples x 4 genes (counts)
static const char *SAMPLES[] = {"TCGA-AA-0001-01A-11R-A000-07", "TCGA-AA-0001-11A-11R-A000-07",
                                "TCGA-AA-0002-01B-11R-A000-07", "TCGA-AA-0002-01A-11R-A000-07",
                                "TCGA-BB-0004-03A-11R-A000-07", "TCGA-BB-0004-01A-11R-A000-07",
                                "TCGA-ZZ-9999-01A-11R-A000-07", "TCGA-CC-0006-03A-11R-A000-07"};
#define NS 8
#define NG 4
static double count_of(int s, int g) { return 10.0 * (s + 1) + 3.0 * g * g; }

static void write_rna(void) {
  char p[512];
  snprintf(p, sizeof p, "%s/rna_genes_rows.tsv", dir);
  FILE *f = fopen(p, "w");
  fprintf(f, "gene_id");
  for (int s = 0; s < NS; s++) fprintf(f, "\t%s", SAMPLES[s]);
  fprintf(f, "\n");
  for (int g = 0; g < NG; g++) {
    fprintf(f, "G%d", g);
    for (int s = 0; s < NS; s++) fprintf(f, "\t%g", count_of(s, g));
    fprintf(f, "\n");
  }
  fclose(f);
  snprintf(p, sizeof p, "%s/rna_samples_rows.csv.gz", dir);
  gzFile z = gzopen(p, "wb");
  gzprintf(z, "sample");
  for (int g = 0; g < NG; g++) gzprintf(z, ",G%d", g);
  gzprintf(z, "\n");
  for (int s = 0; s < NS; s++) {
    gzprintf(z, "\"%s\"", SAMPLES[s]);
    for (int g = 0; g < NG; g++) gzprintf(z, ",%g", count_of(s, g));
    gzprintf(z, "\r\n");
  }
  gzclose(z);
  write_file("lengths.tsv", "G0\t1000\nG1\t2000\nG2\t500\nG3\t4000\n");
}

// A w x h slide: tissue disk (pink, textured) on glass, or tissue everywhere; written by vips as a tiled pyramid.
static int write_slide(const char *sub, const char *name, int w, int h, int radius, int xres_per_mm) {
  char p[512], q[512], cmd[1400];
  snprintf(p, sizeof p, "%s/%s", dir, sub);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/%s/%s.ppm", dir, sub, name);
  FILE *f = fopen(p, "wb");
  fprintf(f, "P6 %d %d 255\n", w, h);
  unsigned char *row = malloc((size_t)w * 3);
  for (int y = 0; y < h; y++) {
    for (int x = 0; x < w; x++) {
      double dx = x - w / 2.0, dy = y - h / 2.0;
      int tissue = radius <= 0 || dx * dx + dy * dy < (double)radius * radius;
      int n = ((x * 7 + y * 13) % 17) - 8;
      unsigned char *px = row + 3 * x;
      if (tissue) px[0] = (unsigned char)(200 + n), px[1] = (unsigned char)(100 + n), px[2] = (unsigned char)(170 + n);
      else px[0] = px[1] = px[2] = (unsigned char)(244 + n / 4);
    }
    fwrite(row, 1, (size_t)w * 3, f);
  }
  free(row);
  fclose(f);
  snprintf(q, sizeof q, "%s/%s/%s.tif", dir, sub, name);
  char res[64] = "";
  if (xres_per_mm > 0) snprintf(res, sizeof res, " --xres %d --yres %d", xres_per_mm, xres_per_mm);
  snprintf(cmd, sizeof cmd, "vips tiffsave '%s' '%s' --tile --pyramid --tile-width 256 --tile-height 256 "
           "--compression jpeg --Q 95%s", p, q, res);
  int rc = system(cmd);
  remove(p);
  return rc;
}

static void write_clam(const char *name, int t, int f, float base) {
  char p[512];
  snprintf(p, sizeof p, "%s/clam", dir);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/clam/%s", dir, name);
  hid_t file = H5Fcreate(p, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t fd[2] = {(hsize_t)t, (hsize_t)f}, cd[2] = {(hsize_t)t, 2};
  float *x = calloc((size_t)(t * f), 4);
  int64_t *c = calloc((size_t)t * 2, 8);
  for (int i = 0; i < t * f; i++) x[i] = base + (float)i;
  for (int i = 0; i < t; i++) c[2 * i] = 256 * i, c[2 * i + 1] = 512;
  hid_t s = H5Screate_simple(2, fd, NULL), d = H5Dcreate2(file, "features", H5T_IEEE_F32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
  H5Dclose(d), H5Sclose(s);
  s = H5Screate_simple(2, cd, NULL), d = H5Dcreate2(file, "coords", H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, c);
  H5Dclose(d), H5Sclose(s), H5Fclose(file);
  free(x), free(c);
}

static int64_t find(const ps_patients *p, const char *id) {
  for (int64_t i = 0; i < p->n; i++)
    if (!strcmp(p->id[i], id)) return i;
  return -1;
}

static void base_opts(ps_prep_options *o, const char *out) {
  static char clin[512];
  ps_prep_defaults(o);
  snprintf(clin, sizeof clin, "%s/clinical.tsv", dir);
  o->clinical = clin, o->out = out;
  o->numeric[0] = "age_at_initial_pathologic_diagnosis";
  o->categorical[0] = "gender", o->categorical[1] = "ajcc_pathologic_tumor_stage";
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  snprintf(dir, sizeof dir, "data_prep_%d", (int)getpid());
  mkdir(dir, 0755);
  write_file("clinical.tsv", CLIN);
  write_rna();
  char out1[512], out2[512], path[512];
  snprintf(out1, sizeof out1, "%s/a.h5", dir);
  snprintf(out2, sizeof out2, "%s/b.h5", dir);
  ps_prep_options o;
  ps_prep_report r;
  // 1) clinical + RNA genes x samples, log2 CPM
  base_opts(&o, out1);
  snprintf(path, sizeof path, "%s/rna_genes_rows.tsv", dir);
  o.rnaseq = path, o.transform = PS_RNA_LOG2_CPM;
  TU_OK(ps_prep_run(&o, MPI_COMM_SELF, &r));
  TU_CHECK(r.patients == 5 && r.dropped_no_endpoint == 1 && r.duplicate_clinical == 1, "clinical report %lld %lld %lld",
           (long long)r.patients, (long long)r.dropped_no_endpoint, (long long)r.duplicate_clinical);
  TU_CHECK(r.rna_samples == 8 && r.rna_matched == 4 && r.rna_unmatched == 1 && r.rna_wrong_type == 2 &&
               r.rna_duplicates == 1, "rna report: %lld matched, %lld unmatched, %lld type, %lld dup",
           (long long)r.rna_matched, (long long)r.rna_unmatched, (long long)r.rna_wrong_type, (long long)r.rna_duplicates);
  TU_CHECK(strstr(r.unmatched_examples, "TCGA-ZZ-9999") && strstr(r.duplicate_examples, "TCGA-AA-0002-01B"),
           "report examples: %s / %s", r.unmatched_examples, r.duplicate_examples);
  TU_OK(ps_data_validate(out1, MPI_COMM_SELF, NULL));
  ps_cohort *c;
  TU_OK(ps_cohort_open(&c, out1, MPI_COMM_SELF));
  const ps_cohort_info *in = ps_cohort_get_info(c);
  const ps_patients *p = ps_cohort_get_patients(c);
  TU_CHECK(in->n == 5 && in->g == NG && in->c == 5 && in->n_cohorts == 2 && in->n_sites == 3, "shape c=%lld",
           (long long)in->c);
  int64_t a1 = find(p, "TCGA-AA-0001"), a2 = find(p, "TCGA-AA-0002"), b3 = find(p, "TCGA-BB-0003"),
          b4 = find(p, "TCGA-BB-0004"), c6 = find(p, "TCGA-CC-0006");
  TU_CHECK(a1 >= 0 && a2 >= 0 && b3 >= 0 && b4 >= 0 && c6 >= 0 && find(p, "TCGA-CC-0005") < 0, "patients kept");
  TU_CHECK(p->time[a1] == 100 && p->event[a1] == 1 && p->time[b4] == 400 && p->event[b4] == 0, "first row of a duplicate kept");
  TU_CHECK(!strcmp(p->cohort_names[p->cohort[b4]], "LAML") && !strcmp(p->site_names[p->site[b3]], "BB"), "codes");
  const char(*cn)[PS_DATA_NAME_LEN] = ps_cohort_clinical_names(c);
  TU_CHECK(!strcmp(cn[0], "age_at_initial_pathologic_diagnosis") && !strcmp(cn[1], "gender_FEMALE") &&
               !strcmp(cn[2], "gender_MALE") && !strcmp(cn[3], "ajcc_pathologic_tumor_stage_Stage I") &&
               !strcmp(cn[4], "ajcc_pathologic_tumor_stage_Stage II"), "clinical names %s %s", cn[1], cn[3]);
  float x[5];
  TU_OK(ps_cohort_read_clinical(c, &a2, 1, x));
  TU_CHECK(isnan(x[0]) && x[1] == 1 && x[2] == 0 && x[3] == 0 && x[4] == 1, "patient 0002 clinical");
  TU_OK(ps_cohort_read_clinical(c, &b3, 1, x));
  TU_CHECK(x[0] == 61 && x[2] == 1 && isnan(x[3]) && isnan(x[4]), "[Discrepancy] is missing");
  TU_OK(ps_cohort_read_clinical(c, &c6, 1, x));
  TU_CHECK(isnan(x[1]) && isnan(x[2]) && x[3] == 1, "[Unknown] is missing");
  // RNA: 0001 <- sample 0 (01A), 0002 <- sample 3 (01A beats 01B), 0004 (LAML) <- sample 4 (03A), 0003 none
  int64_t rows[3] = {a1, a2, b4};
  int samp[3] = {0, 3, 4};
  float om[3 * NG], om2[3 * NG];
  TU_OK(ps_cohort_read_omics(c, rows, 3, om));
  for (int i = 0; i < 3; i++) {
    double tot = 0;
    for (int g = 0; g < NG; g++) tot += count_of(samp[i], g);
    for (int g = 0; g < NG; g++) {
      double want = log2(count_of(samp[i], g) / tot * 1e6 + 1);
      TU_CHECK(fabs(om[i * NG + g] - want) < 1e-5 * want, "log2cpm row %d gene %d: %g vs %g", i, g, om[i * NG + g], want);
    }
  }
  TU_CHECK(p->present[b3 * PS_MOD_COUNT + PS_MOD_OMICS] == 0 && p->present[a1 * PS_MOD_COUNT + PS_MOD_OMICS] == 1, "rna present");
  ps_cohort_close(c);
  // 2) the same matrix as samples x genes, gzip CSV, auto orientation: identical omics
  base_opts(&o, out2);
  snprintf(path, sizeof path, "%s/rna_samples_rows.csv.gz", dir);
  o.rnaseq = path, o.transform = PS_RNA_LOG2_CPM;
  TU_OK(ps_prep_run(&o, MPI_COMM_SELF, &r));
  TU_OK(ps_cohort_open(&c, out2, MPI_COMM_SELF));
  TU_OK(ps_cohort_read_omics(c, rows, 3, om2));
  TU_CHECK(!memcmp(om, om2, sizeof om), "both orientations give the same omics");
  TU_CHECK(!strcmp(ps_cohort_gene_names(c)[3], "G3"), "gene names");
  ps_cohort_close(c);
  // 3) TPM and the DSS endpoint (0003 has no DSS)
  base_opts(&o, out2);
  o.endpoint = PS_ENDPOINT_DSS;
  snprintf(path, sizeof path, "%s/rna_genes_rows.tsv", dir);
  char lens[512];
  snprintf(lens, sizeof lens, "%s/lengths.tsv", dir);
  o.rnaseq = path, o.transform = PS_RNA_LOG2_TPM, o.gene_lengths = lens;
  TU_OK(ps_prep_run(&o, MPI_COMM_SELF, &r));
  TU_OK(ps_cohort_open(&c, out2, MPI_COMM_SELF));
  p = ps_cohort_get_patients(c);
  TU_CHECK(r.patients == 5 && find(p, "TCGA-BB-0003") < 0 && find(p, "TCGA-CC-0005") >= 0,
           "DSS: 0003 has no DSS, 0005 has one (%lld patients)", (long long)r.patients);
  a1 = find(p, "TCGA-AA-0001");
  TU_OK(ps_cohort_read_omics(c, &a1, 1, om2));
  double len_kb[NG] = {1, 2, 0.5, 4}, rate[NG], tot = 0;
  for (int g = 0; g < NG; g++) tot += rate[g] = count_of(0, g) / len_kb[g];
  for (int g = 0; g < NG; g++)
    TU_CHECK(fabs(om2[g] - log2(rate[g] / tot * 1e6 + 1)) < 1e-4, "log2tpm gene %d", g);
  ps_cohort_close(c);
  // 4) errors: unknown endpoint column, non-numeric value
  base_opts(&o, out2);
  o.endpoint = PS_ENDPOINT_PFI;
  TU_CHECK(ps_prep_run(&o, MPI_COMM_SELF, &r) == PS_ERR_FORMAT && strstr(ps_error_message(), "PFI.time"), "missing "
           "endpoint: %s", ps_error_message());
  write_file("bad.tsv", "bcr_patient_barcode\tage\tOS\tOS.time\nTCGA-AA-0001\tforty\t1\t10\n");
  base_opts(&o, out2);
  snprintf(path, sizeof path, "%s/bad.tsv", dir);
  o.clinical = path, o.numeric[0] = "age", o.categorical[0] = NULL;
  TU_CHECK(ps_prep_run(&o, MPI_COMM_SELF, &r) == PS_ERR_DATA && strstr(ps_error_message(), "forty") &&
               strstr(ps_error_message(), "TCGA-AA-0001"), "bad number: %s", ps_error_message());
  TU_CHECK(access(out2, F_OK) == 0, "an earlier good file is untouched");
  // 5) whole-slide images through OpenSlide: 0.5 um/px (2000 px/mm); tiles of 64 px at 1.0 um/px = 128 px level 0
  TU_CHECK(write_slide("wsi", "TCGA-AA-0001-01Z-00-DX1", 2048, 1536, 500, 2000) == 0, "vips");
  TU_CHECK(write_slide("wsi", "TCGA-AA-0001-01A-01-TS1", 512, 512, 0, 2000) == 0, "vips");
  TU_CHECK(write_slide("wsi", "TCGA-BB-0004-01Z-00-DX1", 1024, 1024, 0, 2000) == 0, "vips");
  base_opts(&o, out1);
  snprintf(path, sizeof path, "%s/wsi", dir);
  o.slides_dir = path, o.tile_size = 64, o.target_mpp = 1.0, o.max_tiles = 20, o.seed = 3;
#if PANSURV_HAVE_OPENSLIDE
  o.max_tiles = 100; // first without the cap binding on the disk slide
  TU_OK(ps_prep_run(&o, MPI_COMM_SELF, &r));
  TU_CHECK(r.slides == 2 && r.slides_skipped == 1, "diagnostic slides only: %lld used, %lld skipped",
           (long long)r.slides, (long long)r.slides_skipped);
  TU_OK(ps_data_validate(out1, MPI_COMM_SELF, NULL));
  TU_OK(ps_cohort_open(&c, out1, MPI_COMM_SELF));
  p = ps_cohort_get_patients(c);
  in = ps_cohort_get_info(c);
  a1 = find(p, "TCGA-AA-0001"), b4 = find(p, "TCGA-BB-0004");
  int64_t n_disk = p->offset[a1 + 1] - p->offset[a1], n_full = p->offset[b4 + 1] - p->offset[b4];
  // disk of radius 500 px = 3.90 px-radius in 128-px cells: pi r^2 / 128^2 = 47.9 cells; >= 50% tissue rule
  TU_CHECK(n_disk >= 40 && n_disk <= 56, "tissue disk gives %lld tiles (expected about 48)", (long long)n_disk);
  TU_CHECK(n_full == 64, "full-tissue 1024^2 slide gives the whole 8x8 grid, got %lld", (long long)n_full);
  TU_CHECK(in->tile_size == 64, "tile size");
  int32_t *co = calloc((size_t)in->t * 3, 4);
  hid_t f = H5Fopen(out1, H5F_ACC_RDONLY, H5P_DEFAULT), dco = H5Dopen2(f, "/slides/coords", H5P_DEFAULT);
  H5Dread(dco, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, co);
  H5Dclose(dco), H5Fclose(f);
  uint8_t *tile = calloc(64 * 64 * 3, 1);
  for (int64_t t = p->offset[a1]; t < p->offset[a1 + 1]; t++) {
    double cx = co[t * 3 + 1] + 64 - 1024.0, cy = co[t * 3 + 2] + 64 - 768.0;
    TU_CHECK(sqrt(cx * cx + cy * cy) < 500, "tile %lld centre (%d, %d) outside the tissue disk", (long long)t,
             co[t * 3 + 1], co[t * 3 + 2]);
    TU_OK(ps_cohort_read_tiles(c, &t, 1, tile));
    // at least min_tissue (50%) of the tile is tissue: pink pixels have R - G ~ 100, glass ~ 0
    // (0.45: JPEG and box resampling blur the disk edge by a pixel or two)
    int pink = 0;
    for (int k = 0; k < 64 * 64; k++) pink += tile[3 * k] - tile[3 * k + 1] > 50;
    TU_CHECK(pink >= 0.45 * 4096, "tile %lld is %.0f%% tissue", (long long)t, 100.0 * pink / 4096);
  }
  free(co), free(tile);
  ps_cohort_close(c);
  // the cap: 20 of 64 on the full slide, the same 20 on a second run (seeded)
  o.max_tiles = 20;
  TU_OK(ps_prep_run(&o, MPI_COMM_SELF, &r));
  o.out = out2;
  TU_OK(ps_prep_run(&o, MPI_COMM_SELF, &r));
  ps_cohort *c2;
  TU_OK(ps_cohort_open(&c, out1, MPI_COMM_SELF));
  TU_OK(ps_cohort_open(&c2, out2, MPI_COMM_SELF));
  p = ps_cohort_get_patients(c);
  b4 = find(p, "TCGA-BB-0004");
  TU_CHECK(p->offset[b4 + 1] - p->offset[b4] == 20, "cap 20");
  int64_t tl = ps_cohort_get_info(c)->t, *idx = calloc((size_t)tl, 8);
  for (int64_t t = 0; t < tl; t++) idx[t] = t;
  uint8_t *t1 = calloc((size_t)tl * 64 * 64 * 3, 1), *t2 = calloc((size_t)tl * 64 * 64 * 3, 1);
  TU_OK(ps_cohort_read_tiles(c, idx, tl, t1));
  TU_OK(ps_cohort_read_tiles(c2, idx, tl, t2));
  TU_CHECK(!memcmp(t1, t2, (size_t)tl * 64 * 64 * 3), "seeded cap is reproducible");
  free(idx), free(t1), free(t2);
  ps_cohort_close(c), ps_cohort_close(c2);
  // a slide without microns per pixel is an error unless --mpp is given
  TU_CHECK(write_slide("nompp", "TCGA-AA-0002-01Z-00-DX1", 512, 512, 0, 0) == 0, "vips");
  base_opts(&o, out2);
  snprintf(path, sizeof path, "%s/nompp", dir);
  o.slides_dir = path, o.tile_size = 64, o.target_mpp = 1.0;
  TU_CHECK(ps_prep_run(&o, MPI_COMM_SELF, &r) == PS_ERR_DATA && strstr(ps_error_message(), "--mpp"), "no mpp: %s",
           ps_error_message());
  o.mpp = 0.5;
  TU_OK(ps_prep_run(&o, MPI_COMM_SELF, &r));
  TU_CHECK(r.tiles == 16, "512^2 at 0.5 um/px, 128-px cells: 16 tiles, got %lld", (long long)r.tiles);
#else
  TU_CHECK(ps_prep_run(&o, MPI_COMM_SELF, &r) == PS_ERR_ARG, "no OpenSlide in this build");
#endif
  // 6) CLAM features
  write_clam("TCGA-AA-0002-01Z-00-DX1.abc.h5", 5, 8, 0.0f);
  write_clam("TCGA-CC-0006-01Z-00-DX1.def.h5", 3, 8, 100.0f);
  write_clam("TCGA-QQ-0000-01Z-00-DX1.h5", 2, 8, 0.0f);
  base_opts(&o, out2);
  snprintf(path, sizeof path, "%s/clam", dir);
  o.features_dir = path;
  TU_CHECK(ps_prep_run(&o, MPI_COMM_SELF, &r) == PS_ERR_CONFIG, "CLAM without --mpp");
  o.mpp = 0.25;
  TU_OK(ps_prep_run(&o, MPI_COMM_SELF, &r));
  TU_CHECK(r.slides == 2 && r.slides_skipped == 1 && r.tiles == 8, "clam report");
  TU_OK(ps_data_validate(out2, MPI_COMM_SELF, NULL));
  TU_OK(ps_cohort_open(&c, out2, MPI_COMM_SELF));
  p = ps_cohort_get_patients(c);
  c6 = find(p, "TCGA-CC-0006");
  TU_CHECK(ps_cohort_get_info(c)->feat_dim == 8 && p->offset[c6 + 1] - p->offset[c6] == 3, "clam bags");
  float fv[8];
  int64_t t0 = p->offset[c6] + 1;
  TU_OK(ps_cohort_read_features(c, &t0, 1, fv));
  TU_CHECK(fv[0] == 108.0f && fv[7] == 115.0f, "clam values %g", fv[0]);
  ps_cohort_close(c);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (ps_tu_failures == 0 && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  MPI_Finalize();
  return ps_tu_finish("data_prep");
}
