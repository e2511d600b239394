#!/usr/bin/env bash
# Training throughput when another process shares the cores: the quickstart
# (configs/quickstart.textproto, one process) alone, then beside one
# competing busy process at `nice -n 19`, as samples/s and as a fraction of
# the solo rate measured in the same invocation (goal >= 40 %; the fair
# share of the cores is 50 %).
#
#   bench/shared_cores.sh [--tessera PATH] [--steps S] [--competitor spin|tessera]
#       [--runs R] [--env NAME=VALUE]...
#
# --competitor spin (default): one shell busy loop (`while :; do :; done`),
#   a process that never sleeps. tessera: a second quickstart training run
#   (its own run directory), the case the issue measured.
# --env NAME=VALUE is exported to the measured run only (e.g.
#   --env OMP_WAIT_POLICY=active to measure OpenMP's spinning barriers).
# Each configuration runs R times (default 1); samples/s is the "done:" line
# of `tessera train` (the mean over all steps but the first). The data is
# imported into a temporary directory when data/fashion-mnist/train is
# missing. Prints the machine's load average before each run: the figures
# only mean something on an otherwise idle machine.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tessera="" steps=300 competitor=spin runs=1
envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tessera) tessera=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --competitor) competitor=${2:?}; shift 2 ;;
    --runs) runs=${2:?}; shift 2 ;;
    --env) envs+=("${2:?}"); shift 2 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
tessera=${tessera:-$root/build/bin/tessera}
[ -x "$tessera" ] || { echo "no tessera binary at $tessera (--tessera PATH)" >&2; exit 2; }

work=$(mktemp -d)
competitor_pid=""
stop_competitor() {
  if [ -n "$competitor_pid" ]; then
    kill "$competitor_pid" 2> /dev/null
    wait "$competitor_pid" 2> /dev/null
    competitor_pid=""
  fi
}
trap 'stop_competitor; rm -rf "$work"' EXIT

data=$root/data/fashion-mnist/train
if [ ! -f "$data/manifest.textproto" ]; then
  "$tessera" data import-fashion-mnist --out "$work/fashion-mnist" > /dev/null || exit 1
  data=$work/fashion-mnist/train
fi

train() {  # train <run dir> [NAME=VALUE...]: prints the run's samples/s
  local run_dir=$1
  shift
  env "$@" "$tessera" train --config "$root/configs/quickstart.textproto" \
    --set data.dir="$data" --set train.run_dir="$run_dir" --set train.steps="$steps" \
    --set train.log_every=1000000 --set train.progress=off --set model.dit_moe.sample_grid_per_class=0 \
    2>&1 | sed -n 's/^done: .*, \([0-9.]*\) samples\/s.*/\1/p'
}

start_competitor() {
  case "$competitor" in
    spin) nice -n 19 bash -c 'while :; do :; done' & ;;
    tessera)
      nice -n 19 "$tessera" train --config "$root/configs/quickstart.textproto" \
        --set data.dir="$data" --set train.run_dir="$work/competitor" --set train.steps=1000000 \
        --set train.progress=off --set model.dit_moe.sample_grid_per_class=0 > /dev/null 2>&1 & ;;
    *) echo "unknown competitor $competitor" >&2; exit 2 ;;
  esac
  competitor_pid=$!
  sleep 2  # let it start (and, for tessera, get past its start-up)
}

echo "# $tessera, quickstart $steps steps, $(nproc) cores; measured run env: ${envs[*]:-(none)}"
solo_sum=0 shared_sum=0
for ((run = 1; run <= runs; run++)); do
  echo "load before solo run $run: $(cut -d' ' -f1-3 /proc/loadavg)"
  solo=$(train "$work/solo" ${envs[@]+"${envs[@]}"})
  echo "alone: ${solo:-failed} samples/s"
  start_competitor
  echo "load with the competitor ($competitor, nice 19) running: $(cut -d' ' -f1-3 /proc/loadavg)"
  shared=$(train "$work/shared" ${envs[@]+"${envs[@]}"})
  stop_competitor
  echo "beside one competitor: ${shared:-failed} samples/s"
  [ -n "$solo" ] && [ -n "$shared" ] || exit 1
  solo_sum=$(awk -v a="$solo_sum" -v b="$solo" 'BEGIN { print a + b }')
  shared_sum=$(awk -v a="$shared_sum" -v b="$shared" 'BEGIN { print a + b }')
  rm -rf "$work/solo" "$work/shared" "$work/competitor"
done
awk -v s="$solo_sum" -v c="$shared_sum" -v r="$runs" 'BEGIN {
  printf "mean over %d run(s): alone %.1f samples/s, beside one competitor %.1f samples/s = %.1f%% of alone (goal >= 40%%)\n",
         r, s / r, c / r, 100 * c / s }'
