#!/usr/bin/env python3
"""sgemm ceiling of the machine's OpenBLAS (the library pansurv links), measured
through ctypes so that it needs nothing but the standard library.

Used by scripts/bench-peer.sh (in the same run as the timed models) until
`pansurv bench gemm` exists; also importable (measure()).

OpenBLAS reads OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE when it is loaded, so run this
in a fresh process per setting (bench-peer.sh does).
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import sys
import time

CBLAS_ROW_MAJOR = 101
CBLAS_NO_TRANS = 111
DEFAULT_LIB = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"


def load(path=None):
    path = path or (DEFAULT_LIB if os.path.exists(DEFAULT_LIB) else ctypes.util.find_library("openblas"))
    if not path:
        raise SystemExit("sgemm_ceiling: libopenblas not found (install libopenblas-dev)")
    lib = ctypes.CDLL(path)
    lib.cblas_sgemm.restype = None
    lib.cblas_sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    lib.openblas_get_corename.restype = ctypes.c_char_p
    lib.openblas_set_num_threads.argtypes = [ctypes.c_int]
    return lib, os.path.realpath(path)


def measure(threads=1, n=2048, reps=5, lib_path=None):
    """Median and best GFLOP/s of an n x n x n row-major sgemm after one warm-up call."""
    lib, real = load(lib_path)
    lib.openblas_set_num_threads(threads)
    buf = ctypes.c_float * (n * n)
    a, b, c = buf(), buf(), buf()
    for i in range(0, n * n, 97):  # a few non-zero values; sgemm speed does not depend on them
        a[i] = 0.5
        b[i] = 0.25

    def once():
        t0 = time.perf_counter()
        lib.cblas_sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, n, n, n, 1.0, a, n, b, n, 0.0, c, n)
        return time.perf_counter() - t0

    once()
    times = [once() for _ in range(reps)]
    flop = 2.0 * n * n * n
    return {
        "threads": threads,
        "n": n,
        "reps": reps,
        "gflops_median": flop / statistics.median(times) / 1e9,
        "gflops_best": flop / min(times) / 1e9,
        "openblas_core": lib.openblas_get_corename().decode(),
        "openblas_lib": real,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "(unset)"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    a = p.parse_args()
    r = measure(a.threads, a.n, a.reps)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"sgemm {a.n}^3, {a.threads} thread(s), OpenBLAS core {r['openblas_core']}: "
              f"{r['gflops_median']:.1f} GFLOP/s median, {r['gflops_best']:.1f} best")
    return 0


if __name__ == "__main__":
    sys.exit(main())
