#!/usr/bin/env bash
# HSTU end to end on planted synthetic data: synthesize users who follow
# hidden item cycles, train the tiny config, and check that the leave-one-out
# evaluation written at the end ranks the held-out items far above chance;
# tessera recommend on the trained run; data parallelism with the item table
# row-sharded over 2 and 4 ranks against one process; exact resume from a
# checkpoint, and a table saved from 4 shards resumed on 1 and 2;
# and the config and data errors a user can make.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
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

# tessera recommend: user 3 of this data ends with item 171 of the cycle
# 1, 11, …, 191 of cluster 1 (seed 1), so the planted next item is 181.
"$TESSERA" recommend --run "$WORK/run" --user 3 --top 5 > "$WORK/rec.txt" 2>&1 \
  && grep -q "^user 3: 29 events; top 5 items" "$WORK/rec.txt" \
  && [ "$(grep -cE '^ +[0-9]+ +[0-9]+ +[-0-9.]+$' "$WORK/rec.txt")" -eq 5 ] \
  && grep -qE '^ +[1-5] +181 ' "$WORK/rec.txt" \
  && pass "recommend: the planted next item 181 in user 3's top 5" \
  || { fail "recommend"; cat "$WORK/rec.txt"; }
expect_exit "recommend for an unknown user" 2 "has no user 99999" -- \
  "$TESSERA" recommend --run "$WORK/run" --user 99999
expect_exit "recommend without --user" 2 "--user ID are required" -- \
  "$TESSERA" recommend --run "$WORK/run"

# Layouts against one process on the same global batch (the oracle): the
# item table is row-sharded over the world (or model.hstu.table_shards ranks
# per copy) and updated by the same sparse row-wise Adam as one process's
# whole table; the loss is weighted by supervised positions; dropout and
# negatives are keyed by global batch position. Losses relative 1e-5,
# weights.h5 (the dense parameters and every table row) h5diff 1e-6.
hstu "$WORK/one" --set train.steps=5 --set train.global_batch=16 > "$WORK/one.log" 2>&1 \
  || { cat "$WORK/one.log"; fail "one-process baseline"; }
same_as() {  # same_as BASELINE_DIR RUN_DIR WHAT: losses (the last N of the baseline's) and weights
  local base=$1 run=$2 what=$3 n
  n=$(losses "$run" | wc -l)
  if [ "$n" -ge 3 ] && paste <(losses "$base" | tail -"$n") <(losses "$run") |
      awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * ($1 < 0 ? -$1 : $1)) bad = 1 } END { exit bad }'; then
    pass "$what: the $n losses match one process ($(losses "$run" | tail -1))"
  else
    fail "$what: losses differ"; paste <(losses "$base") <(losses "$run")
  fi
  h5diff -d 1e-6 "$base/weights.h5" "$run/weights.h5" > "$WORK/diff.txt" 2>&1 \
    && pass "$what: final parameters and item table match one process (h5diff -d 1e-6)" \
    || { fail "$what: final parameters differ"; head "$WORK/diff.txt"; }
}
hstu_mpi() {  # hstu_mpi NAME NP [--set ...]
  local name=$1 np=$2
  shift 2
  OMP_NUM_THREADS=1 timeout 300 mpirun --oversubscribe --bind-to none -np "$np" "$TESSERA" train \
    --config "$SOURCE/configs/hstu_tiny.textproto" --set train.run_dir="$WORK/$name" \
    --set data.dir="$WORK/data" --set train.global_batch=16 "$@" > "$WORK/$name.log" 2>&1 \
    || { fail "$name run"; tail -20 "$WORK/$name.log"; return 1; }
}
# dp2 with two micro-batches per replica: the table over 2 ranks.
hstu_mpi dp2 2 --set train.steps=5 --set train.micro_batch=4 && same_as "$WORK/one" "$WORK/dp2" "dp2, table over 2"
h5ls "$WORK/one/weights.h5" | grep -q '^item_embedding ' \
  && pass "weights.h5 holds the item table" || fail "weights.h5 lacks item_embedding"
# dp4: the table over 4 ranks; and two copies of it over 2 ranks each.
hstu_mpi dp4 4 --set train.steps=5 && same_as "$WORK/one" "$WORK/dp4" "dp4, table over 4"
hstu_mpi dp4_copies 4 --set train.steps=5 --set model.hstu.table_shards=2 \
  && same_as "$WORK/one" "$WORK/dp4_copies" "dp4, two copies of the table over 2 ranks each"
hstu "$WORK/adagrad_one" --set train.steps=5 --set model.hstu.table_optimizer=ROWWISE_ADAGRAD \
  --set model.hstu.table_lr=0.05 > /dev/null 2>&1 || fail "row-wise Adagrad, one process"
hstu_mpi adagrad_dp2 2 --set train.steps=5 --set model.hstu.table_optimizer=ROWWISE_ADAGRAD \
  --set model.hstu.table_lr=0.05 && same_as "$WORK/adagrad_one" "$WORK/adagrad_dp2" "row-wise Adagrad, dp2"

# Exact resume: 3 steps, a checkpoint, 3 more after --resume against 6 straight.
hstu "$WORK/straight" --set train.steps=6 --set checkpoint.every=3 > /dev/null 2>&1 \
  && hstu "$WORK/resumed" --set train.steps=3 --set checkpoint.every=3 > /dev/null 2>&1 \
  && hstu "$WORK/resumed" --set train.steps=6 --set checkpoint.every=3 --resume > /dev/null 2>&1 \
  && [ "$(losses "$WORK/straight")" = "$(losses "$WORK/resumed")" ] \
  && h5diff "$WORK/straight/weights.h5" "$WORK/resumed/weights.h5" > /dev/null 2>&1 \
  && pass "resume after step 3: the same 6 losses and bit-identical weights" \
  || { fail "resume differs"; paste <(losses "$WORK/straight") <(losses "$WORK/resumed"); }

# A checkpoint saved by 4 table shards resumes on 1 and on 2 processes:
# steps 4-6 give the losses and weights of the straight one-process run.
hstu_mpi ckpt4 4 --set train.steps=3 --set checkpoint.every=3 && for np in 1 2; do
  if [ "$np" = 1 ]; then
    hstu "$WORK/from4_np1" --set train.steps=6 \
      --set checkpoint.resume="$WORK/ckpt4/checkpoints/step_00000003" > "$WORK/from4_np1.log" 2>&1 \
      || { fail "resume on 1 process"; tail "$WORK/from4_np1.log"; }
  else
    hstu_mpi from4_np2 2 --set train.steps=6 \
      --set checkpoint.resume="$WORK/ckpt4/checkpoints/step_00000003"
  fi
  same_as "$WORK/straight" "$WORK/from4_np$np" "table saved from 4 shards, resumed on $np"
done

expect_exit "item table smaller than the data" 2 "num_items \(100\) is smaller" -- \
  hstu "$WORK/small" --set model.hstu.num_items=100
expect_exit "num_items unset" 2 "model.hstu.num_items=0 must be set" -- \
  hstu "$WORK/unset" --set model.hstu.num_items=0
expect_exit "tensor parallelism refused" 2 "model.hstu runs on one process or under data parallelism" -- \
  hstu "$WORK/tp" --set parallel.tp=2
expect_exit "images for hstu" 2 'data.schema="images" must be "interactions"' -- \
  hstu "$WORK/schema" --set data.schema=images
finish
