#!/usr/bin/env bash
# The numerics dump (tessera debug dump-step) is the same under every layout:
# DiT-MoE (tiny) initialized from a 3-step checkpoint (so no gradient is
# zero by the adaLN-Zero initialization) is dumped on one process and at tp2,
# sp2 and ep2 (2 ranks each; ep2 is dp2 for the dense layers, with the
# GLOBAL_BATCH balance scope so that its balance loss is one process's), and
# `tessera debug compare` finds every dataset (parameters, gradients,
# inputs with every random draw, outputs, loss terms) within 1e-6 relative
# of the one-process dump. Bad input: an unknown model, a missing --out.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
make_data "$WORK/data"
tiny "$WORK/trained" "$WORK/data" --set train.steps=3 --set checkpoint.every=3 \
  --set model.dit_moe.sample_grid_per_class=0 > "$WORK/trained.log" 2>&1 || fail "3-step run"
ckpt="$WORK/trained/checkpoints/step_00000003"
common=(--config "$SOURCE/configs/dit_moe_tiny.textproto" --set data.dir="$WORK/data"
        --set checkpoint.load="$ckpt" --set model.dit_moe.moe.balance_loss_coef=0.1
        --set parallel.collective_timeout_s=60)

if "$TESSERA" debug dump-step "${common[@]}" --out "$WORK/single.h5" > "$WORK/single.log" 2>&1; then
  pass "one-process dump: $(tail -1 "$WORK/single.log")"
else
  fail "one-process dump"; tail -5 "$WORK/single.log"
fi
# Every dataset the schema promises is there.
"$TESSERA" debug compare "$WORK/single.h5" "$WORK/single.h5" > "$WORK/self.txt" 2>&1
for name in inputs/images inputs/labels inputs/label_dropped inputs/timesteps inputs/noise \
            outputs/prediction losses/loss losses/aux_loss gradients/blocks.0.moe.router.weight \
            parameters/blocks.1.moe.experts.3.w_down; do
  grep -q "^$name " "$WORK/self.txt" || fail "the dump has no $name"
done

dump_layout() {  # dump_layout NAME --set ...
  local name=$1
  shift
  if timeout 300 mpirun --oversubscribe --bind-to none -np 2 "$TESSERA" debug dump-step \
      "${common[@]}" "$@" --out "$WORK/$name.h5" > "$WORK/$name.log" 2>&1; then
    if "$TESSERA" debug compare "$WORK/single.h5" "$WORK/$name.h5" --tolerance 1e-6 \
        > "$WORK/$name.txt" 2>&1; then
      pass "$name dump equals the one-process dump ($(tail -1 "$WORK/$name.txt"))"
    else
      fail "$name dump differs"; grep -v ' ok$' "$WORK/$name.txt" | head -10
    fi
  else
    fail "$name dump: mpirun failed"; tail -5 "$WORK/$name.log"
  fi
}
dump_layout tp2 --set parallel.tp=2
dump_layout sp2 --set parallel.sp=2
dump_layout ep2 --set parallel.ep=2 --set model.dit_moe.moe.balance_scope=GLOBAL_BATCH

# The comparison can fail: another seed's dump differs.
"$TESSERA" debug dump-step "${common[@]}" --set train.seed=7 --out "$WORK/seed7.h5" > /dev/null 2>&1
if ! "$TESSERA" debug compare "$WORK/single.h5" "$WORK/seed7.h5" --tolerance 1e-6 > "$WORK/seed7.txt" 2>&1 &&
   grep -q '^inputs/noise .*differ' "$WORK/seed7.txt"; then
  pass "a dump with another seed differs (inputs/noise among others)"
else
  fail "debug compare did not tell train.seed=7 from train.seed=0"
fi

expect_exit "dump of an unknown model (no model section)" 2 "model" -- \
  "$TESSERA" debug dump-step --config /dev/null --out "$WORK/none.h5"
printf 'not_a_model { depth: 2 }\n' > "$WORK/unknown_model.textproto"
expect_exit "dump of an unknown model (a model section no family has)" 2 "not_a_model" -- \
  "$TESSERA" debug dump-step --config "$WORK/unknown_model.textproto" --out "$WORK/none.h5"
expect_exit "dump without --out" 2 "--out FILE.h5 is required" -- \
  "$TESSERA" debug dump-step "${common[@]}"
expect_exit "debug with an unknown subcommand" 2 "unknown subcommand" -- \
  "$TESSERA" debug dump-everything
[ ! -e "$WORK/none.h5" ] || fail "a refused dump wrote a file"
finish
