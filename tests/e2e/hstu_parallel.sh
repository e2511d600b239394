#!/usr/bin/env bash
# HSTU under tensor parallelism over the heads and sequence parallelism
# (Ulysses over the jagged batch) against one process (the oracle) on the
# tiny config (2 heads): tp2, tp2 x dp2, sp2, sp2 x dp2 and (4 heads)
# tp2 x sp2 for 5 steps — losses relative 1e-5, weights.h5 (dense
# parameters and every item-table row) h5diff 1e-6, the evaluations during
# training equal — checkpoints saved at tp2 resumed at tp1 and the other way
# round, and the layouts a user cannot ask of HSTU. (Data parallelism with
# the sharded table: hstu_train.sh.)
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
"$TESSERA" data synth --schema interactions --out "$WORK/data" --samples 400 --items 200 \
  --clusters 10 --min-length 8 --max-length 30 --seed 1 > /dev/null || { echo "FAIL: synth"; exit 1; }
hstu() {  # hstu RUN_DIR [--set ...]
  local run_dir=$1
  shift
  "$TESSERA" train --config "$SOURCE/configs/hstu_tiny.textproto" --set train.run_dir="$run_dir" \
    --set data.dir="$WORK/data" --set train.global_batch=16 "$@"
}
hstu_mpi() {  # hstu_mpi NAME NP [--set ...]
  local name=$1 np=$2
  shift 2
  OMP_NUM_THREADS=1 timeout 300 mpirun --oversubscribe --bind-to none -np "$np" "$TESSERA" train \
    --config "$SOURCE/configs/hstu_tiny.textproto" --set train.run_dir="$WORK/$name" \
    --set data.dir="$WORK/data" --set train.global_batch=16 "$@" > "$WORK/$name.log" 2>&1 \
    || { fail "$name run"; tail -20 "$WORK/$name.log"; return 1; }
}
# The validation metrics a run's evaluation during training logged at STEP.
eval_at() {  # eval_at RUN_DIR STEP
  grep "^{\"step\":$2,\"eval_samples\"" "$1/metrics.jsonl" \
    | grep -oE '"val_[a-z]+@[0-9]+":[^,}]*' | tr -d '"' | tr ':' ' '
}
same_metrics() {  # the same six names with values within 2e-6
  paste <(echo "$1") <(echo "$2") | awk '{ d = $2 - $4; if (d < 0) d = -d;
    if (NF != 4 || $1 != $3 || d > 2e-6) bad = 1 } END { exit bad || NR != 6 }'
}
same_as() {  # same_as BASELINE_DIR RUN_DIR WHAT: losses (the last N of the baseline's) and weights
  local base=$1 run=$2 what=$3 n
  n=$(losses "$run" | wc -l)
  if [ "$n" -ge 3 ] && paste <(losses "$base" | tail -"$n") <(losses "$run") |
      awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * ($1 < 0 ? -$1 : $1)) bad = 1 } END { exit bad }'; then
    pass "$what: the $n losses match one process ($(losses "$run" | tail -1))"
  else
    fail "$what: losses differ"; paste <(losses "$base") <(losses "$run")
  fi
  h5diff -d 1e-6 "$base/weights.h5" "$run/weights.h5" > "$WORK/diff.txt" 2>&1 \
    && pass "$what: final parameters and item table match one process (h5diff -d 1e-6)" \
    || { fail "$what: final parameters differ"; head "$WORK/diff.txt"; }
}
same_evals() {  # same_evals RUN_DIR WHAT: the evaluations after steps 2, 4, 5
  local step bad=0
  for step in 2 4 5; do
    same_metrics "$(eval_at "$WORK/one" $step)" "$(eval_at "$1" $step)" || bad=$step
  done
  [ "$bad" = 0 ] && pass "$2: evaluations at steps 2, 4, 5 match one process" \
    || { fail "$2: evaluation at step $bad differs"; paste <(eval_at "$WORK/one" $bad) <(eval_at "$1" $bad); }
}
evaluate=(--set data.eval_dir="$WORK/data" --set train.eval_samples=0 --set train.eval_every=2)

hstu "$WORK/one" --set train.steps=5 "${evaluate[@]}" > "$WORK/one.log" 2>&1 \
  || { cat "$WORK/one.log"; fail "one-process baseline"; }
# tp2: the heads over 2 ranks, the table over both.
hstu_mpi tp2 2 --set train.steps=5 --set parallel.tp=2 "${evaluate[@]}" \
  && same_as "$WORK/one" "$WORK/tp2" "tp2" && same_evals "$WORK/tp2" "tp2"
# The FLOPs the trainer counts (peak_fraction) are the whole model's: each
# tp rank counts its heads; only the sampled softmax, which every tp rank
# computes, counts twice (before the per-rank share it was 2x).
flops() { sed -n 's/^training FLOPs: \([0-9.e+-]*\) GFLOP per sample.*/\1/p' "$1" | head -1; }
flops_within() {  # flops_within RUN LOW HIGH: the run's count / one process's in [LOW, HIGH]
  local one run
  one=$(flops "$WORK/one.log") run=$(flops "$WORK/$1.log")
  if awk -v one="$one" -v run="$run" -v low="$2" -v high="$3" \
       'BEGIN { exit !(one > 0 && run >= low * one && run <= high * one) }'; then
    pass "$1 counts $run GFLOP per sample against one process's $one"
  else
    fail "$1 FLOPs per sample $run, one process $one (ratio not in [$2, $3])"
  fi
}
flops_within tp2 1 1.25
# tp2 x dp2: two micro-batches per replica, two copies of the table.
hstu_mpi tp2_dp2 4 --set train.steps=5 --set parallel.tp=2 --set train.micro_batch=4 \
  --set model.hstu.table_shards=2 "${evaluate[@]}" \
  && same_as "$WORK/one" "$WORK/tp2_dp2" "tp2 x dp2, two table copies" \
  && same_evals "$WORK/tp2_dp2" "tp2 x dp2"

# sp2: each rank holds half of every micro-batch's tokens (users straddle
# the ranks) and, in attention, one of the two heads over every token.
hstu_mpi sp2 2 --set train.steps=5 --set parallel.sp=2 "${evaluate[@]}" \
  && same_as "$WORK/one" "$WORK/sp2" "sp2" && same_evals "$WORK/sp2" "sp2"
flops_within sp2 0.999 1.001
# sp2 x dp2: two replicas of two sp ranks, the table over all four.
hstu_mpi sp2_dp2 4 --set train.steps=5 --set parallel.sp=2 --set train.micro_batch=4 \
  "${evaluate[@]}" \
  && same_as "$WORK/one" "$WORK/sp2_dp2" "sp2 x dp2" && same_evals "$WORK/sp2_dp2" "sp2 x dp2"
# tp2 x sp2 needs 4 heads (each rank attends with one): its own baseline.
four_heads=(--set model.hstu.num_heads=4 --set model.hstu.attention_dim=4
            --set model.hstu.linear_dim=4)
hstu "$WORK/one4" --set train.steps=5 "${four_heads[@]}" > "$WORK/one4.log" 2>&1 \
  || { cat "$WORK/one4.log"; fail "one-process baseline, 4 heads"; }
hstu_mpi tp2_sp2 4 --set train.steps=5 --set parallel.tp=2 --set parallel.sp=2 \
  "${four_heads[@]}" && same_as "$WORK/one4" "$WORK/tp2_sp2" "tp2 x sp2 (4 heads)"

# Checkpoints hold the heads' pieces as boxes of the global tensors: saved
# at tp2 and resumed at tp1, and saved at tp1 and resumed at tp2, steps 4-6
# give the straight one-process run's losses and weights.
hstu "$WORK/straight" --set train.steps=6 > /dev/null 2>&1 || fail "straight run"
hstu_mpi ckpt_tp2 2 --set train.steps=3 --set checkpoint.every=3 --set parallel.tp=2 \
  && { hstu "$WORK/from_tp2" --set train.steps=6 \
         --set checkpoint.resume="$WORK/ckpt_tp2/checkpoints/step_00000003" > "$WORK/from_tp2.log" 2>&1 \
       || { fail "resume at tp1"; tail "$WORK/from_tp2.log"; }; } \
  && same_as "$WORK/straight" "$WORK/from_tp2" "checkpoint saved at tp2, resumed at tp1"
hstu "$WORK/ckpt_tp1" --set train.steps=3 --set checkpoint.every=3 > /dev/null 2>&1 \
  || fail "checkpoint at tp1"
hstu_mpi to_tp2 2 --set train.steps=6 --set parallel.tp=2 \
  --set checkpoint.resume="$WORK/ckpt_tp1/checkpoints/step_00000003" \
  && same_as "$WORK/straight" "$WORK/to_tp2" "checkpoint saved at tp1, resumed at tp2"

# Layouts refused with exit 2 naming the fields (the config is checked whole
# before the world size is, so one process shows the message).
expect_exit "heads not divisible by tp" 2 \
  "model.hstu.num_heads=2 must be divisible by parallel.tp=4" -- \
  hstu "$WORK/tp4" --set parallel.tp=4
expect_exit "tp with unequal head widths" 2 \
  "model.hstu.linear_dim=4 must equal model.hstu.attention_dim=8 when parallel.tp=2 > 1" -- \
  hstu "$WORK/tp_widths" --set parallel.tp=2 --set model.hstu.linear_dim=4
expect_exit "heads not divisible by tp * sp" 2 \
  "model.hstu.num_heads=2 must be divisible by parallel.tp=2 . parallel.sp=2 .Ulysses" -- \
  hstu "$WORK/tp_sp" --set parallel.tp=2 --set parallel.sp=2
expect_exit "expert parallelism refused" 2 \
  "model.hstu has no experts and no Megatron sequence parallelism: parallel.ep=2" -- \
  hstu "$WORK/ep" --set parallel.ep=2
finish
