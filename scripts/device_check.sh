#!/usr/bin/env bash
# The GPU checks of the CUDA backend in one call of at most 8 minutes on a
# machine with one NVIDIA GPU that has the CUDA toolkit but none of the
# libraries tessera links (Open MPI, HDF5, Abseil, protobuf, oneDNN, GTest).
# docs/cuda.md, "Checking a GPU machine", says how it is used.
#
#   scripts/device_check.sh prepare [BUILD_DIR]   here: build with CUDA, bundle the
#                                                 binaries and the libraries they need
#   scripts/device_check.sh run [BUNDLE]          there, from the repository root
#   DRY_RUN=1 scripts/device_check.sh run         here: everything up to the first GPU call
#
# BUILD_DIR defaults to build-cuda; the bundle is BUILD_DIR/device_bundle
# (build*/ is ignored by git: name it in the device call's `carry`).
#
# `run` does, each step under its own time limit:
#   1. every backend op test on CUDA (the same bodies as on the CPU, against
#      double-precision references: fp32 relative error <= 1e-5) and the CUDA
#      kernel tests against the CPU kernels;
#   2. the tiny DiT-MoE: 5 steps on the GPU against the same 5 steps on the
#      CPU, loss by loss: fp32 (relative difference <= 1e-4), and bf16 against
#      the CPU's bf16 run (<= 1e-2) and the CPU's fp32 run (<= 2e-2); the tiny
#      HSTU likewise in fp32 (its item table on the device, model.hstu.table_placement AUTO), with its
#      leave-one-out metrics at the end (absolute difference <= 1e-3); the
#      tiny Mamba-2 hybrid likewise in fp32 (losses and its held-out
#      evaluation after steps 2 and 4, relative difference <= 1e-4);
#   3. the NCCL communicator on a group of one GPU (MPI started as an isolated
#      singleton, so no mpirun is needed);
#   4. DiT-MoE-B/2 (fp32 and bf16) and XL/2-8E2A (bf16) training steps on the
#      GPU: step time, tokens/s and the fraction of the GEMM rate (at the run's
#      precision) measured by the same run; and the fused attention's forward +
#      backward (bf16 tensor-core kernels, non-causal, head_dim 64 and 128,
#      S = 256, 1024, 4096) in TFLOP/s against the bf16 GEMM rate measured by
#      the same run (bench_attention --cuda);
# and prints one table last. Exit status: 0 when every check that ran passed.
set -uo pipefail

MODE=${1:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# ---- prepare (build machine) -------------------------------------------------

# Libraries the GPU image has or that must come from it (the driver, the CUDA
# toolkit, NCCL from its Python packages): never bundled.
is_system_lib() {
  case "$1" in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libpthread*|libdl.so*|librt.so*|libstdc++*|libgcc_s*) return 0 ;;
    libcuda.so*|libcudart*|libcublas*|libnccl*|libnvidia*) return 0 ;;
  esac
  return 1
}

bundle_libs_of() {  # binary dest
  ldd "$1" | awk '/=> \//{print $1, $3}' | while read -r name path; do
    is_system_lib "$name" && continue
    [ -e "$2/$name" ] || cp -L "$path" "$2/$name"
  done
}

prepare() {
  local build=${1:-$ROOT/build-cuda}
  local bundle=$build/device_bundle
  export CCACHE_BASEDIR=/work CCACHE_NOHASHDIR=1
  cmake -S "$ROOT" -B "$build" -DTESSERA_ENABLE_CUDA=ON -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
    -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache >/dev/null || return 1
  local targets="tessera runtime_backend_test runtime_kernels_cuda_test parallel_comm_nccl_test bench_attention"
  # shellcheck disable=SC2086
  cmake --build "$build" -j"${JOBS:-2}" --target $targets || return 1
  rm -rf "$bundle" && mkdir -p "$bundle/bin" "$bundle/lib"
  cp "$build/bin/tessera" "$build/tests/runtime_backend_test" \
    "$build/tests/runtime_kernels_cuda_test" "$build/tests/parallel_comm_nccl_test" \
    "$build/bench/bench_attention" "$bundle/bin/"
  for b in "$bundle"/bin/*; do bundle_libs_of "$b" "$bundle/lib"; done
  # Open MPI's components, relocated with OPAL_PREFIX (Debian's layout).
  local ompi=$bundle/ompi/lib/x86_64-linux-gnu/openmpi/lib
  mkdir -p "$ompi" "$bundle/ompi/share"
  cp -r /usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3 "$ompi/"
  cp -r /usr/share/openmpi "$bundle/ompi/share/"
  for c in "$ompi"/openmpi3/*.so; do bundle_libs_of "$c" "$bundle/lib"; done
  tar -C "$bundle" -czf "$bundle.tgz" bin lib ompi && rm -rf "$bundle" && mkdir -p "$bundle" &&
    mv "$bundle.tgz" "$bundle/bundle.tgz"
  echo "bundle: $bundle/bundle.tgz ($(du -h "$bundle/bundle.tgz" | cut -f1))"
  echo "device call: carry [\"${bundle#"$ROOT"/}\"], command: scripts/device_check.sh run ${bundle#"$ROOT"/}"
}

# ---- run (GPU machine) ---------------------------------------------------------

RESULTS=()
FAILED=0
result() { RESULTS+=("$(printf '%-44s %s' "$1" "$2")"); }
fail() { FAILED=1; result "$1" "FAIL: $2"; }

# The gtest summary of a log: "P passed, F failed, S skipped".
gtest_counts() {
  local passed failed skipped
  passed=$(grep -c '^\[       OK \]' "$1")
  failed=$(grep -c '^\[  FAILED  \].*(' "$1")
  skipped=$(grep -c '^\[  SKIPPED \].*(' "$1")
  echo "$passed passed, $failed failed, $skipped skipped"
}

unpack() {
  local bundle=$1
  WORK=$(mktemp -d /tmp/tessera_device_check.XXXXXX)
  tar -C "$WORK" -xzf "$bundle/bundle.tgz" || return 1
  BIN=$WORK/bin
  local nccl_dir=""
  if [ -z "${DRY_RUN:-}" ]; then
    # NCCL comes with PyTorch's pip packages on the GPU image.
    nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
  fi
  export LD_LIBRARY_PATH=$WORK/lib:${nccl_dir:+$nccl_dir:}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  export OPAL_PREFIX=$WORK/ompi OMPI_MCA_ess_singleton_isolated=1
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  local missing
  missing=$(for b in "$BIN"/*; do ldd "$b" | grep 'not found'; done | sort -u)
  if [ -n "$missing" ]; then
    echo "libraries not found:"; echo "$missing"; return 1
  fi
  echo "bundle unpacked in $WORK; every library resolves"
}

check_backend_ops() {
  local log=$WORK/backend_ops.log
  timeout 120 "$BIN/runtime_backend_test" --gtest_filter='*cuda*:BackendOpsOnCuda.*' >"$log" 2>&1
  local rc=$?
  local counts; counts=$(gtest_counts "$log")
  # A skipped BackendOpsOnCuda body means the CUDA bodies (bf16 included:
  # compute capability 8.0+) did not run.
  if [ $rc -ne 0 ] || grep -q '^\[  SKIPPED \] BackendOpsOnCuda.*(' "$log"; then
    fail "1 backend ops on CUDA vs references (fp32, bf16)" "$counts (rc $rc, $log)"
    grep -E '^\[  FAILED  \]|^\[  SKIPPED \]|Failure|error' "$log" | head -20
  else
    result "1 backend ops on CUDA vs references (fp32, bf16)" "PASS: $counts"
  fi
  log=$WORK/kernels.log
  timeout 120 "$BIN/runtime_kernels_cuda_test" >"$log" 2>&1
  rc=$?
  counts=$(gtest_counts "$log")
  if [ $rc -ne 0 ]; then fail "1 CUDA kernels vs CPU kernels" "$counts (rc $rc)"; else
    result "1 CUDA kernels vs CPU kernels" "PASS: $counts"; fi
}

# "loss" values of metrics.jsonl, one per line.
losses() { grep -o '"loss":[^,]*' "$1" | cut -d: -f2; }

# The largest relative difference between two runs' losses, step by step.
worst_relative() {  # metrics_a metrics_b
  paste <(losses "$1") <(losses "$2") |
    awk '{d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > w) w = r} END {printf "%.2e", w}'
}

# A training run on the CPU and the same on the GPU, into $WORK/PREFIX_cpu
# and $WORK/PREFIX_gpu (logs beside them); fails the check NAME and returns 1
# when either run fails.
cpu_and_gpu() {  # name prefix tessera-train-arguments...
  local name=$1 prefix=$2 device
  shift 2
  for device in cpu gpu; do
    timeout 120 "$BIN/tessera" train "$@" --set "train.device=${device/gpu/cuda}" \
      --set "train.run_dir=$WORK/${prefix}_$device" >"$WORK/${prefix}_$device.log" 2>&1 ||
      { fail "$name" "$device run failed: $(tail -2 "$WORK/${prefix}_$device.log" | cut -c1-120)"
        return 1; }
  done
}

check_tiny_oracle() {
  local data=$WORK/tiny_data
  "$BIN/tessera" data synth --schema images --out "$data" --samples 256 --channels 1 --size 8 \
    >/dev/null || { fail "2 DiT-MoE tiny oracle" "data synth failed"; return; }
  local common=(--config "$ROOT/configs/dit_moe_tiny.textproto" --set "data.dir=$data"
    --set train.steps=5 --set model.dit_moe.sample_grid_per_class=0)
  cpu_and_gpu "2 DiT-MoE tiny oracle fp32, 5 steps" tiny "${common[@]}" || return
  local worst
  worst=$(worst_relative "$WORK/tiny_cpu/metrics.jsonl" "$WORK/tiny_gpu/metrics.jsonl")
  if awk -v w="$worst" 'BEGIN {exit !(w <= 1e-4)}'; then
    result "2 DiT-MoE tiny oracle fp32, 5 steps" "PASS: max relative loss difference $worst (<= 1e-4)"
  else
    fail "2 DiT-MoE tiny oracle fp32, 5 steps" "max relative loss difference $worst > 1e-4"
  fi
  timeout 120 "$BIN/tessera" train "${common[@]}" --set train.device=cpu --set train.precision=bf16 \
    --set "train.run_dir=$WORK/tiny_cpu_bf16" >"$WORK/tiny_cpu_bf16.log" 2>&1 ||
    echo "CPU bf16 run failed (this CPU may have no bf16): $(tail -1 "$WORK/tiny_cpu_bf16.log")"
  if ! timeout 120 "$BIN/tessera" train "${common[@]}" --set train.device=cuda \
    --set train.precision=bf16 --set "train.run_dir=$WORK/tiny_bf16" >"$WORK/tiny_bf16.log" 2>&1; then
    fail "2 DiT-MoE tiny bf16, 5 steps" "GPU run failed: $(tail -2 "$WORK/tiny_bf16.log" | cut -c1-120)"
    return
  fi
  if [ -f "$WORK/tiny_cpu_bf16/metrics.jsonl" ]; then
    worst=$(worst_relative "$WORK/tiny_cpu_bf16/metrics.jsonl" "$WORK/tiny_bf16/metrics.jsonl")
    if awk -v w="$worst" 'BEGIN {exit !(w <= 1e-2)}'; then
      result "2 DiT-MoE tiny bf16 GPU vs CPU bf16" "PASS: max relative loss difference $worst (<= 1e-2)"
    else
      fail "2 DiT-MoE tiny bf16 GPU vs CPU bf16" "max relative loss difference $worst > 1e-2"
    fi
  fi
  worst=$(worst_relative "$WORK/tiny_cpu/metrics.jsonl" "$WORK/tiny_bf16/metrics.jsonl")
  if awk -v w="$worst" 'BEGIN {exit !(w <= 2e-2)}'; then
    result "2 DiT-MoE tiny bf16 GPU vs CPU fp32" "PASS: max relative loss difference $worst (<= 2e-2)"
  else
    fail "2 DiT-MoE tiny bf16 GPU vs CPU fp32" "max relative loss difference $worst > 2e-2"
  fi
}

# The tiny HSTU, 5 steps with an evaluation after steps 2 and 4, GPU against
# CPU in fp32: the losses, and the final metrics (HR@K and NDCG@K of both
# splits, which count ranks: a score nudged across a tie moves one user).
check_hstu_oracle() {
  local data=$WORK/hstu_data name="2 HSTU tiny oracle fp32, 5 steps"
  "$BIN/tessera" data synth --schema interactions --out "$data" --samples 400 --items 200 \
    --clusters 10 --min-length 8 --max-length 30 >/dev/null ||
    { fail "$name" "data synth failed"; return; }
  cpu_and_gpu "$name" hstu --config "$ROOT/configs/hstu_tiny.textproto" --set "data.dir=$data" \
    --set "data.eval_dir=$data" --set train.eval_every=2 --set train.steps=5 \
    --set train.global_batch=32 || return
  local worst metrics
  worst=$(worst_relative "$WORK/hstu_cpu/metrics.jsonl" "$WORK/hstu_gpu/metrics.jsonl")
  metrics=$(paste <(tr ',' '\n' <"$WORK/hstu_cpu/final_metrics.json") \
                  <(tr ',' '\n' <"$WORK/hstu_gpu/final_metrics.json") | tr -d '{}"' |
    awk -F'[\t:]' '{d = $2 - $4; if (d < 0) d = -d; if (d > w) w = d} END {printf "%.2e", w}')
  if awk -v w="$worst" -v m="$metrics" 'BEGIN {exit !(w <= 1e-4 && m <= 1e-3)}'; then
    result "$name" "PASS: max relative loss difference $worst, final metrics $metrics"
  else
    fail "$name" "max relative loss difference $worst (<= 1e-4), final metrics $metrics (<= 1e-3)"
  fi
}

# The tiny Mamba-2 hybrid (M*-ME: SSD scan, causal conv1d, attention, MLP,
# MoE, the vocabulary-parallel loss), 5 steps of two micro-batches with the
# held-out evaluation after steps 2 and 4, GPU against CPU in fp32: the
# step losses and the val_loss records.
check_mamba_oracle() {
  local data=$WORK/mamba_data name="2 Mamba-2 hybrid tiny oracle fp32, 5 steps"
  "$BIN/tessera" data synth --schema tokens --out "$data" --samples 256 --vocab 64 --seed 1 \
    >/dev/null || { fail "$name" "data synth failed"; return; }
  cpu_and_gpu "$name" mamba --config "$ROOT/configs/mamba_hybrid_tiny.textproto" \
    --set "data.dir=$data" --set "data.eval_dir=$data" --set train.eval_every=2 \
    --set train.eval_samples=16 --set train.micro_batch=4 || return
  local worst val
  worst=$(worst_relative "$WORK/mamba_cpu/metrics.jsonl" "$WORK/mamba_gpu/metrics.jsonl")
  val=$(paste <(grep -o '"val_loss":[^,]*' "$WORK/mamba_cpu/metrics.jsonl" | cut -d: -f2) \
              <(grep -o '"val_loss":[^,]*' "$WORK/mamba_gpu/metrics.jsonl" | cut -d: -f2) |
    awk '{d = $1 - $2; if (d < 0) d = -d; r = d / $1; if (r > w) w = r; n++}
         END {if (n < 2) w = 1; printf "%.2e", w}')
  if awk -v w="$worst" -v v="$val" 'BEGIN {exit !(w <= 1e-4 && v <= 1e-4)}'; then
    result "$name" "PASS: max relative loss difference $worst, val_loss $val"
  else
    fail "$name" "max relative loss difference $worst, val_loss $val (both <= 1e-4)"
  fi
}

check_nccl() {
  local log=$WORK/nccl.log
  timeout 60 "$BIN/parallel_comm_nccl_test" >"$log" 2>&1
  local rc=$? counts; counts=$(gtest_counts "$log")
  if [ $rc -ne 0 ] || grep -q '^\[  SKIPPED \].*(' "$log"; then
    fail "3 NCCL communicator, group of one GPU" "$counts (rc $rc, $log)"
  else
    result "3 NCCL communicator, group of one GPU" "PASS: $counts"
  fi
  result "3 MPI with device buffers staged via host" \
    "not run here (one GPU, no mpirun in the bundle): CI runs it on the pretend device"
}

# One DiT-MoE size on the GPU: the last logged step's throughput fields.
check_model_speed() {  # name hidden depth heads precision
  local name=$1 precision=$5 data=$WORK/speed_data
  local run=$WORK/speed_${1//\//_}_$5  # no "/" of the model's name in the path
  [ -d "$data" ] || "$BIN/tessera" data synth --schema images --out "$data" --samples 2048 \
    --channels 4 --size 32 >/dev/null
  timeout 150 "$BIN/tessera" train --config "$ROOT/configs/dit_moe_s2_8e2a.textproto" \
    --set "data.dir=$data" --set train.device=cuda --set "train.run_dir=$run" \
    --set model.dit_moe.in_channels=4 --set "model.dit_moe.hidden_size=$2" \
    --set "model.dit_moe.depth=$3" --set "model.dit_moe.num_heads=$4" \
    --set train.global_batch=64 --set train.steps=8 --set train.log_every=4 \
    --set model.dit_moe.sample_grid_per_class=0 --set optim.ema_decay=0 \
    --set "train.precision=$precision" >"$run.log" 2>&1 ||
    { fail "4 $name $precision step" "run failed: $(tail -1 "$run.log" | cut -c1-80)"; return; }
  local last; last=$(tail -1 "$run/metrics.jsonl")
  field() { echo "$last" | grep -o "\"$1\":[^,}]*" | cut -d: -f2; }
  result "4 $name $precision, batch 64 (steps 5-8)" "$(awk -v s="$(field samples_per_s)" \
    -v t="$(field tokens_per_s)" -v p="$(field peak_fraction)" \
    'BEGIN {printf "%.1f ms/step, %.0f tokens/s, %.1f%% of the run'"'"'s GEMM rate", 64000 / s, t, 100 * p}')"
}

# The fused attention's speed: one row per (S, head_dim) of bench_attention --cuda.
check_attention_speed() {
  local log=$WORK/attention_speed.log
  if ! timeout 150 "$BIN/bench_attention" --cuda >"$log" 2>&1; then
    fail "4 attention bf16 fwd+bwd" "bench_attention --cuda failed: $(tail -1 "$log" | cut -c1-80)"
    return
  fi
  local gemm; gemm=$(grep '^cuda bf16 GEMM ' "$log" | grep -o '[0-9.]* TFLOP/s')
  result "4 bf16 GEMM n=8192 (attention's reference)" "$gemm"
  local line
  while read -r line; do
    local shape rate fp32
    shape=$(echo "$line" | grep -o 'S=[0-9]* Dh=[0-9]*')
    rate=$(echo "$line" | grep -o 'fwd+bwd [0-9.]* TFLOP/s = [0-9.]*% of the bf16 GEMM' | head -1)
    fp32=$(echo "$line" | grep -o 'fp32 kernel fwd+bwd [0-9.]* TFLOP/s' | grep -o '[0-9.]* TFLOP/s')
    result "4 attention bf16 fwd+bwd $shape" "${rate#fwd+bwd }; fp32 kernel $fp32"
  done < <(grep '^cuda attention ' "$log")
}

run() {
  local bundle=${1:-build-cuda/device_bundle}
  [ -f "$bundle/bundle.tgz" ] || { echo "no $bundle/bundle.tgz: run '$0 prepare' first"; exit 2; }
  unpack "$bundle" || exit 1
  if [ -n "${DRY_RUN:-}" ]; then
    timeout 60 "$BIN/runtime_backend_test" --gtest_list_tests | grep -c '/' |
      xargs -I{} echo "dry run: runtime_backend_test lists {} parameterized tests"
    timeout 60 "$BIN/parallel_comm_nccl_test" >"$WORK/nccl_dry.log" 2>&1
    echo "dry run: MPI singleton from the bundle: $(gtest_counts "$WORK/nccl_dry.log") (rc $?)"
    "$BIN/tessera" data synth --schema images --out "$WORK/tiny_data" --samples 64 --channels 1 \
      --size 8 >/dev/null && echo "dry run: synthetic data written"
    echo "dry run: bench_attention --cuda without a GPU: $("$BIN/bench_attention" --cuda 2>&1 | tail -1)"
    echo "dry run: stopping before check 1 (its first call needs the GPU)"
    exit 0
  fi
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi not found"
  check_backend_ops
  check_tiny_oracle
  check_hstu_oracle
  check_mamba_oracle
  check_nccl
  check_model_speed "DiT-MoE-B/2-8E2A" 768 12 12 fp32
  check_model_speed "DiT-MoE-B/2-8E2A" 768 12 12 bf16
  check_model_speed "DiT-MoE-XL/2-8E2A" 1152 28 16 bf16
  check_attention_speed
  echo
  printf '%-44s %s\n' "check" "result"
  printf '%s\n' "${RESULTS[@]}"
  exit $FAILED
}

case "$MODE" in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  *) sed -n '2,25p' "$0"; exit 2 ;;
esac
