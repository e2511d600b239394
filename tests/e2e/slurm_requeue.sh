#!/usr/bin/env bash
# The preemption path under a real one-node Slurm: a 2-rank job of
# launch/slurm/train_cpu.sbatch gets SIGUSR1 on its batch shell mid-run
# (`scancel --signal=USR1 --batch`, exactly what `--signal=B:USR1@120` does
# before the time limit), forwards it to the ranks, which save at a step
# boundary and exit 75; the script requeues the job, which resumes from
# `latest` (SLURM_RESTART_COUNT=1), finishes, and ends with the same losses
# as the same job run without interruption. launch/slurm/ckpt.sbatch then
# verifies the run's latest checkpoint.
#
# Kept out of the tests/e2e/*.sh glob until the lead registers it (moved to
# tests/e2e/slurm_requeue.sh it runs unchanged). About 45-60 s; root.
#   bash tests/e2e/slurm/requeue.sh TESSERA_BINARY SOURCE_ROOT
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$here/lib.sh" ] || here=$(dirname "$here")  # run from tests/e2e/slurm/ or tests/e2e/
source "$here/lib.sh"
source "$here/slurm/cluster.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
TESSERA=$(realpath "$TESSERA")
SOURCE=$(realpath "$SOURCE")
STEPS=2000
common=(--set data.dir="$WORK/data" --set model.dit_moe.sample_grid_per_class=0 --set train.micro_batch=2
        --set parallel.collective_timeout_s=60 --set train.steps=$STEPS)
make_data "$WORK/data"
slurm_install
slurm_start

submit() {  # NAME [sbatch options...]: the job id
  local name=$1
  shift
  sbatch --parsable --chdir="$WORK" --job-name="$name" --ntasks-per-node=2 --time=10 "$@" \
    --export=ALL,TESSERA="$TESSERA" "$SOURCE/launch/slurm/train_cpu.sbatch" \
    "$SOURCE/configs/dit_moe_tiny.textproto" "$WORK/$name" "${common[@]}"
}
metric_lines() { [ -f "$1/metrics.jsonl" ] && wc -l < "$1/metrics.jsonl" || echo 0; }
# The loss of each step (a resumed run trims the lines past its checkpoint,
# so each step should appear once; the count is checked separately).
losses_by_step() {
  grep -oE '"step":[0-9]+|"loss":[^,}]*' "$1/metrics.jsonl" | cut -d: -f2 | paste - - |
    awk '{ loss[$1] = $2 } END { for (s in loss) print s, loss[s] }' | sort -n
}

# The reference: the same job, never interrupted.
ref=$(submit reference) || slurm_die "sbatch refused the job"
state=$(slurm_wait_job "$ref" 600)
[ "$state" = COMPLETED ] || { fail "reference job: $state"; tail -20 "$WORK/reference-$ref.out"; finish; }

id=$(submit preempted) || slurm_die "sbatch refused the job"
start=$SECONDS
while [ "$(metric_lines "$WORK/preempted")" -lt 5 ] && [ $((SECONDS - start)) -lt 300 ]; do sleep 0.2; done
lines_at_signal=$(metric_lines "$WORK/preempted")
scancel --signal=USR1 --batch "$id"
slurm_release_requeued "$id" 300
state=$(slurm_wait_job "$id" 600)
log=$WORK/preempted-$id.out

if [ "$lines_at_signal" -ge 5 ] && [ "$lines_at_signal" -lt $STEPS ]; then
  pass "SIGUSR1 sent to the batch shell at step $lines_at_signal of $STEPS"
else
  fail "the signal came at step $lines_at_signal of $STEPS (run too fast or never started)"
fi
if grep -q "SIGUSR1 .*forwarding to the ranks" "$log" && grep -q "tessera exited with code 75" "$log" &&
    grep -q "requeueing job $id" "$log"; then
  pass "the ranks saved and exited 75; the batch script requeued the job"
else
  fail "no save-and-requeue in the log"; grep -E "^\[|error" "$log" | head -20
fi
if [ "$state" = COMPLETED ] && [ "$(slurm_job_field "$id" Restarts)" = 1 ] &&
    [ "$(slurm_job_field "$id" ExitCode)" = 0:0 ] &&
    grep -q "tessera job $id (preempted) restart 1:" "$log" &&
    grep -q "^mpi: world 2 ranks on 1 node, local size 2, launcher srun, Slurm job $id restart 1" "$log" &&
    grep -q "tessera exited with code 0" "$log"; then
  pass "requeued once (SLURM_RESTART_COUNT=1) and COMPLETED with exit 0"
else
  fail "after the requeue: state $state, restarts $(slurm_job_field "$id" Restarts), exit $(slurm_job_field "$id" ExitCode)"
  grep -E "^\[|^mpi:|error" "$log" | head -20
fi
# tessera's own line (not the batch script's echo of --resume): the step it
# saved after the signal, which `latest` named when the job came back.
resumed=$(grep -oE "^resumed from [^ ]*/checkpoints/step_[0-9]+: step [0-9]+ done, continuing at step [0-9]+" "$log")
saved=$(echo "$resumed" | grep -oE "step [0-9]+ done" | grep -oE "[0-9]+")
if [ "$(echo "$resumed" | grep -c .)" -eq 1 ] && [ -n "$saved" ] &&
    [ "$saved" -ge "$lines_at_signal" ] && [ "$saved" -lt $STEPS ] &&
    echo "$resumed" | grep -qE "step_0*$saved: step $saved done, continuing at step $((saved + 1))$"; then
  pass "resumed once from the checkpoint saved after the signal: $resumed"
else
  fail "no single resume from the signal's checkpoint: '${resumed:-none}' (signal at step $lines_at_signal)"
  ls -la "$WORK/preempted/checkpoints" 2>&1 | head
fi
if diff <(losses_by_step "$WORK/reference") <(losses_by_step "$WORK/preempted") > "$WORK/losses.diff" &&
    [ "$(losses_by_step "$WORK/preempted" | wc -l)" -eq $STEPS ] &&
    [ "$(metric_lines "$WORK/preempted")" -eq $STEPS ]; then
  pass "all $STEPS losses equal the uninterrupted job's (final $(losses_by_step "$WORK/preempted" | tail -1))"
else
  fail "losses differ from the uninterrupted job"; head "$WORK/losses.diff"
fi

# The checkpoint job on the finished run.
ck=$(sbatch --parsable --chdir="$WORK" --export=ALL,TESSERA="$TESSERA" \
  "$SOURCE/launch/slurm/ckpt.sbatch" "$WORK/preempted") || slurm_die "sbatch refused the job"
state=$(slurm_wait_job "$ck" 120)
if [ "$state" = COMPLETED ] && grep -q "tessera ckpt verify exited with code 0" "$WORK/tessera-ckpt-$ck.out" &&
    grep -q "tessera ckpt show exited with code 0" "$WORK/tessera-ckpt-$ck.out"; then
  pass "ckpt.sbatch: the latest checkpoint verifies"
else
  fail "ckpt.sbatch: $state"; tail -20 "$WORK/tessera-ckpt-$ck.out"
fi
finish
