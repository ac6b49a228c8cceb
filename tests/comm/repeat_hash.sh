#!/bin/sh
# Runs the gradient-sync test twice as separate N-rank jobs and requires the
# same checksum of the reduced gradients: determinism across runs, not just
# within one process. Usage: repeat_hash.sh MPIEXEC N TEST_EXE
set -u
mpiexec=$1 np=$2 exe=$3
h1=$("$mpiexec" -n "$np" --oversubscribe --mca mpi_yield_when_idle 1 "$exe" hash | sed -n 's/^hash=//p') || exit 1
h2=$("$mpiexec" -n "$np" --oversubscribe --mca mpi_yield_when_idle 1 "$exe" hash | sed -n 's/^hash=//p') || exit 1
echo "run 1: $h1"
echo "run 2: $h2"
[ -n "$h1" ] && [ "$h1" = "$h2" ] || { echo "FAIL: checksums differ or missing"; exit 1; }
echo "ok: bit-identical across runs"
