#!/usr/bin/env bash
# The oracle for MoeConfig's GLOBAL_BATCH balance scope: DiT-MoE (tiny, balance
# coefficient 0.1) for 6 steps without micro-batching at dp2 and dp4 under
# mpirun logs the losses, balance losses and gradient norms of one process on
# the same global batch of 8 (relative 1e-6), and ends with its parameters
# (h5diff -d 1e-6). The control: with the MICRO_BATCH scope the dp2 gradient
# norms differ from one process's (each replica balances its own tokens), so
# the comparison above can fail.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
command -v h5diff > /dev/null || { fail "h5diff not found (hdf5-tools)"; finish; }
make_data "$WORK/data"
steps=6
common=(--set train.steps=$steps --set optim.ema_decay=0 --set model.dit_moe.sample_grid_per_class=0
        --set model.dit_moe.moe.balance_loss_coef=0.1 --set parallel.collective_timeout_s=60)
global=(--set model.dit_moe.moe.balance_scope=GLOBAL_BATCH)

# field RUN NAME: that metrics.jsonl field, one line per step.
field() { grep -oE "\"$2\":[^,}]*" "$1/metrics.jsonl" | cut -d: -f2; }
# same A B NAME TOLERANCE: every step's NAME agrees within TOLERANCE relative.
same() {
  [ "$(field "$2" "$3" | wc -l)" -eq "$steps" ] &&
    paste <(field "$1" "$3") <(field "$2" "$3") | awk -v tol="$4" '{
      d = $1 - $2; if (d < 0) d = -d; m = $1 < 0 ? -$1 : $1
      if (d > tol * m) bad = 1 } END { exit bad }'
}

tiny "$WORK/single" "$WORK/data" "${common[@]}" "${global[@]}" > "$WORK/single.log" 2>&1 ||
  fail "single process (GLOBAL_BATCH)"
for np in 2 4; do
  name=dp$np
  if ! mpi_tiny "$name" "$np" "${global[@]}"; then
    fail "$name: mpirun failed"; tail -5 "$WORK/$name.log"; continue
  fi
  for what in loss aux_loss grad_norm; do
    if same "$WORK/single" "$WORK/$name" "$what" 1e-6; then
      pass "$name GLOBAL_BATCH: the $steps values of $what match one process (relative 1e-6; last $(field "$WORK/$name" "$what" | tail -1))"
    else
      fail "$name GLOBAL_BATCH: $what differs"; paste <(field "$WORK/single" "$what") <(field "$WORK/$name" "$what")
    fi
  done
  if h5diff -d 1e-6 "$WORK/single/weights.h5" "$WORK/$name/weights.h5" > "$WORK/$name.diff" 2>&1; then
    pass "$name GLOBAL_BATCH: final parameters match one process (h5diff -d 1e-6)"
  else
    fail "$name GLOBAL_BATCH: final parameters differ"; head "$WORK/$name.diff"
  fi
done

# The control: MICRO_BATCH makes dp2 another run (the balance loss of each
# replica's own tokens), visible in the gradient norm.
tiny "$WORK/single_micro" "$WORK/data" "${common[@]}" > "$WORK/single_micro.log" 2>&1 ||
  fail "single process (MICRO_BATCH)"
if mpi_tiny dp2_micro 2; then
  if ! same "$WORK/single_micro" "$WORK/dp2_micro" grad_norm 1e-6; then
    pass "dp2 MICRO_BATCH: the gradient norms differ from one process's, as that scope implies"
  else
    fail "dp2 MICRO_BATCH matches one process: the GLOBAL_BATCH checks above prove nothing"
  fi
else
  fail "dp2_micro: mpirun failed"; tail -5 "$WORK/dp2_micro.log"
fi
finish
