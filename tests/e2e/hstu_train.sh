#!/usr/bin/env bash
# HSTU end to end on planted synthetic data: synthesize users who follow
# hidden item cycles, train the tiny config, and check that the leave-one-out
# evaluation written at the end ranks the held-out items far above chance,
# and that the evaluation during training (data.eval_dir, train.eval_every)
# logs at the last step what the end-of-run evaluation finds for the same
# weights, under one process and every data-parallel layout;
# tessera recommend on the trained run; data parallelism with the item table
# row-sharded over 2 and 4 ranks against one process; exact resume from a
# checkpoint, and a table saved from 4 shards resumed on 1 and 2;
# and the config and data errors a user can make.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
"$TESSERA" data synth --schema interactions --out "$WORK/data" --samples 400 --items 200 \
  --clusters 10 --min-length 8 --max-length 30 --seed 1 > /dev/null || { echo "FAIL: synth"; exit 1; }
hstu() {  # hstu RUN_DIR [--set ...]
  local run_dir=$1
  shift
  "$TESSERA" train --config "$SOURCE/configs/hstu_tiny.textproto" --set train.run_dir="$run_dir" \
    --set data.dir="$WORK/data" "$@"
}
# The validation metrics (HR@K, NDCG@K) a run's evaluation during training
# logged at STEP, and those of its final_metrics.json: "name value" lines.
eval_at() {  # eval_at RUN_DIR STEP
  grep "^{\"step\":$2,\"eval_samples\"" "$1/metrics.jsonl" \
    | grep -oE '"val_[a-z]+@[0-9]+":[^,}]*' | tr -d '"' | tr ':' ' '
}
final_val() { grep -oE '"val_[a-z]+@[0-9]+":[^,}]*' "$1/final_metrics.json" | tr -d '"' | tr ':' ' '; }
# same_metrics A B: the same six names with values within 2e-6 (final_metrics.json
# prints 6 decimals; one user of 400 moves a hit rate by 0.0025).
same_metrics() {
  paste <(echo "$1") <(echo "$2") | awk '{ d = $2 - $4; if (d < 0) d = -d;
    if (NF != 4 || $1 != $3 || d > 2e-6) bad = 1 } END { exit bad || NR != 6 }'
}
evaluate=(--set data.eval_dir="$WORK/data" --set train.eval_samples=0)
start=$(date +%s)
hstu "$WORK/run" --set train.steps=150 --set train.log_every=10 --set train.global_batch=32 \
  --set train.micro_batch=16 "${evaluate[@]}" --set train.eval_every=50 > "$WORK/train.txt" 2>&1 \
  || { cat "$WORK/train.txt"; fail "train"; }
echo "training and evaluation took $(( $(date +%s) - start )) s"
for f in config.textproto metrics.jsonl weights.h5 final_metrics.json; do
  [ -s "$WORK/run/$f" ] && pass "run wrote $f" || fail "run did not write $f"
done
first=$(losses "$WORK/run" | head -1); last=$(losses "$WORK/run" | tail -1)
# Uniform scores would give ln(1 + 16 negatives) = 2.83; the first step sits above
# that (cosines over a temperature of 0.1 spread the initial logits).
awk -v f="$first" -v l="$last" 'BEGIN { exit !(f > 2.5 && l < 0.6 * f) }' \
  && pass "loss fell from $first to $last" || fail "loss did not fall enough: $first -> $last"
grep -q '"supervised_positions":' "$WORK/run/metrics.jsonl" && pass "supervised positions in metrics" \
  || fail "no supervised positions in metrics"
hr=$(grep -oE '"test_hr@10":[0-9.]+' "$WORK/run/final_metrics.json" | cut -d: -f2)
users=$(grep -oE '"test_users":[0-9]+' "$WORK/run/final_metrics.json" | cut -d: -f2)
# Chance: 10 of about 180 candidate items (200 less the history) = 0.06.
awk -v h="${hr:-0}" 'BEGIN { exit !(h > 0.4) }' && [ "$users" = 400 ] \
  && pass "test HR@10 $hr over $users users (chance about 0.06)" \
  || fail "test HR@10 ${hr:-missing} over ${users:-?} users: $(cat "$WORK/run/final_metrics.json")"
grep -qE "^test \(400 users, full ranking\): HR@10" "$WORK/train.txt" && pass "test line printed" \
  || fail "no test line"
# The evaluation during training: steps 50, 100 and 150 over the 400 users;
# at step 150 (the final weights) the validation metrics of final_metrics.json.
[ "$(grep -c '"eval_samples":400,' "$WORK/run/metrics.jsonl")" = 3 ] \
  && grep -qE "^eval +100/150 \| val_hr@10 [0-9.]+ \| val_ndcg@10 " "$WORK/train.txt" \
  && pass "evaluations at steps 50, 100, 150 logged: $(eval_at "$WORK/run" 150 | head -2 | tr '\n' ' ')" \
  || { fail "evaluation during training not logged"; grep eval "$WORK/run/metrics.jsonl"; }
same_metrics "$(eval_at "$WORK/run" 150)" "$(final_val "$WORK/run")" \
  && pass "the evaluation logged at the last step equals final_metrics.json's validation" \
  || { fail "evaluation at step 150 differs from final_metrics.json"
       paste <(eval_at "$WORK/run" 150) <(final_val "$WORK/run"); }

# tessera recommend: user 3 of this data ends with item 171 of the cycle
# 1, 11, …, 191 of cluster 1 (seed 1), so the planted next item is 181.
"$TESSERA" recommend --run "$WORK/run" --user 3 --top 5 > "$WORK/rec.txt" 2>&1 \
  && grep -q "^user 3: 29 events; top 5 items" "$WORK/rec.txt" \
  && [ "$(grep -cE '^ +[0-9]+ +[0-9]+ +[-0-9.]+$' "$WORK/rec.txt")" -eq 5 ] \
  && grep -qE '^ +[1-5] +181 ' "$WORK/rec.txt" \
  && pass "recommend: the planted next item 181 in user 3's top 5" \
  || { fail "recommend"; cat "$WORK/rec.txt"; }
expect_exit "recommend for an unknown user" 2 "has no user 99999" -- \
  "$TESSERA" recommend --run "$WORK/run" --user 99999
expect_exit "recommend without --user" 2 "--user ID are required" -- \
  "$TESSERA" recommend --run "$WORK/run"

# Layouts against one process on the same global batch (the oracle): the
# item table is row-sharded over the world (or model.hstu.table_shards ranks
# per copy) and updated by the same sparse row-wise Adam as one process's
# whole table; the loss is weighted by supervised positions; dropout and
# negatives are keyed by global batch position. Losses relative 1e-5,
# weights.h5 (the dense parameters and every table row) h5diff 1e-6. The
# runs evaluate after steps 2, 4 and 5, the users split over the replicas:
# the same validation metrics as one process (whose weights agree to 1e-6),
# and at step 5 those of the run's own final_metrics.json (the same weights,
# evaluated whole on one process).
hstu "$WORK/one" --set train.steps=5 --set train.global_batch=16 "${evaluate[@]}" \
  --set train.eval_every=2 > "$WORK/one.log" 2>&1 || { cat "$WORK/one.log"; fail "one-process baseline"; }
same_evals() {  # same_evals RUN_DIR WHAT
  local step bad=0
  for step in 2 4 5; do
    same_metrics "$(eval_at "$WORK/one" $step)" "$(eval_at "$1" $step)" || bad=$step
  done
  [ "$bad" = 0 ] && pass "$2: evaluations at steps 2, 4, 5 match one process" \
    || { fail "$2: evaluation at step $bad differs"; paste <(eval_at "$WORK/one" $bad) <(eval_at "$1" $bad); }
  same_metrics "$(eval_at "$1" 5)" "$(final_val "$1")" \
    && pass "$2: evaluation at step 5 equals its final_metrics.json" \
    || { fail "$2: evaluation at step 5 differs from final_metrics.json"; paste <(eval_at "$1" 5) <(final_val "$1"); }
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
hstu_mpi() {  # hstu_mpi NAME NP [--set ...]
  local name=$1 np=$2
  shift 2
  OMP_NUM_THREADS=1 timeout 300 mpirun --oversubscribe --bind-to none -np "$np" "$TESSERA" train \
    --config "$SOURCE/configs/hstu_tiny.textproto" --set train.run_dir="$WORK/$name" \
    --set data.dir="$WORK/data" --set train.global_batch=16 "$@" > "$WORK/$name.log" 2>&1 \
    || { fail "$name run"; tail -20 "$WORK/$name.log"; return 1; }
}
# dp2 with two micro-batches per replica: the table over 2 ranks.
hstu_mpi dp2 2 --set train.steps=5 --set train.micro_batch=4 "${evaluate[@]}" --set train.eval_every=2 \
  && same_as "$WORK/one" "$WORK/dp2" "dp2, table over 2" && same_evals "$WORK/dp2" "dp2"
h5ls "$WORK/one/weights.h5" | grep -q '^item_embedding ' \
  && pass "weights.h5 holds the item table" || fail "weights.h5 lacks item_embedding"
# dp4: the table over 4 ranks; and two copies of it over 2 ranks each.
hstu_mpi dp4 4 --set train.steps=5 "${evaluate[@]}" --set train.eval_every=2 \
  && same_as "$WORK/one" "$WORK/dp4" "dp4, table over 4" && same_evals "$WORK/dp4" "dp4"
hstu_mpi dp4_copies 4 --set train.steps=5 --set model.hstu.table_shards=2 "${evaluate[@]}" \
  --set train.eval_every=2 && same_as "$WORK/one" "$WORK/dp4_copies" \
  "dp4, two copies of the table over 2 ranks each" && same_evals "$WORK/dp4_copies" "dp4, two table copies"
hstu "$WORK/adagrad_one" --set train.steps=5 --set model.hstu.table_optimizer=ROWWISE_ADAGRAD \
  --set model.hstu.table_lr=0.05 > /dev/null 2>&1 || fail "row-wise Adagrad, one process"
hstu_mpi adagrad_dp2 2 --set train.steps=5 --set model.hstu.table_optimizer=ROWWISE_ADAGRAD \
  --set model.hstu.table_lr=0.05 && same_as "$WORK/adagrad_one" "$WORK/adagrad_dp2" "row-wise Adagrad, dp2"

# Exact resume: 3 steps, a checkpoint, 3 more after --resume against 6 straight.
hstu "$WORK/straight" --set train.steps=6 --set checkpoint.every=3 > /dev/null 2>&1 \
  && hstu "$WORK/resumed" --set train.steps=3 --set checkpoint.every=3 > /dev/null 2>&1 \
  && hstu "$WORK/resumed" --set train.steps=6 --set checkpoint.every=3 --resume > /dev/null 2>&1 \
  && [ "$(losses "$WORK/straight")" = "$(losses "$WORK/resumed")" ] \
  && h5diff "$WORK/straight/weights.h5" "$WORK/resumed/weights.h5" > /dev/null 2>&1 \
  && pass "resume after step 3: the same 6 losses and bit-identical weights" \
  || { fail "resume differs"; paste <(losses "$WORK/straight") <(losses "$WORK/resumed"); }

# A checkpoint saved by 4 table shards resumes on 1 and on 2 processes:
# steps 4-6 give the losses and weights of the straight one-process run.
hstu_mpi ckpt4 4 --set train.steps=3 --set checkpoint.every=3 && for np in 1 2; do
  if [ "$np" = 1 ]; then
    hstu "$WORK/from4_np1" --set train.steps=6 \
      --set checkpoint.resume="$WORK/ckpt4/checkpoints/step_00000003" > "$WORK/from4_np1.log" 2>&1 \
      || { fail "resume on 1 process"; tail "$WORK/from4_np1.log"; }
  else
    hstu_mpi from4_np2 2 --set train.steps=6 \
      --set checkpoint.resume="$WORK/ckpt4/checkpoints/step_00000003"
  fi
  same_as "$WORK/straight" "$WORK/from4_np$np" "table saved from 4 shards, resumed on $np"
done

# Early stopping on an evaluation metric: HR@200 over 200 items is 1 at every
# evaluation, so the second evaluation (after step 2) does not improve on
# the first and patience 1 stops the run there, with a checkpoint, the
# best-step record, weights.h5 and the end-of-run evaluation, exit 0.
hstu "$WORK/early" --set train.steps=10 "${evaluate[@]}" --set train.eval_every=1 \
  --set train.early_stop_patience=1 --set train.early_stop_metric=val_hr@200 > "$WORK/early.log" 2>&1 \
  && grep -q '^early stop after step 2: val_hr@200 has not improved on 1 (step 1)' "$WORK/early.log" \
  && grep -q '"stopped_after_step":2,"metric":"val_hr@200","mode":"max","patience":1,"best_step":1,"best":1,"restored":"' \
    "$WORK/early/early_stop.json" \
  && grep -q '^restored the weights of the best step 1 from' "$WORK/early.log" \
  && [ -d "$WORK/early/checkpoints/step_00000002" ] && [ -s "$WORK/early/final_metrics.json" ] \
  && [ "$(losses "$WORK/early" | wc -l)" = 2 ] \
  && pass "early stop after step 2 (patience 1 on val_hr@200): checkpoint, early_stop.json, final metrics" \
  || { fail "early stop"; tail -5 "$WORK/early.log"; cat "$WORK/early/early_stop.json"; }
# It ends on step 1's weights, item table included: the end-of-run test
# metrics equal those of a run of one step.
hstu "$WORK/one_step" --set train.steps=1 > "$WORK/one_step.log" 2>&1 \
  && cmp "$WORK/early/final_metrics.json" "$WORK/one_step/final_metrics.json" \
  && pass "the early-stopped run's final metrics are the best step's (equal to a 1-step run)" \
  || { fail "early stop restores the best step"; cat "$WORK/early/final_metrics.json" "$WORK/one_step/final_metrics.json"; }
expect_exit "early stop on a metric HSTU does not report" 2 \
  'train.early_stop_metric="val_loss": model.hstu.s evaluation reports val_hr@10, val_ndcg@10' -- \
  hstu "$WORK/early_bad" "${evaluate[@]}" --set train.eval_every=1 --set train.early_stop_patience=1 \
  --set train.early_stop_metric=val_loss
expect_exit "item table smaller than the data" 2 "num_items \(100\) is smaller" -- \
  hstu "$WORK/small" --set model.hstu.num_items=100
expect_exit "num_items unset" 2 "model.hstu.num_items=0 must be set" -- \
  hstu "$WORK/unset" --set model.hstu.num_items=0
expect_exit "validation on the training data needs holdout 2" 2 \
  "model.hstu.holdout=1 must be >= 2 when data.eval_dir is data.dir" -- \
  hstu "$WORK/holdout" --set model.hstu.holdout=1 --set data.eval_dir="$WORK/data/"
"$TESSERA" data synth --schema interactions --out "$WORK/small_data" --samples 20 --items 100 \
  --seed 2 > /dev/null || fail "synth small_data"
expect_exit "an evaluation split with more items than the table" 2 \
  "num_items \(100\) is smaller than data.eval_dir" -- \
  hstu "$WORK/eval_items" --set model.hstu.num_items=100 --set data.dir="$WORK/small_data" \
  --set data.eval_dir="$WORK/data"
expect_exit "images for hstu" 2 'data.schema="images" must be "interactions"' -- \
  hstu "$WORK/schema" --set data.schema=images
finish
