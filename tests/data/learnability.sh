#!/usr/bin/env bash
# Simulates the default demo cohort, exports simple features and checks with R survival that each
# modality carries learnable signal and that together they beat any single one (docs/simulator.md).
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"${PANSURV_BIN:?}" sim --out "$dir/demo.h5" > "$dir/sim.log"
"$1" "$dir/demo.h5" "$dir/demo.csv"
Rscript "$(dirname "$0")/learnability.R" "$dir/demo.csv"
