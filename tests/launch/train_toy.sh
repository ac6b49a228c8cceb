#!/usr/bin/env bash
# Launcher tests on the toy workload (train.workload: toy): world-size
# equivalence, determinism, bit-exact resume (also at another world size),
# checkpoint fallback, signal -> checkpoint -> exit 3, bad inputs.
# Usage: train_toy.sh MODE   (PANSURV_BIN from CTest)
set -uo pipefail
mode=$1
bin=${PANSURV_BIN:?}
work=$(mktemp -d /tmp/ps_train_XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2" >&2; fail=1; fi; }
mpi() { local np=$1; shift; mpirun -np "$np" --oversubscribe --mca mpi_yield_when_idle 1 "$@"; }

cat > "$work/toy.yaml" <<YAML
train:
  workload: toy
  epochs: 3
  global_batch: 32
  seed: 7
optim:
  lr: 0.05
  momentum: 0.9
checkpoint:
  every_steps: 5
  keep: 3
log:
  run_dir: $work/runs
YAML
crc() { sed -n 's/.*"param_crc32": "\([0-9a-f]*\)".*/\1/p' "$work/runs/$1/summary.json"; }
# loss column of metrics.csv, one line per step
losses() { tail -n +2 "$work/runs/$1/metrics.csv" | cut -d, -f1,3; }
# max relative difference of the loss at equal steps of two runs
maxrel() { join -t, <(losses "$1" | sort -t, -k1,1) <(losses "$2" | sort -t, -k1,1) |
  awk -F, 'BEGIN{m=0;n=0} {d=$2-$3; if(d<0)d=-d; s=$3<0?-$3:$3; r=d/(s>1e-30?s:1e-30); if(r>m)m=r; n++}
           END{if(n==0)print "nan"; else printf "%.3g %d\n", m, n}'; }

case $mode in
equivalence) # same loss at each of 20 steps on 1, 2 and 4 ranks (<= 1e-5 relative)
  for np in 1 2 4; do
    mpi $np "$bin" train "$work/toy.yaml" --quiet --set log.name=np$np --set train.max_steps=20 || fail=1
  done
  for np in 2 4; do
    read -r m n < <(maxrel np1 np$np)
    echo "np1 vs np$np: max rel loss diff $m over $n steps"
    check "[ \"$n\" = 20 ] && awk -v m=$m 'BEGIN{exit !(m<=1e-5)}'" "np$np loss differs from np1 by $m (> 1e-5)"
  done ;;
determinism) # bit-identical parameters from two runs with the same seed and world size
  for r in a b; do mpi 2 "$bin" train "$work/toy.yaml" --quiet --set log.name=$r --set train.max_steps=12 || fail=1; done
  echo "crc a=$(crc a) b=$(crc b)"
  check '[ -n "$(crc a)" ] && [ "$(crc a)" = "$(crc b)" ]' "two runs differ"
  mpi 2 "$bin" train "$work/toy.yaml" --quiet --set log.name=c --set train.max_steps=12 --set train.seed=8 || fail=1
  check '[ "$(crc a)" != "$(crc c)" ]' "another seed gives the same parameters (checksum cannot fail?)" ;;
resume) # k steps, stop, resume k more = 2k uninterrupted steps (bit-exact), crossing an epoch boundary
  mpi 2 "$bin" train "$work/toy.yaml" --quiet --set log.name=full --set train.max_steps=24 || fail=1
  mpi 2 "$bin" train "$work/toy.yaml" --quiet --set log.name=part --set train.max_steps=12 || fail=1
  mpi 2 "$bin" train "$work/toy.yaml" --quiet --set log.name=part --set train.max_steps=24 --resume auto || fail=1
  echo "full=$(crc full) resumed=$(crc part)"
  check '[ -n "$(crc full)" ] && [ "$(crc full)" = "$(crc part)" ]' "resume is not bit-exact"
  check '[ "$(losses full | md5sum)" = "$(losses part | md5sum)" ]' "metrics.csv of the resumed run differs"
  check '[ $(ls $work/runs/part/checkpoints/ckpt-*.h5 | wc -l) = 3 ]' "keep: 3 not honoured" ;;
resume_np2to1) # 2 ranks for 12 steps, then 1 rank to 24: losses match the 2-rank run to 1e-5
  mpi 2 "$bin" train "$work/toy.yaml" --quiet --set log.name=full --set train.max_steps=24 || fail=1
  mpi 2 "$bin" train "$work/toy.yaml" --quiet --set log.name=part --set train.max_steps=12 || fail=1
  "$bin" train "$work/toy.yaml" --quiet --set log.name=part --set train.max_steps=24 --resume auto || fail=1
  read -r m n < <(maxrel full part)
  echo "2 ranks vs 2->1 ranks: max rel loss diff $m over $n steps"
  check "[ \"$n\" = 24 ] && awk -v m=$m 'BEGIN{exit !(m<=1e-5)}'" "losses after resuming on 1 rank differ by $m" ;;
fallback) # truncated / corrupt newest checkpoints: auto falls back, an explicit path is refused
  "$bin" train "$work/toy.yaml" --quiet --set log.name=f --set train.max_steps=15 || fail=1
  d=$work/runs/f/checkpoints
  truncate -s 2000 $d/ckpt-0000000015.h5
  # flip bytes inside the parameter data of step 10 (HDF5 still opens it; the checksum must catch it)
  python3 - "$d/ckpt-0000000010.h5" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read())
i = len(b) // 2; b[i] ^= 0xff; b[i + 1] ^= 0x55
open(p, 'wb').write(bytes(b))
PY
  out=$("$bin" train "$work/toy.yaml" --set log.name=f --set train.max_steps=15 --resume auto 2>&1); rc=$?
  echo "$out" | grep -E "skipping|resumed"
  check '[ $rc = 0 ]' "resume auto failed: $out"
  check 'echo "$out" | grep -q "skipping invalid checkpoint .*ckpt-0000000015.h5"' "no message for the truncated checkpoint"
  check 'echo "$out" | grep -q "skipping invalid checkpoint .*ckpt-0000000010.h5.*checksum"' "no checksum message for the corrupt one"
  check 'echo "$out" | grep -q "resumed from .*ckpt-0000000005.h5 at step 5"' "did not resume from step 5"
  truncate -s 2000 $d/ckpt-0000000015.h5
  out=$("$bin" train "$work/toy.yaml" --set log.name=g --resume $d/ckpt-0000000015.h5 2>&1); rc=$?
  echo "$out" | tail -1
  check '[ $rc = 1 ] && echo "$out" | grep -q "refusing this checkpoint"' "a corrupt --resume PATH was not refused" ;;
signal) # SIGUSR1 to a running 2-rank job: finish the step, checkpoint, exit 3; resume completes
  export PANSURV_TOY_STEP_MS=150
  # mpirun itself in the background (a shell function would put a subshell between kill and mpirun)
  mpirun -np 2 --oversubscribe --mca mpi_yield_when_idle 1 "$bin" train "$work/toy.yaml" --quiet --set log.name=s \
    --set checkpoint.every_steps=0 &
  pid=$!
  for _ in $(seq 100); do
    [ -f $work/runs/s/metrics.csv ] && [ $(wc -l < $work/runs/s/metrics.csv) -ge 4 ] && break; sleep 0.1
  done
  kill -USR1 $pid; wait $pid; rc=$?
  echo "exit status after SIGUSR1: $rc"
  check '[ $rc = 3 ]' "expected exit status 3, got $rc"
  last=$(tail -1 $work/runs/s/metrics.csv | cut -d, -f1)
  ck=$(printf "%s/runs/s/checkpoints/ckpt-%010d.h5" $work $last)
  check '[ -f $ck ]' "no checkpoint at the last step $last"
  check 'grep -q "\"stopped\": \"signal\"" $work/runs/s/summary.json' "summary does not say signal"
  unset PANSURV_TOY_STEP_MS
  mpi 2 "$bin" train "$work/toy.yaml" --quiet --set log.name=s --resume auto || fail=1
  mpi 2 "$bin" train "$work/toy.yaml" --quiet --set log.name=ref || fail=1
  echo "stopped at $last; resumed crc=$(crc s) uninterrupted crc=$(crc ref)"
  check '[ "$(crc s)" = "$(crc ref)" ]' "signal + resume differs from an uninterrupted run"
  # A second SIGTERM exits at once (128+15) without a checkpoint.
  PANSURV_TOY_STEP_MS=3000 "$bin" train "$work/toy.yaml" --quiet --set log.name=t2 &
  pid=$!; sleep 1.5; kill -TERM $pid; sleep 0.3; kill -TERM $pid; wait $pid; rc=$?
  echo "exit status after two SIGTERMs: $rc"
  check '[ $rc = 143 ]' "second SIGTERM: expected 143, got $rc"
  check '[ -z "$(ls $work/runs/t2/checkpoints/)" ]' "a checkpoint was written after the second SIGTERM" ;;
badinput)
  out=$("$bin" train /nonexistent.yaml 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "cannot open config ./nonexistent.yaml"' "missing config: $rc $out"
  out=$("$bin" train "$work/toy.yaml" --set train.global_batch=600 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "global_batch = 600 is larger than the toy training split"' "batch too large: $out"
  out=$(mpi 2 "$bin" train "$work/toy.yaml" --set train.global_batch=600 2>&1); rc=$?
  check '[ $rc = 1 ]' "batch too large on 2 ranks: exit $rc"
  out=$("$bin" train "$work/toy.yaml" --set train.epochz=3 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "did you mean .train.epochs."' "typo in --set: $out"
  out=$("$bin" train "$work/toy.yaml" --resume 2>&1); rc=$?
  check '[ $rc = 2 ]' "--resume without value: exit $rc"
  out=$("$bin" train "$work/toy.yaml" --set train.workload=model --set data.path=x.h5 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "x.h5: cannot open"' "missing cohort file: $out"
  printf 'not hdf5' > $work/junk.h5
  out=$("$bin" train "$work/toy.yaml" --resume $work/junk.h5 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "not a readable HDF5 file"' "junk checkpoint: $out"
  mkdir -p $work/ro && touch $work/ro/runs && chmod 0444 $work/ro/runs
  out=$("$bin" train "$work/toy.yaml" --set log.run_dir=$work/ro/runs 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "runs"' "run dir under a file: $out"
  ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
[ $fail = 0 ] && echo "launch_train_$mode: ok"
exit $fail
