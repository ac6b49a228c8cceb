#include "ps_device_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps_cuda.h"

ps_run_caps ps_run_caps_probe(void) {
  ps_run_caps c = {PANSURV_HAVE_CUDA != 0, ps_cuda_device_count(), ps_comm_backend_built(PS_COMM_NCCL)};
  return c;
}

ps_status ps_run_plan_resolve(const ps_config *cfg, ps_run_caps caps, ps_run_plan *out) {
  const char *src = cfg->source[0] ? cfg->source : "config";
  ps_run_plan p = {PS_CPU, PS_COMM_MPI, PS_MATMUL_FP32};
  const bool gpu = caps.cuda_built && caps.ndev > 0;
  switch (cfg->train.device) {
  case PS_CFG_DEV_CPU: p.device = PS_CPU; break;
  case PS_CFG_DEV_CUDA:
    if (!caps.cuda_built)
      PS_FAIL(PS_ERR_CONFIG, "%s: train.device: cuda, but this pansurv was built without CUDA (rebuild with "
              "-DPANSURV_CUDA=ON, or set train.device: cpu or auto)", src);
    if (caps.ndev <= 0)
      PS_FAIL(PS_ERR_CONFIG, "%s: train.device: cuda, but no CUDA device is visible (to this process or another rank: no GPU or "
              "driver, or CUDA_VISIBLE_DEVICES hides them; run on a GPU node or set train.device: cpu or auto)", src);
    p.device = PS_CUDA;
    break;
  default: p.device = gpu ? PS_CUDA : PS_CPU; break; // auto
  }
  switch (cfg->comm.backend) {
  case PS_CFG_BACKEND_MPI: p.grad_backend = PS_COMM_MPI; break;
  case PS_CFG_BACKEND_NCCL:
    if (p.device != PS_CUDA)
      PS_FAIL(PS_ERR_CONFIG, "%s: comm.backend: nccl needs the model on a GPU, but train.device resolved to cpu%s "
              "(set comm.backend: mpi or auto)", src,
              cfg->train.device == PS_CFG_DEV_AUTO ? " (auto: no CUDA device visible or no CUDA build)" : "");
    if (!caps.nccl_built)
      PS_FAIL(PS_ERR_CONFIG, "%s: comm.backend: nccl, but this pansurv was built without NCCL (rebuild with "
              "-DPANSURV_NCCL=ON, or set comm.backend: mpi or auto)", src);
    p.grad_backend = PS_COMM_NCCL;
    break;
  default: p.grad_backend = p.device == PS_CUDA && caps.nccl_built ? PS_COMM_NCCL : PS_COMM_MPI; break; // auto
  }
  if (cfg->train.precision == PS_CFG_PREC_BF16) {
    if (p.device != PS_CUDA)
      PS_FAIL(PS_ERR_CONFIG, "%s: train.precision: bf16 needs the model on a GPU, but train.device resolved to cpu%s "
              "(CPU ops compute in fp32: set train.precision: fp32)", src,
              cfg->train.device == PS_CFG_DEV_AUTO ? " (auto: no CUDA device visible or no CUDA build)" : "");
    p.precision = PS_MATMUL_BF16;
  }
  *out = p;
  return PS_OK;
}

const char *ps_run_plan_describe(const ps_run_plan *p) {
  static char buf[128];
  snprintf(buf, sizeof buf, "%s, gradients over %s%s, %s matmuls", p->device == PS_CUDA ? "cuda" : "cpu",
           ps_comm_backend_name(p->grad_backend),
           p->device == PS_CUDA && p->grad_backend == PS_COMM_MPI ? " (staged through host memory, not overlapped)"
                                                                   : "",
           ps_matmul_precision_name(p->precision));
  return buf;
}

ps_status ps_run_setup(const ps_config *cfg, ps_run_plan *plan, ps_comm **comm, int *argc, char ***argv) {
  *comm = NULL;
  // Errors that do not depend on the node are found before MPI starts (every rank finds the same).
  // (as if this node had a GPU: what fails then fails everywhere).
  ps_run_caps caps = ps_run_caps_probe(), any = caps;
  if (any.ndev < 1) any.ndev = 1;
  ps_run_plan tmp;
  PS_TRY(ps_run_plan_resolve(cfg, any, &tmp));
  // The host communicator is MPI whatever the gradient backend: SyncBN, the Cox
  // loss, status agreement and the data loader exchange host values. The NCCL
  // communicator for gradients is the model workload's own.
  ps_comm_options co = {PS_COMM_MPI, PS_CPU, cfg->train.threads};
  PS_TRY(ps_comm_init(comm, argc, argv, &co));
  // The plan from the fewest GPUs any rank sees, so that every rank resolves the same
  // (auto on a node without GPUs must not leave some ranks on the CPU and others on cuda).
  int nmin = caps.ndev;
  ps_status s = ps_comm_allreduce(*comm, &caps.ndev, &nmin, 1, PS_I32, PS_OP_MIN);
  caps.ndev = nmin;
  if (s == PS_OK) s = ps_run_plan_resolve(cfg, caps, plan);
  if (s == PS_OK && plan->device == PS_CUDA) { // local rank -> GPU, agreed across ranks
    s = ps_comm_bind_device(*comm, PS_CUDA);
    if (s != PS_OK)
      ps_error_wrap(s, "%s: train.device resolved to cuda (one rank per GPU)", cfg->source[0] ? cfg->source : "config");
  }
  if (s == PS_OK) {
    ps_status g = PS_OK;
    s = ps_comm_agree(*comm, ps_ops_set_matmul_precision(plan->precision), &g);
    if (s == PS_OK) s = g;
  }
  return s; // on error *comm stays up (when it came up) so the caller can report on rank 0, then finalize it
}

void ps_run_setup_fail(const char *cmd, ps_comm **comm, int rank_guess) {
  const int rank = *comm ? ps_comm_rank(*comm) : rank_guess;
  const char *m = ps_error_message();
  // Plan errors are the same on every rank: rank 0 says it. A binding failure is a rank's own
  // (its node's GPUs): that rank says it too; the others carry "rank R failed with ...".
  bool own_binding = strstr(m, "GPU binding") || strstr(m, "no GPU is visible");
  if (rank == 0 || own_binding) fprintf(stderr, "pansurv %s: %s\n", cmd, m);
  if (*comm) ps_comm_finalize(*comm);
  *comm = NULL;
}
