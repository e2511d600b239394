#!/usr/bin/env bash
# Nothing trusted unchecked (issue 15): checkpoints whose manifest and
# directory disagree, sizes past their limits, writes that fail, signals
# during start-up. Each case: the documented exit code and message, and
# nothing lost (committed checkpoints stay where they are).
source "$(dirname "$0")/lib.sh"
make_data "$WORK/data"
PROTO_DIR="$SOURCE/runtime/checkpoint"

# Rewrites a checkpoint's manifest.pb with one field changed (sed on the text form).
edit_manifest() {  # edit_manifest CKPT_DIR SED_EXPRESSION
  protoc -I "$PROTO_DIR" --decode=tessera.CheckpointManifest manifest.proto < "$1/manifest.pb" |
    sed -E "$2" |
    protoc -I "$PROTO_DIR" --encode=tessera.CheckpointManifest manifest.proto > "$1/manifest.pb.new" &&
    mv "$1/manifest.pb.new" "$1/manifest.pb"
}

# --- A checkpoint is what its manifest and directory both say ---
tiny "$WORK/run" "$WORK/data" --set train.steps=10 --set checkpoint.every=5 \
  --set model.dit_moe.sample_grid_per_class=0 > /dev/null 2>&1 || fail "a 10-step tiny run failed"
ckpt="$WORK/run/checkpoints/step_00000010"
cp -r "$WORK/run" "$WORK/pristine"

edit_manifest "$ckpt" 's/^step: 10$/step: 3/; s/step=10"/step=3"/'
expect_exit "ckpt verify: manifest step 3 in step_00000010" 4 "manifest step 3 differs from the directory's step 10" -- \
  "$TESSERA" ckpt verify "$ckpt"
expect_exit "train --resume: manifest step 3 in step_00000010" 4 "manifest step 3 differs" -- \
  tiny "$WORK/run" "$WORK/data" --set train.steps=10 --set checkpoint.every=5 --resume
[ -d "$ckpt" ] && [ -d "$WORK/run/checkpoints/step_00000005" ] &&
  [ -z "$(ls -d "$WORK"/run/checkpoints/*.superseded 2>/dev/null)" ] &&
  pass "no committed checkpoint moved aside" || fail "a resume moved checkpoints: $(ls "$WORK/run/checkpoints")"
out=$(tiny "$WORK/run" "$WORK/data" --set train.steps=10 --set checkpoint.every=5 \
  --set checkpoint.fallback=true --resume 2>&1); rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q "step_00000005: step 5 done" && [ -d "$ckpt.superseded" ]; then
  pass "checkpoint.fallback resumes from step 5 past the inconsistent step 10"
else
  fail "fallback past an inconsistent manifest: exit $rc: $(echo "$out" | tail -3)"
fi

rm -rf "$WORK/run" && cp -r "$WORK/pristine" "$WORK/run"
edit_manifest "$ckpt" 's/^step: 10$/step: -5/'
expect_exit "ckpt verify: step -5" 4 "manifest step -5 is negative" -- "$TESSERA" ckpt verify "$ckpt"
expect_exit "train --resume: step -5" 4 "manifest step -5 is negative" -- \
  tiny "$WORK/run" "$WORK/data" --set train.steps=10 --resume

rm -rf "$WORK/run" && cp -r "$WORK/pristine" "$WORK/run"
edit_manifest "$ckpt" 's/^sampler_position: .*/sampler_position: 9223372036854775807/'
expect_exit "ckpt verify: sampler_position 2^63-1" 4 "sampler_position 9223372036854775807" -- \
  "$TESSERA" ckpt verify "$ckpt"

rm -rf "$WORK/run" && cp -r "$WORK/pristine" "$WORK/run"
edit_manifest "$ckpt" 's/^num_ranks: .*/num_ranks: 2000000000/'
expect_exit "ckpt verify: num_ranks 2e9 (at once)" 4 "num_ranks 2000000000 is outside" -- \
  timeout 10 "$TESSERA" ckpt verify "$ckpt"

rm -rf "$WORK/run" && cp -r "$WORK/pristine" "$WORK/run"
edit_manifest "$ckpt" '0,/^  global_shape: .*/s//  global_shape: 4294967296\n  global_shape: 4294967296\n  global_shape: 4294967296/'
for sub in stats verify "export --out $WORK/out.h5"; do
  expect_exit "ckpt $sub: global shape [2^32, 2^32, 2^32]" 4 "more elements than int64 holds" -- \
    "$TESSERA" ckpt $sub "$ckpt"
done
rm -rf "$WORK/run" && cp -r "$WORK/pristine" "$WORK/run"
edit_manifest "$ckpt" '0,/^  global_shape: ([0-9]+)$/s//  global_shape: 1099511627776/'
for sub in stats verify "export --out $WORK/out.h5"; do
  expect_exit "ckpt $sub: a 4 TiB tensor next to kilobytes" 4 "more than the [0-9]+ bytes all its rank files hold|box leaves" -- \
    "$TESSERA" ckpt $sub "$ckpt"
done

rm -rf "$WORK/run" && cp -r "$WORK/pristine" "$WORK/run"
mkdir -p "$WORK/run/checkpoints/step_-0000010" "$WORK/run/checkpoints/step_99999999999999999999999"
"$TESSERA" ckpt list "$WORK/run" > "$WORK/list.txt"
if grep -qE '^- +step_-0000010 +unparseable' "$WORK/list.txt" &&
   grep -qE '^- +step_99999999999999999999999 +unparseable' "$WORK/list.txt" &&
   grep -qE '^10 +step_00000010 +committed .*latest' "$WORK/list.txt"; then
  pass "ckpt list: names that do not parse are listed as unparseable"
else
  fail "ckpt list: $(cat "$WORK/list.txt")"
fi

# --- Sizes trusted before allocation ---
for case in "train.global_batch=1000000000000:train.global_batch=1000000000000 must be <= 16777216" \
            "model.dit_moe.hidden_size=1000000000:hidden_size=1000000000 must be <= 65536" \
            "model.dit_moe.input_size=65536:input_size=65536 must be <= 4096" \
            "model.dit_moe.frequency_embedding_size=2000000000:frequency_embedding_size=2000000000 must be <=" \
            "model.dit_moe.num_classes=2000000000:num_classes=2000000000 must be <=" \
            "model.dit_moe.moe.expert_hidden=2000000000:expert_hidden=2000000000 .* must be <= 1048576" \
            "model.dit_moe.depth=1000000000:depth=1000000000 must be <= 1024" \
            "model.dit_moe.moe.num_experts=1000000000:num_experts=1000000000 must be <= 4096" \
            "train.threads=100000:train.threads=100000 must be <= 1024" \
            "data.prefetch=2000000000:data.prefetch=2000000000 must be <= 64"; do
  set_arg=${case%%:*} pattern=${case#*:}
  expect_exit "config $set_arg" 2 "$pattern" -- tiny "$WORK/big" "$WORK/data" --set "$set_arg"
done
head -c 2000000 /dev/zero | tr '\0' 'x' > "$WORK/long_dir"
printf 'dit_moe { }\ntrain { run_dir: "%s" }\n' "$(cat "$WORK/long_dir")" > "$WORK/long.textproto"
expect_exit "a 2 MB config (run_dir string)" 2 "larger than 1 MiB" -- "$TESSERA" train --config "$WORK/long.textproto"
expect_exit "memory plan larger than the machine" 2 "cannot fit in memory.*largest term: parameters, gradients and optimizer state .*hidden_size 65536" -- \
  tiny "$WORK/big" "$WORK/data" --set model.dit_moe.hidden_size=65536 \
  --set model.dit_moe.depth=1024 --set model.dit_moe.num_heads=64
expect_exit "train: stray positional argument" 2 "unexpected argument \"extra\"" -- \
  tiny "$WORK/big" "$WORK/data" extra
[ -e "$WORK/big" ] && fail "a refused config created the run directory" || pass "no run directory after the size errors"

tiny "$WORK/sampled" "$WORK/data" --set train.steps=2 --set model.dit_moe.sample_grid_per_class=0 > /dev/null 2>&1 ||
  fail "a 2-step tiny run failed"
for case in "--per-class 100000000000:--per-class=100000000000 must be in \\[1, 1024\\]" \
            "--steps 4294967297:--steps=4294967297 must be in \\[1, 100000\\]" \
            "--threads -3:--threads=-3 must be in \\[0, 1024\\]" \
            "--cfg nan:--cfg=nan is not a finite number" \
            "stray:unexpected argument \"stray\"" \
            "--out $WORK/no/such/dir/x.png:folder $WORK/no/such/dir does not exist"; do
  expect_exit "sample ${case%%:*}" 2 "${case#*:}" -- "$TESSERA" sample --run "$WORK/sampled" ${case%%:*}
done
cp -r "$WORK/sampled" "$WORK/absurd"
sed -i -E 's/^  hidden_size: .*/  hidden_size: 1000000000/' "$WORK/absurd/config.textproto"
expect_exit "sample: an absurd config.textproto" 2 "hidden_size=1000000000 must be <= 65536" -- \
  "$TESSERA" sample --run "$WORK/absurd"

# --- Every write is checked ---
# Under the limit, stderr goes through a pipe (a file would be limited too).
limited() {  # limited BLOCKS COMMAND...
  local blocks=$1
  shift
  bash -o pipefail -c "( ulimit -f $blocks; exec \"\$0\" \"\$@\" ) 2>&1 >/dev/null | cat >&2" "$@"
}
expect_exit "ulimit -f 0: config.textproto" 2 "cannot write .*config.textproto" -- \
  limited 0 "$TESSERA" train \
  --config "$SOURCE/configs/dit_moe_tiny.textproto" --set train.run_dir="$WORK/full0" --set data.dir="$WORK/data"
expect_exit "ulimit -f 0: sample grid" 2 "cannot write .*samples.png" -- \
  limited 0 "$TESSERA" sample --run "$WORK/sampled" --out "$WORK/samples.png"
limited 100 "$TESSERA" train --config "$SOURCE/configs/dit_moe_tiny.textproto" \
  --set train.run_dir="$WORK/full100" --set data.dir="$WORK/data" --set train.steps=5 \
  --set checkpoint.every=5 2> "$WORK/full100.err"; rc=$?
if [ $rc -eq 4 ] && ! grep -q "HDF5-DIAG" "$WORK/full100.err" && [ "$(grep -c . "$WORK/full100.err")" -le 2 ]; then
  pass "ulimit -f 100: exit 4 with one line, no HDF5 stack ($(head -c 160 "$WORK/full100.err"))"
else
  fail "ulimit -f 100: exit $rc, $(grep -c HDF5-DIAG "$WORK/full100.err") HDF5-DIAG lines: $(tail -2 "$WORK/full100.err")"
fi

# --- Signals honoured from the first instruction ---
# The config is a FIFO nobody writes: tessera waits in open(2), in start-up.
for sig in TERM:75:SIGTERM INT:130:SIGINT; do
  name=${sig%%:*} code=$(echo "$sig" | cut -d: -f2) label=${sig##*:}
  rm -f "$WORK/fifo" && mkfifo "$WORK/fifo"
  "$TESSERA" train --config "$WORK/fifo" 2> "$WORK/sig.err" & pid=$!
  # A background job of a script starts with SIGINT ignored: signal only once
  # tessera catches it (SigCgt), or a loaded machine loses the signal and the
  # run waits on the FIFO forever.
  signum=$(kill -l "$name")
  for _ in $(seq 300); do
    caught=$(awk '/^SigCgt:/ { print $2 }' "/proc/$pid/status" 2> /dev/null)
    [ -n "$caught" ] && (( (16#$caught >> (signum - 1)) & 1 )) && break
    sleep 0.1
  done
  sleep 0.2; kill -"$name" $pid; wait $pid; rc=$?
  if [ $rc -eq "$code" ] && grep -q "$label) during start-up: nothing to save yet\|$label during start-up: nothing to save yet" "$WORK/sig.err"; then
    pass "$label during start-up: exit $code, nothing to save yet"
  else
    fail "$label during start-up: exit $rc: $(cat "$WORK/sig.err")"
  fi
done

# --- Ranks agree (MPMD: rank 1 runs other train.steps) ---
printf '%s\n' '#!/usr/bin/env bash' 'steps=20; [ "$OMPI_COMM_WORLD_RANK" = 1 ] && steps=30' \
  'exec "$@" --set train.steps=$steps' > "$WORK/mpmd.sh"
OMP_NUM_THREADS=1 timeout 120 mpirun --oversubscribe --bind-to none -np 2 bash "$WORK/mpmd.sh" \
  "$TESSERA" train --config "$SOURCE/configs/dit_moe_tiny.textproto" --set train.run_dir="$WORK/mpmd" \
  --set data.dir="$WORK/data" > "$WORK/mpmd.log" 2>&1
rc=$?
# At least one rank names it: mpirun may end the job before the other prints.
if [ $rc -eq 2 ] && grep -q "rank 0 has train.steps = 20, rank 1 has train.steps = 30" "$WORK/mpmd.log" &&
   [ ! -e "$WORK/mpmd" ]; then
  pass "ranks with different train.steps: exit 2 naming the field and both values, nothing written"
else
  fail "ranks with different configs: exit $rc: $(grep error "$WORK/mpmd.log" | head -2)"
fi

# --- A resume moves aside only genuinely newer committed checkpoints ---
rm -rf "$WORK/run" && cp -r "$WORK/pristine" "$WORK/run"
mkdir -p "$WORK/run/checkpoints/step_00000099" "$WORK/run/checkpoints/step_99999999999999999999999"
tiny "$WORK/run" "$WORK/data" --set train.steps=10 --set checkpoint.every=5 \
  --set model.dit_moe.sample_grid_per_class=0 \
  --set checkpoint.resume="$WORK/run/checkpoints/step_00000005" > "$WORK/resume5.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && [ -d "$WORK/run/checkpoints/step_00000010.superseded" ] &&
   [ -d "$WORK/run/checkpoints/step_00000099" ] &&
   [ -d "$WORK/run/checkpoints/step_99999999999999999999999" ] &&
   [ -d "$WORK/run/checkpoints/step_00000005" ]; then
  pass "resume from step 5: committed step 10 moved aside; an uncommitted step_00000099 and an unparseable name left alone"
else
  fail "resume from step 5: exit $rc, checkpoints now: $(ls "$WORK/run/checkpoints" | tr '\n' ' ')"
fi

# --- A failed metrics.jsonl write stops the run at once ---
rm -rf "$WORK/full" && mkdir -p "$WORK/full" && ln -s /dev/full "$WORK/full/metrics.jsonl"
expect_exit "metrics.jsonl on a full disk (/dev/full)" 2 "cannot write $WORK/full/metrics.jsonl" -- \
  tiny "$WORK/full" "$WORK/data" --set train.steps=5 --set model.dit_moe.sample_grid_per_class=0

finish
