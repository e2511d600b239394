#!/usr/bin/env bash
# Preemption timing under mpirun: SIGUSR1 → checkpoint → exit 75, then
# --resume → first step.
#
#   bench/preemption.sh [-np N] [--after S] [--batch B] [--tessera PATH] [--dir DIR]
#       [--set KEY=VALUE]...
#
# Defaults: 4 ranks (oversubscribed, --bind-to none), DiT-MoE-S/2-8E2A
# (configs/dit_moe_s2_8e2a.textproto), global batch 4, log every step,
# checkpoint.every=0 (only the stop saves), run directory
# DIR/preemption_run (DIR default /tmp), removed at the end. Extra --set
# flags go to both runs (e.g. --set parallel.ep=4 to fit memory).
#
# 1. Checks that mpirun forwards SIGUSR1 to every rank (4 shells that trap it).
# 2. Starts training; once step S (default 3) is logged, stamps the clock
#    and sends SIGUSR1 to mpirun; stamps again when mpirun exits, which must
#    be with 75. Prints signal → exit, and the blocking save's own time from
#    its "saved checkpoint ... in X s" line.
# 3. Resumes (--resume, train.steps = saved step + 1); prints start → first
#    step line, with the stamp of every line in between (start-up, restore,
#    the GEMM peak measurement, the step itself).
# Every stdout line is stamped with the wall clock as it arrives (the trainer
# flushes after each line); the start and end stamps are taken around the
# process with the same clock.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
np=4 after=3 batch=4 dir=/tmp tessera=""
sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -np | --np) np=${2:?}; shift 2 ;;
    --after) after=${2:?}; shift 2 ;;
    --batch) batch=${2:?}; shift 2 ;;
    --dir) dir=${2:?}; shift 2 ;;
    --tessera) tessera=${2:?}; shift 2 ;;
    --set) sets+=(--set "${2:?}"); shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "preemption.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$tessera" ]; then
  for candidate in "$root"/build*/bin/tessera; do
    [ -x "$candidate" ] && tessera=$candidate && break
  done
fi
[ -x "$tessera" ] || { echo "preemption.sh: tessera not found: use --tessera PATH" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
now() { date +%s.%N; }
stamp() { perl -MTime::HiRes=time -ne '$| = 1; printf "%.6f %s", time, $_'; }
elapsed() { perl -e 'printf "%.2f", $ARGV[1] - $ARGV[0]' "$1" "$2"; }
# Waits until `pattern` appears in `file` or process `pid` ends; returns 1 then.
wait_for() {
  local file=$1 pattern=$2 pid=$3
  until grep -qE "$pattern" "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.2
  done
}

run_dir="$dir/preemption_run"
rm -rf "$run_dir"
mkdir -p "$run_dir"

# 1. Does mpirun forward SIGUSR1 to the ranks?
probe="$run_dir/probe.log"
mpirun -np "$np" --bind-to none bash -c \
  'trap "echo rank $OMPI_COMM_WORLD_RANK got SIGUSR1; exit 0" USR1; for i in $(seq 300); do sleep 0.1; done; echo rank $OMPI_COMM_WORLD_RANK timed out' \
  >"$probe" 2>&1 &
probe_pid=$!
sleep 2
kill -USR1 "$probe_pid"
wait "$probe_pid"
got=$(grep -c "got SIGUSR1" "$probe")
echo "mpirun forwarded SIGUSR1 to $got of $np ranks"
signal_ranks() { kill -USR1 "$1"; }
if [ "$got" -ne "$np" ]; then
  echo "preemption.sh: signalling the tessera processes directly instead" >&2
  signal_ranks() { pkill -USR1 -P "$1" -x tessera; }
fi

base=("$tessera" train --config "$root/configs/dit_moe_s2_8e2a.textproto"
      --set "data.dir=$root/data/fashion-mnist/train" --set "train.run_dir=$run_dir"
      --set train.log_every=1 --set "train.global_batch=$batch" --set train.progress=off --set model.dit_moe.sample_grid_per_class=0
      --set checkpoint.every=0 "${sets[@]}")

# 2. Train, stop with SIGUSR1 after step `after`.
log1="$run_dir/first.log"
echo "+ mpirun -np $np --bind-to none ${base[*]} --set train.steps=100000"
start1=$(now)
mpirun -np "$np" --bind-to none "${base[@]}" --set train.steps=100000 > >(stamp >"$log1") 2>&1 &
pid=$!
if ! wait_for "$log1" "^[0-9.]+ step +$after/" "$pid"; then
  wait "$pid"
  echo "preemption.sh: training ended (exit $?) before step $after" >&2
  cat "$log1" >&2
  exit 1
fi
signal_at=$(now)
signal_ranks "$pid"
wait "$pid"
rc=$?
exit_at=$(now)
sleep 0.5  # let the stamper drain
cat "$log1"
if [ "$rc" -ne 75 ]; then
  echo "preemption.sh: expected exit 75 after SIGUSR1, got $rc" >&2
  exit 1
fi
saved=$(sed -n 's/.*stopped by .* after step \([0-9]*\) .*/\1/p' "$log1" | head -1)
save_s=$(sed -n 's/.*saved checkpoint .* in \([0-9.]*\)s$/\1/p' "$log1" | tail -1)
step_at=$(sed -n "s/^\([0-9.]*\) step \+$after\/.*/\1/p" "$log1" | head -1)

# 3. Resume and time the first step.
log2="$run_dir/resume.log"
steps2=$((saved + 1))
echo "+ mpirun -np $np --bind-to none ${base[*]} --set train.steps=$steps2 --resume"
start2=$(now)
mpirun -np "$np" --bind-to none "${base[@]}" --set "train.steps=$steps2" --resume \
  > >(stamp >"$log2") 2>&1
rc2=$?
end2=$(now)
sleep 0.5
if [ "$rc2" -ne 0 ]; then
  cat "$log2"
  echo "preemption.sh: the resumed run exited with $rc2" >&2
  exit 1
fi
first_step=$(sed -n "s/^\([0-9.]*\) step \+$steps2\/.*/\1/p" "$log2" | head -1)
echo
echo "resumed run, seconds since its start:"
perl -ne 'my ($t, $l) = /^([0-9.]+) (.*)/ or next; printf "  %7.2f  %s\n", $t - $ARGV_START, $l;
          BEGIN { $ARGV_START = shift @ARGV }' "$start2" "$log2"
echo
echo "ranks $np, global batch $batch; stopped after step $saved (SIGUSR1 sent $(elapsed "$step_at" "$signal_at") s after step $after was logged)"
echo "signal -> exit 75: $(elapsed "$signal_at" "$exit_at") s (blocking save ${save_s:-?} s)"
echo "resume start -> first step logged (step $steps2): $(elapsed "$start2" "$first_step") s (process total $(elapsed "$start2" "$end2") s)"
echo "first run: start -> SIGUSR1 $(elapsed "$start1" "$signal_at") s"
rm -rf "$run_dir"
