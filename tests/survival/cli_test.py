"""CLI tests of `pansurv coxph` and `pansurv metrics` against the committed R
(r_fixtures.json) and scikit-survival (sksurv_fixtures.json) reference values.

usage: cli_test.py CASE     (PANSURV_BIN and PANSURV_SOURCE_DIR from the harness)
Standard library only. Exit code is the verdict.
"""
import json
import os
import subprocess
import sys
import tempfile

BIN = os.environ["PANSURV_BIN"]
REF = os.path.join(os.environ["PANSURV_SOURCE_DIR"], "tests", "reference")
R = json.load(open(os.path.join(REF, "r_fixtures.json")))
SK = json.load(open(os.path.join(REF, "sksurv_fixtures.json")))
failures = 0


def check(cond, msg):
    global failures
    if not cond:
        failures += 1
        print("FAIL:", msg)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def run(args, ok=True):
    p = subprocess.run([BIN] + args, capture_output=True, text=True)
    if ok:
        if p.returncode != 0:
            raise SystemExit(f"FAIL: pansurv {' '.join(args)} exited {p.returncode}: {p.stderr}")
        return json.loads(p.stdout)  # stdout carries exactly one JSON object
    return p


def csv(name):
    return os.path.join(REF, name)


# Tolerances (issue 5): coef and se 1e-6 relative (R stops at its own eps);
# loglik 1e-9 relative; C-index 1e-9 absolute with exact pair counts.
def check_fit(tag, got, ref):
    for k, v in ref["coef"].items():
        check(rel(got["coef"][k], v) <= 1e-6, f"{tag}: coef[{k}] {got['coef'][k]!r} vs R {v!r}")
        check(rel(got["se"][k], ref["se"][k]) <= 1e-6, f"{tag}: se[{k}] {got['se'][k]!r} vs R {ref['se'][k]!r}")
    check(rel(got["loglik"], ref["loglik"]) <= 1e-9, f"{tag}: loglik {got['loglik']!r} vs R {ref['loglik']!r}")
    check(rel(got["loglik_null"], ref["loglik_null"]) <= 1e-9, f"{tag}: loglik_null")
    check(abs(got["concordance"] - ref["concordance"]) <= 1e-9,
          f"{tag}: concordance {got['concordance']!r} vs R {ref['concordance']!r}")
    check(got["n"] == ref["n"] and got["events"] == ref["events"], f"{tag}: n/events")
    check(got["converged"] is True, f"{tag}: not converged")
    check(rel(got["lr_test"]["chisq"], ref["lr"]) <= 1e-6, f"{tag}: LR {got['lr_test']['chisq']} vs {ref['lr']}")
    check(rel(got["wald_test"]["chisq"], ref["wald"]) <= 1e-6, f"{tag}: Wald {got['wald_test']['chisq']} vs {ref['wald']}")
    check(rel(got["score_test"]["chisq"], ref["score"]) <= 1e-9, f"{tag}: score {got['score_test']['chisq']} vs {ref['score']}")
    print(f"  {tag}: coef {got['coef']} loglik {got['loglik']:.12g} C {got['concordance']:.10f}")


def coxph(csvname, covs, ties="efron", strata=None, extra=()):
    tcol, ecol = ("futime", "fustat") if csvname == "ovarian.csv" else ("time", "status")
    args = ["coxph", "--csv", csv(csvname), "--time", tcol, "--event", ecol, "--ties", ties, "--json"]
    if covs:
        args += ["--covariates", ",".join(covs)]
    if strata:
        args += ["--strata", strata]
    return run(args + list(extra))


def case_coxph_book():
    b = coxph("book1.csv", ["x"], "breslow")
    check_fit("book1 breslow", b, R["book1_breslow"])
    check(abs(b["coef"]["x"] - 1.4752849) < 5e-8, "book1: Breslow beta is not 1.4752849")
    e = coxph("book1.csv", ["x"], "efron")
    check_fit("book2 efron", e, R["book2_efron"])
    check(abs(e["coef"]["x"] - 1.676857) < 5e-7, "book2: Efron beta is not 1.676857")
    # Without --covariates every other column is used (here just x); the note goes to stderr.
    p = run(["coxph", "--csv", csv("book1.csv"), "--time", "time", "--event", "status", "--json"], ok=False)
    check(p.returncode == 0 and "note" in p.stderr and json.loads(p.stdout)["coef"].keys() == {"x"},
          "default covariates / stderr note")


def case_coxph_lung():
    covs = ["age", "sex", "ph_ecog", "meal_cal"]
    for ties in ("efron", "breslow"):
        check_fit(f"lung {ties}", coxph("lung.csv", covs, ties), R[f"lung_{ties}"])
        check_fit(f"lung strata {ties}", coxph("lung.csv", ["age", "ph_ecog"], ties, "sex"),
                  R[f"lung_strata_{ties}"])
    check_fit("lung standardized", coxph("lung.csv", ["age", "ph_ecog"], extra=["--standardize"]),
              R["lung_standardized"])


def case_coxph_veteran():
    covs = ["karno", "age", "trt"]
    check_fit("veteran efron", coxph("veteran.csv", covs), R["veteran_efron"])
    check_fit("veteran breslow", coxph("veteran.csv", covs, "breslow"), R["veteran_breslow"])
    check_fit("veteran strata(celltype)", coxph("veteran.csv", ["karno", "trt"], strata="celltype"),
              R["veteran_strata"])
    check_fit("ovarian efron", coxph("ovarian.csv", ["age", "ecog", "rx"]), R["ovarian_efron"])


def case_coxph_csv_dialects():
    # The lung fit from a CRLF, fully quoted copy with extra wide junk columns.
    src = open(csv("lung.csv")).read().splitlines()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "lung_crlf.csv")
        with open(path, "w", newline="") as f:
            for i, line in enumerate(src):
                cells = [c.strip('"') for c in line.split(",")]
                junk = [f"junk{j}" if i == 0 else '"a, ""b""\nc"' for j in range(3000)]
                f.write(",".join(f'"{c}"' for c in cells) + "," + ",".join(junk) + "\r\n")
        got = run(["coxph", "--csv", path, "--time", "time", "--event", "status", "--covariates",
                   "age,sex,ph_ecog,meal_cal", "--json"])
        check_fit("lung CRLF/quoted/3000 extra columns", got, R["lung_efron"])
        # Covariates of size 1e4 (shifted by 1e4): centring keeps every digit of
        # the fit (coef 1e-6, loglik 1e-9 against R on the unshifted data).
        path = os.path.join(d, "lung_shift.csv")
        with open(path, "w") as f:
            head = src[0].replace('"', "").split(",")
            f.write(",".join(head) + "\n")
            for line in src[1:]:
                v = dict(zip(head, line.split(",")))
                v["age"] = repr(float(v["age"]) + 1e4)
                v["meal_cal"] = repr(float(v["meal_cal"]) + 1e4)
                f.write(",".join(v[h] for h in head) + "\n")
        got = run(["coxph", "--csv", path, "--time", "time", "--event", "status", "--covariates",
                   "age,sex,ph_ecog,meal_cal", "--json"])
        check_fit("lung, covariates + 1e4", got, R["lung_efron"])


def case_coxph_badinput():
    with tempfile.TemporaryDirectory() as d:
        def write(name, text):
            p = os.path.join(d, name)
            open(p, "w").write(text)
            return p

        good = "time,status,x,y\n1,1,0.5,1\n2,0,1.5,2\n3,1,0.2,3\n4,1,0.9,4\n"
        cases = [
            (write("a.csv", good), ["--covariates", "x,zz"], ["zz"]),
            (write("b.csv", "time,status,x\n1,1,0.5\n2,0,\n3,1,1\n"), [], ["row 2", "'x'"]),
            (write("c.csv", "time,status,x\n1,1,0.5\n2,NA,1\n3,1,1\n"), [], ["row 2", "'status'"]),
            (write("d.csv", "time,status,x\n1,1,0.5\n2,2,1\n3,1,1\n"), [], ["row 2", "'status'", "0 or 1"]),
            (write("e.csv", "time,status,x,c\n1,1,0.5,7\n2,0,1,7\n3,1,1,7\n"), [], ["'c'", "constant"]),
            (write("f.csv", "time,status,x,x2\n1,1,0.5,1\n2,0,1,2\n3,1,2,4\n4,1,3,6\n"), [], ["'x2'", "collinear"]),
            (write("g.csv", "time,status,x\n1,1,0.5\n-2,0,1\n3,1,1\n"), [], ["row 2", "'time'"]),
            (os.path.join(d, "missing.csv"), [], ["missing.csv"]),
        ]
        for path, extra, needles in cases:
            p = run(["coxph", "--csv", path, "--time", "time", "--event", "status", "--json"] + extra, ok=False)
            check(p.returncode != 0, f"{path}: exit code 0 on bad input")
            check(p.stdout == "", f"{path}: something was written to stdout on failure: {p.stdout!r}")
            for s in needles:
                check(s in p.stderr, f"{path}: message lacks {s!r}: {p.stderr.strip()}")
            print("  expected error:", p.stderr.strip())
        p = run(["coxph", "--csv", csv("book1.csv"), "--time", "time"], ok=False)
        check(p.returncode == 2, "missing --event must be a usage error (exit 2)")
        p = run(["coxph", "--csv", csv("book1.csv"), "--time", "time", "--event", "status", "--ties", "exact"], ok=False)
        check(p.returncode != 0 and "exact" in p.stderr, "bad --ties")


def metrics(csvname, risk="risk", extra=()):
    return run(["metrics", "--csv", csv(csvname), "--time", "time", "--event", "status", "--risk", risk, "--json"]
               + list(extra))


def check_conc(tag, c, se, counts, ref):
    check(abs(c - ref["c"]) <= 1e-9, f"{tag}: C {c!r} vs R {ref['c']!r}")
    if se is not None:
        check(rel(se * se, ref["var"]) <= 1e-9, f"{tag}: se^2 {se * se!r} vs R var {ref['var']!r}")
    if counts is not None:
        rc = ref["count"]
        for mine, theirs in (("concordant", "concordant"), ("discordant", "discordant"), ("tied_risk", "tied.x"),
                             ("tied_time", "tied.y"), ("tied_both", "tied.xy")):
            check(counts[mine] == rc[theirs], f"{tag}: {mine} {counts[mine]} vs R {rc[theirs]}")
    print(f"  {tag}: C {c:.12f} vs R {ref['c']:.12f}")


def check_km(tag, km, ref):
    for key in ("time", "n_risk", "n_event", "surv", "std_err", "lower", "upper"):
        a, b = km[key], ref[key]
        check(len(a) == len(b), f"{tag}: km {key} length {len(a)} vs {len(b)}")
        for x, y in zip(a, b):
            check((x is None and y is None) or (x is not None and y is not None and abs(x - y) <= 1e-12 * max(1, abs(y))),
                  f"{tag}: km {key} {x!r} vs R {y!r}")
    for key in ("median", "median_lower", "median_upper"):
        check(km[key] == ref[key], f"{tag}: km {key} {km[key]!r} vs R {ref[key]!r}")
    print(f"  {tag}: KM median {km['median']} [{km['median_lower']}, {km['median_upper']}]")


def check_logrank(tag, lr, ref):
    check(rel(lr["chisq"], ref["chisq"]) <= 1e-9 and lr["df"] == ref["df"], f"{tag}: chisq {lr['chisq']} vs {ref['chisq']}")
    check(rel(lr["p"], ref["p"]) <= 1e-6, f"{tag}: p {lr['p']} vs {ref['p']}")
    groups = ref["groups"] if isinstance(ref["groups"], list) else [ref["groups"]]
    for g, o, e in zip(groups, ref["observed"], ref["expected"]):
        check(lr["observed"][g] == o and rel(lr["expected"][g], e) <= 1e-12, f"{tag}: group {g} O/E")
    print(f"  {tag}: log-rank chisq {lr['chisq']:.10g} df {lr['df']} p {lr['p']:.4g}")


def case_metrics_lung():
    m = metrics("lung.csv", extra=["--km", "--group", "sex"])
    check_conc("lung harrell", m["harrell_c"], m["harrell_c_se"], m["counts"], R["lung_conc"])
    check_conc("lung uno", m["uno_c"], None, None, R["lung_uno"])
    check(m["n"] == 180 and m["events"] == 133, "lung n/events")
    check_km("lung", m["km"], R["lung_km"])
    check_logrank("lung sex", m["logrank"], R["lung_logrank"])
    t = metrics("lung.csv", extra=["--tau", "500"])
    check_conc("lung uno tau=500", t["uno_c"], None, None, R["lung_uno_tau"])
    h = metrics("half.csv", extra=["--km"])
    check_km("S = 0.5 exactly", h["km"], R["half_km"])


def case_metrics_veteran():
    m = metrics("veteran.csv", extra=["--group", "celltype"])
    check_conc("veteran harrell", m["harrell_c"], m["harrell_c_se"], m["counts"], R["vet_conc"])
    check_conc("veteran uno", m["uno_c"], None, None, R["vet_uno"])
    check_logrank("veteran celltype", m["logrank"], R["vet_logrank"])
    for g, v in m["per_group"].items():
        check_conc(f"veteran per_group {g}", v["harrell_c"], v["harrell_c_se"], None, R[f"vet_conc_{g}"])


def case_metrics_sksurv():
    for tag, args in (("lung_same", ["--times", "100,200,300,400,500"]),
                      ("lung_split", ["--times", "150,250,350,450", "--train", csv("lung_train.csv")])):
        ref = SK[tag]
        name = "lung.csv" if tag == "lung_same" else "lung_test.csv"
        m = metrics(name, extra=args)
        for t, a, b in zip(ref["times"], ref["td_auc"], ref["brier"]):
            key = f"{t:g}"
            check(abs(m["td_auc"][key] - a) <= 1e-9, f"{tag}: td_auc({key}) {m['td_auc'][key]} vs sksurv {a}")
            check(abs(m["brier"][key] - b) <= 1e-9, f"{tag}: brier({key}) {m['brier'][key]} vs sksurv {b}")
        check(abs(m["ibs"] - ref["ibs"]) <= 1e-9, f"{tag}: ibs {m['ibs']} vs sksurv {ref['ibs']}")
        print(f"  {tag}: td_auc {list(m['td_auc'].values())} ibs {m['ibs']:.12f} (sksurv {ref['ibs']:.12f})")


def case_metrics_bootstrap():
    a = metrics("lung.csv", extra=["--bootstrap", "200", "--seed", "11"])["bootstrap"]
    b = metrics("lung.csv", extra=["--bootstrap", "200", "--seed", "11"])["bootstrap"]
    c = metrics("lung.csv", extra=["--bootstrap", "200", "--seed", "12"])["bootstrap"]
    check(a == b, "bootstrap does not replay from its seed")
    check(a["harrell_c_ci"] != c["harrell_c_ci"], "bootstrap ignores the seed")
    lo, hi = a["harrell_c_ci"]
    check(lo < R["lung_conc"]["c"] < hi, f"bootstrap CI [{lo}, {hi}] misses C")
    print(f"  bootstrap 200: Harrell CI [{lo:.4f}, {hi:.4f}], Uno CI {a['uno_c_ci']}")


def case_metrics_badinput():
    with tempfile.TemporaryDirectory() as d:
        bad = os.path.join(d, "bad.csv")
        open(bad, "w").write("time,status,risk\n1,1,0.5\n2,0,\n")
        for args, needles in (
            (["--csv", csv("lung.csv"), "--time", "time", "--event", "status", "--risk", "nope"], ["'nope'"]),
            (["--csv", bad, "--time", "time", "--event", "status", "--risk", "risk"], ["row 2", "'risk'"]),
            (["--csv", csv("lung.csv"), "--time", "time", "--event", "status", "--risk", "risk", "--times", "300,100"],
             ["--times"]),
            (["--csv", csv("lung.csv"), "--time", "time", "--event", "status", "--risk", "risk", "--times", "2000,3000"],
             ["G"]),
        ):
            p = run(["metrics", "--json"] + args, ok=False)
            check(p.returncode != 0 and p.stdout == "", f"{args}: bad input accepted or stdout written")
            for s in needles:
                check(s in p.stderr, f"{args}: message lacks {s!r}: {p.stderr.strip()}")
            print("  expected error:", p.stderr.strip())
        p = run(["metrics", "--csv", csv("lung.csv"), "--time", "time", "--event", "status", "--risk", "risk",
                 "--bootstrap", "10"], ok=False)
        check(p.returncode == 2, "--bootstrap without --seed must be a usage error")


if __name__ == "__main__":
    name = sys.argv[1]
    globals()["case_" + name]()
    cmd, _, rest = name.partition("_")
    print(f"survival_{cmd}_cli_{rest}: {'ok' if failures == 0 else f'{failures} failure(s)'}")
    sys.exit(1 if failures else 0)
