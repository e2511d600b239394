#!/bin/bash
# A rank that dies or stalls mid-loop must end the whole job within the
# watchdog timeout, with the watchdog's message and exit code 5 (Open MPI 4.1).
#
#   killed_rank.sh <parallel_comm_test binary> [mpirun]
#
# Runs FaultInjection.* of the test binary five times at -np 4, world rank 2
# failing before its 21st all-reduce (sequence #21), timeout 2 s:
#  1. stalled rank, default mpirun: the survivors' watchdog aborts the job;
#     mpirun exits 5 and prints "[rank R] watchdog: ... ranks that never
#     arrived (world ranks): 2 (last recorded entering #20) ...".
#  2. killed rank, default mpirun: mpirun itself notices the death and kills
#     the survivors at once ("exited on signal 9"); exit 137, no hang, and our
#     message never prints.
#  3. killed rank with `--mca orte_abort_on_non_zero_status 0` (survivors keep
#     running): the watchdog fires and names rank 2 as gone. mpirun reports
#     the first abnormal end as its exit code, and a death by signal comes
#     first, so each rank runs under a shell (this script) that turns the
#     signal into exit status 137, which this setting ignores; MPI_Abort's 5
#     is then mpirun's exit code.
#  4./5. cases 1 and 3 with 64 KiB all-reduces, which run on the group's
#     collective thread (blocking MPI_Allreduce) instead of MPI_Iallreduce.
set -u

if [[ "${1:-}" == "--as-rank" ]]; then
  shift
  "$@"
  exit $?  # not exec: the shell must outlive a SIGKILLed test process
fi

binary=$1
mpirun=${2:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export TESSERA_COMM_TEST_TIMEOUT_S=2
log=$(mktemp)
# Aborted jobs leave their watchdog records behind (for post-mortems).
export TESSERA_WATCHDOG_DIR=$(mktemp -d)
trap 'rm -rf "$log" "$TESSERA_WATCHDOG_DIR"' EXIT
failures=0

fail() {
  echo "FAIL: $*"
  sed 's/^/  | /' "$log" | head -40
  failures=$((failures + 1))
}

# run <expected exit code> <mpirun options...> -- <env assignment>
run() {
  local want=$1
  shift
  local start=$SECONDS
  timeout 120 env "$@" > "$log" 2>&1
  code=$?
  elapsed=$((SECONDS - start))
  echo "exit $code after ${elapsed}s"
  [[ $code == "$want" ]] || fail "exit code $code, want $want"
  ((elapsed < 60)) || fail "took ${elapsed}s"
}

header="watchdog: AllReduce\(max\) of 1024 x f32 \(4096 bytes\) on group 'world' \(4 ranks\), sequence #21 did not complete within 2s; ranks that never arrived \(world ranks\): "
filter=--gtest_filter=FaultInjection.*

echo "== 1. stalled rank, default mpirun"
run 5 TESSERA_COMM_TEST_HANG_RANK=2 "$mpirun" --oversubscribe --bind-to none -np 4 \
  "$binary" "$filter"
grep -Eq "^\[rank [013]\] ${header}2 \(last recorded entering #20\) \[watchdog records in " "$log" ||
  fail "no watchdog message naming rank 2"

echo "== 2. killed rank, default mpirun"
run 137 TESSERA_COMM_TEST_KILL_RANK=2 "$mpirun" --oversubscribe --bind-to none -np 4 \
  "$binary" "$filter"
grep -q "exited on signal 9" "$log" || fail "mpirun did not report the killed rank"

echo "== 3. killed rank, survivors kept running"
run 5 TESSERA_COMM_TEST_KILL_RANK=2 "$mpirun" --oversubscribe --bind-to none \
  --mca orte_abort_on_non_zero_status 0 -np 4 bash "$0" --as-rank "$binary" "$filter"
grep -Eq "^\[rank [013]\] ${header}2 \([^)]*process [0-9]+ on [^ ]+ is gone\) \[watchdog" "$log" ||
  fail "no watchdog message naming rank 2 as gone"

# 4./5. The same with all-reduces of 64 KiB, which run as blocking calls on
# each group's collective thread: the survivors' threads stay blocked inside
# MPI, and their Wait deadline still ends the job naming rank 2.
threaded="watchdog: AllReduce\(max\) of 16384 x f32 \(65536 bytes\) on group 'world' \(4 ranks\), sequence #21 did not complete within 2s; ranks that never arrived \(world ranks\): "
echo "== 4. stalled rank, all-reduces on the collective thread"
run 5 TESSERA_COMM_TEST_HANG_RANK=2 TESSERA_COMM_TEST_ELEMENTS=16384 "$mpirun" --oversubscribe \
  --bind-to none -np 4 "$binary" "$filter"
grep -Eq "^\[rank [013]\] ${threaded}2 \(last recorded entering #20\) \[watchdog records in " "$log" ||
  fail "no watchdog message naming rank 2 (threaded all-reduce)"

echo "== 5. killed rank, survivors kept running, all-reduces on the collective thread"
run 5 TESSERA_COMM_TEST_KILL_RANK=2 TESSERA_COMM_TEST_ELEMENTS=16384 "$mpirun" --oversubscribe \
  --bind-to none --mca orte_abort_on_non_zero_status 0 -np 4 bash "$0" --as-rank "$binary" "$filter"
grep -Eq "^\[rank [013]\] ${threaded}2 \([^)]*process [0-9]+ on [^ ]+ is gone\) \[watchdog" "$log" ||
  fail "no watchdog message naming rank 2 as gone (threaded all-reduce)"

# Only the "never arrived" list: a survivor that already aborted may rightly
# show up afterwards as "entered but gone".
if grep -oE "never arrived \(world ranks\): [^;[]*" "$log" | grep -qE "\b[013] \("; then
  fail "a surviving rank was blamed"
fi
((failures == 0)) && echo "PASS"
exit $((failures > 0))
