// allreduce_probe: MPI_Allreduce (float sum) timings in the nccl-tests table layout,
// used by scripts/scaling.sh to fit the alpha-beta model ONLY when `pansurv bench
// comm` is not in the build. It measures Open MPI's own all-reduce, not pansurv's
// comm layer; scaling.sh labels its fit accordingly. Exit status 1 if any sum is wrong.
//   mpicc -O2 -o allreduce_probe allreduce_probe.c && mpirun -np 2 ./allreduce_probe [max_bytes]
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

enum { WARMUP = 5, MIN_ITERS = 10 };

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, ranks;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  long any_wrong = 0;
  long max_bytes = argc > 1 ? atol(argv[1]) : 64L << 20;
  if (max_bytes < 4) max_bytes = 4;
  float *send = malloc((size_t)max_bytes), *recv = malloc((size_t)max_bytes);
  if (!send || !recv) MPI_Abort(MPI_COMM_WORLD, 1);
  for (long i = 0; i < max_bytes / 4; i++) send[i] = (float)(rank + 1);
  if (rank == 0) {
    printf("# allreduce_probe: MPI_Allreduce float sum, %d ranks\n", ranks);
    printf("#       size         count      type   redop    root     time   algbw   busbw #wrong\n");
    printf("#        (B)    (elements)                               (us)  (GB/s)  (GB/s)\n");
  }
  for (long bytes = 4; bytes <= max_bytes; bytes *= 2) {
    int count = (int)(bytes / 4);
    // ~20 ms per size at 5 us + 5 GB/s, at least MIN_ITERS
    int iters = (int)(0.02 / (5e-6 + (double)bytes / 5e9));
    if (iters < MIN_ITERS) iters = MIN_ITERS;
    if (iters > 1000) iters = 1000;
    for (int i = 0; i < WARMUP; i++) MPI_Allreduce(send, recv, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) MPI_Allreduce(send, recv, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double t = (MPI_Wtime() - t0) / iters, tmax;
    MPI_Allreduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    float want = (float)ranks * (float)(ranks + 1) / 2.0f;
    long wrong = 0, all_wrong;
    for (int i = 0; i < count; i++) wrong += recv[i] != want;
    MPI_Reduce(&wrong, &all_wrong, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    any_wrong += rank == 0 ? all_wrong : 0;
    if (rank == 0) {
      double algbw = (double)bytes / tmax / 1e9, busbw = algbw * 2.0 * (ranks - 1) / ranks;
      printf("%12ld  %12d     float     sum      -1  %7.2f  %6.2f  %6.2f  %5ld\n", bytes, count, tmax * 1e6, algbw,
             busbw, all_wrong);
    }
  }
  free(send);
  free(recv);
  MPI_Bcast(&any_wrong, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_wrong ? 1 : 0; // a wrong sum makes the timings meaningless
}
