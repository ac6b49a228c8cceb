#!/usr/bin/env bash
# pansurv vs PyTorch on the reference model (docs/model.md), side by side in one run.
#
# Installs the current PyTorch wheel into a virtual environment if missing (pip; this
# script is a benchmark, not part of CI), also times Debian's python3-torch through
# /usr/bin/python3 when present, builds pansurv Release, then for each OpenBLAS setting
# and thread configuration runs, ALTERNATELY, `pansurv bench model` and the PyTorch peer
# (tests/peer/torch_reference.py), each in a fresh process per repetition (its own
# warm-up, then its own timed steps), and prints medians over the repetitions:
# patients/s, the ratio, peak RSS per rank (/usr/bin/time), and the sgemm ceiling of the
# system OpenBLAS measured in the same run.
#
# OpenBLAS settings (never changed in tests/CI; changed here for both sides alike):
#   unset    OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset: AVX-512 kernels (the target)
#   haswell  the environment's setting, OPENBLAS_CORETYPE=Haswell if the environment
#            does not set one (reported, not the target)
#
# usage: scripts/bench-peer.sh [--reps N] [--steps N] [--warmup N] [--settings "unset haswell"]
#                              [--threads "1 2"] [--no-debian] [--quick] [--ablation] [--out DIR]
#   PANSURV_BIN=PATH: time that pansurv binary instead of building this tree.
#   --quick: 2 reps, batch 8 x 4 tiles (a smoke run; figures not comparable).
#   --ablation: also time the pip PyTorch at 1 thread (setting 'unset') without
#     channels_last and/or without the malloc settings, to show its settings are its best
#     (--ablation-reps N repetitions, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

reps=5 steps=2 warmup=1 settings="unset haswell" threads="1 2" debian=1 quick=0 out="" ablation=0 abl_reps=3
while [ $# -gt 0 ]; do
  case $1 in
    --reps) reps=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --settings) settings=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --no-debian) debian=0; shift ;;
    --quick) quick=1; reps=2; shift ;;
    --ablation) ablation=1; shift ;;
    --ablation-reps) abl_reps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "bench-peer.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$reps" -ge 1 ] || { echo "bench-peer.sh: --reps must be >= 1" >&2; exit 2; }
[ "$quick" = 1 ] || [ "$reps" -ge 5 ] || echo "bench-peer.sh: note: fewer than 5 repetitions ($reps)" >&2

venv=${PS_PEER_VENV:-$root/.venv-torch}
out=${out:-$root/runs/bench-peer-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
peer_args=(--steps "$steps" --warmup "$warmup" --json)
ps_args=()
[ "$quick" = 1 ] && peer_args+=(--batch 8 --tiles 4) && ps_args=(--batch 8 --steps 5 --warmup 1)

# ---- PyTorch: pip wheel in a venv (installed if missing), Debian's if present --------
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "== installing PyTorch into $venv (pip)"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --progress-bar off torch numpy
fi
peers=("pip:$venv/bin/python")
if [ "$debian" = 1 ] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  peers+=("deb:/usr/bin/python3")
else
  echo "== Debian python3-torch: not installed (apt-get install python3-torch to compare it too)"
fi
for p in "${peers[@]}"; do
  "${p#*:}" -c 'import torch,sys; print("== PyTorch", sys.argv[1], torch.__version__, torch.__file__)' "${p%%:*}"
  if command -v Rscript >/dev/null; then  # the peer's loss is R's Efron, value and gradient
    "${p#*:}" tests/peer/torch_reference.py --check-efron | sed 's/^/   /' ||
      { echo "bench-peer.sh: the PyTorch Efron loss disagrees with R; not benchmarking a wrong model" >&2; exit 1; }
  fi
done

# ---- pansurv Release (or PANSURV_BIN: a binary built elsewhere, e.g. from another branch) ----
if [ -n "${PANSURV_BIN:-}" ]; then
  pansurv=$PANSURV_BIN
  echo "== pansurv: using PANSURV_BIN=$pansurv"
else
  echo "== building pansurv (Release, build/release)"
  cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >"$out/cmake.log" 2>&1 ||
    { cat "$out/cmake.log"; exit 1; }
  cmake --build build/release -j2 --target pansurv >>"$out/cmake.log" 2>&1 ||
    { tail -40 "$out/cmake.log"; exit 1; }
  pansurv=$root/build/release/launch/pansurv
fi
have_model=0
if "$pansurv" bench --help 2>/dev/null | grep -qE '^ +model '; then
  have_model=1
else
  echo "== pansurv bench model: NOT AVAILABLE in this build (it arrives with the nn issue)."
  echo "   pansurv columns are left empty; only PyTorch and the sgemm ceiling are measured."
fi

# ---- helpers ------------------------------------------------------------------------
# env for a setting: prints the env(1) arguments
setting_env() {
  case $1 in
    unset) echo "-u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" ;;
    haswell) echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}${OPENBLAS_L2_SIZE:+ OPENBLAS_L2_SIZE=$OPENBLAS_L2_SIZE}" ;;
    *) echo "bench-peer.sh: unknown setting '$1'" >&2; exit 2 ;;
  esac
}
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "nan"; exit} m=int((NR+1)/2); print (NR%2) ? v[m] : (v[m]+v[m+1])/2}'; }
# run_timed FILE_PREFIX cmd...: stdout to PREFIX.out, max RSS (KiB) to PREFIX.rss
run_timed() {
  local pre=$1; shift
  /usr/bin/time -f '%M' -o "$pre.rss" "$@" >"$pre.out" 2>"$pre.err" ||
    { echo "   FAILED: $* (see $pre.err)" >&2; tail -5 "$pre.err" >&2; return 1; }
}
json_field() { "$venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

summary=$out/summary.txt
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
say "pansurv vs PyTorch, reference model, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
say "pansurv: $pansurv ($("$pansurv" --version 2>/dev/null || echo "version unknown"))"
say "reps=$reps (fresh process each, alternating), per process: warmup=$warmup steps=$steps; medians over reps"
say "PyTorch settings: channels_last, torch.set_num_threads(T), OMP_NUM_THREADS=T, 1 inter-op thread,"
say "  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824, fused AdamW"
[ "$quick" = 1 ] && say "QUICK smoke run (batch 8 x 4 tiles): figures are NOT the reference model"

for s in $settings; do
  senv=$(setting_env "$s")
  say ""
  say "== OpenBLAS setting '$s': env $senv"
  for t in $threads; do
    # sgemm ceiling of the system OpenBLAS (the library pansurv links), same setting and threads
    env $senv "$venv/bin/python" tests/peer/sgemm_ceiling.py --threads "$t" --json >"$out/sgemm-$s-$t.json"
    ceil=$(json_field "$out/sgemm-$s-$t.json" gflops_median)
    core=$(json_field "$out/sgemm-$s-$t.json" openblas_core)
    # configurations at this thread count: pansurv ranks x threads, PyTorch threads
    if [ "$t" = 1 ]; then ps_cfgs="1x1"; else ps_cfgs="1x$t ${t}x1"; fi
    for r in $(seq 1 "$reps"); do
      if [ "$have_model" = 1 ]; then
        for c in $ps_cfgs; do
          nr=${c%x*} nt=${c#*x} pre=$out/pansurv-$s-$t-$c-$r
          if [ "$nr" = 1 ]; then
            run_timed "$pre" env $senv OMP_NUM_THREADS="$nt" OPENBLAS_NUM_THREADS="$nt" "$pansurv" bench model "${ps_args[@]}" || continue
          else
            run_timed "$pre" env $senv mpirun --oversubscribe -np "$nr" -x OMP_NUM_THREADS="$nt" \
              -x OPENBLAS_NUM_THREADS="$nt" "$pansurv" bench model "${ps_args[@]}" || continue
          fi
          sed -nE 's/^([0-9.eE+-]+) patients\/s$/\1/p' "$pre.out" | head -1 >"$pre.ps"
        done
      fi
      for p in "${peers[@]}"; do
        pre=$out/torch-${p%%:*}-$s-$t-$r
        run_timed "$pre" env $senv "${p#*:}" tests/peer/torch_reference.py --threads "$t" "${peer_args[@]}" || continue
        json_field "$pre.out" patients_per_s >"$pre.ps"
      done
    done
    # medians
    say "-- $t thread(s): sgemm ceiling ${ceil%.*} GFLOP/s (OpenBLAS core $core, ${t} thread(s))"
    declare -A med=()
    best=0 bestk=none
    for p in "${peers[@]}"; do
      k=${p%%:*}
      med[$k]=$(cat "$out"/torch-"$k"-"$s"-"$t"-*.ps 2>/dev/null | median)
      rss=$(cat "$out"/torch-"$k"-"$s"-"$t"-*.rss 2>/dev/null | median)
      gf=$(json_field "$(ls "$out"/torch-"$k"-"$s"-"$t"-*.out | head -1)" step_gflop)
      pct=$(awk -v ps="${med[$k]}" -v gf="$gf" -v c="$ceil" -v b="$(json_field "$(ls "$out"/torch-"$k"-"$s"-"$t"-*.out | head -1)" batch)" \
        'BEGIN {printf "%.0f", 100 * ps / b * gf / c}')
      lib=$(json_field "$(ls "$out"/torch-"$k"-"$s"-"$t"-*.out | head -1)" import_rss_mib)
      say "   PyTorch ($k) ${t} thread(s): ${med[$k]} patients/s  peak RSS $((${rss%.*} / 1024)) MiB (${lib%.*} MiB after import)  = ${pct}% of the sgemm ceiling"
      if awk -v a="${med[$k]}" -v b="$best" 'BEGIN {exit !(a > b)}'; then best=${med[$k]} bestk=$k; fi
    done
    if [ "$have_model" = 1 ]; then
      for c in $ps_cfgs; do
        v=$(cat "$out"/pansurv-"$s"-"$t"-"$c"-*.ps 2>/dev/null | median)
        rss=$(cat "$out"/pansurv-"$s"-"$t"-"$c"-*.rss 2>/dev/null | median)
        gf=$("$venv/bin/python" tests/peer/refmodel_shapes.py --gflop)
        pct=$(awk -v ps="$v" -v gf="$gf" -v c="$ceil" -v q="$quick" 'BEGIN {if (q) print "n/a"; else printf "%.0f%%", 100 * ps / 64 * gf / c}')
        say "   pansurv ${c/x/ rank(s) x } thread(s): $v patients/s  peak RSS/rank $((${rss%.*} / 1024)) MiB  = ${pct} of the sgemm ceiling  ratio vs best PyTorch ($bestk): $(awk -v a="$v" -v b="$best" 'BEGIN {printf "%.2fx", a / b}')"
      done
    else
      say "   pansurv: not measured (pansurv bench model not available)"
    fi
    unset med
  done
done
if [ "$ablation" = 1 ]; then
  say ""
  say "== PyTorch (pip) settings ablation, 1 thread, OpenBLAS setting 'unset', $abl_reps reps alternating"
  variants=("best:" "no-channels-last:--no-channels-last" "no-malloc-env:--no-malloc-env"
            "neither:--no-channels-last --no-malloc-env")
  for r in $(seq 1 "$abl_reps"); do
    for v in "${variants[@]}"; do
      pre=$out/ablation-${v%%:*}-$r
      # shellcheck disable=SC2086
      run_timed "$pre" env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$venv/bin/python" tests/peer/torch_reference.py \
        --threads 1 "${peer_args[@]}" ${v#*:} || continue
      json_field "$pre.out" patients_per_s >"$pre.ps"
    done
  done
  for v in "${variants[@]}"; do
    k=${v%%:*}
    say "   $k: $(cat "$out"/ablation-"$k"-*.ps 2>/dev/null | median) patients/s, peak RSS $(( $(cat "$out"/ablation-"$k"-*.rss | median | cut -d. -f1) / 1024 )) MiB"
  done
fi
python3 tests/peer/peer_report.py "$out" >"$out/summary.md" && { echo; cat "$out/summary.md"; }
say ""
say "raw outputs: $out (tables: $out/summary.md)"
