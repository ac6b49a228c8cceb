#!/bin/sh
# pansurv bench comm on 2 ranks with tiny sizes: every op and --buckets run,
# print their tables and exit 0; a corrupted value exits non-zero; bad
# options exit 2. Usage: bench_smoke.sh MPIEXEC PANSURV
set -u
mpiexec=$1 bin=$2
run() { "$mpiexec" -n 2 --oversubscribe --mca mpi_yield_when_idle 1 "$bin" bench comm "$@"; }
fail=0
for op in allreduce allgather broadcast; do
  out=$(run --op $op --min 4K --max 64K --iters 3 --warmup 1) || { echo "FAIL: --op $op exited non-zero"; fail=1; }
  echo "$out"
  rows=$(echo "$out" | grep -c '^ *[0-9]')
  [ "$rows" -eq 5 ] || { echo "FAIL: --op $op printed $rows rows, want 5 (4K..64K)"; fail=1; }
  echo "$out" | grep -q 'Out of bounds values : 0 OK' || { echo "FAIL: --op $op validation line"; fail=1; }
done
out=$(run --buckets --params 64K --bucket-bytes 32K --backward-ms 2 --layers 8 --iters 3 --warmup 1) ||
  { echo "FAIL: --buckets exited non-zero"; fail=1; }
echo "$out"
echo "$out" | grep -q '^ bucketed (overlapped)' || { echo "FAIL: --buckets row missing"; fail=1; }
if run --min 4K --max 8K --iters 2 --warmup 0 --corrupt >/dev/null 2>&1; then
  echo "FAIL: a corrupted value did not make the bench exit non-zero"; fail=1
fi
if run --buckets --params 4K --iters 2 --warmup 0 --corrupt >/dev/null 2>&1; then
  echo "FAIL: --buckets --corrupt exited 0"; fail=1
fi
"$bin" bench comm --min 4X >/dev/null 2>&1; [ $? -eq 2 ] || { echo "FAIL: --min 4X not rejected with exit 2"; fail=1; }
"$bin" bench comm --op reduce >/dev/null 2>&1; [ $? -eq 2 ] || { echo "FAIL: --op reduce not rejected"; fail=1; }
[ $fail -eq 0 ] && echo "ok"
exit $fail
