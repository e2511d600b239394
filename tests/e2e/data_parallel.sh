#!/usr/bin/env bash
# The oracle for data parallelism: DiT-MoE (tiny) for 6 steps with
# micro-batches of 2 at dp2, dp4 and dp4 + ZeRO-1 under mpirun reaches the
# same losses (relative 1e-5) and final parameters (absolute 1e-6) as one
# process on the same global batch of 8 (which accumulates 4 micro-batches).
# ZeRO-1 keeps a quarter of the optimizer state and, besides the gradients,
# only the reduced shards. A world size that does not fit fails on every rank
# with exit code 2.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
command -v h5diff > /dev/null || { fail "h5diff not found (hdf5-tools)"; finish; }
make_data "$WORK/data"
steps=6
common=(--set train.steps=$steps --set train.micro_batch=2 --set optim.ema_decay=0
        --set model.dit_moe.sample_grid_per_class=0 --set parallel.collective_timeout_s=60)

tiny "$WORK/single" "$WORK/data" "${common[@]}" > "$WORK/single.log" 2>&1 || fail "single process"
run_layout dp2 2
run_layout dp4 4
run_layout dp4_zero1 4 --set parallel.zero_stage=1
opt_plain=$(grep -oE 'optimizer [0-9.]+ KiB' "$WORK/dp4.log" | head -1 | grep -oE '[0-9.]+')
opt_zero=$(grep -oE 'optimizer [0-9.]+ KiB' "$WORK/dp4_zero1.log" | head -1 | grep -oE '[0-9.]+')
if awk -v a="$opt_plain" -v b="$opt_zero" 'BEGIN { exit !(b > 0 && b <= a / 4 * 1.01) }'; then
  pass "ZeRO-1 at dp4 keeps a quarter of the optimizer state ($opt_plain KiB -> $opt_zero KiB)"
else
  fail "ZeRO-1 optimizer state: $opt_plain KiB -> $opt_zero KiB"
fi

# ZeRO-1's communication buffers are the reduced gradient shards alone (a
# quarter of the gradients at dp4): the parameter all-gather runs in place.
plan_bytes() {  # plan_bytes <log> <field>: that field of the memory plan line, in bytes
  grep -m1 '^memory plan:' "$1" | grep -oE "$2 [0-9.]+ [KMG]?i?B" | awk '{
    f = $3 == "KiB" ? 1024 : $3 == "MiB" ? 1048576 : $3 == "GiB" ? 1073741824 : 1; print $2 * f }'
}
grads=$(plan_bytes "$WORK/dp4_zero1.log" gradients)
comm=$(plan_bytes "$WORK/dp4_zero1.log" communication)
if awk -v g="$grads" -v c="$comm" 'BEGIN { exit !(g > 0 && c >= g / 4 * 0.99 && c <= g / 4 * 1.01) }'; then
  pass "ZeRO-1 at dp4: communication buffers = a quarter of the gradients ($comm of $grads bytes)"
else
  fail "ZeRO-1 communication buffers: $comm bytes for $grads bytes of gradients (want a quarter)"
fi

timeout 120 mpirun --oversubscribe --bind-to none -np 3 "$TESSERA" train \
  --config "$SOURCE/configs/dit_moe_tiny.textproto" --set train.run_dir="$WORK/np3" \
  --set data.dir="$WORK/data" > "$WORK/np3.log" 2>&1
rc=$?
same=$(grep -c "must be divisible by the data-parallel size dp = world size / (tp \* sp) = 3" "$WORK/np3.log")
# Every rank returns the same error, but mpirun ends the job as soon as the
# first rank exits 2, so how many ranks get to print it is a race: ask for
# the exit code and at least one rank naming the problem.
if [ $rc -eq 2 ] && [ "$same" -ge 1 ] && [ ! -e "$WORK/np3" ]; then
  pass "world size 3 refused with exit code 2, nothing written ($same of 3 ranks printed it before mpirun ended the job)"
else
  fail "world size 3: exit $rc, $same ranks reported"; cat "$WORK/np3.log" | head
fi
finish
