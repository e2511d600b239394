#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, CMake option TESSERA_FUZZ) with clang 14,
# ASan and UBSan in a build directory of their own, and runs one of them for
# SECONDS with its checked-in seed corpus (fuzz/corpus/TARGET).
#
#   scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]
#   scripts/fuzz.sh --build-only
#
# TARGET: config_loader | data_shard | checkpoint_manifest | idx_importer | text_importer.
# Build directory: $TESSERA_FUZZ_BUILD_DIR (default build-fuzz beside the
# source tree). New inputs the fuzzer finds go to <build>/corpus/TARGET (the
# checked-in seeds are only read); a crash, leak or sanitizer report leaves
# its input as <build>/artifacts/TARGET-crash-* and the script exits non-zero.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${TESSERA_FUZZ_BUILD_DIR:-$repo/build-fuzz}
targets=(config_loader data_shard checkpoint_manifest idx_importer text_importer)

usage() { echo "usage: $0 TARGET SECONDS [libFuzzer flags] | --build-only (TARGET: ${targets[*]})" >&2; exit 2; }
[ $# -ge 1 ] || usage

for tool in clang-14 clang++-14; do
  command -v "$tool" >/dev/null || { echo "fuzz: $tool not found (scripts/setup.sh installs it)" >&2; exit 2; }
done

if [ ! -f "$build/CMakeCache.txt" ]; then
  launcher=()
  if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  mkdir -p "$build"
  cmake -S "$repo" -B "$build" -DTESSERA_FUZZ=ON -DTESSERA_ENABLE_CUDA=OFF \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" "${launcher[@]}" >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log" >&2; echo "fuzz: configure failed" >&2; exit 1; }
fi
cmake --build "$build" -j"${TESSERA_FUZZ_JOBS:-2}" --target "${targets[@]/#/fuzz_}" >"$build/build.log" 2>&1 ||
  { grep -E -A3 'error|Error' "$build/build.log" | head -40 >&2; echo "fuzz: build failed ($build/build.log)" >&2; exit 1; }

[ "$1" = "--build-only" ] && exit 0
[ $# -ge 2 ] || usage
target=$1 seconds=$2
shift 2
[[ " ${targets[*]} " == *" $target "* ]] || usage
[[ "$seconds" =~ ^[0-9]+$ ]] || usage

corpus="$build/corpus/$target"
mkdir -p "$corpus" "$build/artifacts"
# Every input writes files: keep them off the disk when /dev/shm is there.
scratch=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo /tmp)/tessera-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
TMPDIR=$scratch ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$build/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
  -max_len=65536 -print_final_stats=1 -artifact_prefix="$build/artifacts/$target-" "$@" \
  "$corpus" "$repo/fuzz/corpus/$target"
