#!/usr/bin/env bash
# Installs the Debian 12 packages tessera builds and runs with. Idempotent:
# skips apt entirely when everything is already installed. Needs root (or sudo).
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libabsl-dev libprotobuf-dev protobuf-compiler
  libhdf5-dev hdf5-tools
  libdnnl-dev
  libgtest-dev
  libopenmpi-dev openmpi-bin
  libpng-dev zlib1g-dev
  dataset-fashion-mnist
  python3            # tests: checking JSON output, flipping a byte in a file
  clang-14 libclang-rt-14-dev libomp-14-dev  # fuzz targets (scripts/fuzz.sh, e2e.fuzz_smoke): libFuzzer, ASan, UBSan
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
