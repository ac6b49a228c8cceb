#!/usr/bin/env bash
# The README demo: on a fresh Debian 12 machine, installs what is missing,
# builds pansurv (Release), simulates the built-in cohort (3000 patients,
# RNA-seq + clinical + 8 H&E-like tiles of 32x32 each; test split >= 1000),
# trains configs/demo.yaml on 2 MPI ranks, evaluates the best checkpoint on the
# test split (metrics, predictions, PNG plots), fits the clinical-only CoxPH
# baseline on the same training split, and ends with the line
#   test C-index 0.xxxx (oracle 0.xxxx)
# (the model's Harrell C, then that of the true log-hazard on the same patients).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${PANSURV_JOBS:-2}
np=${PANSURV_DEMO_RANKS:-2}
scripts/install-deps.sh demo
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PANSURV_PROGRESS=${PANSURV_PROGRESS:-plain}

echo "== build"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build build/release -j"$jobs" --target pansurv >/dev/null
P=$PWD/build/release/launch/pansurv

echo "== simulate the cohort"
mkdir -p demo
rm -rf demo/runs/demo demo/eval demo/baseline
"$P" sim --out demo/cohort.h5 --patients 3000 --tiles 8 --tile-size 32 --seed 1

echo "== train configs/demo.yaml on $np ranks"
mpirun -np "$np" --oversubscribe --mca mpi_yield_when_idle 1 "$P" train configs/demo.yaml

echo "== evaluate the best checkpoint on the test split"
mpirun -np "$np" --oversubscribe --mca mpi_yield_when_idle 1 "$P" eval \
  --checkpoint demo/runs/demo/checkpoints/best.h5 --data demo/cohort.h5 --split test --out demo/eval
echo "plots: $(ls demo/eval/*.png | tr '\n' ' ')"

echo "== clinical-only CoxPH baseline (fit on the training split, scored on the test split)"
covs=$(head -1 demo/eval/clinical_train.csv | tr ',' '\n' | tail -n +4 | grep -v '^type_SIM01$' | paste -sd,)
"$P" coxph --csv demo/eval/clinical_train.csv --time time --event event --covariates "$covs" --json \
  > demo/eval/coxph_clinical.json
# linear predictor on the test split from the fitted coefficients
python3 - demo/eval/coxph_clinical.json demo/eval/clinical_test.csv demo/eval/clinical_test_lp.csv <<'PY'
import csv, json, sys
coef = json.load(open(sys.argv[1]))["coef"]
rows = list(csv.DictReader(open(sys.argv[2])))
with open(sys.argv[3], "w", newline="") as f:
    w = csv.writer(f); w.writerow(["time", "event", "lp"])
    for r in rows:
        w.writerow([r["time"], r["event"], sum(b * float(r[k]) for k, b in coef.items())])
PY
"$P" metrics --csv demo/eval/clinical_test_lp.csv --time time --event event --risk lp --json > demo/eval/coxph_test_metrics.json
coxc=$(python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["harrell_c"])' demo/eval/coxph_test_metrics.json)
echo "clinical-only CoxPH test C-index $coxc (covariates: $covs)"

read -r c oracle < <(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("%.4f %.4f" % (m["harrell_c"], m["oracle_c"]))' demo/eval/metrics.json)
echo "outputs: demo/runs/demo (metrics.csv, summary.json, model_card.md), demo/eval (metrics.json, predictions.csv, plots)"
echo "test C-index $c (oracle $oracle)"
