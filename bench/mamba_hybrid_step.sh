#!/usr/bin/env bash
# Training steps of the ~125M Mamba-2 hybrid (configs/mamba_hybrid_125m.textproto)
# on generated tokens: tokens/s and the model FLOP rate as a fraction of the
# same run's GEMM peak (the scan's and the conv's FLOPs counted, docs/mamba.md),
# averaged over the steps after the first.
#
#   bench/mamba_hybrid_step.sh [--tessera PATH] [--steps S] [--np N] [--set K=V]...
#
# --np N runs under `mpirun -np N` (add --set parallel.sp=N, parallel.tp=N, ...
# for a layout); every --set goes to `tessera train`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TESSERA=$ROOT/build/bin/tessera
STEPS=4
NP=1
SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tessera) TESSERA=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --np) NP=$2; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
[ "$STEPS" -ge 2 ] || { echo "--steps must be at least 2 (the first step is not timed)"; exit 2; }

WORK=$(mktemp -d /tmp/bench_mamba.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
"$TESSERA" data synth --schema tokens --out "$WORK/data" --samples 256 --vocab 257 \
  --min-length 512 --max-length 4096 >/dev/null

launcher=()
if [ "$NP" -gt 1 ]; then
  launcher=(mpirun -np "$NP" --oversubscribe --bind-to none)
  [ "$(id -u)" -eq 0 ] && launcher+=(--allow-run-as-root)
fi
"${launcher[@]}" "$TESSERA" train --config "$ROOT/configs/mamba_hybrid_125m.textproto" \
  --set "data.dir=$WORK/data" --set "train.run_dir=$WORK/run" --set "train.steps=$STEPS" \
  --set checkpoint.every=0 "${SETS[@]}" >"$WORK/log" 2>&1 || { tail -20 "$WORK/log"; exit 1; }

grep -m1 '^tessera train:' "$WORK/log"
grep -m1 '^gemm peak' "$WORK/log"
# Steps after the first: mean of step time, tokens/s and the peak fraction.
batch=$(grep -m1 -o 'global batch [0-9]*' "$WORK/log" | awk '{print $3}')
grep '"step"' "$WORK/run/metrics.jsonl" | awk -v np="$NP" -v batch="$batch" '
  function field(name,   m) {
    if (match($0, "\"" name "\":[-0-9.e+]+")) return substr($0, RSTART + length(name) + 3, RLENGTH - length(name) - 3)
    return 0
  }
  NR > 1 { n++; t += field("tokens_per_s"); p += field("peak_fraction"); s += batch / field("samples_per_s") }
  END {
    if (n == 0) { print "no timed steps"; exit 1 }
    printf "steps timed: %d | step %.2f s | %.0f tokens/s | %.1f%% of the GEMM peak (%d process%s)\n",
      n, s / n, t / n, 100 * p / n, np, (np > 1 ? "es" : "")
  }'
