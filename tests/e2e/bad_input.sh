#!/usr/bin/env bash
# Bad input of every kind ends with a message naming the problem, the
# documented exit code, and no damaged output directory.
source "$(dirname "$0")/lib.sh"
make_data "$WORK/data"

printf 'train { steps: }\n' > "$WORK/malformed.textproto"
expect_exit "malformed textproto" 2 "malformed.textproto:1:" -- \
  "$TESSERA" train --config "$WORK/malformed.textproto"

printf 'dit_moe { }\ntrain { stepz: 3 }\n' > "$WORK/unknown.textproto"
expect_exit "unknown field" 2 "stepz" -- "$TESSERA" train --config "$WORK/unknown.textproto"

expect_exit "missing config file" 2 "no_such.textproto" -- \
  "$TESSERA" train --config "$WORK/no_such.textproto"

expect_exit "invalid value" 2 "num_heads=5 must divide" -- \
  tiny "$WORK/run_invalid" "$WORK/data" --set model.dit_moe.num_heads=5
[ -e "$WORK/run_invalid" ] && fail "invalid value created the run directory" || pass "no run directory after a config error"

expect_exit "unknown precision" 2 'train.precision="fp16" must be fp32 or bf16' -- \
  tiny "$WORK/run_precision" "$WORK/data" --set train.precision=fp16

expect_exit "unknown override" 2 "train.stepz" -- \
  tiny "$WORK/run_override" "$WORK/data" --set train.stepz=3

expect_exit "unknown option" 2 "--bogus" -- "$TESSERA" train --bogus

expect_exit "missing data directory" 3 "$WORK/nowhere" -- \
  tiny "$WORK/run_missing" "$WORK/nowhere"
[ -e "$WORK/run_missing" ] && fail "missing data created the run directory" || pass "no run directory after a data error"

cp -r "$WORK/data" "$WORK/truncated"
shard=$(ls "$WORK/truncated"/*.h5 | head -1)
truncate -s 3000 "$shard"
expect_exit "truncated shard" 3 "$(basename "$shard")" -- tiny "$WORK/run_truncated" "$WORK/truncated"
expect_exit "truncated shard (verify)" 3 "$(basename "$shard")" -- "$TESSERA" data verify "$WORK/truncated"

# A valid HDF5 file of another kind (a weights file) in place of a shard.
tiny "$WORK/run_ok" "$WORK/data" --set train.steps=1 --set model.dit_moe.sample_grid_per_class=0 > /dev/null 2>&1 \
  || fail "a 1-step tiny run failed"
cp -r "$WORK/data" "$WORK/wrong_schema"
shard=$(ls "$WORK/wrong_schema"/*.h5 | head -1)
cp "$WORK/run_ok/weights.h5" "$shard"
# Keep the manifest consistent with the new file, so the schema check itself is reached.
bytes=$(stat -c %s "$shard")
crc=$(gzip -c "$shard" | tail -c8 | od -An -tx4 -N4 | tr -d ' ')
sed -i "0,/bytes: [0-9]*/s//bytes: $bytes/; 0,/checksum: \"crc32:[0-9a-f]*\"/s//checksum: \"crc32:$crc\"/" \
  "$WORK/wrong_schema/manifest.textproto"
expect_exit "shard with the wrong schema" 3 "schema.*$(basename "$shard")|$(basename "$shard").*schema" -- tiny "$WORK/run_schema" "$WORK/wrong_schema"

expect_exit "NaN loss" 6 "training diverged" -- \
  tiny "$WORK/run_nan" "$WORK/data" --set optim.lr=1e30 --set optim.grad_clip=0 --set train.steps=20
[ -f "$WORK/run_nan/config.textproto" ] && pass "diverged run kept its config" || fail "diverged run lost its config"

expect_exit "resume from a checkpoint that does not exist" 4 "$WORK/no_checkpoint" -- \
  tiny "$WORK/run_resume" "$WORK/data" --set checkpoint.resume="$WORK/no_checkpoint"
finish
