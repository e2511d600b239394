#!/usr/bin/env bash
# One epoch of HSTU on the dslabs MovieLens subset with the reference's ML-1M
# settings (configs/hstu_ml1m.textproto): seconds per epoch, and the share
# of it spent in the item table, the HSTU layers, the sampled softmax, the
# data, the rest of the step (optimizer, gradient averaging) and the
# full-ranking evaluation of the validation split once per epoch.
#
#   bench/hstu_epoch.sh [--tessera PATH] [--data DIR] [--epochs E] [--np N] [--set K=V]...
#
# --data: an interactions data set of the dslabs subset (default: made with
# scripts/movielens_dslabs.sh into /tmp/tessera_dslabs). The first step is
# not timed (it pays one-time costs); an epoch is users / global_batch steps.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TESSERA=$ROOT/build/bin/tessera
DATA=""
EPOCHS=2
NP=1
SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tessera) TESSERA=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --np) NP=$2; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
if [ -z "$DATA" ]; then
  [ -f /tmp/tessera_dslabs/data/manifest.textproto ] ||
    "$ROOT/scripts/movielens_dslabs.sh" /tmp/tessera_dslabs "$TESSERA" >/dev/null
  DATA=/tmp/tessera_dslabs/data
fi
# One sample per user; num_items is an attribute of the import.
users=$(sed -n 's/^num_samples: \([0-9][0-9]*\)$/\1/p' "$DATA/manifest.textproto" | head -1)
items=$(grep -A1 'key: "num_items"' "$DATA/manifest.textproto" | sed -n 's/.*value: "\([0-9]*\)".*/\1/p')
[ -n "$users" ] && [ -n "$items" ] || { echo "no num_samples/num_items in $DATA/manifest.textproto"; exit 1; }
batch=128
steps_per_epoch=$(awk -v u="$users" -v b="$batch" 'BEGIN { printf "%d", (u + b - 1) / b }')
steps=$((EPOCHS * steps_per_epoch + 1))

WORK=$(mktemp -d /tmp/bench_hstu.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
launcher=()
if [ "$NP" -gt 1 ]; then
  launcher=(mpirun -np "$NP" --oversubscribe --bind-to none)
  [ "$(id -u)" -eq 0 ] && launcher+=(--allow-run-as-root)
fi
"${launcher[@]}" "$TESSERA" train --config "$ROOT/configs/hstu_ml1m.textproto" \
  --set "data.dir=$DATA" --set "model.hstu.num_items=$items" --set "train.run_dir=$WORK/run" \
  --set "train.steps=$steps" --set train.log_every=1 --set "train.global_batch=$batch" \
  --set "data.eval_dir=$DATA" --set "train.eval_every=$steps_per_epoch" \
  --set train.eval_samples=0 --set checkpoint.every=0 --set train.progress=off \
  "${SETS[@]}" >"$WORK/log" 2>&1 || { tail -20 "$WORK/log"; exit 1; }

# Per timed step (all but the first): wall time from the logged rate, and
# the phases the HSTU task and the trainer report for it; per evaluation:
# its seconds.
awk -v batch="$batch" -v spe="$steps_per_epoch" -v users="$users" '
  function field(name,   m) {
    if (match($0, "\"" name "\":[-0-9.e+]+")) return substr($0, RSTART + length(name) + 3, RLENGTH - length(name) - 3)
    return ""
  }
  /"eval_seconds"/ { evals++; eval_s += field("eval_seconds"); next }
  /"samples_per_s"/ {
    if (field("step") + 0 == 1) next
    n++; step_s += batch / field("samples_per_s")
    data += field("data_seconds"); table += field("table_seconds") + field("sparse_step_seconds")
    layers += field("layers_seconds"); loss += field("loss_seconds")
  }
  END {
    if (n == 0 || evals == 0) { print "no timed steps or evaluations in metrics.jsonl"; exit 1 }
    s = step_s / n; e = eval_s / evals
    epoch = spe * s + e
    rest = s - (data + table + layers + loss) / n
    printf "HSTU, %d users (%d steps of %d per epoch), %d timed steps, %d evaluations\n", users, spe, batch, n, evals
    printf "epoch %.2f s = %d steps x %.3f s + evaluation %.2f s\n", epoch, spe, s, e
    printf "share of the epoch: table %.1f%% (lookups and gradients %.3f s/step incl. its sparse update), layers %.1f%% (%.3f s/step), sampled softmax %.1f%% (%.3f s/step), data %.1f%% (%.3f s/step), rest of the step %.1f%% (%.3f s/step), evaluation %.1f%%\n",
      100 * spe * table / n / epoch, table / n, 100 * spe * layers / n / epoch, layers / n,
      100 * spe * loss / n / epoch, loss / n, 100 * spe * data / n / epoch, data / n,
      100 * spe * rest / epoch, rest, 100 * e / epoch
  }' "$WORK/run/metrics.jsonl"
