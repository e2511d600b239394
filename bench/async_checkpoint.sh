#!/usr/bin/env bash
# Step time while an asynchronous checkpoint save is in flight, against the
# steps of the same run with no save in flight, and how long the step loop
# is blocked by the save (goal: the host copy only).
#
#   bench/async_checkpoint.sh [-np N] [--steps S] [--every K] [--batch B]
#       [--tessera PATH] [--dir DIR] [--set KEY=VALUE]...
#
# Defaults: 1 process (no mpirun), DiT-MoE-S/2-8E2A (configs/dit_moe_s2_8e2a.textproto),
# 24 steps, a checkpoint every 8 steps (checkpoint.async=true, keep_last=0 so
# every step directory stays until the end), global batch 4, log every step,
# run directory DIR/async_checkpoint_run (DIR default /tmp), removed at the end.
#
# How it measures: every stdout line of rank 0 is stamped with the wall clock
# as it arrives (the trainer flushes after each line). For each step N:
#   compute(N) = global_batch / samples_per_s of metrics.jsonl (log_every=1:
#                the Trainer's own timing of Step(), which excludes Save())
#   wall(N)    = stamp(step N line) - stamp(step N-1 line)
#   blocked(N) = wall(N) - compute(N): what the loop spent outside Step(), i.e.
#                in Save() (host copy, and waiting for a previous save) and
#                the stop agreement
# A save of step K runs from its "saving checkpoint ... in the background"
# line to the mtime of step_K/manifest.pb (rank 0 writes it just before the
# commit's rename; the rest of the commit is a rename and two small files).
# A step is "during a save" when at least half of its wall interval lies in
# a save's window (compute excludes the time in Save(), so the step right
# after a save start counts too); step 1 (warm-up) is left out.
# Prints ratio = mean compute during saves / mean compute otherwise (goal <=
# 1.15) and the blocked time after each save against the host copy it reported.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
np=1 steps=24 every=8 batch=4 dir=/tmp tessera=""
sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -np | --np) np=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --every) every=${2:?}; shift 2 ;;
    --batch) batch=${2:?}; shift 2 ;;
    --dir) dir=${2:?}; shift 2 ;;
    --tessera) tessera=${2:?}; shift 2 ;;
    --set) sets+=(--set "${2:?}"); shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "async_checkpoint.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$tessera" ]; then
  for candidate in "$root"/build*/bin/tessera; do
    [ -x "$candidate" ] && tessera=$candidate && break
  done
fi
[ -x "$tessera" ] || { echo "async_checkpoint.sh: tessera not found: use --tessera PATH" >&2; exit 2; }

run_dir="$dir/async_checkpoint_run"
rm -rf "$run_dir"
mkdir -p "$run_dir"
log="$run_dir/stdout.log"
cmd=("$tessera" train --config "$root/configs/dit_moe_s2_8e2a.textproto"
     --set "data.dir=$root/data/fashion-mnist/train" --set "train.run_dir=$run_dir"
     --set "train.steps=$steps" --set train.log_every=1 --set "train.global_batch=$batch"
     --set train.progress=off --set model.dit_moe.sample_grid_per_class=0 --set "checkpoint.every=$every" --set checkpoint.async=true
     --set checkpoint.keep_last=0 "${sets[@]}")
if [ "$np" -gt 1 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  cmd=(mpirun -np "$np" --bind-to none "${cmd[@]}")
fi
echo "+ ${cmd[*]}"
# Stamp each line as it arrives (perl: sub-second clock without a fork per line).
"${cmd[@]}" 2>&1 | perl -MTime::HiRes=time -ne '$| = 1; printf "%.6f %s", time, $_' | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "async_checkpoint.sh: training exited with $rc" >&2
  exit "$rc"
fi

python3 - "$run_dir" "$batch" <<'EOF'
import json, os, re, sys
run_dir, batch = sys.argv[1], int(sys.argv[2])
stamp, saves = {}, []
for line in open(os.path.join(run_dir, "stdout.log")):
    t, _, text = line.partition(" ")
    t = float(t)
    m = re.match(r"step\s+(\d+)/", text)
    if m:
        stamp.setdefault(int(m.group(1)), t)
    m = re.search(r"saving checkpoint step_(\d+) in the background \(host copy ([0-9.]+)s\)", text)
    if m:
        step = int(m.group(1))
        manifest = os.path.join(run_dir, "checkpoints", "step_%08d" % step, "manifest.pb")
        end = os.stat(manifest).st_mtime if os.path.exists(manifest) else None
        saves.append((step, t, end, float(m.group(2))))
compute = {}
for line in open(os.path.join(run_dir, "metrics.jsonl")):
    rec = json.loads(line)
    compute[rec["step"]] = batch / rec["samples_per_s"]
steps = sorted(s for s in stamp if s in compute)
print()
for step, start, end, copy in saves:
    print("save of step %d: host copy %.3f s, in flight %.1f s" % (step, copy, (end or start) - start))
during, normal, blocked, normal_gap = [], [], [], []
for n in steps:
    if n == 1 or n - 1 not in stamp:
        continue
    lo, hi = stamp[n - 1], stamp[n]
    gap = hi - lo - compute[n]  # wall time outside Step() since the last line
    copies = [c for s, _, _, c in saves if s == n - 1]
    if copies:
        blocked.append((n - 1, gap, copies[0]))
    else:
        normal_gap.append(gap)
    # Step() ran during [hi - compute, hi]; "during a save" if half of it overlaps one.
    c0 = hi - compute[n]
    overlap = max((min(hi, e) - max(c0, s0) for _, s0, e, _ in saves if e), default=0)
    (during if overlap >= 0.5 * compute[n] else normal).append(compute[n])
if not during or not normal:
    print("not enough steps on both sides: during %d, normal %d (more steps or a later --every)"
          % (len(during), len(normal)))
    sys.exit(1)
mean = lambda v: sum(v) / len(v)
print("step compute time: %.3f s with a save in flight (%d steps), %.3f s otherwise (%d steps)"
      % (mean(during), len(during), mean(normal), len(normal)))
print("ratio %.3f (goal <= 1.15)" % (mean(during) / mean(normal)))
for step, b, copy in blocked:
    print("loop blocked after step %d: %.3f s outside Step() (host copy reported %.3f s)"
          % (step, b, copy))
print("outside Step() between other steps: %.3f s on average (logging, stop agreement)"
      % mean(normal_gap))
EOF
status=$?
rm -rf "$run_dir"
exit $status
