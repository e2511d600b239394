# Shared helpers for the end-to-end tests: sourced, not run. Each test gets
# the tessera binary as $1 and the source root as $2.
set -uo pipefail
TESSERA=$1
SOURCE=$2
WORK=$(mktemp -d /tmp/tessera_e2e.XXXXXX)
# Open MPI refuses to start as root without these (CI containers run as
# root); set here so that ctest alone, outside scripts/test.sh, runs them.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
trap 'rm -rf "$WORK"' EXIT
failures=0

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# expect_exit NAME CODE PATTERN -- command...: runs the command, checks its
# exit code and that stderr matches PATTERN (grep -E).
expect_exit() {
  local name=$1 code=$2 pattern=$3
  shift 4
  "$@" > "$WORK/out.txt" 2> "$WORK/err.txt"
  local got=$?
  if [ "$got" -ne "$code" ]; then
    fail "$name: exit $got, expected $code; stderr: $(cat "$WORK/err.txt")"
  elif ! grep -qE -e "$pattern" "$WORK/err.txt"; then
    fail "$name: stderr does not match /$pattern/: $(cat "$WORK/err.txt")"
  else
    pass "$name (exit $code: $(head -c 200 "$WORK/err.txt"))"
  fi
}

# Synthetic 8x8 images for the tiny config.
make_data() {
  "$TESSERA" data synth --schema images --out "$1" --samples 96 --size 8 --classes 10 \
    --seed 1 --shard-size 48 > /dev/null || { echo "FAIL: data synth"; exit 1; }
}

tiny() {  # tiny RUN_DIR DATA_DIR [--set ...]
  local run_dir=$1 data_dir=$2
  shift 2
  "$TESSERA" train --config "$SOURCE/configs/dit_moe_tiny.textproto" \
    --set train.run_dir="$run_dir" --set data.dir="$data_dir" "$@"
}

# The losses a run logged, one per line.
losses() { grep -oE '"loss":[^,]*' "$1/metrics.jsonl" | cut -d: -f2; }

# Layout oracles (data_parallel.sh, model_parallel.sh). With the array
# `common` (--set ... for every run) and the one-process baseline trained
# into $WORK/single on $WORK/data:
#   mpi_tiny NAME NP [--set ...]     the tiny config under mpirun into $WORK/NAME
#   run_layout NAME NP [--set ...]   that, then its losses (relative 1e-5,
#                                    $steps of them) and final weights
#                                    (h5diff -d 1e-6) against the baseline
mpi_tiny() {
  local name=$1 np=$2
  shift 2
  timeout 300 mpirun --oversubscribe --bind-to none -np "$np" "$TESSERA" train \
    --config "$SOURCE/configs/dit_moe_tiny.textproto" --set train.run_dir="$WORK/$name" \
    --set data.dir="$WORK/data" "${common[@]}" "$@" > "$WORK/$name.log" 2>&1
}
run_layout() {
  local name=$1 np=$2
  mpi_tiny "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then fail "$name: mpirun exited $rc"; tail -20 "$WORK/$name.log"; return; fi
  if paste <(losses "$WORK/single") <(losses "$WORK/$name") |
      awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * ($1 < 0 ? -$1 : $1)) bad = 1 } END { exit bad }' \
      && [ "$(losses "$WORK/$name" | wc -l)" -eq "$steps" ]; then
    pass "$name ($np ranks): the $steps losses match one process ($(losses "$WORK/$name" | tail -1))"
  else
    fail "$name: losses differ"; paste <(losses "$WORK/single") <(losses "$WORK/$name")
  fi
  if h5diff -d 1e-6 "$WORK/single/weights.h5" "$WORK/$name/weights.h5" > "$WORK/$name.diff" 2>&1; then
    pass "$name: final parameters match one process (h5diff -d 1e-6)"
  else
    fail "$name: final parameters differ"; head "$WORK/$name.diff"
  fi
}

finish() {
  if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed"; exit 1; fi
  echo "all checks passed"
}
