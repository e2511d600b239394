#!/usr/bin/env bash
# The libFuzzer targets (fuzz/, docs/reliability.md "Fuzzing") for 30 s each:
# built with clang 14, ASan and UBSan in a build directory of their own
# (scripts/fuzz.sh), each target first replays its checked-in corpus
# (fuzz/corpus/TARGET: the seeds and every input that once crashed), then
# mutates it. Any crash, leak, sanitizer report, timeout or out-of-memory
# fails the test and leaves the input under the build directory's artifacts/.
#
# FUZZ_SMOKE_SECONDS (default 30) sets the time per target. Skipped (exit 0,
# "skip:" line) when clang-14 or its libFuzzer runtime is missing.
source "$(dirname "$0")/lib.sh"
seconds=${FUZZ_SMOKE_SECONDS:-30}
build=${TESSERA_FUZZ_BUILD_DIR:-$(dirname "$TESSERA")/../fuzz-smoke}
export TESSERA_FUZZ_BUILD_DIR=$build

if ! command -v clang++-14 > /dev/null ||
    ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
      clang++-14 -x c++ -fsanitize=fuzzer,address,undefined - -o "$WORK/probe" 2> "$WORK/probe.log"; then
  echo "skip: clang-14 with libFuzzer is not installed (scripts/setup.sh installs clang-14 and libclang-rt-14-dev)"
  exit 0
fi

start=$SECONDS
if bash "$SOURCE/scripts/fuzz.sh" --build-only > "$WORK/build.log" 2>&1; then
  pass "fuzz targets built in $((SECONDS - start)) s ($build)"
else
  fail "fuzz targets did not build"; tail -20 "$WORK/build.log"; finish
fi

for target in config_loader data_shard checkpoint_manifest idx_importer text_importer; do
  bash "$SOURCE/scripts/fuzz.sh" "$target" "$seconds" > "$WORK/$target.log" 2>&1
  rc=$?
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$WORK/$target.log" | grep -oE '[0-9]+$')
  cov=$(grep -oE '(DONE|#[0-9]+) +cov: [0-9]+ ft: [0-9]+' "$WORK/$target.log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+')
  if [ $rc -eq 0 ]; then
    pass "$target: ${seconds} s, ${runs:-?} inputs, ${cov:-no coverage line}, no crash, leak or sanitizer report"
  else
    fail "$target: exit $rc"
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$WORK/$target.log" | head -8
  fi
done
finish
