#!/usr/bin/env bash
# A rank that stalls or dies ends the whole job within the collective timeout,
# with the watchdog's message and exit code 5 — never a hang.
if [[ "${1:-}" == "--as-rank" ]]; then
  # One rank under a shell that outlives a SIGKILL, so mpirun (told to ignore
  # non-zero exits) sees the survivors' MPI_Abort code rather than the signal.
  shift
  "$@"
  exit $?
fi
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
make_data "$WORK/data"

run4() {  # NAME [--set ...]: 4 ranks, 5 s collective timeout; the job must end within 60 s
  local name=$1
  shift
  local start=$SECONDS
  timeout 60 mpirun --oversubscribe --bind-to none -np 4 "$TESSERA" train \
    --config "$SOURCE/configs/dit_moe_tiny.textproto" --set train.run_dir="$WORK/$name" \
    --set data.dir="$WORK/data" --set train.steps=6 --set model.dit_moe.sample_grid_per_class=0 \
    --set parallel.collective_timeout_s=5 "$@" > "$WORK/$name.log" 2>&1
  RC=$?
  ELAPSED=$((SECONDS - start))
}

run4 hang_forward --set fault.hang_rank=2 --set fault.at_step=3
if [ $RC -eq 5 ] && grep -q "ranks that never arrived (world ranks): 2" "$WORK/hang_forward.log"; then
  pass "rank 2 hangs before a step: exit 5 in ${ELAPSED}s, the others name rank 2"
else
  fail "hang before a step: exit $RC after ${ELAPSED}s"; grep -v "^step" "$WORK/hang_forward.log" | head
fi

run4 hang_reduce --set fault.hang_rank=1 --set fault.at_step=2 --set fault.at_phase=reduce
# Small reductions may complete on the other ranks without rank 1's help, so
# the collective they get stuck in may be a later one: any, naming rank 1 or
# saying that a rank is stuck inside it.
if [ $RC -eq 5 ] && grep -qE "\[rank [023]\] watchdog: .*did not complete within 5s; (ranks that never arrived \(world ranks\): 1 |every rank entered it)" "$WORK/hang_reduce.log"; then
  pass "rank 1 hangs with reductions in flight: exit 5 in ${ELAPSED}s with the watchdog's message"
else
  fail "hang during reduction: exit $RC after ${ELAPSED}s"; grep -v "^step" "$WORK/hang_reduce.log" | head
fi
# A killed rank. By default mpirun notices the death and kills the others at
# once (exit 137, no hang); with orte_abort_on_non_zero_status 0 the survivors
# run on and their watchdog reports the dead rank and exits 5.
start=$SECONDS
timeout 60 mpirun --oversubscribe --bind-to none -np 4 "$TESSERA" train \
  --config "$SOURCE/configs/dit_moe_tiny.textproto" --set train.run_dir="$WORK/kill_default" \
  --set data.dir="$WORK/data" --set train.steps=6 --set model.dit_moe.sample_grid_per_class=0 \
  --set parallel.collective_timeout_s=5 --set fault.kill_rank=1 --set fault.at_step=3 \
  > "$WORK/kill_default.log" 2>&1
RC=$?
if [ $RC -ne 0 ] && [ $RC -ne 124 ] && [ $((SECONDS - start)) -lt 60 ]; then
  pass "rank 1 killed, default mpirun: the job ends in $((SECONDS - start))s (exit $RC)"
else
  fail "killed rank, default mpirun: exit $RC after $((SECONDS - start))s"
fi
start=$SECONDS
timeout 60 mpirun --oversubscribe --bind-to none --mca orte_abort_on_non_zero_status 0 -np 4 \
  bash "$0" --as-rank "$TESSERA" train \
  --config "$SOURCE/configs/dit_moe_tiny.textproto" --set train.run_dir="$WORK/kill" \
  --set data.dir="$WORK/data" --set train.steps=6 --set model.dit_moe.sample_grid_per_class=0 \
  --set parallel.collective_timeout_s=5 --set fault.kill_rank=1 --set fault.at_step=3 \
  > "$WORK/kill.log" 2>&1
RC=$?
if [ $RC -eq 5 ] && grep -qE "watchdog: .*never arrived \(world ranks\): 1" "$WORK/kill.log"; then
  pass "rank 1 killed: the survivors name it and the job exits 5 in $((SECONDS - start))s"
else
  fail "killed rank: exit $RC after $((SECONDS - start))s"; grep -v "^step" "$WORK/kill.log" | head
fi
finish
