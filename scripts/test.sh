#!/usr/bin/env bash
# The test command: installs what is missing, builds Release and the
# sanitizer configuration, runs every test (sanitizers: the unit tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
jobs=${PANSURV_JOBS:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release
cmake --build build/release -j"$jobs"
ctest --test-dir build/release -j"$jobs" --output-on-failure

# Sanitizers: CUDA off (device code is not instrumented), asserts on.
cmake -S . -B build/sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPANSURV_SANITIZE=address,undefined \
  -DPANSURV_CUDA=OFF -DPANSURV_NCCL=OFF
cmake --build build/sanitize -j"$jobs"
ctest --test-dir build/sanitize -j"$jobs" -L unit --output-on-failure
