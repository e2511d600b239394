#!/usr/bin/env bash
# The quickstart: install packages, build, import Fashion-MNIST into HDF5
# shards, train the quickstart DiT-MoE on this CPU, and sample a grid of
# generated images per class to runs/quickstart/samples.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
if [ ! -f data/fashion-mnist/train/manifest.textproto ]; then
  build/bin/tessera data import-fashion-mnist --out data/fashion-mnist
fi
build/bin/tessera train --config configs/quickstart.textproto "$@"
