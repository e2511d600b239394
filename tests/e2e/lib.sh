# Shared helpers for the end-to-end tests: sourced, not run. Each test gets
# the tessera binary as $1 and the source root as $2.
set -uo pipefail
TESSERA=$1
SOURCE=$2
WORK=$(mktemp -d /tmp/tessera_e2e.XXXXXX)
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

finish() {
  if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed"; exit 1; fi
  echo "all checks passed"
}
