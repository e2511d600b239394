#!/usr/bin/env bash
# Installs packages, builds everything (CUDA sources too when the toolkit is
# present) and runs the whole test suite with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Open MPI refuses root without these; the distributed tests run as root in CI.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd build
ctest --output-on-failure -j2 --timeout 1200 "$@"
