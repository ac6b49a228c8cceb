#!/usr/bin/env python3
"""peer_scaling_model: the FLOP/parameter count of the reference model and the alpha-beta
fit used by scripts/scaling.sh (standard library only). Exit status is the verdict."""
import json
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import refmodel_shapes  # noqa: E402
import scaling_model  # noqa: E402

failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
    print(("ok   " if cond else "FAIL ") + what)


# ---- FLOPs: per-tile multiply-adds written out by hand for 64x64x3 tiles ------------------
macs = [64 * 64 * 32 * 3 * 9, 32 * 32 * 64 * 32 * 9, 16 * 16 * 128 * 64 * 9]
check(macs == [3538944, 18874368, 18874368], "per-tile conv multiply-adds")
conv = 64 * 16 * 2 * (3 * sum(macs) - macs[0]) / 1e9  # fwd + dgrad (not conv1) + wgrad, 1024 tiles
f = refmodel_shapes.step_flops()
check(abs(f["conv_gflop"] - conv) < 1e-9, f"conv GFLOP/step {f['conv_gflop']:.3f} == {conv:.3f}")
check(246.0 < f["total_gflop"] < 249.0 and 0.995 < f["conv_gflop"] / f["total_gflop"] < 0.9975,
      f"total {f['total_gflop']:.1f} GFLOP, {100 * f['conv_gflop'] / f['total_gflop']:.2f}% convolution")
big = refmodel_shapes.step_flops(tile_size=224)
check(abs(big["conv_gflop"] / f["conv_gflop"] - (224 / 64) ** 2) < 1e-9, "224x224 tiles: conv FLOPs x (224/64)^2")
# 2,434,417 = sum(p.numel()) of torch_reference.ReferenceModel (PyTorch 2.x and 1.13, 2026-11-22)
check(refmodel_shapes.param_count() == 2434417, f"parameters {refmodel_shapes.param_count()}")

# ---- alpha-beta fit from an nccl-tests style table with a broadcast section first ---------
lat, busbw = 7.5e-6, 9.0e9
with tempfile.TemporaryDirectory() as d:
    paths = {}
    for p in (2, 4):
        path = os.path.join(d, f"np{p}.txt")
        with open(path, "w") as fh:
            fh.write("# broadcast\n#  size  count  type  redop  root  time  algbw  busbw  #wrong\n")
            fh.write("  1024  256  float  none  0  999.0  0.0  0.0  0\n")
            fh.write(f"# allreduce, {p} ranks\n#       size  count  type  redop  root  time  algbw  busbw  #wrong\n")
            n = 8
            while n <= 64 << 20:
                t = lat + n * 2.0 * (p - 1) / p / busbw
                fh.write(f"{n:12d} {n // 4:10d}  float  sum  -1  {t * 1e6:10.3f}  0.0  0.0  0\n")
                n *= 4
        paths[p] = path
    # the layout of `pansurv bench comm` (ours | in-place | raw columns separated by '|')
    path = os.path.join(d, "bench_comm.txt")
    with open(path, "w") as fh:
        fh.write("# pansurv bench comm: allreduce, backend mpi, 2 ranks on 1 nodes, 20 iters\n")
        fh.write("# raw = MPI_Allreduce on the same buffers, alternating with ours\n")
        fh.write("#  size  count  type  redop | time(us) algbw busbw #wrong | time(us) algbw busbw #wrong | "
                 "time(us) busbw | time(us) busbw | oop ip\n")
        n = 4096
        while n <= 64 << 20:
            t = (lat + n / busbw) * 1e6  # p = 2: 2(p-1)/p = 1
            fh.write(f" {n} {n // 4} float sum | {t:.3f} 0 0 0 | {2 * t:.3f} 0 0 0 | {3 * t:.3f} 0 | {4 * t:.3f} 0 "
                     "| 100% 100%\n")
            n *= 2
    fit = scaling_model.fit_rows(scaling_model.parse_table(path), 2, 32 << 20)
    check(abs(fit["lat_s"] / lat - 1) < 5e-3 and abs(fit["busbw_Bps"] / busbw - 1) < 5e-3,
          "pansurv bench comm layout: the out-of-place time column is fitted")
    for p in (2, 4):
        fit = scaling_model.fit_rows(scaling_model.parse_table(paths[p]), p, 32 << 20)
        check(abs(fit["lat_s"] / lat - 1) < 5e-3 and abs(fit["busbw_Bps"] / busbw - 1) < 5e-3,
              f"{p} ranks: fit latency {fit['lat_s'] * 1e6:.3f} us, busbw {fit['busbw_Bps'] / 1e9:.3f} GB/s")
    empty = os.path.join(d, "empty.txt")
    with open(empty, "w") as fh:
        fh.write("# nothing measured\n")
    r = subprocess.run([sys.executable, os.path.join(here, "scaling_model.py"), "fit", f"2:{empty}"],
                       capture_output=True, text=True)
    check(r.returncode != 0 and "no all-reduce rows" in r.stderr, "a table without rows is an error naming the file")
    # projection: efficiencies in (0, 1], non-increasing with GPUs, larger model scales better
    r = subprocess.run([sys.executable, os.path.join(here, "scaling_model.py"), "project", "--out", d],
                       capture_output=True, text=True)
    check(r.returncode == 0, "project runs")
    rows = [list(map(float, l.split())) for l in open(os.path.join(d, "projection.dat")) if not l.startswith("#")]
    cols = list(zip(*rows))[1:]
    check(all(0 < e <= 1 for c in cols for e in c), "efficiencies in (0, 1]")
    check(all(all(a >= b for a, b in zip(c, c[1:])) for c in cols), "efficiency does not grow with GPUs")
    check(all(cols[4 + i][k] >= cols[i][k] for i in range(4) for k in range(len(rows))),
          "the 224x224-tile model scales at least as well as the reference")

print(json.dumps({"failures": failures}))
sys.exit(1 if failures else 0)
