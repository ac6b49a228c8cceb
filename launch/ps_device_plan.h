// ps_device_plan: where a run computes and how ranks exchange gradients,
// resolved once per run from train.device, comm.backend and train.precision
// and what this build and node offer. Pure logic (tested without a GPU);
// ps_run_setup applies it (communicator with GPU binding, matmul precision).
//
//   train.device  auto : cuda when the build has CUDA and every rank sees a device, else cpu
//                 cuda : error (naming the key) without a CUDA build or a visible device
//   comm.backend  auto : nccl when the model is on cuda and NCCL is built, else mpi
//                 nccl : error with a cpu model or without NCCL
//                 mpi  : with a cuda model, gradients are staged through pinned host memory
//   train.precision bf16 : needs the model on cuda (error on cpu)
#ifndef PS_DEVICE_PLAN_H
#define PS_DEVICE_PLAN_H

#include <stdbool.h>

#include "ps_comm.h"
#include "ps_config.h"
#include "ps_ops.h"

typedef struct {
  bool cuda_built; // this pansurv has the CUDA backend
  int ndev;        // visible CUDA devices (0 without a driver or GPU)
  bool nccl_built; // this pansurv has the NCCL backend
} ps_run_caps;

typedef struct {
  ps_device device;              // PS_CPU or PS_CUDA: where parameters and activations live
  ps_comm_backend grad_backend;  // PS_COMM_MPI or PS_COMM_NCCL: gradient all-reduce
  ps_matmul_precision precision; // PS_MATMUL_FP32 or PS_MATMUL_BF16
} ps_run_plan;

// What this process sees (counts devices; creates no CUDA context).
ps_run_caps ps_run_caps_probe(void);
// cfg's choices against caps. Errors are PS_ERR_CONFIG and name the key and
// the config file.
ps_status ps_run_plan_resolve(const ps_config *cfg, ps_run_caps caps, ps_run_plan *out);
// "cuda, gradients over nccl, bf16 matmuls" (static storage).
const char *ps_run_plan_describe(const ps_run_plan *p);

// Initializes the host communicator (MPI), resolves the plan from the fewest
// GPUs any rank sees (so every rank gets the same plan), binds local rank ->
// GPU for a cuda plan and sets the matmul precision. Errors that do not depend
// on the node (e.g. nccl with train.device: cpu) are found before MPI starts
// (*comm NULL). Later errors are agreed across ranks and *comm is left up: the
// caller reports on rank 0 and calls ps_comm_finalize. Messages name the key
// and config file, or the launch layout (ranks per node vs visible GPUs).
// Writes nothing.
ps_status ps_run_setup(const ps_config *cfg, ps_run_plan *plan, ps_comm **comm, int *argc, char ***argv);
// After a failed ps_run_setup: prints "pansurv CMD: <message>" once (rank 0; a
// rank whose GPU binding failed says its own too) and finalizes *comm if up.
// rank_guess: the launcher's rank variable, for errors found before MPI.
void ps_run_setup_fail(const char *cmd, ps_comm **comm, int rank_guess);

#endif
