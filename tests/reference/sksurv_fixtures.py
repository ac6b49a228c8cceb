"""td-AUC, Brier and IBS reference values from scikit-survival for pansurv.

Regenerate (needs a venv with scikit-survival; never committed):
  python3 -m venv .venv-ref && .venv-ref/bin/pip install scikit-survival
  .venv-ref/bin/python tests/reference/sksurv_fixtures.py tests/reference
Reads lung.csv (written by make_fixtures.R), writes lung_train.csv,
lung_test.csv and sksurv_fixtures.json. Predicted survival is
S(t|x) = S0(t)^exp(risk) with the Breslow S0 fitted on the training set.
"""
import csv
import json
import os
import sys

import numpy as np
import sksurv
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import brier_score, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

out = sys.argv[1] if len(sys.argv) > 1 else "."
with open(os.path.join(out, "lung.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
fields = list(rows[0].keys())
# A deterministic split: every third row is a test patient.
train_rows = [r for i, r in enumerate(rows) if i % 3 != 0]
test_rows = [r for i, r in enumerate(rows) if i % 3 == 0]
for name, part in (("lung_train.csv", train_rows), ("lung_test.csv", test_rows)):
    with open(os.path.join(out, name), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, quoting=csv.QUOTE_NONNUMERIC)
        w.writeheader()
        for r in part:
            w.writerow({k: float(v) for k, v in r.items()})


def arrays(part):
    t = np.array([float(r["time"]) for r in part])
    e = np.array([float(r["status"]) == 1 for r in part])
    x = np.array([float(r["risk"]) for r in part])
    return t, e, x


def case(train, test, times):
    tt, te, tx = arrays(train)
    st, se, sx = arrays(test)
    y_train, y_test = Surv.from_arrays(te, tt), Surv.from_arrays(se, st)
    base = BreslowEstimator().fit(tx, te, tt)
    surv = np.array([[fn(t) for t in times] for fn in base.get_survival_function(sx)])
    auc, _ = cumulative_dynamic_auc(y_train, y_test, sx, times)
    _, bs = brier_score(y_train, y_test, surv, times)
    ibs = integrated_brier_score(y_train, y_test, surv, times)
    return {"times": list(map(float, times)), "td_auc": list(map(float, auc)), "brier": list(map(float, bs)),
            "ibs": float(ibs)}


times = np.array([100.0, 200.0, 300.0, 400.0, 500.0])
fx = {
    "sksurv_version": sksurv.__version__,
    "lung_same": case(rows, rows, times),
    "lung_split": case(train_rows, test_rows, np.array([150.0, 250.0, 350.0, 450.0])),
}
with open(os.path.join(out, "sksurv_fixtures.json"), "w") as f:
    json.dump(fx, f, indent=1)
print("wrote", os.path.join(out, "sksurv_fixtures.json"))
