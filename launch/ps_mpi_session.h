// MPI for data-only subcommands (sim, check, prep, bench io): initializes MPI
// when nobody has yet (singleton runs work) and finalizes only what it started.
#ifndef PS_MPI_SESSION_H
#define PS_MPI_SESSION_H

#include <mpi.h>

static inline int ps_mpi_session_begin(int *argc, char ***argv) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    int provided;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  }
  return !inited;
}

static inline void ps_mpi_session_end(int started) {
  if (started) MPI_Finalize();
}

#endif
