#!/usr/bin/env bash
# train.precision=bf16: the tiny DiT-MoE trains with bf16 GEMMs (fp32
# accumulation, fp32 master weights and optimizer state). Its losses differ
# from the fp32 run's (the rounding is real) but follow the same curve within
# the tolerance docs/precision.md documents, and what it saves stays fp32.
# On a CPU whose oneDNN has no bf16 matmul, the run must instead be refused
# with exit 2 naming train.precision.
source "$(dirname "$0")/lib.sh"
make_data "$WORK/data"
steps=60
common=(--set train.steps=$steps --set checkpoint.every=$steps)
tiny "$WORK/fp32" "$WORK/data" "${common[@]}" > "$WORK/fp32.log" 2>&1 || fail "fp32 run failed"
tiny "$WORK/bf16" "$WORK/data" "${common[@]}" --set train.precision=bf16 > "$WORK/bf16.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "train.precision=bf16" "$WORK/bf16.log"; then
  pass "bf16 refused on this CPU with exit 2: $(grep -m1 'train.precision' "$WORK/bf16.log")"
  finish
  exit 0
fi
[ $rc -eq 0 ] || { fail "bf16 run exited $rc"; tail -20 "$WORK/bf16.log"; finish; }

if [ "$(losses "$WORK/bf16" | wc -l)" -ne $steps ]; then fail "bf16: expected $steps losses"; fi
if diff <(losses "$WORK/fp32") <(losses "$WORK/bf16") > /dev/null; then
  fail "bf16 losses are identical to fp32: the GEMMs did not run in bf16"
else
  pass "bf16 losses differ from fp32 (the rounding is real)"
fi
# Same curve: every step within 2 % relative, the mean of the last 20 steps within 0.5 %.
paste <(losses "$WORK/fp32") <(losses "$WORK/bf16") | awk -v steps=$steps '
  { d = ($2 - $1) / $1; if (d < 0) d = -d; if (d > worst) worst = d
    if (NR > steps - 20) { a += $1; b += $2 } }
  END { tail = (b - a) / a; if (tail < 0) tail = -tail
        printf "worst step %.4f, last-20 mean %.4f\n", worst, tail
        exit !(worst <= 0.02 && tail <= 0.005) }' > "$WORK/cmp.txt"
if [ $? -eq 0 ]; then
  pass "bf16 follows the fp32 curve: $(cat "$WORK/cmp.txt")"
else
  fail "bf16 leaves the fp32 curve: $(cat "$WORK/cmp.txt")"
  paste <(losses "$WORK/fp32") <(losses "$WORK/bf16") | tail -5
fi
# Masters stay fp32: the final weights and the checkpoint's pieces are float32.
for f in "$WORK/bf16/weights.h5" $(find "$WORK/bf16/checkpoints" -name '*.h5' | head -1); do
  types=$(h5dump -H "$f" | grep -E '^ *DATATYPE' | sort -u)
  if grep -q "H5T_IEEE_F32LE" <<< "$types" && ! grep -qE "16|H5T_FLOAT" <<< "$types"; then
    pass "$(basename "$f") holds fp32 values"
  else
    fail "$f does not hold fp32 values"
  fi
done
# The fp32 masters let a bf16 run continue in fp32 (and back).
tiny "$WORK/bf16" "$WORK/data" --set train.steps=$((steps + 5)) --set checkpoint.resume=latest \
  > "$WORK/resume.log" 2>&1
if [ $? -eq 0 ] && [ "$(losses "$WORK/bf16" | wc -l)" -ge $((steps + 5)) ]; then
  pass "the bf16 run's checkpoint resumes in fp32 ($(losses "$WORK/bf16" | tail -1))"
else
  fail "resuming the bf16 checkpoint in fp32 failed"; tail -5 "$WORK/resume.log"
fi
finish
