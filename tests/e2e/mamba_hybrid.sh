#!/usr/bin/env bash
# The Mamba-2 hybrid end to end: the tiny config (M * - M E) trains on a
# synthetic Markov language through `tessera train` (losses start near
# ln 64 and fall); data parallelism with ZeRO-1 (dp2) reaches the losses and
# final weights of one process (relative 1e-5, h5diff -d 1e-6); the 8B
# config validates and is refused by the memory plan, not by its rules;
# `tessera generate` gives the same greedy tokens in its recurrent form and
# by re-running the whole sequence (also for a model trained with RoPE); and
# bad input (an unknown layer symbol, a vocabulary smaller than the data's,
# an MoE config without expert layers) is refused with exit code 2.
# Tensor and sequence parallelism: mamba_model_parallel.sh.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
TINY="$SOURCE/configs/mamba_hybrid_tiny.textproto"
"$TESSERA" data synth --schema tokens --out "$WORK/data" --samples 256 --vocab 64 --seed 1 \
  > /dev/null || { fail "data synth"; finish; }

steps=20
common=(--set train.steps=$steps --set train.micro_batch=2 --set data.dir="$WORK/data")
"$TESSERA" train --config "$TINY" --set train.run_dir="$WORK/single" "${common[@]}" \
  > "$WORK/single.log" 2>&1 || { fail "single process"; tail -20 "$WORK/single.log"; finish; }
if losses "$WORK/single" | awk -v n=$steps 'NR == 1 { first = $1 } { last = $1; count++ }
    END { exit !(count == n && first > 3.7 && first < 4.6 && last < first - 0.3) }'; then
  pass "tiny hybrid: $steps losses, from $(losses "$WORK/single" | head -1) (ln 64 = 4.16) to $(losses "$WORK/single" | tail -1)"
else
  fail "tiny hybrid losses"; losses "$WORK/single" | tr '\n' ' '; echo
fi

# Generation from the trained weights: the recurrent form (Mamba states, a
# key/value cache) and a full re-forward of the growing sequence agree.
for mode in recurrent reforward; do
  "$TESSERA" generate --run "$WORK/single" --prompt-ids 3,17,42,5 --tokens 24 --mode $mode \
    > "$WORK/generate_$mode.txt" 2> "$WORK/generate_$mode.err" || fail "generate --mode $mode: $(cat "$WORK/generate_$mode.err")"
done
if [ -s "$WORK/generate_recurrent.txt" ] && cmp -s "$WORK/generate_recurrent.txt" "$WORK/generate_reforward.txt"; then
  pass "generate: recurrent and re-forward give the same tokens ($(cat "$WORK/generate_recurrent.txt"))"
else
  fail "generate: recurrent $(cat "$WORK/generate_recurrent.txt") vs reforward $(cat "$WORK/generate_reforward.txt")"
fi
expect_exit "generate: a prompt token beyond the vocabulary" 2 "prompt token 64 lies outside" -- \
  "$TESSERA" generate --run "$WORK/single" --prompt-ids 3,64

# With rotary position embeddings (model.mamba_hybrid.rope_base): the cache
# holds q and k rotated at their positions, the re-forward rotates the
# whole sequence; 5 training steps give weights that are not random.
"$TESSERA" train --config "$TINY" --set train.run_dir="$WORK/rope" --set train.steps=5 \
  --set train.micro_batch=2 --set data.dir="$WORK/data" --set model.mamba_hybrid.rope_base=10000 \
  > "$WORK/rope.log" 2>&1 || fail "training with RoPE: $(tail -3 "$WORK/rope.log")"
for mode in recurrent reforward; do
  "$TESSERA" generate --run "$WORK/rope" --prompt-ids 3,17,42,5 --tokens 24 --mode $mode \
    > "$WORK/rope_$mode.txt" 2> "$WORK/rope_$mode.err" || fail "RoPE generate --mode $mode: $(cat "$WORK/rope_$mode.err")"
done
if [ -s "$WORK/rope_recurrent.txt" ] && cmp -s "$WORK/rope_recurrent.txt" "$WORK/rope_reforward.txt"; then
  pass "generate with RoPE: recurrent and re-forward give the same tokens ($(cat "$WORK/rope_recurrent.txt"))"
else
  fail "generate with RoPE: recurrent $(cat "$WORK/rope_recurrent.txt") vs reforward $(cat "$WORK/rope_reforward.txt")"
fi

if command -v mpirun > /dev/null && command -v h5diff > /dev/null; then
  OMP_NUM_THREADS=1 timeout 300 mpirun --oversubscribe --bind-to none -np 2 "$TESSERA" train \
    --config "$TINY" --set train.run_dir="$WORK/dp2" "${common[@]}" --set parallel.zero_stage=1 \
    > "$WORK/dp2.log" 2>&1 || fail "dp2: mpirun exited $?"
  if paste <(losses "$WORK/single") <(losses "$WORK/dp2") |
      awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad = 1 } END { exit bad }' \
      && [ "$(losses "$WORK/dp2" | wc -l)" -eq "$steps" ]; then
    pass "dp2 x ZeRO-1: the $steps losses match one process"
  else
    fail "dp2 losses differ"; paste <(losses "$WORK/single") <(losses "$WORK/dp2"); tail -5 "$WORK/dp2.log"
  fi
  if h5diff -d 1e-6 "$WORK/single/weights.h5" "$WORK/dp2/weights.h5" > "$WORK/dp2.diff" 2>&1; then
    pass "dp2 x ZeRO-1: final parameters match one process (h5diff -d 1e-6)"
  else
    fail "dp2: final parameters differ"; head "$WORK/dp2.diff"
  fi
else
  fail "mpirun or h5diff not found"
fi

expect_exit "8B config: valid, refused by the memory plan" 2 "memory|GiB" -- \
  "$TESSERA" train --config "$SOURCE/configs/mamba_hybrid_8b.textproto" \
  --set train.run_dir="$WORK/8b"
if grep -q "model.mamba_hybrid" "$WORK/err.txt"; then
  fail "the 8B config broke a model rule: $(cat "$WORK/err.txt")"
fi
expect_exit "unknown layer symbol" 2 'model.mamba_hybrid.pattern="M\*xM": .x. is not a layer symbol' -- \
  "$TESSERA" train --config "$TINY" --set train.run_dir="$WORK/bad" "${common[@]}" \
  --set model.mamba_hybrid.pattern='M*xM'
expect_exit "vocabulary smaller than the data's" 2 "vocab_size \\(32\\) is smaller" -- \
  "$TESSERA" train --config "$TINY" --set train.run_dir="$WORK/bad" "${common[@]}" \
  --set model.mamba_hybrid.vocab_size=32
expect_exit "an MoE config without expert layers" 2 "model.mamba_hybrid.moe is set, but model.mamba_hybrid.pattern=\"M\*-MM\" has no MoE layer" -- \
  "$TESSERA" train --config "$TINY" --set train.run_dir="$WORK/bad" "${common[@]}" \
  --set model.mamba_hybrid.pattern='M*-MM'
[ ! -e "$WORK/bad" ] || fail "a refused run wrote $WORK/bad"
finish
