#!/usr/bin/env bash
# The multimodal model through `pansurv train` on a tiny simulated cohort:
# world-size equivalence (1, 2, 4 ranks: same loss at each of 20 steps,
# <= 1e-5 relative), determinism (bit-identical parameters), bit-exact resume,
# resume at another world size (2 -> 1), exact gradient accumulation
# (2 x 16 micro-batches = one batch of 32), eval outputs, and bad inputs.
# Usage: train_model.sh MODE
set -uo pipefail
mode=$1
bin=${PANSURV_BIN:?}
work=$(mktemp -d /tmp/ps_model_XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2" >&2; fail=1; fi; }
mpi() { local np=$1; shift; mpirun -np "$np" --oversubscribe --mca mpi_yield_when_idle 1 "$@"; }
export PANSURV_PROGRESS=plain

"$bin" sim --out "$work/tiny.h5" --patients 400 --genes 40 --tiles 3 --tile-size 16 --seed 5 >/dev/null || exit 1
cat > "$work/tiny.yaml" <<YAML
data:
  path: $work/tiny.h5
  split: random
  val_fraction: 0.2
  test_fraction: 0.2
  tiles: 3
  bag: sample
model:
  embed_dim: 8
  omics_hidden: 16
  cnn_channels: [4, 4, 8]
  tile_size: 16
  attn_hidden: 8
  clinical_hidden: 8
  fusion_heads: 2
optim:
  lr: 0.003
train:
  epochs: 3
  global_batch: 32
  seed: 11
checkpoint:
  every_steps: 5
log:
  run_dir: $work/runs
YAML
crc() { sed -n 's/.*"param_crc32": "\([0-9a-f]*\)".*/\1/p' "$work/runs/$1/summary.json"; }
losses() { tail -n +2 "$work/runs/$1/metrics.csv" | cut -d, -f1,3; }
maxrel() { join -t, <(losses "$1" | sort -t, -k1,1) <(losses "$2" | sort -t, -k1,1) |
  awk -F, 'BEGIN{m=0;n=0} {d=$2-$3; if(d<0)d=-d; s=$3<0?-$3:$3; r=d/(s>1e-30?s:1e-30); if(r>m)m=r; n++}
           END{if(n==0)print "nan 0"; else printf "%.3g %d\n", m, n}'; }
tr() { local np=$1 name=$2; shift 2; mpi "$np" "$bin" train "$work/tiny.yaml" --quiet --set log.name="$name" "$@"; }

case $mode in
equivalence)
  for np in 1 2 4; do tr $np np$np --set train.max_steps=20 || fail=1; done
  for np in 2 4; do
    read -r m n < <(maxrel np1 np$np)
    echo "model: np1 vs np$np: max rel loss diff $m over $n steps"
    check "[ \"$n\" = 20 ] && awk -v m=$m 'BEGIN{exit !(m<=1e-5)}'" "np$np loss differs from np1 by $m (> 1e-5)"
  done ;;
determinism)
  tr 2 a --set train.max_steps=12 || fail=1
  tr 2 b --set train.max_steps=12 || fail=1
  echo "model crc a=$(crc a) b=$(crc b)"
  check '[ -n "$(crc a)" ] && [ "$(crc a)" = "$(crc b)" ]' "two runs with the same seed differ" ;;
resume) # 8 steps + resume to 16 (crosses the epoch boundary at 7 steps) = 16 uninterrupted steps
  tr 2 full --set train.max_steps=16 || fail=1
  tr 2 part --set train.max_steps=8 || fail=1
  tr 2 part --set train.max_steps=16 --resume auto || fail=1
  echo "model full=$(crc full) resumed=$(crc part)"
  check '[ -n "$(crc full)" ] && [ "$(crc full)" = "$(crc part)" ]' "resume is not bit-exact"
  check '[ "$(losses full | md5sum)" = "$(losses part | md5sum)" ]' "losses of the resumed run differ" ;;
resume_np2to1)
  tr 2 full --set train.max_steps=16 || fail=1
  tr 2 part --set train.max_steps=8 || fail=1
  tr 1 part --set train.max_steps=16 --resume auto || fail=1
  read -r m n < <(maxrel full part)
  echo "model: 2 ranks vs 2->1 ranks: max rel loss diff $m over $n steps"
  check "[ \"$n\" = 16 ] && awk -v m=$m 'BEGIN{exit !(m<=1e-5)}'" "losses after resuming on 1 rank differ by $m" ;;
accumulation) # no BatchNorm path (clinical + omics), so micro-batches = the large batch
  "$bin" sim --out "$work/tiny.h5" --patients 400 --genes 40 --tiles 3 --tile-size 16 --seed 5 --missing 0 >/dev/null || exit 1
  tr 2 big --set train.max_steps=12 --set data.modalities=clinical,omics || fail=1
  tr 2 acc --set train.max_steps=12 --set data.modalities=clinical,omics --set train.accumulation=2 || fail=1
  read -r m n < <(maxrel big acc)
  echo "model: accumulation 2 x 16 vs 32: max rel loss diff $m over $n steps"
  check "[ \"$n\" = 12 ] && awk -v m=$m 'BEGIN{exit !(m<=1e-5)}'" "accumulation differs from the large batch by $m"
  # all modalities with GroupNorm in the tile CNN (per-tile statistics): exact as well
  tr 2 bigg --set train.max_steps=12 --set model.norm_groups=4 || fail=1
  tr 2 accg --set train.max_steps=12 --set model.norm_groups=4 --set train.accumulation=4 || fail=1
  read -r m n < <(maxrel bigg accg)
  echo "model (GroupNorm, all modalities): accumulation 4 x 8 vs 32: max rel loss diff $m over $n steps"
  check "[ \"$n\" = 12 ] && awk -v m=$m 'BEGIN{exit !(m<=1e-5)}'" "GroupNorm accumulation differs by $m"
  # BatchNorm: micro-batch statistics differ from the large batch by design; the run must still work
  tr 2 accb --set train.max_steps=4 --set train.accumulation=2 || fail=1 ;;
eval)
  tr 2 e --set train.epochs=2 --set data.bag=all || fail=1
  mpi 2 "$bin" eval --checkpoint "$work/runs/e/checkpoints/best.h5" --data "$work/tiny.h5" --out "$work/ev" --bootstrap 20 || fail=1
  for f in metrics.json predictions.csv top_tiles.csv clinical_train.csv clinical_test.csv km_risk_groups.png \
           per_cohort_c.png modality_attention.png learning_curves.png; do
    check "[ -s $work/ev/$f ]" "eval did not write $f"
  done
  for k in harrell_c harrell_c_ci95 uno_c td_auc brier ibs logrank per_cohort oracle_c; do
    check "grep -q '\"$k\"' $work/ev/metrics.json" "metrics.json lacks $k"
  done
  check 'head -1 $work/ev/top_tiles.csv | grep -q "id,rank,bag_entry,attention,tile_row,slide,x,y"' "top_tiles.csv header"
  # another cohort with the same genes and clinical columns: scored with the model's own
  # training-split normalization (stored in the checkpoint)
  "$bin" sim --out "$work/tiny2.h5" --patients 300 --genes 40 --tiles 3 --tile-size 16 --seed 9 >/dev/null
  "$bin" eval --checkpoint "$work/runs/e/checkpoints/best.h5" --data "$work/tiny2.h5" --out "$work/ev2" --bootstrap 0 >/dev/null || fail=1
  check '[ -s $work/ev2/metrics.json ]' "eval on another cohort of the same shape failed"
  n=$(($(wc -l < $work/ev/predictions.csv) - 1)); nj=$(sed -n 's/.*"n": \([0-9]*\).*/\1/p' $work/ev/metrics.json | head -1)
  check '[ "$n" = "$nj" ] && [ "$n" -gt 50 ]' "predictions.csv has $n rows, metrics n=$nj" ;;
badinput)
  out=$(tr 1 x --set data.path=$work/missing.h5 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "missing.h5"' "missing data file: $out"
  out=$(tr 2 x --set train.global_batch=400 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "larger than the training split"' "batch > training split: $out"
  out=$(tr 1 x --set model.tile_size=32 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "tile_size = 32 but the tiles"' "tile size mismatch: $out"
  # no events in validation: a cohort where every patient is censored... use a split file with val = censored only
  python3 - "$work" <<'PY'
import subprocess, sys, csv
w = sys.argv[1]
# ids and events via the eval export of a quick run are heavy; read them with h5dump instead
out = subprocess.run(["h5dump", "-d", "/patients/event", "-y", "-w", "0", w + "/tiny.h5"], capture_output=True, text=True).stdout
ev = [int(x) for x in out.split("DATA {")[1].split("}")[0].replace(",", " ").split()]
with open(w + "/split.csv", "w") as f:
    f.write("id,split\n")
    val = 0
    for i, e in enumerate(ev):
        part = "train"
        if e == 0 and val < 30: part, val = "val", val + 1
        elif i % 5 == 0: part = "test"
        f.write("SIM-%07d,%s\n" % (i, part))
PY
  out=$(tr 1 x --set data.split=file --set data.split_file=$work/split.csv 2>&1); rc=$?
  check '[ $rc = 1 ] && echo "$out" | grep -q "validation split .* has no events"' "no events in validation: $out"
  # a checkpoint of another model (wider embedding) is refused on resume, naming what differs
  tr 1 other --set train.max_steps=2 --set model.embed_dim=16 --set model.cnn_channels=4,4,16 || fail=1
  out=$(tr 1 y --resume $work/runs/other/checkpoints/ckpt-0000000002.h5 2>&1); rc=$?
  echo "$out" | tail -1
  check '[ $rc = 1 ]' "checkpoint of another model accepted"
  # genes in the checkpoint != genes in the data (eval on a cohort with other genes)
  "$bin" sim --out "$work/other.h5" --patients 200 --genes 30 --tiles 3 --tile-size 16 --seed 6 >/dev/null
  out=$("$bin" eval --checkpoint $work/runs/other/checkpoints/ckpt-0000000002.h5 --data $work/other.h5 --out $work/ev2 2>&1); rc=$?
  echo "$out" | tail -1
  check '[ $rc = 1 ] && echo "$out" | grep -q "does not fit the model"' "gene mismatch not reported: $out"
  check '[ ! -e $work/ev2/metrics.json ]' "eval wrote outputs after a mismatch"
  truncate -s 3000 $work/runs/other/checkpoints/ckpt-0000000002.h5
  out=$("$bin" eval --checkpoint $work/runs/other/checkpoints/ckpt-0000000002.h5 --data $work/tiny.h5 --out $work/ev3 2>&1); rc=$?
  check '[ $rc = 1 ]' "truncated checkpoint accepted by eval: $out" ;;
cv) # sequential folds, then array-style single folds that complete the summary
  mpi 2 "$bin" cv "$work/tiny.yaml" --quiet --set data.folds=3 --set train.epochs=1 --set log.name=seq || fail=1
  check '[ -s $work/runs/seq/cv_summary.json ] && grep -q "\"folds\": 3" $work/runs/seq/cv_summary.json' "no cv_summary.json"
  for k in 0 1 2; do check "[ -s $work/runs/seq/fold$k/fold_result.json ]" "fold $k has no result"; done
  for k in 2 0; do mpi 2 "$bin" cv "$work/tiny.yaml" --quiet --set data.folds=3 --set train.epochs=1 --set log.name=arr --fold $k || fail=1; done
  check '[ ! -e $work/runs/arr/cv_summary.json ]' "summary written before every fold finished"
  mpi 2 "$bin" cv "$work/tiny.yaml" --quiet --set data.folds=3 --set train.epochs=1 --set log.name=arr --fold 1 || fail=1
  check '[ -s $work/runs/arr/cv_summary.json ]' "the last array fold did not write the summary"
  check '[ "$(grep -A3 test_c $work/runs/seq/cv_summary.json | head -1)" = "$(grep -A3 test_c $work/runs/arr/cv_summary.json | head -1)" ]' \
    "array folds differ from sequential folds"
  out=$("$bin" cv "$work/tiny.yaml" --set data.folds=3 --fold 3 2>&1); rc=$?
  check '[ $rc = 2 ]' "--fold beyond data.folds accepted" ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
[ $fail = 0 ] && echo "launch_model_$mode: ok"
exit $fail
