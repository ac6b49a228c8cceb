#!/usr/bin/env bash
# Scaling report for the reference model (docs/performance.md).
#
#  1. local runs at 1, 2 and 4 MPI ranks x 1 thread (4 ranks OVERSUBSCRIBE this 2-core
#     machine: their figures show overheads, not speed-up):
#       weak   fixed per-rank batch (--per-rank-batch, default 16): global = 16 x ranks
#       strong fixed global batch 64
#     per-step compute / exposed communication / I/O come from the training log
#     (RUN/metrics.csv columns compute_s, comm_s, io_s of `pansurv train`, warm-up steps
#     dropped, medians) when --config names a training config; otherwise from
#     `pansurv bench model --batch G` (patients/s; exposed comm = its "# allreduce" line,
#     compute = median step - that; no I/O: its batch is synthetic).
#  2. alpha-beta fit of the all-reduce from `pansurv bench comm` at 2 and 4 ranks
#     (Open MPI's MPI_Allreduce through tests/peer/allreduce_probe.c when that bench is
#     not in the build, and the report says so).
#  3. weak-scaling projection for 8..512 GPUs from published interconnect figures, for
#     the reference model and configs/pancancer.yaml (224x224 tiles when absent).
#  4. tables (markdown) and gnuplot PNG plots into --plots (default docs/img).
#
# usage: scripts/scaling.sh [--config FILE] [--ranks "1 2 4"] [--steps N] [--warmup N]
#                           [--per-rank-batch N] [--out DIR] [--plots DIR] [--no-local]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

config="" ranks="1 2 4" steps=6 warmup=2 prb=16 out="" plots=$root/docs/img local=1
while [ $# -gt 0 ]; do
  case $1 in
    --config) config=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --per-rank-batch) prb=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --plots) plots=$2; shift 2 ;;
    --no-local) local=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "scaling.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
out=${out:-$root/runs/scaling-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out" "$plots"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
py=$(command -v python3)
summary=$out/summary.md
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "nan"; exit} m=int((NR+1)/2); print (NR%2) ? v[m] : (v[m]+v[m+1])/2}'; }

echo "== pansurv: ${PANSURV_BIN:-building Release in build/release}; all-reduce probe"
if [ -n "${PANSURV_BIN:-}" ]; then  # a binary built elsewhere, e.g. from another branch
  pansurv=$PANSURV_BIN
else
  cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >"$out/cmake.log" 2>&1 || { cat "$out/cmake.log"; exit 1; }
  cmake --build build/release -j2 --target pansurv >>"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
  pansurv=$root/build/release/launch/pansurv
fi
mkdir -p build/peer
mpicc -O2 -o build/peer/allreduce_probe tests/peer/allreduce_probe.c
benches=$("$pansurv" bench --help 2>/dev/null || true)
has_bench() { echo "$benches" | grep -qE "^ +$1 "; }

say "# Scaling run $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), $(mpirun --version | head -1)"
say ""

# ---- 1. local runs ------------------------------------------------------------------
csv=$out/runs.csv
echo "mode,ranks,threads,global_batch,patients_per_s,compute_s,comm_s,io_s" >"$csv"
method=none
if [ "$local" = 1 ]; then
  if [ -n "$config" ]; then method=train
  elif has_bench model; then method=bench
  fi
fi
if [ "$method" = none ]; then
  say "Local runs: NOT MEASURED ($([ "$local" = 0 ] && echo "--no-local" || echo "no --config for pansurv train, and pansurv bench model is not in this build"))."
else
  say "Local runs: method '$method', $steps steps ($warmup warm-up dropped), 1 thread per rank; 4 ranks oversubscribe $(nproc) cores."
fi
for mode in weak strong; do
  [ "$method" = none ] && break
  for r in $ranks; do
    if [ "$mode" = weak ]; then g=$((prb * r)); else g=64; fi
    name=$mode-np$r
    launch=(mpirun --oversubscribe -np "$r" -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1)
    # more ranks than cores: waiting ranks must yield the core instead of busy-polling it
    [ "$r" -gt "$(nproc)" ] && launch+=(--mca mpi_yield_when_idle 1)
    if [ "$method" = train ]; then
      "${launch[@]}" "$pansurv" train "$config" --set train.global_batch="$g" --set train.max_steps="$steps" \
        --set train.threads=1 --set log.run_dir="$out/runs" --set log.name="$name" --set log.every_steps=1 \
        --set checkpoint.every_steps=0 --quiet >"$out/$name.log" 2>&1 || { say "  $name: FAILED (see $out/$name.log)"; continue; }
      m=$out/runs/$name/metrics.csv
      [ -f "$m" ] || { say "  $name: no metrics.csv in $out/runs/$name"; continue; }
      col() { awk -F, -v c="$1" -v w="$warmup" 'NR==1 {for (i=1;i<=NF;i++) if ($i==c) k=i; next} NR>w+1 && k {print $k}' "$m" | median; }
      comp=$(col compute_s) comm=$(col comm_s) io=$(col io_s)
      pps=$(awk -v g="$g" -v a="$comp" -v b="$comm" -v c="$io" 'BEGIN {printf "%.4f", g / (a + b + c)}')
    else
      "${launch[@]}" "$pansurv" bench model --batch "$g" --steps "$((steps > 5 ? steps : 5))" --warmup "$warmup" \
        >"$out/$name.log" 2>&1 || { say "  $name: FAILED (see $out/$name.log)"; continue; }
      pps=$(sed -nE 's/^([0-9.eE+-]+) patients\/s$/\1/p' "$out/$name.log" | head -1)
      # breakdown lines of `pansurv bench model`: "# step: median <s> s ...", "# allreduce <ms>"
      step=$(sed -nE 's/^# step: median ([0-9.eE+-]+) s.*/\1/p' "$out/$name.log" | head -1)
      comm=$(awk '$1 == "#" && $2 == "allreduce" {print $3 / 1000; exit}' "$out/$name.log")
      comp=$([ -n "$step" ] && [ -n "$comm" ] && awk -v a="$step" -v b="$comm" 'BEGIN {print a - b}' || true)
      io=0 # the bench's batch is synthetic and in memory: no I/O
    fi
    echo "$mode,$r,1,$g,${pps:-nan},${comp:--},${comm:--},${io:--}" >>"$csv"
  done
done

# ---- 2. alpha-beta fit ------------------------------------------------------------------
tables=()
if has_bench comm; then label="pansurv bench comm"; else label="MPI_Allreduce probe (pansurv bench comm not in this build)"; fi
for r in 2 4; do
  f=$out/comm-np$r.txt
  if has_bench comm; then
    mpirun --oversubscribe -np "$r" -x OMP_NUM_THREADS=1 "$pansurv" bench comm --op allreduce --min 4K --max 32M \
      >"$f" 2>&1 || { say "bench comm at $r ranks FAILED (see $f)"; continue; }
  else
    mpirun --oversubscribe -np "$r" build/peer/allreduce_probe $((32 << 20)) >"$f" 2>&1 || { say "probe at $r ranks FAILED"; continue; }
  fi
  tables+=("$r:$f")
done
say ""
say "## All-reduce alpha-beta fit ($label)"
if [ ${#tables[@]} -gt 0 ]; then
  "$py" tests/peer/scaling_model.py fit "${tables[@]}" --label "$label" >"$out/fit.json"
  "$py" - "$out/fit.json" <<'EOF' | tee -a "$summary"
import json, sys
for x in json.load(open(sys.argv[1]))["fits"]:
    print(f"- {x['ranks']} ranks: t(n) = {1e6 * x['lat_s']:.1f} us + n * 2(p-1)/p / {x['busbw_Bps'] / 1e9:.2f} GB/s "
          f"(fit over {x['points']} sizes <= {x['max_bytes'] >> 20} MiB, max relative error {100 * x['max_rel_err']:.0f}%)")
EOF
fi

if has_bench comm; then  # pansurv's bucketed gradient sync with the reference model's gradient size
  mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$pansurv" bench comm --buckets \
    --params "$("$py" -c 'import sys; sys.path.insert(0, "tests/peer"); import refmodel_shapes as r; print(r.param_count())')" \
    --bucket-bytes 4M >"$out/comm-buckets-np2.txt" 2>&1 &&
    { say ""; say "Bucketed gradient sync, reference-model gradient, 2 ranks (pansurv bench comm --buckets):";
      say '```'; grep -v '^$' "$out/comm-buckets-np2.txt" | tee -a "$summary"; say '```'; } ||
    say "pansurv bench comm --buckets FAILED (see $out/comm-buckets-np2.txt)"
fi

# ---- 3. local tables and projection ----------------------------------------------------------
fitarg=()
[ -s "$out/fit.json" ] && fitarg=(--fit "$out/fit.json")
if [ "$(wc -l <"$csv")" -gt 1 ]; then
  say ""
  say "## Local runs (1 thread per rank; efficiency: weak = per-rank throughput vs 1 rank, strong = speed-up / ranks)"
  "$py" tests/peer/scaling_model.py local --csv "$csv" "${fitarg[@]}" --out "$out" >/dev/null
  cat "$out/local.md" >>"$summary"
  cat "$out/local.md"
fi
pan=()
[ -f configs/pancancer.yaml ] && pan=(--pancancer configs/pancancer.yaml)
say ""
say "## Projected weak-scaling efficiency (model, not measured)"
"$py" tests/peer/scaling_model.py project "${fitarg[@]}" "${pan[@]}" --out "$out" >/dev/null
cat "$out/projection.md" >>"$summary"
cat "$out/projection.md"

# ---- 4. plots -------------------------------------------------------------------------------
gnuplot <<EOF
set terminal pngcairo size 900,560 font ",11"
set output "$plots/scaling-projection.png"
set title "Projected weak-scaling efficiency, 64 patients/GPU (alpha-beta model, published interconnect figures)"
set xlabel "GPUs"; set ylabel "efficiency (%)"; set logscale x 2; set yrange [0:105]; set grid
set key bottom left
plot "$out/projection.dat" u 1:(100*\$2) w lp lw 2 t "reference, 8 NICs/node, overlap", \
     "" u 1:(100*\$5) w lp lw 2 dt 2 t "reference, 1 NIC/node, no overlap", \
     "" u 1:(100*\$6) w lp lw 2 t "pancancer (224^2 tiles), 8 NICs/node, overlap", \
     "" u 1:(100*\$9) w lp lw 2 dt 2 t "pancancer (224^2 tiles), 1 NIC/node, no overlap"
EOF
say ""
say "plot: $plots/scaling-projection.png"
if [ "$(wc -l <"$csv")" -gt 1 ]; then
  for mode in weak strong; do grep "^$mode," "$csv" | sort -t, -k2 -n >"$out/$mode.dat" || true; done
  gnuplot <<EOF
set terminal pngcairo size 900,560 font ",11"
set datafile separator ","
set output "$plots/scaling-throughput.png"
set title "Reference model throughput vs MPI ranks ($(nproc) cores; 4 ranks oversubscribed)"
set xlabel "MPI ranks (1 thread each)"; set ylabel "patients/s"; set grid; set xtics (1,2,4); set key top left
plot "$out/weak.dat" u 2:5 w lp lw 2 t "weak (per-rank batch $prb)", "$out/strong.dat" u 2:5 w lp lw 2 t "strong (global batch 64)"
set output "$plots/scaling-efficiency.png"
set title "Parallel efficiency (weak: per-rank throughput; strong: speed-up / ranks)"
set ylabel "efficiency (%)"; set yrange [0:110]
w1 = system("awk -F, 'NR==1{print \$5}' $out/weak.dat") + 0
s1 = system("awk -F, 'NR==1{print \$5}' $out/strong.dat") + 0
plot "$out/weak.dat" u 2:(100*\$5/(w1*\$2)) w lp lw 2 t "weak", "$out/strong.dat" u 2:(100*\$5/(s1*\$2)) w lp lw 2 t "strong"
set output "$plots/scaling-breakdown.png"
set title "Per-step time breakdown (strong scaling, global batch 64)"
set ylabel "seconds per step"; set yrange [0:*]; set style data histograms; set style histogram rowstacked
set style fill solid 0.8 border -1; set boxwidth 0.6; set xtics auto; set xlabel "MPI ranks"
plot "$out/strong.dat" u 6:xtic(2) t "compute", "" u 7 t "exposed comm", "" u 8 t "I/O"
EOF
  say "plots: $plots/scaling-throughput.png $plots/scaling-efficiency.png $plots/scaling-breakdown.png"
fi
say ""
say "raw outputs: $out"
