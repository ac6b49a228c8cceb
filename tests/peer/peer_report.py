#!/usr/bin/env python3
"""Markdown tables from a scripts/bench-peer.sh output folder (standard library only):
  python3 tests/peer/peer_report.py runs/bench-peer-<time>  > report.md
Medians over repetitions (each repetition: one process, its own median step); the
range is min..max over repetitions."""
import glob
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refmodel_shapes  # noqa: E402


def floats(paths):
    out = []
    for p in paths:
        try:
            out.append(float(open(p).read().strip()))
        except (OSError, ValueError):
            pass
    return out


def main(d):
    gf = refmodel_shapes.step_flops()["total_gflop"]
    ceil = {}
    for p in glob.glob(os.path.join(d, "sgemm-*.json")):
        m = re.match(r"sgemm-(\w+)-(\d+)\.json", os.path.basename(p))
        ceil[(m.group(1), m.group(2))] = json.load(open(p))
    rows = []  # (setting, threads, who, config, [pps], [rss kib], extra)
    groups = {}
    for p in glob.glob(os.path.join(d, "*.ps")):
        b = os.path.basename(p)[:-3]
        m = re.match(r"torch-(\w+)-(\w+)-(\d+)-(\d+)$", b)
        if m:
            groups.setdefault(("PyTorch " + m.group(1), m.group(2), m.group(3), f"{m.group(3)} thread(s)"), []).append(b)
            continue
        m = re.match(r"pansurv-(\w+)-(\d+)-(\d+)x(\d+)-(\d+)$", b)
        if m:
            groups.setdefault(("pansurv", m.group(1), m.group(2), f"{m.group(3)} rank(s) x {m.group(4)} thread(s)"),
                              []).append(b)
    for (who, s, t, cfg), bases in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0], kv[0][3])):
        pps = floats(os.path.join(d, x + ".ps") for x in bases)
        rss = floats(os.path.join(d, x + ".rss") for x in bases)
        batch, step_gf, info = 64, gf, ""
        if who.startswith("PyTorch"):
            j = json.load(open(os.path.join(d, bases[0] + ".out")))
            batch, step_gf, info = j["batch"], j["step_gflop"], f"torch {j['torch']}"
        else:  # pansurv bench model: "# step: median ... global batch N, ..."
            m = re.search(r"global batch (\d+)", open(os.path.join(d, bases[0] + ".out")).read())
            if m:
                batch = int(m.group(1))
                step_gf = refmodel_shapes.step_flops(batch=batch)["total_gflop"]
        rows.append((s, t, who, cfg, pps, rss, batch, step_gf, info))
    print("| OpenBLAS | threads | program | configuration | batch | patients/s (median) | range over reps | reps | "
          "GFLOP/s | % of sgemm ceiling | sgemm ceiling GFLOP/s (core) | peak RSS per rank MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s, t, who, cfg, pps, rss, batch, g, info in rows:
        if not pps:
            continue
        med = statistics.median(pps)
        c = ceil.get((s, t), {})
        gfs = med / batch * g
        pct = f"{100 * gfs / c['gflops_median']:.0f}%" if c else "-"
        cs = f"{c['gflops_median']:.0f} ({c['openblas_core']})" if c else "-"
        print(f"| {s} | {t} | {who}{' (' + info + ')' if info else ''} | {cfg} | {batch} | {med:.2f} | {min(pps):.2f}-{max(pps):.2f} | "
              f"{len(pps)} | {gfs:.1f} | {pct} | {cs} | {statistics.median(rss) / 1024:.0f} |")
    for s_, t_, who, cfg, pps, rss, batch, g, info in rows:
        if who == "pansurv" and pps:
            first = sorted(glob.glob(os.path.join(d, f"pansurv-{s_}-{t_}-{cfg.split()[0]}x{cfg.split()[3]}-*.out")))
            if first:
                print(f"\npansurv breakdown, OpenBLAS {s_}, {cfg}, repetition 1 (`pansurv bench model` output):\n")
                print("```")
                print(open(first[0]).read().rstrip())
                print("```")
    abl = {}
    for p in glob.glob(os.path.join(d, "ablation-*.ps")):
        m = re.match(r"ablation-([\w-]+)-(\d+)\.ps$", os.path.basename(p))
        abl.setdefault(m.group(1), []).append(p)
    if abl:
        print("\n| PyTorch (pip), 1 thread, OpenBLAS unset | patients/s (median) | range | peak RSS MiB |")
        print("|---|---|---|---|")
        for k in ("best", "no-channels-last", "no-malloc-env", "neither"):
            if k in abl:
                v = floats(abl[k])
                r = floats(x[:-3] + ".rss" for x in abl[k])
                print(f"| {k} | {statistics.median(v):.2f} | {min(v):.2f}-{max(v):.2f} | {statistics.median(r) / 1024:.0f} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: peer_report.py BENCH_PEER_OUTPUT_DIR")
    sys.exit(main(sys.argv[1]))
