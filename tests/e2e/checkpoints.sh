#!/usr/bin/env bash
# Checkpoints end to end, on DiT-MoE tiny (20 steps, micro-batches of 2,
# EMA on, a save every 10 steps):
# - exact resume: 20 steps straight versus a run killed at step 11 and
#   resumed from step 10, bit-identical losses and final weights, at one
#   process and at 4 ranks (tp2 x dp2, ep2, ZeRO-1); with async saves, a run
#   saving in the background trains bit-identically and its step-10
#   checkpoint resumes (in a new run) to the same losses and weights;
# - resharding: saved at dp4 x ep2 with ZeRO-1, resumed at tp2 and at one
#   process (and one process's resumed at dp4 x ep2): the remaining losses
#   match the uninterrupted run within fp32 tolerance, and a save -> load ->
#   save round trip differs by exactly zero (`tessera ckpt diff`);
# - a stop signal (SIGUSR1): saved, exit 75, resumed to the same losses;
# - crash safety: a rank killed while saving leaves the previous checkpoint
#   committed and `latest` on it, the incomplete directory is listed and
#   never loaded, and resuming works;
# - corruption: a flipped byte is named by `ckpt verify` (exit 4) and refused
#   by `train --resume` with exit 4; checkpoint.fallback resumes from the
#   previous checkpoint instead;
# - bad input: another model's checkpoint (exit 4, names the tensors), a
#   missing rank file (exit 4, names it), a full disk (exit 4, nothing
#   committed).
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
make_data "$WORK/data"
# A cosine schedule with warm-up: the learning rate depends on the step.
common=(--set train.steps=20 --set train.micro_batch=2 --set checkpoint.every=10
        --set optim.schedule=COSINE --set optim.warmup_steps=3
        --set model.dit_moe.sample_grid_per_class=0 --set parallel.collective_timeout_s=30)
train1() {  # RUN_DIR [--set ...]: one process
  local dir=$1
  shift
  tiny "$WORK/$dir" "$WORK/data" "${common[@]}" "$@" > "$WORK/$dir.log" 2>&1
}
trainN() {  # NP RUN_DIR [--set ...]
  local np=$1 dir=$2
  shift 2
  timeout 300 mpirun --oversubscribe --bind-to none -np "$np" "$TESSERA" train \
    --config "$SOURCE/configs/dit_moe_tiny.textproto" --set train.run_dir="$WORK/$dir" \
    --set data.dir="$WORK/data" "${common[@]}" "$@" >> "$WORK/$dir.log" 2>&1
}
same_losses() {  # A B: bit-identical
  cmp -s <(losses "$WORK/$1") <(losses "$WORK/$2") && [ "$(losses "$WORK/$2" | wc -l)" -eq 20 ]
}
close_losses() {  # A B: relative 1e-5
  paste <(losses "$WORK/$1") <(losses "$WORK/$2") |
    awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * ($1 < 0 ? -$1 : $1)) bad = 1 } END { exit bad }' &&
    [ "$(losses "$WORK/$2" | wc -l)" -eq 20 ]
}

# --- exact resume, one process and 4 ranks ---
tail10() { losses "$WORK/$1" | tail -10; }
layout4=(--set parallel.tp=2 --set parallel.ep=2 --set parallel.zero_stage=1)
train1 straight || fail "uninterrupted run"
trainN 4 straight4 "${layout4[@]}" || fail "uninterrupted 4-rank run"
for np in 1 4; do
  name=$([ $np = 1 ] && echo "1 process" || echo "tp2 x dp2, ep2, ZeRO-1")
  ref=$([ $np = 1 ] && echo straight || echo straight4)
  run() { if [ $np = 1 ]; then train1 "$@"; else trainN 4 "$@" "${layout4[@]}"; fi; }
  run "killed$np" --set fault.kill_rank=$((np - 1)) --set fault.at_step=11
  rc=$?
  run "killed$np" --resume
  rc2=$?
  if [ $rc -ne 0 ] && [ $rc2 -eq 0 ] && grep -q "continuing at step 11" "$WORK/killed$np.log" &&
      same_losses "$ref" "killed$np" &&
      h5diff -d 0 "$WORK/$ref/weights.h5" "$WORK/killed$np/weights.h5" > /dev/null; then
    pass "$name: killed at step 11, resumed from 10: bit-identical losses and weights"
  else
    fail "$name resume (exits $rc, $rc2)"; paste <(losses "$WORK/$ref") <(losses "$WORK/killed$np")
  fi
  # Async: saving in the background changes nothing, and what it wrote resumes exactly.
  run "async$np" --set checkpoint.async=true
  rc=$?
  run "async_resumed$np" --set checkpoint.resume="$WORK/async$np/checkpoints/step_00000010"
  rc2=$?
  if [ $rc -eq 0 ] && [ $rc2 -eq 0 ] && grep -q "in the background" "$WORK/async$np.log" &&
      same_losses "$ref" "async$np" && cmp -s <(tail10 "$ref") <(tail10 "async_resumed$np") &&
      h5diff -d 0 "$WORK/$ref/weights.h5" "$WORK/async_resumed$np/weights.h5" > /dev/null; then
    pass "$name, async: background saves; step 10 resumed: bit-identical losses and weights"
  else
    fail "$name async (exits $rc, $rc2)"; paste <(tail10 "$ref") <(tail10 "async_resumed$np")
  fi
done

# --- resharding ---
layout_ep=(--set parallel.ep=2 --set parallel.zero_stage=1)
# The saving runs stop (are killed) at step 11: the schedule is the 20-step one.
trainN 4 ep_z1 "${layout_ep[@]}" --set fault.kill_rank=3 --set fault.at_step=11
src="$WORK/ep_z1/checkpoints/step_00000010"
for target in tp2 single; do
  if [ $target = tp2 ]; then
    trainN 2 "from_ep_$target" --set parallel.tp=2 --set checkpoint.resume="$src"
  else
    train1 "from_ep_$target" --set checkpoint.resume="$src"
  fi
  rc=$?
  # Steps 1-10 come from the saving run: compare its losses and these.
  cat "$WORK/ep_z1/metrics.jsonl" "$WORK/from_ep_$target/metrics.jsonl" > "$WORK/joined_$target.jsonl"
  mkdir -p "$WORK/joined_$target" && mv "$WORK/joined_$target.jsonl" "$WORK/joined_$target/metrics.jsonl"
  if [ $rc -eq 0 ] && close_losses straight "joined_$target"; then
    pass "saved at dp4 x ep2 ZeRO-1, resumed at $target: the 20 losses match the uninterrupted run"
  else
    fail "resume at $target (exit $rc)"; tail -3 "$WORK/from_ep_$target.log"
  fi
done
train1 single10 --set fault.kill_rank=0 --set fault.at_step=11
trainN 4 from_single "${layout_ep[@]}" --set checkpoint.resume="$WORK/single10/checkpoints/step_00000010"
rc=$?
mkdir -p "$WORK/joined_single10"
cat "$WORK/single10/metrics.jsonl" "$WORK/from_single/metrics.jsonl" > "$WORK/joined_single10/metrics.jsonl"
if [ $rc -eq 0 ] && close_losses straight joined_single10; then
  pass "saved at one process, resumed at dp4 x ep2 ZeRO-1: the 20 losses match"
else
  fail "resume at dp4 x ep2 from one process (exit $rc)"; tail -3 "$WORK/from_single.log"
fi
# Round trip: load step 10 at tp2 (and at one process), save it again there.
for target in tp2 single; do
  if [ $target = tp2 ]; then
    trainN 2 "trip_$target" --set parallel.tp=2 --set train.steps=10 --set checkpoint.resume="$src"
  else
    train1 "trip_$target" --set train.steps=10 --set checkpoint.resume="$src"
  fi
  "$TESSERA" ckpt diff "$src" "$WORK/trip_$target/checkpoints/step_00000010" --json \
    > "$WORK/trip_$target.diff" 2> "$WORK/trip_$target.differr"
  rc=$?
  if [ $rc -eq 0 ] && python3 - "$WORK/trip_$target.diff" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
rows = report["tensors"] if isinstance(report, dict) else report
assert len(rows) > 0
for row in rows:
    assert row.get("max_abs", 1) == 0, row
EOF
  then
    pass "save (dp4 x ep2 ZeRO-1) -> load ($target) -> save: ckpt diff finds zero difference"
  else
    fail "round trip via $target (exit $rc)"; head -5 "$WORK/trip_$target.diff" "$WORK/trip_$target.differr"
  fi
done

# --- a stop signal ---
# Long enough that the signal, sent as soon as the run reports its memory
# plan (the handlers are installed before that), lands before the end.
sig=(--set train.steps=200 --set checkpoint.every=0 --set train.log_every=10)
train1 straight40 "${sig[@]}" || fail "uninterrupted 40-step run"
"$TESSERA" train --config "$SOURCE/configs/dit_moe_tiny.textproto" --set data.dir="$WORK/data" \
  --set train.run_dir="$WORK/signal" "${common[@]}" "${sig[@]}" > "$WORK/signal.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  grep -q "memory plan" "$WORK/signal.log" && break
  sleep 0.05
done
kill -USR1 $pid
wait $pid
rc=$?
stopped=$(ls "$WORK/signal/checkpoints" 2>/dev/null | grep -c '^step_')
if [ $rc -eq 75 ] && [ "$stopped" -eq 1 ] && grep -q "stopped by SIGUSR1" "$WORK/signal.log" &&
    "$TESSERA" ckpt verify "$WORK/signal" > /dev/null; then
  pass "SIGUSR1: saved a verified checkpoint ($(ls "$WORK/signal/checkpoints" | grep '^step_')) and exited 75"
else
  fail "SIGUSR1: exit $rc, $stopped checkpoints"; tail -3 "$WORK/signal.log"
fi
train1 signal "${sig[@]}" --resume
rc=$?
if [ $rc -eq 0 ] && cmp -s <(losses "$WORK/straight40") <(losses "$WORK/signal"); then
  pass "resumed after the signal: the losses are bit-identical to an uninterrupted run"
else
  fail "resume after the signal (exit $rc)"
fi

# --- crash while saving ---
trainN 4 crash "${layout4[@]}" --set fault.kill_rank=2 --set fault.at_step=20 --set fault.at_phase=save
rc=$?
listing=$("$TESSERA" ckpt list "$WORK/crash" 2>&1)
if [ $rc -ne 0 ] && [ "$(cat "$WORK/crash/checkpoints/latest")" = step_00000010 ] &&
    "$TESSERA" ckpt verify "$WORK/crash" > /dev/null; then
  pass "rank killed while saving step 20: step 10 stays committed and latest ($(echo "$listing" | grep -c incomplete) incomplete listed)"
else
  fail "crash while saving: exit $rc"; echo "$listing"
fi
trainN 4 crash "${layout4[@]}" --resume
rc=$?
if [ $rc -eq 0 ] && same_losses straight4 crash; then
  pass "after the crash, resuming from step 10 reaches the uninterrupted losses"
else
  fail "resume after crash (exit $rc)"
fi

# --- corruption ---
train1 corrupt || fail "run to corrupt"
file="$WORK/corrupt/checkpoints/step_00000020/rank_00000.h5"
python3 - "$file" <<'EOF'
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
data[len(data) - 4096] ^= 0x55  # inside the last piece's data
open(path, "wb").write(bytes(data))
EOF
"$TESSERA" ckpt verify "$WORK/corrupt" > "$WORK/verify.out" 2>&1
rc=$?
named=$(grep -oE "checksum[^;]*rank_00000.h5" "$WORK/verify.out" | head -1)
if [ $rc -eq 4 ] && [ -n "$named" ]; then
  pass "ckpt verify names the corrupt piece: $named"
else
  fail "ckpt verify after a flipped byte: exit $rc"; cat "$WORK/verify.out"
fi
train1 corrupt --resume --set train.steps=25
rc=$?
if [ $rc -eq 4 ] && grep -q "rank_00000.h5" "$WORK/corrupt.log"; then
  pass "train --resume refuses the corrupt checkpoint with exit 4"
else
  fail "resume from corrupt checkpoint: exit $rc"; tail -3 "$WORK/corrupt.log"
fi
train1 corrupt --resume --set train.steps=25 --set checkpoint.fallback=true
rc=$?
if [ $rc -eq 0 ] && grep -q "continuing at step 11" "$WORK/corrupt.log"; then
  pass "checkpoint.fallback resumes from step 10 instead"
else
  fail "fallback: exit $rc"; tail -3 "$WORK/corrupt.log"
fi

# --- bad input ---
train1 other_model --set model.dit_moe.depth=3 --set checkpoint.resume="$WORK/straight/checkpoints/step_00000020"
rc=$?
if [ $rc -eq 4 ] && grep -q "blocks.2" "$WORK/other_model.log"; then
  pass "another model's checkpoint: exit 4 naming the missing tensors"
else
  fail "other model: exit $rc"; tail -3 "$WORK/other_model.log"
fi
cp -r "$WORK/straight4" "$WORK/missing"
rm "$WORK/missing/checkpoints/step_00000020/rank_00001.h5"
trainN 4 missing "${layout4[@]}" --resume --set train.steps=25
rc=$?
if [ $rc -eq 4 ] && grep -q "rank_00001.h5" "$WORK/missing.log"; then
  pass "a missing rank file: exit 4 naming it"
else
  fail "missing rank file: exit $rc"; tail -3 "$WORK/missing.log"
fi
( ulimit -f 600; train1 full_disk )
rc=$?
if [ $rc -eq 4 ] && [ ! -e "$WORK/full_disk/checkpoints/latest" ] &&
    ! ls "$WORK/full_disk/checkpoints" 2>/dev/null | grep -qv '\.tmp$'; then
  pass "a write that fails (file size limit): exit 4, nothing committed"
else
  fail "full disk: exit $rc"; ls "$WORK/full_disk/checkpoints"; tail -3 "$WORK/full_disk.log"
fi
finish
