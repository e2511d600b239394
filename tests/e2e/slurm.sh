#!/usr/bin/env bash
# Launching tessera for real: a one-node Slurm cluster (slurm-wlm + munge,
# installed when missing, daemons of our own in a temp dir, see
# slurm/cluster.sh) runs the project's launch/slurm/train_cpu.sbatch, and the
# rank environment is checked against what srun and mpirun really set.
#
#   1. mpirun: one rank with a forged OMPI_COMM_WORLD_LOCAL_SIZE makes every
#      rank exit 2 with the variable, its value and MPI's value (no hang);
#      launch/mpirun/train.sh trains, retries after a killed rank (second
#      attempt with --resume) and never retries a config error.
#   2. Slurm: train_cpu.sbatch with 4 srun tasks and with LAUNCHER=mpirun
#      (2 ranks) ends COMPLETED with exit 0, one metrics.jsonl line per step
#      and the losses of one process, and the job log shows the rank/world
#      line with the Slurm variables checked; a forged SLURM_LOCALID under
#      srun is refused with exit 2.
# Needs root (daemons). If Slurm cannot be brought up the test FAILS loudly.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/slurm/cluster.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
TESSERA=$(realpath "$TESSERA")
SOURCE=$(realpath "$SOURCE")
CONFIG=$SOURCE/configs/dit_moe_tiny.textproto
common=(--set data.dir="$WORK/data" --set model.dit_moe.sample_grid_per_class=0 --set train.micro_batch=2
        --set parallel.collective_timeout_s=60)
same_losses() {  # DIR_A DIR_B: equal within 1e-5 relative, same count
  [ -s "$1/metrics.jsonl" ] && [ -s "$2/metrics.jsonl" ] &&
    [ "$(losses "$1" | wc -l)" -eq "$(losses "$2" | wc -l)" ] &&
    paste <(losses "$1") <(losses "$2") |
      awk '{ d = $1 - $2; if (d < 0) d = -d; a = $1 < 0 ? -$1 : $1; if (d > 1e-5 * a) bad = 1 } END { exit bad }'
}
make_data "$WORK/data"
tiny "$WORK/single" "$WORK/data" "${common[@]}" > "$WORK/single.log" 2>&1 || fail "single process run"

# --- 1. mpirun ---------------------------------------------------------------
# Only rank 1 sees the forged value; all three must still stop with exit 2.
timeout 120 mpirun --oversubscribe --bind-to none -np 3 bash -c \
  '[ "$OMPI_COMM_WORLD_RANK" = 1 ] && export OMPI_COMM_WORLD_LOCAL_SIZE=5; exec "$0" "$@"' \
  "$TESSERA" train --config "$CONFIG" --set train.run_dir="$WORK/forged_ompi" "${common[@]}" \
  > "$WORK/forged_ompi.log" 2>&1
rc=$?
n=$(grep -c "OMPI_COMM_WORLD_LOCAL_SIZE=5, but MPI says local size 3 .*on world rank 1; 1 of 3" "$WORK/forged_ompi.log")
# Every rank returns the same error, but mpirun ends the job as soon as the
# first rank exits 2, so how many ranks get to print it is a race: ask for
# at least one, and the exit code.
if [ $rc -eq 2 ] && [ "$n" -ge 1 ]; then
  pass "mpirun: a forged OMPI_COMM_WORLD_LOCAL_SIZE on rank 1 stops the job with exit 2 ($n of 3 ranks printed it before mpirun ended the job)"
else
  fail "mpirun forged variable: exit $rc, $n ranks named it"; head -5 "$WORK/forged_ompi.log"
fi

WRAPPER=$SOURCE/launch/mpirun/train.sh
timeout 300 "$WRAPPER" -np 2 --tessera "$TESSERA" --config "$CONFIG" --run-dir "$WORK/wrapper" \
  --max-restarts 2 "${common[@]}" > "$WORK/wrapper.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && same_losses "$WORK/single" "$WORK/wrapper" &&
    [ "$(grep -c 'train.sh: attempt' "$WORK/wrapper.log")" -eq 2 ] &&
    grep -q "attempt 1/3 exited with code 0" "$WORK/wrapper.log" &&
    grep -q "launcher mpirun" "$WORK/wrapper.log"; then
  pass "mpirun/train.sh: 2 ranks, one attempt, the losses of one process"
else
  fail "mpirun/train.sh: exit $rc"; grep -E "train.sh|error" "$WORK/wrapper.log" | head
fi

timeout 300 "$WRAPPER" -np 2 --tessera "$TESSERA" --config "$CONFIG" --run-dir "$WORK/retry" \
  --max-restarts 1 "${common[@]}" --set fault.kill_rank=1 --set fault.at_step=2 \
  > "$WORK/retry.log" 2>&1
rc=$?
last=$(grep -oE "attempt 2/2 exited with code [0-9]+" "$WORK/retry.log" | grep -oE "[0-9]+$")
if [ $rc -ne 0 ] && [ "$rc" = "$last" ] && grep -q "attempt 1/2 exited with code [1-9]" "$WORK/retry.log" &&
    grep -qE "attempt 2/2: .* --resume$" "$WORK/retry.log"; then
  pass "mpirun/train.sh: a killed rank is retried once with --resume, exit code $rc passed on"
else
  fail "mpirun/train.sh retry: exit $rc (last attempt: ${last:-none})"; grep "train.sh" "$WORK/retry.log"
fi

timeout 120 "$WRAPPER" -np 2 --tessera "$TESSERA" --config "$CONFIG" --run-dir "$WORK/bad" \
  --max-restarts 3 --set train.steps=0 > "$WORK/bad.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && [ "$(grep -c 'train.sh: attempt .*exited' "$WORK/bad.log")" -eq 1 ]; then
  pass "mpirun/train.sh: a config error (exit 2) is not retried"
else
  fail "mpirun/train.sh config error: exit $rc"; grep "train.sh" "$WORK/bad.log"
fi

# --- 2. Slurm ------------------------------------------------------------------
slurm_install
slurm_start

submit() {  # NAME TASKS [sbatch options...]: the job id
  local name=$1 tasks=$2
  shift 2
  sbatch --parsable --chdir="$WORK" --job-name="$name" --ntasks-per-node="$tasks" --time=10 "$@" \
    --export=ALL,TESSERA="$TESSERA" "$SOURCE/launch/slurm/train_cpu.sbatch" \
    "$CONFIG" "$WORK/$name" "${common[@]}"
}

check_job() {  # NAME ID TASKS LAUNCHER
  local name=$1 id=$2 tasks=$3 launcher=$4
  local state log=$WORK/$name-$id.out
  state=$(slurm_wait_job "$id" 300)
  local exit_code
  exit_code=$(slurm_job_field "$id" ExitCode)
  local world="mpi: world $tasks ranks on 1 node, local size $tasks, launcher $launcher, Slurm job $id restart 0"
  if [ "$state" = COMPLETED ] && [ "$exit_code" = 0:0 ] && same_losses "$WORK/single" "$WORK/$name" &&
      [ "$(wc -l < "$WORK/$name/metrics.jsonl")" -eq 5 ] && grep -q "^$world" "$log" &&
      grep -q "tessera job $id ($name) restart 0: $tasks tasks on 1 node(s)" "$log" &&
      grep -q "tessera exited with code 0" "$log"; then
    pass "sbatch train_cpu.sbatch ($launcher, $tasks ranks): COMPLETED, 5 metrics lines, losses of one process, '$(grep "^mpi:" "$log")'"
  else
    fail "sbatch $name: state $state, exit $exit_code, $(wc -l < "$WORK/$name/metrics.jsonl") metrics lines"
    paste <(losses "$WORK/single") <(losses "$WORK/$name")
    cat "$log" 2> /dev/null | head -30
  fi
}

id=$(submit srun4 4) || slurm_die "sbatch refused the job"
check_job srun4 "$id" 4 srun
if grep -q "checked SLURM_PROCID SLURM_STEP_NUM_TASKS SLURM_LOCALID SLURM_STEP_TASKS_PER_NODE" \
    "$WORK/srun4-$id.out"; then
  pass "srun: the four Slurm rank variables were checked against MPI"
else
  fail "srun: the Slurm rank variables were not all checked"
fi

id=$(LAUNCHER=mpirun submit mpirun2 2) || slurm_die "sbatch refused the job"
check_job mpirun2 "$id" 2 mpirun

timeout 120 srun --mpi=pmix -n 3 --time=5 bash -c \
  '[ "$SLURM_PROCID" = 2 ] && export SLURM_LOCALID=7; exec "$0" "$@"' \
  "$TESSERA" train --config "$CONFIG" --set train.run_dir="$WORK/forged_slurm" "${common[@]}" \
  > "$WORK/forged_slurm.log" 2>&1
rc=$?
n=$(grep -c "SLURM_LOCALID=7, but MPI says local rank 2 (launcher: srun).*on world rank 2; 1 of 3" \
  "$WORK/forged_slurm.log")
if [ $rc -eq 2 ] && [ "$n" -ge 1 ]; then  # at least one: as above, the launcher may end the rest first
  pass "srun: a forged SLURM_LOCALID on rank 2 stops the job with exit 2 ($n of 3 ranks printed it)"
else
  fail "srun forged variable: exit $rc, $n ranks named it"; head -5 "$WORK/forged_slurm.log"
fi
finish
