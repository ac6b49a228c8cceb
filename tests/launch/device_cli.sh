#!/usr/bin/env bash
# train.device / comm.backend / train.precision refusals through the CLI, with
# every GPU hidden (CUDA_VISIBLE_DEVICES=""), so the verdicts are the same on a
# GPU node: exit status 1, a message naming the key and the config file, and
# nothing written (no run directory, no checkpoint directory, no eval output).
# Also: auto resolves to the CPU and trains as before; a bad device name is a
# file:line:column error. Needs no GPU.
set -uo pipefail
bin=${PANSURV_BIN:?}
work=$(mktemp -d /tmp/ps_devcli_XXXXXX)
trap 'rm -rf "$work"' EXIT
export CUDA_VISIBLE_DEVICES="" PANSURV_PROGRESS=plain
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2" >&2; fail=1; fi; }

"$bin" sim --out "$work/tiny.h5" --patients 200 --genes 20 --tiles 2 --tile-size 16 --seed 3 >/dev/null || exit 1
cat > "$work/run.yaml" <<YAML
data:
  path: $work/tiny.h5
  tiles: 2
model:
  embed_dim: 8
  omics_hidden: 8
  cnn_channels: [4, 4, 8]
  tile_size: 16
  attn_hidden: 8
  clinical_hidden: 8
  fusion_heads: 2
train:
  epochs: 1
  global_batch: 32
  max_steps: 2
checkpoint:
  every_steps: 1
log:
  run_dir: $work/runs
YAML

# refuse KEY NEEDLE -- ARGS...: pansurv train fails with exit 1, names KEY, the file, NEEDLE, writes nothing
refuse() {
  local key=$1 needle=$2; shift 3
  local out rc
  out=$("$bin" train "$work/run.yaml" --quiet --set log.name=x "$@" 2>&1); rc=$?
  echo "  [$*] -> rc $rc: $(echo "$out" | tail -1)"
  check "[ $rc = 1 ]" "[$*]: exit status $rc, expected 1"
  check "echo \"\$out\" | grep -q '$key'" "[$*]: message does not name $key: $out"
  check "echo \"\$out\" | grep -q 'run.yaml'" "[$*]: message does not name the config file: $out"
  check "echo \"\$out\" | grep -q '$needle'" "[$*]: message lacks '$needle': $out"
  check "[ ! -e $work/runs ]" "[$*]: a run directory was created"
}
refuse train.device "no CUDA device" -- --set train.device=cuda
refuse train.device "no CUDA device" -- --set train.device=cuda --set train.precision=bf16
refuse comm.backend "resolved to cpu" -- --set comm.backend=nccl --set train.device=cpu
refuse comm.backend "resolved to cpu" -- --set comm.backend=nccl
refuse train.precision "cuda or auto" -- --set train.precision=bf16 --set train.device=cpu
refuse train.precision "resolved to cpu" -- --set train.precision=bf16
# 2 ranks: the device is agreed across ranks after MPI starts; one message (rank 0), exit 1 on both
out=$(mpirun -np 2 --oversubscribe --mca mpi_yield_when_idle 1 -x CUDA_VISIBLE_DEVICES "$bin" train "$work/run.yaml" \
      --quiet --set log.name=x --set train.device=cuda 2>&1); rc=$?
echo "  [2 ranks, train.device=cuda] -> rc $rc, $(echo "$out" | grep -c 'train.device: cuda') message line(s)"
check "[ $rc != 0 ] && [ \$(echo \"\$out\" | grep -c 'pansurv train: .*train.device: cuda') = 1 ] && [ ! -e $work/runs ]" \
  "2 ranks with train.device cuda: rc $rc: $out"
# the same through pansurv cv (its folds live under the run directory too)
out=$("$bin" cv "$work/run.yaml" --quiet --set log.name=cvx --set train.device=cuda 2>&1); rc=$?
check '[ $rc = 1 ] && echo "$out" | grep -q train.device && [ ! -e $work/runs ]' "cv with train.device cuda: rc $rc: $out"

# a bad device name in the file: file:line:column and the key
sed 's/^train:$/train:\n  device: gpu/' "$work/run.yaml" > "$work/bad.yaml"
out=$("$bin" train "$work/bad.yaml" --quiet 2>&1); rc=$?
echo "  [device: gpu] -> rc $rc: $out"
check "[ $rc = 1 ] && echo \"\$out\" | grep -qE 'bad.yaml:[0-9]+:[0-9]+' && echo \"\$out\" | grep -q 'train.device'" \
  "bad device name: $out"

# auto with no GPU trains on the CPU as before (and writes what a run writes)
"$bin" train "$work/run.yaml" --quiet --set log.name=auto >/dev/null 2>"$work/auto.err" || { cat "$work/auto.err"; fail=1; }
check "[ -s $work/runs/auto/summary.json ] && [ -d $work/runs/auto/checkpoints ]" "auto (cpu) run did not complete"

# eval of that checkpoint: --device cuda without a GPU is refused before any output; auto works
ck=$(ls "$work"/runs/auto/checkpoints/ckpt-*.h5 | tail -1)
out=$("$bin" eval --checkpoint "$ck" --data "$work/tiny.h5" --out "$work/ev" --bootstrap 0 --device cuda 2>&1); rc=$?
echo "  [eval --device cuda] -> rc $rc: $(echo "$out" | tail -1)"
check "[ $rc = 1 ] && echo \"\$out\" | grep -q 'train.device' && [ ! -e $work/ev ]" "eval --device cuda: rc $rc: $out"
out=$("$bin" eval --checkpoint "$ck" --data "$work/tiny.h5" --out "$work/ev" --bootstrap 0 --device gpu 2>&1); rc=$?
check "[ $rc = 1 ] && echo \"\$out\" | grep -q -- '--device gpu' && [ ! -e $work/ev ]" "eval --device gpu: rc $rc: $out"
"$bin" eval --checkpoint "$ck" --data "$work/tiny.h5" --out "$work/ev" --bootstrap 0 >/dev/null 2>&1 || fail=1
check "[ -s $work/ev/metrics.json ]" "eval with --device auto wrote no metrics.json"

# bench model: --device cuda refused without a GPU (before MPI), auto runs on the CPU and prints its rows
cfgb=$PANSURV_SOURCE_DIR/tests/nn/bench_small.cfg
out=$("$bin" bench model --config "$cfgb" --device cuda 2>&1); rc=$?
check "[ $rc = 1 ] && echo \"\$out\" | grep -q 'no CUDA device'" "bench model --device cuda: rc $rc: $out"
out=$("$bin" bench model --config "$cfgb" --precision bf16 2>&1); rc=$?
check "[ $rc = 1 ] && echo \"\$out\" | grep -q 'train.precision'" "bench model --precision bf16 on cpu: rc $rc: $out"
out=$("$bin" bench model --config "$cfgb" --device auto --steps 5 2>&1); rc=$?
check "[ $rc = 0 ] && [ \$(echo \"\$out\" | grep -c ' patients/s\$') = 1 ] && echo \"\$out\" | grep -q 'sgemm ceiling'" \
  "bench model --device auto (cpu): rc $rc: $out"

[ $fail = 0 ] && echo "launch_device_cli: ok"
exit $fail
