#!/usr/bin/env bash
# The commands shown in docs/data-format.md and docs/simulator.md, plus CLI usage errors.
set -euo pipefail
bin=${PANSURV_BIN:?}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
"$bin" sim --out cohort.h5 --patients 500 --genes 100 --tiles 4 --tile-size 16 | tee sim.log
grep -q "oracle C-index" sim.log
"$bin" check cohort.h5 | tee check.log
grep -q "patients 500, genes 100" check.log
"$bin" bench io --data cohort.h5 --steps 3 --warmup 1 --compute-ms 5 | tee bench.log
grep -q "^prefetch" bench.log
# usage errors exit 2, bad values name the option
set +e
"$bin" sim --patients 10 >/dev/null 2>&1; [ $? -eq 2 ] || { echo "sim without --out should exit 2"; exit 1; }
"$bin" sim --out x.h5 --censoring 1.5 2>err.log; rc=$?
[ $rc -eq 2 ] && grep -q -- "--censoring" err.log || { echo "bad --censoring: rc $rc"; exit 1; }
"$bin" check >/dev/null 2>&1; [ $? -eq 2 ] || { echo "check without FILE should exit 2"; exit 1; }
"$bin" check missing.h5 2>err.log; rc=$?
[ $rc -eq 1 ] && grep -q "missing.h5" err.log || { echo "check of a missing file: rc $rc"; exit 1; }
[ ! -e x.h5 ] && [ ! -e x.h5.tmp ] || { echo "a failed sim left a file"; exit 1; }
# pansurv prep as in docs/data-format.md, on 1 and 2 ranks (same file)
set -e
printf 'bcr_patient_barcode\ttype\tage_at_initial_pathologic_diagnosis\tgender\tOS\tOS.time\n' > clinical.tsv
printf 'TCGA-AA-0001\tBRCA\t50\tFEMALE\t1\t100\nTCGA-AA-0002\tBRCA\t[Not Available]\tMALE\t0\t300\nTCGA-BB-0003\tLUAD\t61\tMALE\t1\t30\n' >> clinical.tsv
printf 'gene\tTCGA-AA-0001-01A-11R\tTCGA-AA-0002-01A-11R\tTCGA-BB-0003-01A-11R\nG1\t10\t20\t30\nG2\t5\t0\t7\n' > counts.tsv
mkdir slides
for p in TCGA-AA-0001 TCGA-BB-0003; do
  vips black bg.v 600 400 --bands 3
  vips linear bg.v glass.v "1 1 1" "240 240 240" --uchar
  vips black disk.v 300 200 --bands 3
  vips linear disk.v pink.v "1 1 1" "200 100 170" --uchar
  vips insert glass.v pink.v "$p-01Z-00-DX1.v" 150 100
  vips tiffsave "$p-01Z-00-DX1.v" "slides/$p-01Z-00-DX1.tif" --tile --pyramid --tile-width 256 --tile-height 256 --xres 2000 --yres 2000
done
"$bin" prep --clinical clinical.tsv --rnaseq counts.tsv --transform log2cpm \
             --slides slides/ --tile-size 32 --target-mpp 0.5 --max-tiles 512 --out cohort.h5 | tee prep.log
grep -q "3 patients" prep.log
"$bin" check cohort.h5 | grep -q "slides: tiles (108 tiles of 32x32)" # 2 slides x (9 x 6 cells >= 50% inside the 300x200 tissue block)
mpiexec -n 2 --oversubscribe "$bin" prep --clinical clinical.tsv --rnaseq counts.tsv --transform log2cpm \
             --slides slides/ --tile-size 32 --target-mpp 0.5 --max-tiles 512 --out cohort2.h5 > /dev/null
h5diff cohort.h5 cohort2.h5 || { echo "prep on 2 ranks differs from 1 rank"; exit 1; }
# the same column choices from a YAML mapping, with another endpoint and id column name
sed 's/bcr_patient_barcode/patient/; s/\tOS\tOS.time/\tPFI\tPFI.time/' clinical.tsv > clin2.tsv
printf 'id: patient\nendpoint: PFI\nnumeric: [age_at_initial_pathologic_diagnosis]\ncategorical: [gender]\n' > columns.yaml
"$bin" prep --clinical clin2.tsv --columns columns.yaml --out cohort3.h5 | grep -q "3 patients (endpoint PFI)"
"$bin" check cohort3.h5 | grep -q "clinical columns 3"
printf 'id: patient\nbogus: 1\n' > bad.yaml
set +e
"$bin" prep --clinical clin2.tsv --columns bad.yaml --out x.h5 2>err.log; rc=$?
set -e
[ $rc -eq 2 ] && grep -q "unknown key 'bogus'" err.log || { echo "bad YAML key: rc $rc"; cat err.log; exit 1; }
echo "data_cli: ok"
