#!/usr/bin/env bash
# tessera training with Open MPI's mpirun on a plain list of hosts (no
# scheduler), with optional in-place restarts from the latest checkpoint.
#
#   launch/mpirun/train.sh -np 8 --hosts node1:4,node2:4 --config configs/X.textproto \
#       --run-dir runs/x [--max-restarts 3] [--set key=value]... [-- extra tessera args]
#   launch/mpirun/train.sh -np 4 --hostfile hosts.txt --config ... --run-dir ...
#
# Options:
#   -np N               ranks (required)
#   --hosts LIST        mpirun --host list (host:slots,...); default: this host
#   --hostfile FILE     mpirun --hostfile (one "host slots=N" per line)
#   --config FILE       run config (required)
#   --run-dir DIR       train.run_dir (required); on a filesystem every host sees
#   --set KEY=VALUE     config override, repeatable
#   --resume            resume the first attempt too (later attempts always do)
#   --max-restarts N    re-run up to N times after a failure (default 0)
#   --tessera PATH      the binary (default: build/bin/tessera next to this
#                       checkout, else `tessera` on PATH)
#   --mpirun-arg ARG    one more argument for mpirun, repeatable
#   -- ARGS...          everything after -- goes to `tessera train` as is
#
# Restarts: exit 0 (done) and 2 (usage or config error: the same command
# would fail again) end the loop; any other code (75 saved after a signal,
# 5 communication failure or timeout, a killed rank, ...) re-runs with
# --resume, which continues from `latest` (a no-op when nothing was saved).
# The script exits with the last attempt's code. SIGTERM or SIGUSR1 to this
# script reach every rank as SIGUSR1 (save, exit 75), and the script exits 75.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
die() { echo "train.sh: $*" >&2; exit 2; }

np="" hosts="" hostfile="" config="" run_dir="" max_restarts=0 resume=0 tessera=""
sets=() extra=() mpirun_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -np | --np) np=${2:?}; shift 2 ;;
    --hosts | --host) hosts=${2:?}; shift 2 ;;
    --hostfile) hostfile=${2:?}; shift 2 ;;
    --config) config=${2:?}; shift 2 ;;
    --run-dir) run_dir=${2:?}; shift 2 ;;
    --set) sets+=(--set "${2:?}"); shift 2 ;;
    --resume) resume=1; shift ;;
    --max-restarts) max_restarts=${2:?}; shift 2 ;;
    --tessera) tessera=${2:?}; shift 2 ;;
    --mpirun-arg) mpirun_args+=("${2:?}"); shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) usage ;;
    *) die "unknown option \"$1\" (see --help)" ;;
  esac
done
[ -n "$np" ] || die "-np N is required"
[ -n "$config" ] || die "--config FILE is required"
[ -n "$run_dir" ] || die "--run-dir DIR is required"
[[ "$np" =~ ^[1-9][0-9]*$ ]] || die "-np must be a positive integer, got \"$np\""
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max-restarts must be >= 0, got \"$max_restarts\""
[ -z "$hosts" ] || [ -z "$hostfile" ] || die "give --hosts or --hostfile, not both"
if [ -z "$tessera" ]; then
  tessera=$(cd "$(dirname "$0")/../.." && pwd)/build/bin/tessera
  [ -x "$tessera" ] || tessera=$(command -v tessera) || die "tessera not found: use --tessera PATH"
fi

launch=(mpirun -np "$np" --bind-to none)
# Open MPI refuses root unless asked; containers often run as root.
[ "$(id -u)" -eq 0 ] && launch+=(--allow-run-as-root)
[ -n "$hosts" ] && launch+=(--host "$hosts")
[ -n "$hostfile" ] && launch+=(--hostfile "$hostfile")
# The watchdog's records under the run directory, so that ranks on other
# hosts see each other's. (Threads: with train.threads 0 tessera divides each
# host's cores by the ranks mpirun put there.)
export TESSERA_WATCHDOG_DIR=${TESSERA_WATCHDOG_DIR:-$run_dir/watchdog}
mkdir -p "$run_dir" "$TESSERA_WATCHDOG_DIR" || die "cannot create $run_dir"
launch+=(-x TESSERA_WATCHDOG_DIR "${mpirun_args[@]}")

attempts=$((max_restarts + 1))
rc=0
for attempt in $(seq 1 "$attempts"); do
  args=(train --config "$config" --set train.run_dir="$run_dir" "${sets[@]}" "${extra[@]}")
  [ "$attempt" -gt 1 ] || [ "$resume" -eq 1 ] && args+=(--resume)
  echo "[$(date -Is)] train.sh: attempt $attempt/$attempts: ${launch[*]} $tessera ${args[*]}"
  # A SIGTERM to mpirun makes mpirun itself exit 1 even when every rank saved
  # and exited 75; mpirun forwards SIGUSR1 to every rank without ending: so
  # this script turns SIGTERM/SIGUSR1 into a SIGUSR1 for mpirun, and the job
  # ends with the ranks' 75.
  "${launch[@]}" "$tessera" "${args[@]}" &
  mpirun_pid=$!
  stopped=0
  trap 'stopped=1; kill -USR1 "$mpirun_pid" 2>/dev/null' TERM USR1
  while :; do
    wait "$mpirun_pid"
    rc=$?
    kill -0 "$mpirun_pid" 2>/dev/null || break  # else a trapped signal ended the wait
  done
  trap - TERM USR1
  echo "[$(date -Is)] train.sh: attempt $attempt/$attempts exited with code $rc"
  [ "$stopped" -eq 1 ] && { echo "train.sh: stopped by a signal: not retrying"; exit "$rc"; }
  case $rc in
    0) exit 0 ;;
    2) echo "train.sh: usage or config error: not retrying" >&2; exit 2 ;;
  esac
done
[ "$attempts" -gt 1 ] && echo "train.sh: giving up after $attempts attempts (exit code $rc)" >&2
exit "$rc"
