#!/usr/bin/env bash
# The commands shown in docs/data-format.md and docs/simulator.md, plus CLI usage errors.
set -euo pipefail
bin=${PANSURV_BIN:?}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
"$bin" sim --out cohort.h5 --patients 500 --genes 100 --tiles 4 --tile-size 16 | tee sim.log
grep -q "oracle C-index" sim.log
"$bin" check cohort.h5 | tee check.log
grep -q "patients 500, genes 100" check.log
"$bin" bench io --data cohort.h5 --steps 3 --warmup 1 --compute-ms 5 | tee bench.log
grep -q "^prefetch" bench.log
# usage errors exit 2, bad values name the option
set +e
"$bin" sim --patients 10 >/dev/null 2>&1; [ $? -eq 2 ] || { echo "sim without --out should exit 2"; exit 1; }
"$bin" sim --out x.h5 --censoring 1.5 2>err.log; rc=$?
[ $rc -eq 2 ] && grep -q -- "--censoring" err.log || { echo "bad --censoring: rc $rc"; exit 1; }
"$bin" check >/dev/null 2>&1; [ $? -eq 2 ] || { echo "check without FILE should exit 2"; exit 1; }
"$bin" check missing.h5 2>err.log; rc=$?
[ $rc -eq 1 ] && grep -q "missing.h5" err.log || { echo "check of a missing file: rc $rc"; exit 1; }
[ ! -e x.h5 ] && [ ! -e x.h5.tmp ] || { echo "a failed sim left a file"; exit 1; }
echo "data_cli: ok"
