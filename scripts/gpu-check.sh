#!/usr/bin/env bash
# The one command to run when a GPU is at hand: builds with CUDA for this
# machine's GPU architecture, runs the GPU tests (gpu_*, tensor_cuda*, comm_nccl*),
# then, when `pansurv train` exists, a short training run on the GPU, and prints
# a verdict table. Exit status: non-zero if any GPU test or the run failed.
# Without a GPU it still builds and runs the tests (they SKIP) and says so.
#
# Environment: PANSURV_JOBS (build jobs, default 2), PANSURV_CUDA_ARCHITECTURES
# (default: from nvidia-smi's compute capability, else "80;90"),
# GPU_CHECK_BUILD (build dir, default build/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=${PANSURV_JOBS:-2}
bdir=${GPU_CHECK_BUILD:-build/gpu}
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# ---- which GPU, which architectures
gpus=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L | grep -c '^GPU')
fi
archs=${PANSURV_CUDA_ARCHITECTURES:-}
if [ -z "$archs" ]; then
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  archs=${cc:-80;90}
fi
if [ "$gpus" -eq 0 ]; then
  echo "gpu-check: NO GPU visible (nvidia-smi finds none): building and running the tests anyway;"
  echo "           they will SKIP, and this is NOT a GPU verification."
else
  echo "gpu-check: $gpus GPU(s): $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)"
fi
echo "gpu-check: CUDA architectures $archs, build dir $bdir"

declare -a names results
record() { names+=("$1"); results+=("$2"); }

# ---- build
if ! cmake -S . -B "$bdir" -DCMAKE_BUILD_TYPE=Release -DPANSURV_CUDA=ON \
    "-DPANSURV_CUDA_ARCHITECTURES=$archs" >"$bdir.configure.log" 2>&1; then
  tail -20 "$bdir.configure.log"
  echo "gpu-check: configure failed (log: $bdir.configure.log)"
  exit 1
fi
grep -E '^-- +(CUDA|NCCL|cuDNN) ' "$bdir.configure.log" | sed 's/^-- */  /'
if ! cmake --build "$bdir" -j"$jobs" >"$bdir.build.log" 2>&1; then
  grep -E 'error' "$bdir.build.log" | head -20
  echo "gpu-check: build failed (log: $bdir.build.log)"
  exit 1
fi

# ---- tests: one row per test from ctest's own verdicts
log="$bdir.ctest.log"
ctest --test-dir "$bdir" -R '^(gpu_|tensor_cuda|comm_nccl)' -V >"$log" 2>&1
ctest_rc=$?
while read -r num name verdict; do
  # A test that finds no device prints a line with SKIP (ctest -V prefixes it "<num>: ") and passes.
  [ "$verdict" = Passed ] && grep -qE "^${num}: .*SKIP" "$log" && verdict="skipped (no device)"
  record "$name" "$verdict"
done < <(sed -n 's/^ *[0-9]*\/[0-9]* Test *#\([0-9]*\): \([^ ]*\) \.*[* ]*\([A-Za-z]*\).*/\1 \2 \3/p' "$log")
[ "${#names[@]}" -eq 0 ] && record "ctest (no GPU tests found)" "Failed"

# ---- a short training run on the GPU, when the command exists
P="$bdir/launch/pansurv"
train_rc=0
if [ -x "$P" ] && "$P" --help 2>/dev/null | grep -qE '^ +train '; then
  if [ "$gpus" -eq 0 ]; then
    record "train (short, cuda)" "skipped (no device)"
  else
    tmp=$(mktemp -d)
    if "$P" sim --out "$tmp/cohort.h5" --patients 300 --tiles 4 --tile-size 32 --seed 1 >"$tmp/sim.log" 2>&1 &&
      sed -e "s|demo/cohort.h5|$tmp/cohort.h5|" -e "s|demo/runs|$tmp/runs|" -e 's/^\(  *\)device: .*/\1device: cuda/' \
        -e 's/^\(  *\)epochs: .*/\1epochs: 2/' configs/demo.yaml >"$tmp/gpu.yaml" &&
      "$P" train "$tmp/gpu.yaml" >"$tmp/train.log" 2>&1; then
      record "train (short, cuda)" "Passed"
    else
      train_rc=1
      tail -20 "$tmp/train.log" 2>/dev/null || tail -20 "$tmp/sim.log"
      record "train (short, cuda)" "Failed (logs in $tmp)"
    fi
  fi
else
  record "train (short, cuda)" "not available (no 'pansurv train' in this build)"
fi

# ---- verdict table
echo
printf '%-32s %s\n' "test" "result"
printf '%-32s %s\n' "--------------------------------" "------"
for i in "${!names[@]}"; do printf '%-32s %s\n' "${names[$i]}" "${results[$i]}"; done
echo
if [ "$gpus" -eq 0 ]; then
  echo "gpu-check: no GPU present: nothing above was verified on a GPU."
fi
if [ "$ctest_rc" -ne 0 ] || [ "$train_rc" -ne 0 ]; then
  echo "gpu-check: FAILED (ctest log: $log)"
  exit 1
fi
if [ "$gpus" -eq 0 ]; then
  echo "gpu-check: build and tests OK, every GPU test SKIPPED (no GPU): run this again on a GPU machine"
else
  echo "gpu-check: all GPU checks passed on $gpus GPU(s)"
fi
exit 0
