#!/usr/bin/env python3
"""Alpha-beta all-reduce model and weak-scaling projection (standard library only).

  fit NP:TABLE ...        fit t(n) = lat + n * 2(p-1)/p / busbw per rank count p from
                          nccl-tests style tables (`pansurv bench comm`), JSON on stdout
  project --fit FIT.json  project weak-scaling efficiency for 8..512 GPUs from published
                          interconnect figures, for the reference model and a larger
                          (pancancer) model; writes projection.dat and projection.md
  local --csv RUNS.csv    tables of the measured 1/2/4-rank runs (weak and strong) and
                          the alpha-beta prediction of their gradient all-reduce

Every figure that is not measured here is a named constant below with its source or
marked as an assumption; docs/performance.md repeats them.
"""
import argparse
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refmodel_shapes  # noqa: E402

# ---- published interconnect figures (sources in docs/performance.md) ----------------
NVLINK_RING_BUSBW = 370e9  # B/s, 8x H100 SXM ring all-reduce busbw; conservative (476-480 GB/s with NVLS)
NDR_NIC_BUSBW = 46e9  # B/s per 400 Gb/s NDR NIC (NVIDIA/nccl-tests issue 290: "46-48 GB/s per NIC")
INTER_NODE_SMALL_LAT = 46e-6  # s, small-message all-reduce, 2 nodes x 8 GPUs (NVIDIA/nccl issue 1244 table)
GPUS_PER_NODE = 8
# ---- assumptions (not measured, not published for this workload) ---------------------
INTRA_NODE_SMALL_LAT = 10e-6  # s, small all-reduce inside one NVLink node (assumed)
LAT_PER_NODE_DOUBLING = 8e-6  # s, extra tree level per doubling of nodes beyond 2 (assumed)
GPU_SUSTAINED_FLOPS = 200e12  # FLOP/s per GPU: ~40% of H100 SXM dense TF32 peak (495 TFLOP/s), assumed
BUCKET_BYTES = 4 << 20  # comm.bucket_mb default (4 MiB): the last bucket cannot overlap
LATENCY_BOUND_SYNCS = 8  # per step: SyncBN stats fwd+bwd for 3 BN layers (6) + Cox global risk set (2)
PER_GPU_BATCH = 64  # weak scaling: patients per GPU per step


def parse_table(path):
    """(bytes, seconds) rows of the all-reduce table in an nccl-tests style output."""
    rows, time_col, in_ar, saw_names = [], None, True, False
    names = re.compile(r"(all[_ -]?reduce|allgather|all[_ -]gather|broadcast|bcast|reduce[_ -]scatter|barrier|"
                       r"alltoall|sendrecv)", re.I)
    with open(path) as f:
        for line in f:
            s = line.strip()
            if not s:
                continue
            m = names.search(s) if not s[0].isdigit() else None
            if m:
                if not saw_names:
                    rows = []  # named sections: keep only the all-reduce one
                saw_names = True
                in_ar = bool(re.match(r"all[_ -]?reduce", m.group(1), re.I))
            if s.startswith("#"):
                toks = s.lstrip("#").split()
                times = [i for i, t in enumerate(toks) if t == "time" or t.startswith("time(")]
                if "size" in toks and times:
                    time_col = times[0]  # the first time column: out-of-place
                continue
            toks = s.split()
            if not in_ar or not toks[0].isdigit():
                continue
            col = time_col if time_col is not None else 5
            try:
                rows.append((int(toks[0]), float(toks[col]) * 1e-6))
            except (IndexError, ValueError):
                continue
    if not rows:
        raise SystemExit(f"scaling_model: no all-reduce rows found in {path}")
    return rows


def fit_rows(rows, p, max_bytes):
    """Weighted (relative-error) least squares of t = lat + x / busbw, x = n * 2(p-1)/p."""
    pts = [(n * 2.0 * (p - 1) / p, t) for n, t in rows if n <= max_bytes]
    s = {"aa": 0.0, "ab": 0.0, "bb": 0.0, "ay": 0.0, "by": 0.0}
    for x, t in pts:
        w = 1.0 / (t * t)
        s["aa"] += w
        s["ab"] += w * x
        s["bb"] += w * x * x
        s["ay"] += w * t
        s["by"] += w * x * t
    det = s["aa"] * s["bb"] - s["ab"] ** 2
    lat = (s["ay"] * s["bb"] - s["ab"] * s["by"]) / det
    inv_bw = (s["aa"] * s["by"] - s["ab"] * s["ay"]) / det
    worst = max(abs(lat + x * inv_bw - t) / t for x, t in pts)
    return {"ranks": p, "lat_s": lat, "busbw_Bps": 1.0 / inv_bw if inv_bw > 0 else float("inf"),
            "points": len(pts), "max_bytes": max_bytes, "max_rel_err": worst}


def cmd_fit(a):
    fits = []
    for spec in a.tables:
        np_, _, path = spec.partition(":")
        fits.append(dict(fit_rows(parse_table(path), int(np_), a.max_bytes), source=os.path.basename(path)))
    print(json.dumps({"fits": fits, "label": a.label}, indent=1))
    return 0


def allreduce_time(nbytes, p, nics_per_node):
    if p <= 1:
        return 0.0
    if p <= GPUS_PER_NODE:
        lat, bw = INTRA_NODE_SMALL_LAT, NVLINK_RING_BUSBW
    else:
        nodes = p / GPUS_PER_NODE
        lat = INTER_NODE_SMALL_LAT + LAT_PER_NODE_DOUBLING * max(0.0, math.log2(nodes / 2))
        bw = min(NVLINK_RING_BUSBW, nics_per_node * NDR_NIC_BUSBW)
    return lat + nbytes * 2.0 * (p - 1) / p / bw


def small_latency(p):
    return allreduce_time(0, p, 1)


def project_one(kw, p, nics, overlap):
    f = refmodel_shapes.step_flops(batch=PER_GPU_BATCH, **kw)
    tc = f["total_gflop"] * 1e9 / GPU_SUSTAINED_FLOPS
    grad = 4.0 * refmodel_shapes.param_count(**kw)
    t_ar = allreduce_time(grad, p, nics)
    if overlap:  # ideal overlap with the backward pass (~2/3 of compute); the last bucket stays exposed
        exposed = max(allreduce_time(min(grad, BUCKET_BYTES), p, nics), t_ar - 2.0 / 3.0 * tc) if p > 1 else 0.0
    else:
        exposed = t_ar
    sync = LATENCY_BOUND_SYNCS * small_latency(p)
    return {"compute_s": tc, "grad_bytes": grad, "allreduce_s": t_ar, "exposed_s": exposed + sync,
            "efficiency": tc / (tc + exposed + sync)}


def read_yaml_model(path):
    """The few model/data sizes the FLOP count needs from a pansurv YAML config (flat scan)."""
    kw, section = {}, None
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            if not line.startswith(" ") and line.endswith(":"):
                section = line[:-1].strip()
                continue
            m = re.match(r"\s+(\w+)\s*:\s*(.+)$", line)
            if not m:
                continue
            key, val = m.group(1), m.group(2).strip()
            if (section, key) == ("model", "tile_size"):
                kw["tile_size"] = int(val)
            elif (section, key) == ("data", "tiles"):
                kw["tiles"] = int(val)
            elif (section, key) == ("data", "genes") and int(val) > 0:
                kw["genes"] = int(val)
            elif (section, key) == ("model", "embed_dim"):
                kw["dim"] = int(val)
            elif (section, key) == ("model", "cnn_channels"):
                kw["channels"] = tuple(int(x) for x in re.findall(r"\d+", val))
            elif (section, key) == ("model", "omics_hidden"):
                kw["omics_hidden"] = int(val)
            elif (section, key) == ("model", "attn_hidden"):
                kw["attn_hidden"] = int(val)
            elif (section, key) == ("model", "clinical_hidden"):
                kw["clinical_hidden"] = int(val)
    return kw


def cmd_project(a):
    fit = json.load(open(a.fit)) if a.fit else None
    big = read_yaml_model(a.pancancer) if a.pancancer and os.path.exists(a.pancancer) else {"tile_size": 224}
    big_src = a.pancancer if a.pancancer and os.path.exists(a.pancancer) else "224x224 tiles, other sizes as reference"
    models = [("reference", {}), ("pancancer", big)]
    gpus = [1, 8, 16, 32, 64, 128, 256, 512]
    cols = []
    for name, kw in models:
        for nics in (8, 1):
            for ov in (True, False):
                cols.append((name, kw, nics, ov))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "projection.dat"), "w") as f:
        f.write("# gpus " + " ".join(f"{n}_{k}nic_{'ovl' if o else 'noovl'}" for n, _, k, o in cols) + "\n")
        for p in gpus:
            f.write(f"{p} " + " ".join(f"{project_one(kw, p, k, o)['efficiency']:.4f}" for _, kw, k, o in cols) + "\n")
    lines = ["| model | GFLOP/step/GPU | gradient MB | compute ms/step (assumed GPU rate) | network | overlap | "
             + " | ".join(f"{p} GPUs" for p in gpus[1:]) + " |",
             "|---|---|---|---|---|---|" + "---|" * (len(gpus) - 1)]
    for name, kw, nics, ov in cols:
        r1 = project_one(kw, 8, nics, ov)
        effs = " | ".join(f"{100 * project_one(kw, p, nics, ov)['efficiency']:.1f}%" for p in gpus[1:])
        gf = refmodel_shapes.step_flops(batch=PER_GPU_BATCH, **kw)["total_gflop"]
        lines.append(f"| {name} | {gf:.0f} | {r1['grad_bytes'] / 1e6:.1f} | {1e3 * r1['compute_s']:.2f} | "
                     f"{nics}x400G NIC/node | {'ideal' if ov else 'none'} | {effs} |")
    g = 4.0 * refmodel_shapes.param_count()
    detail = ["", f"| GPUs | small all-reduce latency (us) | {g / 1e6:.1f} MB all-reduce, 8 NICs/node (us) | "
              f"{g / 1e6:.1f} MB all-reduce, 1 NIC/node (us) |", "|---|---|---|---|"]
    for p in gpus[1:]:
        detail.append(f"| {p} | {1e6 * small_latency(p):.0f} | {1e6 * allreduce_time(g, p, 8):.0f} | "
                      f"{1e6 * allreduce_time(g, p, 1):.0f} |")
    head = [f"pancancer-sized model: {big_src} ({json.dumps(big)})",
            f"per-GPU batch {PER_GPU_BATCH} patients (weak scaling), GPU rate {GPU_SUSTAINED_FLOPS / 1e12:.0f} "
            f"TFLOP/s sustained (assumed), {LATENCY_BOUND_SYNCS} latency-bound syncs/step, bucket "
            f"{BUCKET_BYTES >> 20} MiB", ""]
    if fit:
        head.append(f"local alpha-beta fit ({fit.get('label', '')}): " + "; ".join(
            f"{x['ranks']} ranks: latency {1e6 * x['lat_s']:.1f} us, busbw {x['busbw_Bps'] / 1e9:.2f} GB/s "
            f"(max rel. err {100 * x['max_rel_err']:.0f}% over {x['points']} sizes <= {x['max_bytes'] >> 20} MiB)"
            for x in fit["fits"]))
        head.append("")
    with open(os.path.join(a.out, "projection.md"), "w") as f:
        f.write("\n".join(head + lines + detail) + "\n")
    print("\n".join(head + lines + detail))
    return 0


def cmd_local(a):
    """RUNS.csv: mode,ranks,threads,global_batch,patients_per_s,compute_s,comm_s,io_s (medians)."""
    rows = []
    with open(a.csv) as f:
        hdr = f.readline().strip().split(",")
        for line in f:
            if line.strip():
                rows.append(dict(zip(hdr, line.strip().split(","))))
    fit = json.load(open(a.fit))["fits"] if a.fit else []
    grad = 4.0 * refmodel_shapes.param_count()
    out = ["| scaling | ranks | global batch | patients/s | efficiency | compute s/step | exposed comm s/step | "
           "I/O s/step | alpha-beta all-reduce of the gradient (s) |", "|---|---|---|---|---|---|---|---|---|"]
    base = {}
    for r in rows:
        if r["ranks"] == "1":
            base[r["mode"]] = float(r["patients_per_s"])
    for r in rows:
        p = int(r["ranks"])
        pps = float(r["patients_per_s"])
        b0 = base.get(r["mode"])
        # weak: per-rank throughput kept; strong: speed-up over 1 rank divided by ranks
        eff = pps / (b0 * p) if b0 else float("nan")
        pred = [x for x in fit if x["ranks"] == p]
        ab = f"{pred[0]['lat_s'] + grad * 2 * (p - 1) / p / pred[0]['busbw_Bps']:.4f}" if pred else "-"
        out.append(f"| {r['mode']} | {p}{' (oversubscribed)' if p > 2 else ''} | {r['global_batch']} | {pps:.2f} | "
                   f"{100 * eff:.0f}% | {r['compute_s']} | {r['comm_s']} | {r['io_s']} | {ab} |")
    text = "\n".join(out)
    with open(os.path.join(a.out, "local.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("tables", nargs="+", help="NP:FILE")
    f.add_argument("--max-bytes", type=int, default=32 << 20)
    f.add_argument("--label", default="pansurv bench comm")
    j = sub.add_parser("project")
    j.add_argument("--fit")
    j.add_argument("--pancancer", help="configs/pancancer.yaml (224x224 tiles if absent)")
    j.add_argument("--out", required=True)
    lo = sub.add_parser("local")
    lo.add_argument("--csv", required=True)
    lo.add_argument("--fit")
    lo.add_argument("--out", required=True)
    a = p.parse_args()
    return {"fit": cmd_fit, "project": cmd_project, "local": cmd_local}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
