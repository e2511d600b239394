#!/usr/bin/env bash
# The fault matrix (docs/reliability.md) under `mpirun -np 4` on DiT-MoE tiny
# at tp2 x dp2 with ep2 and ZeRO-1, 12 steps, a checkpoint every 5 steps and
# the last: a rank killed in forward, in backward, during the gradient
# reduction and while saving; a rank that hangs; a corrupt checkpoint write.
# For each: every rank is gone within the collective timeout (plus start-up),
# the exit code and message are the documented ones, `tessera ckpt verify`
# passes on `latest` (for the corrupt write: fails naming the piece, and
# checkpoint.fallback recovers), and resuming reaches the uninterrupted run's
# final losses bit for bit. Prints one row per fault.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
make_data "$WORK/data"
timeout_s=8
args=(--set train.steps=12 --set train.micro_batch=2 --set checkpoint.every=5
      --set optim.schedule=COSINE --set optim.warmup_steps=3 --set model.dit_moe.sample_grid_per_class=0
      --set parallel.collective_timeout_s=$timeout_s --set parallel.tp=2 --set parallel.ep=2
      --set parallel.zero_stage=1)
run4() {  # RUN_DIR [--set ...]: sets $rc and $seconds
  local dir=$1
  shift
  local start
  start=$(date +%s.%N)
  timeout 300 mpirun --oversubscribe --bind-to none -np 4 "$TESSERA" train \
    --config "$SOURCE/configs/dit_moe_tiny.textproto" --set data.dir="$WORK/data" \
    --set train.run_dir="$WORK/$dir" "${args[@]}" "$@" >> "$WORK/$dir.log" 2>&1
  rc=$?
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
}

run4 clean
[ $rc -eq 0 ] || fail "uninterrupted run: exit $rc"
clean_seconds=$seconds
echo "uninterrupted run: ${clean_seconds}s"
printf '%-28s | %4s | %6s | %-13s | %-8s | %s\n' fault exit secs latest verify resumed
row() {  # NAME EXPECTED_EXIT MESSAGE_REGEX [--set ...]
  local name=$1 expected=$2 message=$3
  shift 3
  run4 "$name" "$@"
  local exit_rc=$rc exit_s=$seconds
  local latest verify resumed
  latest=$(cat "$WORK/$name/checkpoints/latest" 2>/dev/null || echo none)
  "$TESSERA" ckpt verify "$WORK/$name" > "$WORK/$name.verify" 2>&1 && verify=ok || verify=FAILED
  run4 "$name" --resume
  if [ $rc -eq 0 ] && cmp -s <(losses "$WORK/clean") <(losses "$WORK/$name"); then
    resumed="same 12 losses"
  else
    resumed="exit $rc, losses differ"
  fi
  printf '%-28s | %4s | %6.1f | %-13s | %-8s | %s\n' "$name" "$exit_rc" "$exit_s" "$latest" \
    "$verify" "$resumed"
  # Start-up (~2 s here) + the watchdog's deadline + slack for a loaded machine.
  if [ "$exit_rc" -eq "$expected" ] && awk -v s="$exit_s" -v t=$timeout_s 'BEGIN { exit !(s < t + 20) }' &&
      grep -qE "$message" "$WORK/$name.log" && [ "$verify" = ok ] && [ "$resumed" = "same 12 losses" ]; then
    pass "$name: exit $exit_rc in ${exit_s}s, latest $latest verifies, resume matches"
  else
    fail "$name: exit $exit_rc (expected $expected) in ${exit_s}s, verify $verify, $resumed"
    grep -E "error|fault" "$WORK/$name.log" | head -5
  fi
}
# Open MPI's mpirun ends the job itself when a rank is killed (exit 137); the
# watchdog handles ranks that hang (exit 5, naming the rank).
row kill_forward 137 "fault injection: killing" --set fault.kill_rank=1 --set fault.at_step=8
row kill_backward 137 "fault injection: killing" --set fault.kill_rank=2 --set fault.at_step=8 \
  --set fault.at_phase=backward
row kill_reduce 137 "fault injection: killing" --set fault.kill_rank=3 --set fault.at_step=8 \
  --set fault.at_phase=reduce
row kill_save 137 "fault injection: killing" --set fault.kill_rank=1 --set fault.at_step=10 \
  --set fault.at_phase=save
row hang_forward 5 "never arrived \(world ranks\): 2" --set fault.hang_rank=2 --set fault.at_step=8

# A corrupt write commits (the checksum was taken first): verify names it,
# resuming refuses it, and checkpoint.fallback goes back to step 10.
run4 corrupt --set fault.corrupt_write=1 --set fault.at_step=12
corrupt_rc=$rc
"$TESSERA" ckpt verify "$WORK/corrupt" > "$WORK/corrupt.verify" 2>&1
verify_rc=$?
run4 corrupt --resume --set train.steps=14
refuse_rc=$rc
run4 corrupt --resume --set checkpoint.fallback=true
fallback_rc=$rc
printf '%-28s | %4s | %6s | %-13s | %-8s | %s\n' corrupt_write "$corrupt_rc" - step_00000012 \
  "exit $verify_rc" "refused: exit $refuse_rc; fallback: exit $fallback_rc"
if [ $corrupt_rc -eq 0 ] && [ $verify_rc -eq 4 ] && grep -q "checksum mismatch" "$WORK/corrupt.verify" &&
    [ $refuse_rc -eq 4 ] && [ $fallback_rc -eq 0 ] && grep -q "continuing at step 11" "$WORK/corrupt.log" &&
    cmp -s <(losses "$WORK/clean") <(losses "$WORK/corrupt") &&
    "$TESSERA" ckpt verify "$WORK/corrupt" > /dev/null; then
  pass "corrupt write: verify exit 4 ($(grep -oE 'tensor [^ ]+ \([a-z_]+\)' "$WORK/corrupt.verify" | head -1)), resume refused (4), fallback resumes from step 10 to the same losses"
else
  fail "corrupt write: run $corrupt_rc, verify $verify_rc, refuse $refuse_rc, fallback $fallback_rc"
  head -3 "$WORK/corrupt.verify"
fi
finish
