#!/usr/bin/env bash
# HSTU end to end on planted synthetic data: synthesize users who follow
# hidden item cycles, train the tiny config, and check that the leave-one-out
# evaluation written at the end ranks the held-out items far above chance;
# and the config and data errors a user can make.
source "$(dirname "$0")/lib.sh"
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

expect_exit "item table smaller than the data" 2 "num_items \(100\) is smaller" -- \
  hstu "$WORK/small" --set model.hstu.num_items=100
expect_exit "num_items unset" 2 "model.hstu.num_items=0 must be set" -- \
  hstu "$WORK/unset" --set model.hstu.num_items=0
expect_exit "tensor parallelism refused" 2 "model.hstu runs on one process or under data parallelism" -- \
  hstu "$WORK/tp" --set parallel.tp=2
expect_exit "images for hstu" 2 'data.schema="images" must be "interactions"' -- \
  hstu "$WORK/schema" --set data.schema=images
finish
