#!/usr/bin/env bash
# The numerics dump (tessera debug dump-step) of the Mamba hybrid is the same
# under every layout: the tiny hybrid (M * - M E) initialized from a 3-step
# checkpoint is dumped on one process and at tp2 (vocab-parallel head),
# tp2 + Megatron SP, sp2 (state passing, Ulysses attention) and dp2 (with
# the GLOBAL_BATCH balance scope, which alone gives one process's balance
# loss over two replicas). `tessera debug compare` finds the parameters,
# inputs, per-layer outputs, logits and loss terms within 1e-6 relative of
# the one-process dump, and the gradients within 1e-5: a few of them (the
# D skips and dt biases of the Mamba layers) are sums over every position
# that nearly cancel, where fp32 sums in another order differ by 2-5e-6
# relative.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
TINY="$SOURCE/configs/mamba_hybrid_tiny.textproto"
"$TESSERA" data synth --schema tokens --out "$WORK/data" --samples 128 --vocab 64 --seed 1 \
  > /dev/null || { fail "data synth"; finish; }
"$TESSERA" train --config "$TINY" --set data.dir="$WORK/data" --set train.run_dir="$WORK/trained" \
  --set train.steps=3 --set checkpoint.every=3 > "$WORK/trained.log" 2>&1 || fail "3-step run"
common=(--config "$TINY" --set data.dir="$WORK/data"
        --set checkpoint.load="$WORK/trained/checkpoints/step_00000003"
        --set parallel.collective_timeout_s=60)

if "$TESSERA" debug dump-step "${common[@]}" --out "$WORK/single.h5" > "$WORK/single.log" 2>&1; then
  pass "one-process dump: $(tail -1 "$WORK/single.log")"
else
  fail "one-process dump"; tail -5 "$WORK/single.log"; finish
fi
"$TESSERA" debug compare "$WORK/single.h5" "$WORK/single.h5" > "$WORK/self.txt" 2>&1
for name in inputs/tokens inputs/targets inputs/loss_mask outputs/embedding outputs/layers.0 \
            outputs/layers.4 outputs/hidden outputs/logits losses/loss losses/aux_loss \
            gradients/layers.0.mixer.A_log gradients/layers.4.moe.router.weight; do
  grep -q "^$name " "$WORK/self.txt" || fail "the dump has no $name"
done

# within FILE: 0 when every dataset is within 1e-6 (gradients: 1e-5).
within() {
  awk '$3 == "(max" { limit = ($1 ~ /^gradients\//) ? 1e-5 : 1e-6; n++
                      if ($2 > limit) { print "  " $0; bad = 1 }
                      if ($1 ~ /^gradients\//) { if ($2 > g) g = $2 } else if ($2 > o) o = $2 }
       END { printf "%d datasets; largest: gradients %g, the rest %g\n", n, g, o; exit bad || n == 0 }' "$1"
}
dump_layout() {  # dump_layout NAME --set ...
  local name=$1
  shift
  if timeout 300 mpirun --oversubscribe --bind-to none -np 2 "$TESSERA" debug dump-step \
      "${common[@]}" "$@" --out "$WORK/$name.h5" > "$WORK/$name.log" 2>&1; then
    "$TESSERA" debug compare "$WORK/single.h5" "$WORK/$name.h5" > "$WORK/$name.txt" 2> /dev/null
    if within "$WORK/$name.txt" > "$WORK/$name.summary"; then
      pass "$name dump equals the one-process dump ($(tail -1 "$WORK/$name.summary"))"
    else
      fail "$name dump differs"; cat "$WORK/$name.summary"
    fi
  else
    fail "$name dump: mpirun failed"; tail -5 "$WORK/$name.log"
  fi
}
dump_layout tp2 --set parallel.tp=2
dump_layout tp2_megatron_sp --set parallel.tp=2 --set parallel.sequence_parallel=true
dump_layout sp2 --set parallel.sp=2
dump_layout dp2 --set model.mamba_hybrid.moe.balance_scope=GLOBAL_BATCH

# The comparison can fail: another seed's initialization differs.
"$TESSERA" debug dump-step --config "$TINY" --set data.dir="$WORK/data" --set train.seed=7 \
  --out "$WORK/seed7.h5" > /dev/null 2>&1
"$TESSERA" debug compare "$WORK/single.h5" "$WORK/seed7.h5" > "$WORK/seed7.txt" 2> /dev/null
if ! within "$WORK/seed7.txt" > /dev/null && grep -q '^outputs/logits .*differ' "$WORK/seed7.txt"; then
  pass "a dump of another initialization differs (outputs/logits among others)"
else
  fail "the comparison did not tell another initialization apart"
fi
finish
