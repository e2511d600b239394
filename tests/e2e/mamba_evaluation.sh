#!/usr/bin/env bash
# The Mamba hybrid's evaluation (data.eval_dir, train.eval_every; docs/mamba.md
# "Evaluation"): the tiny hybrid (M * - M) trains 3 steps on associative
# recall (EMA on) and is evaluated after steps 2 and 3 on a held-out split of
# 26 windows (seed 2), in forwards of 2 windows, so the last evaluation batch
# of dp2 is half padding. One process, dp2, tp2 (vocab-parallel head),
# tp2 + Megatron SP and sp2 (state passing) log the same val_loss,
# val_bits_per_token and val_accuracy (relative 1e-5). A held-out split of
# another task or vocabulary, or none, is refused naming data.eval_dir.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
TINY="$SOURCE/configs/mamba_hybrid_tiny.textproto"
# 6 pairs and 4 queries: 20 tokens a document; 32 keys + 31 values + end = 64.
recall() {  # OUT SAMPLES SEED
  "$TESSERA" data synth --schema tokens --task associative-recall --out "$1" --samples "$2" \
    --seed "$3" --pairs 6 --queries 4 --keys 32 --values 31 > /dev/null
}
recall "$WORK/train" 128 1 || { fail "data synth (train)"; finish; }
recall "$WORK/eval" 40 2 || { fail "data synth (eval)"; finish; }

common=(--set data.dir="$WORK/train" --set data.eval_dir="$WORK/eval" --set train.steps=3
        --set train.eval_every=2 --set train.micro_batch=2 --set optim.ema_decay=0.9
        --set optim.eps=1e-4 --set parallel.collective_timeout_s=60)
metrics="val_loss val_bits_per_token val_accuracy"
# values RUN NAME: the evaluation records' NAME, one per line.
values() { grep -oE "\"$2\":[^,}]*" "$WORK/$1/metrics.jsonl" | cut -d: -f2; }

"$TESSERA" train --config "$TINY" --set train.run_dir="$WORK/single" "${common[@]}" \
  > "$WORK/single.log" 2>&1 || { fail "one process"; tail -20 "$WORK/single.log"; finish; }
if [ "$(grep -cE '^\{"step":[23],"eval_samples":26,' "$WORK/single/metrics.jsonl")" -eq 2 ]; then
  pass "evaluation records after steps 2 and 3, 26 windows each"
else
  fail "evaluation records"; cat "$WORK/single/metrics.jsonl"
fi
if grep -qE '^eval +3/3 \| val_loss [0-9.e+-]+ \| val_bits_per_token [0-9.e+-]+ \| val_accuracy [0-9.e+-]+ \| 26 held-out samples' "$WORK/single.log"; then
  pass "the log line: $(grep -E '^eval +3/3' "$WORK/single.log")"
else
  fail "no evaluation log line"; grep eval "$WORK/single.log"
fi
# bits = nats / ln 2, and the accuracy a share of the 26 x 32 / 21 answers.
paste <(values single val_loss) <(values single val_bits_per_token) <(values single val_accuracy) |
  awk '{ if ($1 <= 0 || ($2 - $1 / log(2)) ^ 2 > 1e-12 * $2 ^ 2 || $3 < 0 || $3 > 1) bad = 1; n++ }
       END { exit bad || n != 2 }' && pass "val_bits_per_token = val_loss / ln 2; 0 <= val_accuracy <= 1" ||
  fail "the metrics' relations: $(values single val_loss | tr '\n' ' ') / $(values single val_bits_per_token | tr '\n' ' ')"

layout() {  # NAME NP [--set ...]
  local name=$1 np=$2
  shift 2
  timeout 300 mpirun --oversubscribe --bind-to none -np "$np" "$TESSERA" train --config "$TINY" \
    --set train.run_dir="$WORK/$name" "${common[@]}" "$@" > "$WORK/$name.log" 2>&1 ||
    { fail "$name: mpirun exited $?"; tail -20 "$WORK/$name.log"; return; }
  local metric worst ok=1 summary=""
  for metric in $metrics; do
    if [ "$(values "$name" $metric | wc -l)" -ne 2 ]; then
      fail "$name: $(values "$name" $metric | wc -l) $metric records, expected 2"; ok=0; continue
    fi
    worst=$(paste <(values single $metric) <(values "$name" $metric) |
      awk '{ d = $1 - $2; if (d < 0) d = -d; a = $1 < 0 ? -$1 : $1; r = a > 0 ? d / a : d; if (r > w) w = r }
           END { printf "%.2g", w }')
    if awk -v w="$worst" 'BEGIN { exit !(w <= 1e-5) }'; then
      summary="$summary $metric $(values "$name" $metric | tail -1) (worst $worst)"
    else
      fail "$name: $metric differs from one process by $worst relative"
      paste <(values single $metric) <(values "$name" $metric); ok=0
    fi
  done
  [ $ok -eq 1 ] && pass "$name ($np ranks) matches one process:$summary"
}
layout dp2 2
layout tp2 2 --set parallel.tp=2
layout tp2_megatron_sp 2 --set parallel.tp=2 --set parallel.sequence_parallel=true
layout sp2 2 --set parallel.sp=2

# Bad held-out data: refused before the run directory exists.
refused() {  # NAME CODE PATTERN [--set ...]
  local name=$1 code=$2 pattern=$3
  shift 3
  expect_exit "$name" "$code" "$pattern" -- "$TESSERA" train --config "$TINY" \
    --set train.run_dir="$WORK/run_$name" "${common[@]}" "$@"
  [ -e "$WORK/run_$name" ] && fail "$name: the run directory was created" ||
    pass "$name: no run directory"
}
"$TESSERA" data synth --schema tokens --out "$WORK/markov" --samples 16 --vocab 64 > /dev/null ||
  fail "data synth (markov)"
refused eval_dir_other_task 2 'data\.eval_dir ".*markov": .*markov/manifest\.textproto has task "markov", but data\.dir' \
  --set data.eval_dir="$WORK/markov"
"$TESSERA" data synth --schema tokens --out "$WORK/vocab48" --samples 16 --vocab 48 > /dev/null ||
  fail "data synth (vocab 48)"
refused eval_dir_other_vocabulary 2 'data\.eval_dir ".*vocab48": .*has vocab_size 48, but data\.dir' \
  --set data.eval_dir="$WORK/vocab48" --set data.dir="$WORK/markov"
refused eval_dir_missing 3 'data\.eval_dir ".*nowhere": no manifest\.textproto' \
  --set data.eval_dir="$WORK/nowhere"
finish
