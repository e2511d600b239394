#!/usr/bin/env bash
# Evaluation during training (data.eval_dir, train.eval_every,
# train.eval_samples; docs/metrics.md "Evaluation records").
#
# The oracle is the one-process run: the tiny DiT-MoE's validation loss on a
# held-out split of 37 images (odd, so the last evaluation batch is partly
# padding on every layout) is the same under dp2, dp2 with ZeRO-1, tp2, sp2
# and ep2 within 1e-6 relative, evaluated after 3 and 4 trained steps (EMA
# on; every train.eval_every=3 steps and after the last); weights that do
# not move (optim.lr=1e-30) give the same value twice. A subset
# (train.eval_samples=5) agrees between one process and dp2 too. Bad
# evaluation input fails before the run directory exists, naming
# data.eval_dir and the file: another schema (exit 3), another image shape
# (exit 2), a missing folder (exit 3), eval_every without eval_dir (exit 2).
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
make_data "$WORK/data"
"$TESSERA" data synth --schema images --out "$WORK/eval" --samples 37 --size 8 --classes 10 \
  --seed 2 --shard-size 20 > /dev/null || { fail "data synth (eval)"; finish; }

# The metrics.jsonl evaluation records' val_loss, one per line.
val_losses() { grep -oE '"val_loss":[^,}]*' "$1/metrics.jsonl" | cut -d: -f2; }

# agree NAME RUN EXPECTED_COUNT: RUN's val_loss values against $WORK/$baseline's.
agree() {
  local name=$1 run=$2 count=$3 worst
  if [ "$(val_losses "$WORK/$run" | wc -l)" -ne "$count" ]; then
    fail "$name: $(val_losses "$WORK/$run" | wc -l) evaluation records, expected $count"
    tail -5 "$WORK/$run.log"
    return
  fi
  worst=$(paste <(val_losses "$WORK/$baseline") <(val_losses "$WORK/$run") |
    awk '{ d = $1 - $2; if (d < 0) d = -d; a = $1 < 0 ? -$1 : $1; r = d / a; if (r > w) w = r }
         END { printf "%.2g", w }')
  if awk -v w="$worst" 'BEGIN { exit !(w <= 1e-6) }'; then
    pass "$name layout: val_loss matches one process (worst relative difference $worst; $(val_losses "$WORK/$run" | tail -1))"
  else
    fail "$name layout: val_loss differs from one process by $worst relative"
    paste <(val_losses "$WORK/$baseline") <(val_losses "$WORK/$run")
  fi
}

# layouts SUFFIX [--set ...]: the baseline and every layout with these settings.
layouts() {
  local suffix=$1
  shift
  baseline=single$suffix
  tiny "$WORK/$baseline" "$WORK/data" "${common[@]}" "$@" > "$WORK/$baseline.log" 2>&1 ||
    { fail "one process$suffix: exit $?"; tail -5 "$WORK/$baseline.log"; return; }
  local expected
  expected=$(val_losses "$WORK/$baseline" | wc -l)
  local name np settings
  while read -r name np settings; do
    # shellcheck disable=SC2086
    mpi_tiny "$name$suffix" "$np" "$@" $settings < /dev/null ||
      { fail "$name$suffix: mpirun exited $?"; tail -5 "$WORK/$name$suffix.log"; continue; }
    agree "$name$suffix" "$name$suffix" "$expected"
  done <<'EOF'
dp2 2
dp2_zero1 2 --set parallel.zero_stage=1
tp2 2 --set parallel.tp=2
sp2 2 --set parallel.sp=2
ep2 2 --set parallel.ep=2
EOF
}

common=(--set data.eval_dir="$WORK/eval" --set train.eval_samples=0 --set train.micro_batch=2
        --set model.dit_moe.sample_grid_per_class=0 --set parallel.collective_timeout_s=60)

# The evaluation alone: the weights do not move, every evaluation is the same.
tiny "$WORK/single_lr0" "$WORK/data" "${common[@]}" --set optim.lr=1e-30 --set train.steps=2 \
  --set train.eval_every=1 > "$WORK/single_lr0.log" 2>&1 || fail "one process, lr 1e-30"
if [ "$(val_losses "$WORK/single_lr0" | sort -u | wc -l)" -eq 1 ]; then
  pass "unchanged weights: both evaluations give the same val_loss ($(val_losses "$WORK/single_lr0" | head -1))"
else
  fail "unchanged weights, different val_loss: $(val_losses "$WORK/single_lr0" | tr '\n' ' ')"
fi

# Trained weights (EMA on): evaluations at step 3 (eval_every) and 4 (the last).
layouts _trained --set train.steps=4 --set train.eval_every=3
steps=$(grep -oE '^\{"step":[0-9]+,"eval_samples":37,' "$WORK/single_trained/metrics.jsonl" |
  grep -oE '"step":[0-9]+' | cut -d: -f2 | tr '\n' ' ')
if [ "$steps" = "3 4 " ]; then
  pass "evaluation records at steps 3 and 4, 37 samples each"
else
  fail "evaluation records at steps '$steps', expected '3 4 '"; cat "$WORK/single_trained/metrics.jsonl"
fi
if grep -qE '^eval +3/4 \| val_loss [0-9.e+-]+ \| 37 held-out samples' "$WORK/single_trained.log"; then
  pass "the log line reports the evaluation"
else
  fail "no evaluation log line"; grep eval "$WORK/single_trained.log"
fi
if grep -q '"val_loss"' <(grep -v eval_samples "$WORK/single_trained/metrics.jsonl"); then
  fail "a step record carries val_loss"
else
  pass "step records stay as they were (no val_loss in them)"
fi

# A subset of the split: its first 5 images, also under dp2.
baseline=single_subset
tiny "$WORK/single_subset" "$WORK/data" "${common[@]}" --set train.eval_samples=5 \
  --set train.steps=1 > "$WORK/single_subset.log" 2>&1 || fail "one process, eval_samples=5"
mpi_tiny dp2_subset 2 --set train.eval_samples=5 --set train.steps=1 || fail "dp2, eval_samples=5"
agree "dp2 subset" dp2_subset 1
grep -q '"eval_samples":5,' "$WORK/single_subset/metrics.jsonl" &&
  pass "train.eval_samples=5 evaluates 5 samples" || fail "eval_samples=5 not reported"

# Bad evaluation input: refused before anything is written.
refused() {  # NAME CODE PATTERN [--set ...]
  local name=$1 code=$2 pattern=$3
  shift 3
  expect_exit "$name" "$code" "$pattern" -- tiny "$WORK/run_$name" "$WORK/data" "$@"
  [ -e "$WORK/run_$name" ] && fail "$name: the run directory was created" ||
    pass "$name: no run directory"
}
"$TESSERA" data synth --schema tokens --out "$WORK/tokens" --samples 8 > /dev/null ||
  fail "data synth (tokens)"
refused eval_dir_other_schema 3 'data\.eval_dir ".*tokens": .*tokens/manifest\.textproto: schema is "tokens"' \
  --set data.eval_dir="$WORK/tokens"
"$TESSERA" data synth --schema images --out "$WORK/eval6" --samples 8 --size 6 > /dev/null ||
  fail "data synth (6x6)"
refused eval_dir_other_image_shape 2 'data\.eval_dir ".*eval6": .*eval6/manifest\.textproto holds 1x6x6 images .*data\.dir ".*" holds 1x8x8' \
  --set data.eval_dir="$WORK/eval6"
"$TESSERA" data synth --schema images --out "$WORK/eval16" --samples 8 --size 16 > /dev/null ||
  fail "data synth (16x16)"
refused eval_dir_larger_images 2 'data\.eval_dir ".*eval16": its images \(16x16\) are larger than pad_to \(8\)' \
  --set data.eval_dir="$WORK/eval16"
refused eval_dir_missing 3 'data\.eval_dir ".*nowhere": no manifest\.textproto' \
  --set data.eval_dir="$WORK/nowhere"
refused eval_every_without_eval_dir 2 'train\.eval_every=2 needs data\.eval_dir' \
  --set train.eval_every=2
refused eval_samples_negative 2 'train\.eval_samples=-1 must be >= 0' \
  --set data.eval_dir="$WORK/eval" --set train.eval_samples=-1
finish
