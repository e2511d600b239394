#!/usr/bin/env bash
# Two runs with the same seed produce bit-identical losses in metrics.jsonl;
# a different seed produces different ones.
source "$(dirname "$0")/lib.sh"
make_data "$WORK/data"
losses() { grep -oE '"(step|loss|aux_loss|grad_norm)":[^,]*' "$1/metrics.jsonl"; }
for run in a b; do
  tiny "$WORK/$run" "$WORK/data" --set train.steps=6 --set model.dit_moe.sample_grid_per_class=0 > /dev/null \
    || fail "run $run failed"
done
tiny "$WORK/c" "$WORK/data" --set train.steps=6 --set train.seed=5 --set model.dit_moe.sample_grid_per_class=0 > /dev/null \
  || fail "run c failed"
if [ "$(losses "$WORK/a" | wc -l)" -lt 24 ]; then fail "metrics.jsonl has too few entries"; fi
if diff <(losses "$WORK/a") <(losses "$WORK/b") > /dev/null; then
  pass "same seed: identical losses ($(losses "$WORK/a" | grep '"loss"' | tail -1))"
else
  fail "same seed: losses differ"; diff <(losses "$WORK/a") <(losses "$WORK/b") | head
fi
if diff <(losses "$WORK/a") <(losses "$WORK/c") > /dev/null; then
  fail "different seeds gave identical losses"
else
  pass "different seed: different losses"
fi
finish
