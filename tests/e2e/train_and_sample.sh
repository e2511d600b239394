#!/usr/bin/env bash
# The whole user path on tiny data: synthesize, verify, train, sample, help.
source "$(dirname "$0")/lib.sh"
make_data "$WORK/data"
"$TESSERA" data verify "$WORK/data" > /dev/null && pass "data verify" || fail "data verify"
tiny "$WORK/run" "$WORK/data" > "$WORK/train.txt" 2>&1 || { cat "$WORK/train.txt"; fail "train"; }
for f in config.textproto metrics.jsonl weights.h5 samples.png; do
  [ -s "$WORK/run/$f" ] && pass "run wrote $f" || fail "run did not write $f"
done
grep -q "memory plan:" "$WORK/train.txt" && pass "memory plan printed" || fail "no memory plan"
grep -qE "^step +5/5 " "$WORK/train.txt" && pass "log line for the last step" || fail "no log line for step 5"
[ "$(wc -l < "$WORK/run/metrics.jsonl")" -eq 5 ] && pass "5 metrics lines" || fail "metrics lines: $(wc -l < "$WORK/run/metrics.jsonl")"
grep -q '"expert_load":\[\[' "$WORK/run/metrics.jsonl" && pass "expert load in metrics" || fail "no expert load"
"$TESSERA" sample --run "$WORK/run" --out "$WORK/grid.png" --per-class 2 --steps 3 > /dev/null \
  && [ -s "$WORK/grid.png" ] && pass "sample" || fail "sample"
mkdir -p "$WORK/noweights" && cp "$WORK/run/config.textproto" "$WORK/noweights/"
expect_exit "sample without weights" 4 "weights.h5" -- "$TESSERA" sample --run "$WORK/noweights"
expect_exit "sample without a run" 2 "config.textproto" -- "$TESSERA" sample --run "$WORK/nowhere"
for cmd in "" train sample data; do
  "$TESSERA" $cmd --help > /dev/null && pass "tessera $cmd --help" || fail "tessera $cmd --help"
done
expect_exit "unknown command" 2 "unknown command" -- "$TESSERA" frobnicate
finish
