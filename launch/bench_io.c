// pansurv bench io --data FILE: cohort-file read throughput at the ranks launched, next to a plain
// sequential read of the same file in the same run (the page-cache ceiling), and the loader's stall
// per step when prefetch overlaps a simulated compute step.
#define _POSIX_C_SOURCE 200809L // pread
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ps_commands.h"
#include "ps_data.h"
#include "ps_mpi_session.h"

int ps_bench_io(int argc, char **argv);

static void usage(FILE *f) {
  fprintf(f, "usage: pansurv bench io --data FILE [--batch B] [--tiles K] [--steps N] [--compute-ms T] [--warmup W]\n\n"
             "Rows: raw = each rank pread()s its 1/P byte range of the file in 4 MiB blocks (page-cache ceiling);\n"
             "seq = each rank reads its contiguous slice of the bulk datasets in 4 MiB hyperslabs through HDF5;\n"
             "loader = the batch loader without prefetch (time per step is all I/O + decode + augmentation);\n"
             "prefetch = the loader with a background thread while the main thread spins T ms per step.\n"
             "stall = time ps_loader_next waited. Medians over the timed steps. Defaults: B=32 K=8 N=20 T=50 W=2.\n");
}

static void spin(double seconds) {
  double t0 = MPI_Wtime();
  volatile double x = 0;
  while (MPI_Wtime() - t0 < seconds) x += 1e-9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n ? (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) : NAN;
}

// Plain sequential read of one dataset's rows [lo, hi) in blocks of ~4 MiB; returns bytes read.
static double seq_read(hid_t file, const char *name, int64_t lo, int64_t hi, void *buf, size_t buf_bytes) {
  hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
  if (d < 0) return 0;
  hid_t s = H5Dget_space(d), t = H5Dget_type(d);
  int nd = H5Sget_simple_extent_ndims(s);
  hsize_t dims[4] = {0, 1, 1, 1};
  H5Sget_simple_extent_dims(s, dims, NULL);
  size_t row = H5Tget_size(t);
  for (int i = 1; i < nd; i++) row *= dims[i];
  int64_t per = (int64_t)(buf_bytes / (row ? row : 1));
  if (per < 1) per = 1;
  double bytes = 0;
  for (int64_t r = lo; r < hi; r += per) {
    hsize_t start[4] = {(hsize_t)r, 0, 0, 0}, cnt[4] = {(hsize_t)(hi - r < per ? hi - r : per), dims[1], dims[2], dims[3]};
    H5Sselect_hyperslab(s, H5S_SELECT_SET, start, NULL, cnt, NULL);
    hid_t m = H5Screate_simple(nd, cnt, NULL);
    if (H5Dread(d, t, m, s, H5P_DEFAULT, buf) >= 0) bytes += (double)cnt[0] * (double)row;
    H5Sclose(m);
  }
  H5Tclose(t), H5Sclose(s), H5Dclose(d);
  return bytes;
}

int ps_bench_io(int argc, char **argv) {
  const char *path = NULL;
  long batch = 32, tiles = 8, steps = 20, warm = 2;
  double compute_ms = 50;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      usage(stderr);
      return 2;
    }
    const char *v = argv[++i];
    if (!strcmp(argv[i - 1], "--data")) path = v;
    else if (!strcmp(argv[i - 1], "--batch")) batch = atol(v);
    else if (!strcmp(argv[i - 1], "--tiles")) tiles = atol(v);
    else if (!strcmp(argv[i - 1], "--steps")) steps = atol(v);
    else if (!strcmp(argv[i - 1], "--warmup")) warm = atol(v);
    else if (!strcmp(argv[i - 1], "--compute-ms")) compute_ms = atof(v);
    else {
      fprintf(stderr, "pansurv bench io: unknown option '%s'\n", argv[i - 1]);
      return 2;
    }
  }
  if (!path || batch < 1 || tiles < 1 || steps < 1 || warm < 0 || compute_ms < 0) {
    usage(stderr);
    return 2;
  }
  int started = ps_mpi_session_begin(&argc, &argv);
  int rank, size, code = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  ps_cohort *c = NULL;
  ps_status st = ps_cohort_open(&c, path, MPI_COMM_WORLD);
  ps_split sp = {0};
  ps_norm nm = {0};
  ps_loader *l = NULL;
  if (st == PS_OK) {
    const ps_patients *p = ps_cohort_get_patients(c);
    sp.n = p->n;
    sp.part = calloc((size_t)p->n + 1, 1); // every patient in "train": the benchmark reads the whole file
    st = sp.part ? PS_OK : PS_ERR_MEM;
    if (st == PS_OK) st = ps_norm_fit(&nm, c, &sp, 0, MPI_COMM_WORLD);
  }
  if (st != PS_OK) {
    code = rank == 0 ? ps_report_error("bench io", st) : 1;
    goto out;
  }
  const ps_cohort_info *in = ps_cohort_get_info(c);
  const ps_patients *p = ps_cohort_get_patients(c);
  if (rank == 0)
    printf("# pansurv bench io: %s, %lld patients, G=%lld, %s, %d rank(s), batch %ld, K=%ld, compute %.0f ms/step\n",
           path, (long long)in->n, (long long)in->g, ps_slides_kind_name(in->slides), size, batch, tiles, compute_ms);
  // 1) sequential slice read (page-cache ceiling when the file is cached)
  {
    size_t bufsz = 4u << 20;
    void *buf = malloc(bufsz + 4096);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    int64_t lo = in->n * rank / size, hi = in->n * (rank + 1) / size;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime(), bytes = 0;
    bytes += seq_read(f, "/omics/rnaseq", lo, hi, buf, bufsz);
    bytes += seq_read(f, "/clinical/x", lo, hi, buf, bufsz);
    if (in->slides == PS_SLIDES_TILES) bytes += seq_read(f, "/slides/tiles", p->offset[lo], p->offset[hi], buf, bufsz);
    if (in->slides == PS_SLIDES_FEATURES)
      bytes += seq_read(f, "/slides/features", p->offset[lo], p->offset[hi], buf, bufsz);
    double dt = MPI_Wtime() - t0, all_bytes = 0, max_dt = 0;
    MPI_Reduce(&bytes, &all_bytes, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(&dt, &max_dt, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    H5Fclose(f);
    // raw byte-range read of the same file, same run
    double raw_bytes = 0, raw_dt = 0, raw_all = 0, raw_max = 0;
    int fd = open(path, O_RDONLY);
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) == 0) {
      off_t lo_b = (off_t)((double)sb.st_size * rank / size), hi_b = (off_t)((double)sb.st_size * (rank + 1) / size);
      MPI_Barrier(MPI_COMM_WORLD);
      double r0 = MPI_Wtime();
      for (off_t o = lo_b; o < hi_b;) {
        ssize_t got = pread(fd, buf, (size_t)(hi_b - o < (off_t)bufsz ? hi_b - o : (off_t)bufsz), o);
        if (got <= 0) break;
        o += got, raw_bytes += (double)got;
      }
      raw_dt = MPI_Wtime() - r0;
    }
    if (fd >= 0) close(fd);
    MPI_Reduce(&raw_bytes, &raw_all, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(&raw_dt, &raw_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
      printf("%-9s %12s %12s %14s %14s %8s\n", "# mode", "patients/s", "MB/s", "step_ms(med)", "stall_ms(med)", "stall%");
      printf("%-9s %12s %12.1f %14s %14s %8s\n", "raw", "-", raw_all / raw_max / 1e6, "-", "-", "-");
      printf("%-9s %12.0f %12.1f %14s %14s %8s\n", "seq", (double)in->n / max_dt, all_bytes / max_dt / 1e6, "-", "-", "-");
    }
    free(buf);
  }
  // 2) loader without and with prefetch
  for (int pf = 0; pf < 2 && code == 0; pf++) {
    ps_loader_options o = ps_loader_defaults();
    o.batch_size = batch, o.tiles = (int)tiles, o.prefetch = pf, o.seed = 1;
    st = ps_loader_create(&l, c, &sp, &nm, &o, MPI_COMM_WORLD);
    if (st != PS_OK) {
      code = rank == 0 ? ps_report_error("bench io", st) : 1;
      break;
    }
    double *step_t = calloc((size_t)steps, sizeof(double)), *stall_t = calloc((size_t)steps, sizeof(double));
    int64_t done = 0, wrong = 0, epoch = 0;
    double bytes = 0, t_all = 0;
    st = ps_loader_begin_epoch(l, epoch);
    for (long s = 0; st == PS_OK && s < warm + steps; s++) {
      const ps_batch *b = NULL;
      double stall0 = ps_loader_stall_seconds(l), t0 = MPI_Wtime();
      st = ps_loader_next(l, &b);
      if (st == PS_OK && !b) { // new epoch when the file is small
        st = ps_loader_begin_epoch(l, ++epoch);
        if (st == PS_OK) st = ps_loader_next(l, &b);
      }
      if (st != PS_OK || !b) break;
      if (pf) spin(compute_ms * 1e-3);
      // validate what a model would consume: finite tensors
      for (int64_t i = 0; i < b->b * b->gs; i++) wrong += !isfinite(b->omics[i]);
      if (b->tiles)
        for (int64_t i = 0; i < b->b * b->k * 3 * b->s * b->s; i += 97) wrong += !isfinite(b->tiles[i]);
      double dt = MPI_Wtime() - t0;
      if (s >= warm) {
        step_t[s - warm] = dt;
        stall_t[s - warm] = ps_loader_stall_seconds(l) - stall0;
        t_all += dt;
        done += b->b;
        for (int64_t i = 0; i < b->b; i++)
          bytes += (double)(in->g + in->c) * 4 +
                   (double)b->n_tiles[i] * (b->tiles ? (double)(b->s * b->s * 3) : (double)b->f * 4);
      }
    }
    ps_status agreed;
    MPI_Allreduce(&st, &agreed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (agreed != PS_OK) {
      code = rank == 0 ? (st != PS_OK ? ps_report_error("bench io", st) : 1) : 1;
    } else {
      double tot[3] = {(double)done, bytes, (double)wrong}, max_t = 0;
      MPI_Allreduce(MPI_IN_PLACE, tot, 3, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
      MPI_Allreduce(&t_all, &max_t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      double med_step = median(step_t, (int)steps), med_stall = median(stall_t, (int)steps);
      double worst[2] = {med_step, med_stall};
      MPI_Allreduce(MPI_IN_PLACE, worst, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      if (rank == 0)
        printf("%-9s %12.0f %12.1f %14.2f %14.3f %8.1f%s\n", pf ? "prefetch" : "loader", tot[0] / max_t,
               tot[1] / max_t / 1e6, worst[0] * 1e3, worst[1] * 1e3, 100 * worst[1] / worst[0],
               tot[2] ? "  #wrong" : "");
      if (tot[2] > 0) code = 1;
    }
    free(step_t), free(stall_t);
    ps_loader_destroy(l);
    l = NULL;
  }
  if (rank == 0 && code == 0)
    printf("# loader MB/s counts the raw bytes of the rows a batch uses (omics, clinical, sampled tiles);\n"
           "# prefetch step_ms includes the %.0f ms spin; stall%% = stall / step time.\n", compute_ms);
out:
  ps_norm_free(&nm);
  free(sp.part);
  if (c) ps_cohort_close(c);
  ps_mpi_session_end(started);
  return code;
}
