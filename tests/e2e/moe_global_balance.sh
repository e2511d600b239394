#!/usr/bin/env bash
# The oracle for MoeConfig's GLOBAL_BATCH balance scope: DiT-MoE (tiny, balance
# coefficient 0.1) for 6 steps without micro-batching at dp2 and dp4 under
# mpirun logs the losses, balance losses and gradient norms of one process on
# the same global batch of 8 (relative 1e-6), and ends with its parameters
# (h5diff -d 1e-6). The control: with the MICRO_BATCH scope the dp2 gradient
# norms differ from one process's (each replica balances its own tokens), so
# the comparison above can fail. With micro-batching, tp2 and sp2 equal one
# process with the same micro-batches and dp2 x ep2 equals dp2 (below).
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

# GLOBAL_BATCH with micro-batching (train.micro_batch=2: four micro-batches
# per step on one replica, two per replica under dp2). Micro-batch m
# balances over the counts of micro-batches 0..m of every replica
# (docs/config.md), so tp, sp and ep, which split a replica's micro-batch and
# not the set of micro-batches, must not change a value: tp2 and sp2 equal one
# process with the same micro-batching, and dp2 x ep2 equals dp2.
micro=(--set train.micro_batch=2)
# compare A B WHAT: loss, balance loss, gradient norm and final weights.
compare() {
  local a=$1 b=$2 what=$3 ok=1
  for f in loss aux_loss grad_norm; do
    same "$WORK/$a" "$WORK/$b" "$f" 1e-6 ||
      { ok=0; fail "$what: $f differs"; paste <(field "$WORK/$a" "$f") <(field "$WORK/$b" "$f"); }
  done
  h5diff -d 1e-6 "$WORK/$a/weights.h5" "$WORK/$b/weights.h5" > "$WORK/$b.diff" 2>&1 ||
    { ok=0; fail "$what: final parameters differ"; head "$WORK/$b.diff"; }
  [ $ok -eq 1 ] && pass "$what: losses, balance losses, gradient norms (relative 1e-6) and final parameters (h5diff -d 1e-6) match"
}
tiny "$WORK/single_mb" "$WORK/data" "${common[@]}" "${global[@]}" "${micro[@]}" \
  > "$WORK/single_mb.log" 2>&1 || fail "single process (GLOBAL_BATCH, micro-batches of 2)"
for layout in "tp2 parallel.tp=2" "sp2 parallel.sp=2"; do
  set -- $layout
  if mpi_tiny "${1}_mb" 2 "${global[@]}" "${micro[@]}" --set "$2"; then
    compare single_mb "${1}_mb" "$1 GLOBAL_BATCH with 4 micro-batches against one process with the same"
  else
    fail "${1}_mb: mpirun failed"; tail -5 "$WORK/${1}_mb.log"
  fi
done
if mpi_tiny dp2_mb 2 "${global[@]}" "${micro[@]}" &&
   mpi_tiny dp2_ep2_mb 2 "${global[@]}" "${micro[@]}" --set parallel.ep=2; then
  compare dp2_mb dp2_ep2_mb "dp2 x ep2 GLOBAL_BATCH with 2 micro-batches per replica against dp2"
else
  fail "dp2_mb / dp2_ep2_mb: mpirun failed"; tail -5 "$WORK/dp2_mb.log" "$WORK/dp2_ep2_mb.log"
fi
# Micro-batching does change the run under this scope (an early micro-batch
# cannot see later counts), so the comparisons above are not vacuous.
if ! same "$WORK/single" "$WORK/single_mb" aux_loss 1e-6; then
  pass "GLOBAL_BATCH: micro-batching changes the balance losses, as documented"
else
  fail "GLOBAL_BATCH: micro-batching left the balance losses unchanged; the micro-batch checks prove nothing"
fi

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
