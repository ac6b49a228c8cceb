#!/usr/bin/env bash
# launch_slurm_preempt: a real single-node SLURM (slurmctld + slurmd + munged
# started here, stopped by PID), slurm/train.sbatch submitted with a tiny toy
# training run, preemption by `scancel --batch --signal=USR1 JOB`; checks that
# the job checkpoints, is requeued, resumes from the checkpoint and finishes
# with parameters bit-identical to an uninterrupted run. Bounded at 5 minutes.
# Exit 77 (CTest skip) only when the daemons cannot start.
set -uo pipefail
bin=${PANSURV_BIN:?}
src=${PANSURV_SOURCE_DIR:?}
deadline=$((SECONDS + 290))
for t in slurmctld slurmd munged mungekey sbatch scontrol squeue scancel srun; do
  command -v $t >/dev/null || { echo "SKIP: $t not installed (scripts/install-deps.sh test installs slurm-wlm and munge)"; exit 77; }
done
work=$(mktemp -d /tmp/ps_slurm_XXXXXX)
chmod 0755 "$work"
export SLURM_CONF=$work/slurm.conf
munge_pid="" ctld_pid="" slurmd_pid=""
cleanup() {
  if [ -n "$ctld_pid" ]; then
    scancel --quiet --full $(squeue -h -o %i 2>/dev/null) 2>/dev/null
    for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for p in $slurmd_pid $ctld_pid $munge_pid; do kill "$p" 2>/dev/null; done
  for p in $slurmd_pid $ctld_pid $munge_pid; do
    for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null
  done
  # step daemons of this cluster only (their command line names our spool dir is not available; match by parent gone)
  for p in $(pgrep -f "slurmstepd.*" 2>/dev/null); do
    grep -q "$work" /proc/$p/environ 2>/dev/null && kill -9 "$p" 2>/dev/null
  done
  if [ -n "${PANSURV_KEEP_WORK:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2" >&2; fail=1; fi; }

# ---- munge ----
mkdir -p "$work/munge/run" && chmod 0700 "$work/munge" && chmod 0755 "$work/munge/run"
mungekey --create --keyfile="$work/munge/munge.key" >/dev/null 2>&1 || { echo "SKIP: mungekey failed"; exit 77; }
chmod 0600 "$work/munge/munge.key"
sock=$work/munge/run/munge.socket
setsid munged -F --socket="$sock" --key-file="$work/munge/munge.key" --pid-file="$work/munge/munged.pid" \
  --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed" --force >/dev/null 2>&1 &
munge_pid=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "SKIP: munged did not start: $(tail -3 "$work/munge/munged.log" 2>/dev/null)"; exit 77; }

# ---- slurm ----
ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
read -r p1 p2 <<<"$ports"
mkdir -p "$work/state" "$work/spool" "$work/log" "$work/jobs"
cat > "$SLURM_CONF" <<CONF
ClusterName=pstest
SlurmctldHost=localhost
SlurmctldPort=$p1
SlurmdPort=$p2
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
setsid slurmctld -D -c -f "$SLURM_CONF" >"$work/log/slurmctld.out" 2>&1 &
ctld_pid=$!
setsid slurmd -D -N localhost -f "$SLURM_CONF" >"$work/log/slurmd.out" 2>&1 &
slurmd_pid=$!
up=0
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then up=1; break; fi
  sleep 0.5
done
if [ $up = 0 ]; then
  echo "SKIP: SLURM daemons did not start"; tail -5 "$work/log/slurmctld.log" "$work/log/slurmd.log" 2>/dev/null; exit 77
fi
echo "slurm up: $(sinfo -h -o '%P %D %T')"

# ---- the job ----
cat > "$work/toy.yaml" <<YAML
train:
  workload: toy
  epochs: 4
  global_batch: 64
  seed: 3
optim:
  lr: 0.05
checkpoint:
  every_steps: 0
log:
  run_dir: $work/runs
  every_steps: 1
YAML
export PANSURV=$bin OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export PANSURV_SRUN_MPI=${PANSURV_SRUN_MPI:-pmix}
# Slow steps so the signal lands mid-run (SLURM delivers signals with 15-30 s granularity here).
export PANSURV_TOY_STEP_MS=1500
job=$(sbatch --parsable --ntasks=2 --ntasks-per-node=2 --chdir="$work/jobs" --output="$work/jobs/out-%j.txt" \
  "$src/slurm/train.sbatch" "$work/toy.yaml")
[ -n "$job" ] || { echo "FAIL: sbatch failed"; exit 1; }
echo "submitted job $job"
log=$work/jobs/out-$job.txt
metrics=$work/runs/job-$job/metrics.csv
# wait for a few steps, then preempt
for _ in $(seq 120); do
  [ -f "$metrics" ] && [ "$(wc -l < "$metrics")" -ge 3 ] && break
  [ $SECONDS -gt $deadline ] && break; sleep 0.5
done
check '[ -f "$metrics" ]' "the job never started training: $(cat "$log" 2>/dev/null | tail -5)"
echo "preempting at step $(( $(wc -l < "$metrics") - 1 ))"
scancel --batch --signal=USR1 "$job"
# wait for the requeued run to finish
state="" nudged=0
while [ $SECONDS -lt $deadline ]; do
  state=$(scontrol show job "$job" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  restarts=$(scontrol show job "$job" 2>/dev/null | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')
  if [ "$state" = COMPLETED ] || [ "$state" = FAILED ] || [ "$state" = CANCELLED ]; then break; fi
  # SLURM holds a requeued job for about two minutes (BeginTime) so the old
  # steps can finish cleaning up; start it as soon as the old step's files
  # (e.g. its PMIx socket) are gone from the spool directory.
  if [ "$state" = PENDING ] && [ "${restarts:-0}" -ge 1 ] && [ $nudged = 0 ] &&
     ! ls "$work/spool" | grep -qE "[._]$job\.[0-9]"; then
    sleep 1
    scontrol update JobId="$job" StartTime=now && nudged=1 && echo "requeued job pending: StartTime=now"
  fi
  sleep 1
done
echo "job $job: state $state, restarts ${restarts:-?}"
echo "---- job log ----"; grep -E "pansurv-train|resumed|stopped|exit status|step exited|requeue" "$log"
check '[ "$state" = COMPLETED ]' "job did not complete (state '$state') within the bound"
check '[ "${restarts:-0}" -ge 1 ]' "job was not requeued"
check 'grep -q "step exited with status 3" "$log"' "the step did not exit with status 3 after the signal"
check 'grep -q "requeueing job" "$log"' "the batch script did not requeue"
check 'grep -q "resumed from .*ckpt-" "$log"' "the requeued job did not resume from a checkpoint"
check 'grep -q "\"stopped\": \"completed\"" "$work/runs/job-$job/summary.json"' "no completed summary"
got=$(sed -n 's/.*"param_crc32": "\([0-9a-f]*\)".*/\1/p' "$work/runs/job-$job/summary.json")
# the same training uninterrupted, 2 ranks under mpirun
PANSURV_TOY_STEP_MS=0 mpirun -np 2 --oversubscribe "$bin" train "$work/toy.yaml" --quiet --set log.name=ref >/dev/null 2>&1
want=$(sed -n 's/.*"param_crc32": "\([0-9a-f]*\)".*/\1/p' "$work/runs/ref/summary.json")
echo "preempted+requeued crc $got, uninterrupted crc $want"
check '[ -n "$got" ] && [ "$got" = "$want" ]' "preempted run differs from an uninterrupted one"

# ---- slurm/cv.sbatch (array, one fold per task) and slurm/scaling.sbatch ----
unset PANSURV_TOY_STEP_MS
"$bin" sim --out "$work/tiny.h5" --patients 300 --genes 30 --tiles 2 --tile-size 16 --seed 5 >/dev/null
cat > "$work/tiny.yaml" <<YAML
data: {path: $work/tiny.h5, folds: 2, tiles: 2}
model: {embed_dim: 8, omics_hidden: 16, cnn_channels: [4, 4, 8], tile_size: 16, attn_hidden: 8, clinical_hidden: 8, fusion_heads: 2}
train: {epochs: 1, global_batch: 32}
log: {run_dir: $work/cvruns}
YAML
arr=$(sbatch --parsable --array=0-1 --ntasks=1 --chdir="$work/jobs" --output="$work/jobs/cv-%A_%a.txt" \
  "$src/slurm/cv.sbatch" "$work/tiny.yaml")
scal=$(sbatch --parsable --ntasks=2 --chdir="$work/jobs" --output="$work/jobs/scaling-%j.txt" \
  --export=ALL,PANSURV_SCALING_DIR="$work/scaling" "$src/slurm/scaling.sbatch" "$work/toy.yaml" 4)
echo "submitted cv array $arr and scaling job $scal"
while [ $SECONDS -lt $deadline ] && [ -n "$(squeue -h -j "$arr,$scal" 2>/dev/null)" ]; do sleep 1; done
check '[ -s "$work/cvruns/cv-$arr/cv_summary.json" ]' "cv array wrote no cv_summary.json: $(tail -n 3 "$work"/jobs/cv-*.txt)"
grep -h "fold .* test C-index\|folds: test" "$work"/jobs/cv-*.txt
check '[ "$(wc -l < "$work/scaling/scaling.csv" 2>/dev/null)" = 3 ]' "scaling.csv should have rows for 1 and 2 ranks"
cat "$work/scaling/scaling.md" 2>/dev/null
[ $fail = 0 ] && echo "launch_slurm_preempt: ok"
exit $fail
