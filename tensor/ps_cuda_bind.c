// Local rank -> GPU choice (pure logic, in every build; ps_cuda_bind_local_rank
// applies it). See ps_cuda.h for the rules.
#include "ps_cuda.h"

// Entries in a comma-separated list ("0,1,2,3" -> 4; "" or NULL -> 0).
static int list_len(const char *s) {
  if (!s || !*s) return 0;
  int n = 1;
  for (; *s; s++) n += *s == ',';
  return n;
}

ps_status ps_cuda_pick_device(int local_rank, int local_size, int ndev, const char *env_visible,
                                         const char *env_step_gpus, const char *env_gpus_per_task, int *device) {
  PS_REQUIRE(local_size >= 1 && local_rank >= 0 && local_rank < local_size,
             "GPU binding: local rank %d outside 0..%d", local_rank, local_size - 1);
  if (ndev <= 0)
    PS_FAIL(PS_ERR_UNSUPPORTED, "GPU binding: no CUDA device visible to local rank %d (CUDA_VISIBLE_DEVICES=%s)",
            local_rank, env_visible ? env_visible : "(unset)");
  if (ndev >= local_size) { // every rank of the node sees every GPU
    *device = local_rank;
    return PS_OK;
  }
  // SLURM --gpus-per-task: each task's CUDA_VISIBLE_DEVICES holds only its own GPUs.
  bool per_task = (env_gpus_per_task && *env_gpus_per_task) ||
                  (list_len(env_step_gpus) > 0 && list_len(env_visible) > 0 &&
                   list_len(env_step_gpus) > list_len(env_visible));
  if (per_task) {
    *device = 0;
    return PS_OK;
  }
  PS_FAIL(PS_ERR_CONFIG,
          "GPU binding: %d ranks on this node but only %d GPU%s visible (CUDA_VISIBLE_DEVICES=%s); run one rank "
          "per GPU (srun --gpus-per-task=1, or at most %d ranks per node)",
          local_size, ndev, ndev == 1 ? "" : "s", env_visible ? env_visible : "(unset)", ndev);
}

