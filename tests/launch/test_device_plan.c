// ps_run_plan_resolve as a pure function of (train.device, comm.backend,
// train.precision) x (CUDA build, visible devices, NCCL build): every
// combination against a table written out by hand, and every refusal names
// the key and the config file. Needs no GPU.
#include <string.h>

#include "ps_device_plan.h"
#include "testutil.h"

static ps_config cfg_of(int device, int backend, int precision) {
  ps_config c;
  ps_config_defaults(&c);
  snprintf(c.source, sizeof c.source, "run.yaml");
  c.train.device = device;
  c.comm.backend = backend;
  c.train.precision = precision;
  return c;
}

static void expect(const char *what, int device, int backend, int precision, ps_run_caps caps, ps_device dev,
                   ps_comm_backend be, ps_matmul_precision prec) {
  ps_config c = cfg_of(device, backend, precision);
  ps_run_plan p;
  ps_status s = ps_run_plan_resolve(&c, caps, &p);
  TU_CHECK(s == PS_OK, "%s: %s", what, ps_error_message());
  if (s != PS_OK) return;
  TU_CHECK(p.device == dev && p.grad_backend == be && p.precision == prec,
           "%s: got device %d backend %s precision %s, want %d %s %s", what, (int)p.device,
           ps_comm_backend_name(p.grad_backend), ps_matmul_precision_name(p.precision), (int)dev,
           ps_comm_backend_name(be), ps_matmul_precision_name(prec));
}

static void refuse(const char *what, int device, int backend, int precision, ps_run_caps caps, const char *key,
                   const char *also) {
  ps_config c = cfg_of(device, backend, precision);
  ps_run_plan p;
  ps_status s = ps_run_plan_resolve(&c, caps, &p);
  const char *m = ps_error_message();
  TU_CHECK(s == PS_ERR_CONFIG, "%s: expected a config error, got %s", what, ps_status_name(s));
  TU_CHECK(strstr(m, key) != NULL, "%s: message '%s' does not name %s", what, m, key);
  TU_CHECK(strstr(m, "run.yaml") != NULL, "%s: message '%s' does not name the config file", what, m);
  if (also) TU_CHECK(strstr(m, also) != NULL, "%s: message '%s' lacks '%s'", what, m, also);
}

int main(void) {
  const ps_run_caps none = {false, 0, false}, built_nogpu = {true, 0, true}, gpu = {true, 2, true},
                    gpu_nonccl = {true, 1, false};
  enum { AUTO = PS_CFG_DEV_AUTO, CPU = PS_CFG_DEV_CPU, CUDA = PS_CFG_DEV_CUDA };
  enum { BA = PS_CFG_BACKEND_AUTO, MPI = PS_CFG_BACKEND_MPI, NCCL = PS_CFG_BACKEND_NCCL };
  enum { F32 = PS_CFG_PREC_FP32, B16 = PS_CFG_PREC_BF16 };
  // auto device
  expect("auto, no CUDA build", AUTO, BA, F32, none, PS_CPU, PS_COMM_MPI, PS_MATMUL_FP32);
  expect("auto, CUDA build, no device", AUTO, BA, F32, built_nogpu, PS_CPU, PS_COMM_MPI, PS_MATMUL_FP32);
  expect("auto, GPU + NCCL", AUTO, BA, F32, gpu, PS_CUDA, PS_COMM_NCCL, PS_MATMUL_FP32);
  expect("auto, GPU without NCCL", AUTO, BA, F32, gpu_nonccl, PS_CUDA, PS_COMM_MPI, PS_MATMUL_FP32);
  expect("auto, GPU, bf16", AUTO, BA, B16, gpu, PS_CUDA, PS_COMM_NCCL, PS_MATMUL_BF16);
  // explicit device
  expect("cpu on a GPU node", CPU, BA, F32, gpu, PS_CPU, PS_COMM_MPI, PS_MATMUL_FP32);
  expect("cuda", CUDA, BA, F32, gpu, PS_CUDA, PS_COMM_NCCL, PS_MATMUL_FP32);
  expect("cuda + mpi (staged)", CUDA, MPI, F32, gpu, PS_CUDA, PS_COMM_MPI, PS_MATMUL_FP32);
  expect("cuda + nccl + bf16", CUDA, NCCL, B16, gpu, PS_CUDA, PS_COMM_NCCL, PS_MATMUL_BF16);
  expect("cpu + mpi", CPU, MPI, F32, none, PS_CPU, PS_COMM_MPI, PS_MATMUL_FP32);
  // refusals
  refuse("cuda without a CUDA build", CUDA, BA, F32, none, "train.device", "without CUDA");
  refuse("cuda without a device", CUDA, BA, F32, built_nogpu, "train.device", "no CUDA device");
  refuse("nccl with cpu", CPU, NCCL, F32, gpu, "comm.backend", "resolved to cpu");
  refuse("nccl with auto -> cpu", AUTO, NCCL, F32, built_nogpu, "comm.backend", "auto");
  refuse("nccl not built", CUDA, NCCL, F32, gpu_nonccl, "comm.backend", "without NCCL");
  refuse("bf16 on cpu", CPU, BA, B16, gpu, "train.precision", "resolved to cpu");
  refuse("bf16 with auto -> cpu", AUTO, BA, B16, none, "train.precision", "auto");
  // the describe line a GPU run prints
  ps_run_plan p = {PS_CUDA, PS_COMM_MPI, PS_MATMUL_BF16};
  TU_CHECK(strstr(ps_run_plan_describe(&p), "staged through host memory") != NULL, "describe: %s",
           ps_run_plan_describe(&p));
  // this process: the probe agrees with the build (no GPU here is fine either way)
  ps_run_caps here = ps_run_caps_probe();
  TU_CHECK(here.cuda_built == (PANSURV_HAVE_CUDA != 0), "probe: cuda_built %d", (int)here.cuda_built);
  TU_CHECK(here.ndev >= 0 && (here.cuda_built || here.ndev == 0), "probe: %d devices", here.ndev);
  return ps_tu_finish("launch_device_plan");
}
