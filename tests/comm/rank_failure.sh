#!/bin/bash
# One rank of a 2-rank job dies (kill) or freezes (hang); the job must end
# with a non-zero status within BOUND seconds and leave no process behind.
# Usage: rank_failure.sh MPIEXEC TEST_EXE kill|hang BOUND
set -u
mpiexec=$1 exe=$2 mode=$3 bound=$4
tag="pansurv-failure-test-$$-$RANDOM" # unique argv token to find our own processes
t0=$(date +%s%N)
# The outer timeout only keeps ctest from hanging if everything else fails.
log=$(mktemp)
timeout -k 5 $((bound + 30)) "$mpiexec" -n 2 --oversubscribe --mca mpi_yield_when_idle 1 "$exe" "$mode" "$tag" >"$log" 2>&1
rc=$?
cat "$log"
t1=$(date +%s%N)
elapsed_ms=$(( (t1 - t0) / 1000000 ))
elapsed="$((elapsed_ms / 1000)).$(printf %03d $((elapsed_ms % 1000)))"
echo "job exit status $rc after $elapsed s (bound $bound s)"
sleep 1
left=$(pgrep -f "$tag" || true)
fail=0
if [ "$rc" -eq 0 ]; then echo "FAIL: job exited 0"; fail=1; fi
# The failure must have happened mid-run (not a start-up error).
grep -q "rank 1: .* now" "$log" || { echo "FAIL: the rank never reached its $mode point"; fail=1; }
rm -f "$log"
# (137 is also mpirun's own status for a rank killed by signal 9, so the time decides "hung".)
if [ "$rc" -eq 124 ]; then echo "FAIL: job hung (stopped by the outer timeout)"; fail=1; fi
if [ "$elapsed_ms" -gt $((bound * 1000)) ]; then echo "FAIL: took longer than $bound s"; fail=1; fi
if [ -n "$left" ]; then
  echo "FAIL: processes left behind: $left"
  for pid in $left; do kill -9 "$pid" 2>/dev/null; done # only ours: they carry $tag
  fail=1
fi
[ $fail -eq 0 ] && echo "ok: job ended non-zero in $elapsed s, nothing left behind"
exit $fail
