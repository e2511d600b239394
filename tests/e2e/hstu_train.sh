#!/usr/bin/env bash
# HSTU end to end on planted synthetic data: synthesize users who follow
# hidden item cycles, train the tiny config, and check that the leave-one-out
# evaluation written at the end ranks the held-out items far above chance;
# tessera recommend on the trained run; data parallelism (dp2) against one
# process; exact resume from a checkpoint;
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
start=$(date +%s)
hstu "$WORK/run" --set train.steps=150 --set train.log_every=10 --set train.global_batch=32 \
  --set train.micro_batch=16 > "$WORK/train.txt" 2>&1 || { cat "$WORK/train.txt"; fail "train"; }
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

# Data parallelism against one process on the same global batch: two replicas
# of two micro-batches each must give the same losses and weights (the loss
# is weighted by supervised positions; dropout and negatives are keyed by
# global batch position).
hstu "$WORK/one" --set train.steps=5 --set train.global_batch=16 > "$WORK/one.log" 2>&1 \
  || { cat "$WORK/one.log"; fail "one-process baseline"; }
if OMP_NUM_THREADS=1 timeout 300 mpirun --oversubscribe --bind-to none -np 2 "$TESSERA" train \
    --config "$SOURCE/configs/hstu_tiny.textproto" --set train.run_dir="$WORK/dp2" \
    --set data.dir="$WORK/data" --set train.steps=5 --set train.global_batch=16 \
    --set train.micro_batch=4 > "$WORK/dp2.log" 2>&1; then
  if paste <(losses "$WORK/one") <(losses "$WORK/dp2") |
      awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * ($1 < 0 ? -$1 : $1)) bad = 1 } END { exit bad }' \
      && [ "$(losses "$WORK/dp2" | wc -l)" -eq 5 ]; then
    pass "dp2 x 2 micro-batches: the 5 losses match one process ($(losses "$WORK/dp2" | tail -1))"
  else
    fail "dp2 losses differ"; paste <(losses "$WORK/one") <(losses "$WORK/dp2")
  fi
  h5diff -d 1e-6 "$WORK/one/weights.h5" "$WORK/dp2/weights.h5" > "$WORK/dp2.diff" 2>&1 \
    && pass "dp2: final parameters match one process (h5diff -d 1e-6)" \
    || { fail "dp2: final parameters differ"; head "$WORK/dp2.diff"; }
else
  fail "dp2 run"; tail -20 "$WORK/dp2.log"
fi

# Exact resume: 3 steps, a checkpoint, 3 more after --resume against 6 straight.
hstu "$WORK/straight" --set train.steps=6 --set checkpoint.every=3 > /dev/null 2>&1 \
  && hstu "$WORK/resumed" --set train.steps=3 --set checkpoint.every=3 > /dev/null 2>&1 \
  && hstu "$WORK/resumed" --set train.steps=6 --set checkpoint.every=3 --resume > /dev/null 2>&1 \
  && [ "$(losses "$WORK/straight")" = "$(losses "$WORK/resumed")" ] \
  && h5diff "$WORK/straight/weights.h5" "$WORK/resumed/weights.h5" > /dev/null 2>&1 \
  && pass "resume after step 3: the same 6 losses and bit-identical weights" \
  || { fail "resume differs"; paste <(losses "$WORK/straight") <(losses "$WORK/resumed"); }

expect_exit "item table smaller than the data" 2 "num_items \(100\) is smaller" -- \
  hstu "$WORK/small" --set model.hstu.num_items=100
expect_exit "num_items unset" 2 "model.hstu.num_items=0 must be set" -- \
  hstu "$WORK/unset" --set model.hstu.num_items=0
expect_exit "tensor parallelism refused" 2 "model.hstu runs on one process or under data parallelism" -- \
  hstu "$WORK/tp" --set parallel.tp=2
expect_exit "images for hstu" 2 'data.schema="images" must be "interactions"' -- \
  hstu "$WORK/schema" --set data.schema=images
finish
