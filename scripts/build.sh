#!/usr/bin/env bash
# Configures and builds tessera into build/ (Release). CUDA sources are
# compiled when /usr/local/cuda is present. Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" > build.log 2>&1 || { cat build.log; exit 1; }
cmake --build build -j"$jobs" 2>&1 | tee -a build.log | grep -E "error|warning|Built target tessera$" || true
test "${PIPESTATUS[0]}" -eq 0
