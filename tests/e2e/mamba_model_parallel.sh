#!/usr/bin/env bash
# The oracle for the Mamba hybrid's model parallelism: the tiny hybrid
# (M * - M E: a Mamba-2 mixer, GQA attention, an MLP, an MoE FFN of 4
# experts, top-2, with a shared expert and its balance loss; 4 Mamba heads
# in 2 groups, seq_len 32) for 5 steps with micro-batches of 2 under tp2,
# tp2 + Megatron SP, sp2 and sp4 (state passing for the Mamba layers,
# Ulysses for attention), dp2 x ZeRO-1, ep2 (two replicas exchanging tokens
# with each other's experts), tp2 + ep2 (the tp peers route different
# chunks to each other's experts) and tp2 x sp2 x dp2 with ZeRO-1 (8 ranks)
# reaches the losses (relative 1e-5) and final parameters (h5diff -d 1e-6,
# gathered on rank 0) of one process on the same global batch of 8. The
# Mamba layers' all-to-all mode (mamba_sp_mode=ALL_TO_ALL: heads and groups
# split over sp) does the same at sp2, and, on the same model with 4 groups
# against its own one-process run, at sp4 and tp2 x sp2.
# A checkpoint saved at tp2 x sp2 x dp2 resumes at one process, and one
# saved at one process at tp2 + Megatron SP, to the same last losses and
# weights. Layouts that do not divide the model fail with exit code 2
# naming the field, writing nothing.
#
# optim.eps=1e-4 (not 1e-8): Adam's first update is lr * g / (|g| + eps),
# whose slope at |g| ~ eps is 1/(4 eps), so float rounding in a gradient
# element that nearly cancels is amplified: with eps 1e-6, one embedding
# element with |g| ~ 1e-6 and a layout difference of ~2e-8 in g moved by
# 1.3e-5 after one step (tp2), while the step's gradient norms agreed to
# 1e-8. With eps 1e-4 the same rounding moves a weight by < 1e-7, and the
# comparison is about the mathematics, not Adam's sign function.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
command -v h5diff > /dev/null || { fail "h5diff not found (hdf5-tools)"; finish; }
TINY="$SOURCE/configs/mamba_hybrid_tiny.textproto"
"$TESSERA" data synth --schema tokens --out "$WORK/data" --samples 256 --vocab 64 --seed 1 \
  > /dev/null || { fail "data synth"; finish; }
steps=5
common=(--set train.steps=$steps --set train.micro_batch=2 --set data.dir="$WORK/data"
        --set optim.eps=1e-4 --set parallel.collective_timeout_s=60)

"$TESSERA" train --config "$TINY" --set train.run_dir="$WORK/single" "${common[@]}" \
  --set checkpoint.every=3 > "$WORK/single.log" 2>&1 || { fail "single process"; tail -20 "$WORK/single.log"; finish; }

mpi_hybrid() {  # NAME NP [--set ...]: the tiny hybrid under mpirun into $WORK/NAME
  local name=$1 np=$2
  shift 2
  timeout 300 mpirun --oversubscribe --bind-to none -np "$np" "$TESSERA" train --config "$TINY" \
    --set train.run_dir="$WORK/$name" "${common[@]}" "$@" > "$WORK/$name.log" 2>&1
}
reference=single  # the one-process run hybrid_layout compares against
hybrid_layout() {  # NAME NP [--set ...]: run, then compare losses and weights
  local name=$1 np=$2
  mpi_hybrid "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then fail "$name: mpirun exited $rc"; tail -20 "$WORK/$name.log"; return; fi
  if paste <(losses "$WORK/$reference") <(losses "$WORK/$name") |
      awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad = 1 } END { exit bad }' \
      && [ "$(losses "$WORK/$name" | wc -l)" -eq "$steps" ]; then
    pass "$name ($np ranks): the $steps losses match one process ($(losses "$WORK/$name" | tail -1))"
  else
    fail "$name: losses differ"; paste <(losses "$WORK/$reference") <(losses "$WORK/$name")
  fi
  if h5diff -d 1e-6 "$WORK/$reference/weights.h5" "$WORK/$name/weights.h5" > "$WORK/$name.diff" 2>&1; then
    pass "$name: final parameters match one process (h5diff -d 1e-6)"
  else
    fail "$name: final parameters differ"; head "$WORK/$name.diff"
  fi
}

hybrid_layout tp2 2 --set parallel.tp=2
hybrid_layout tp2_megatron_sp 2 --set parallel.tp=2 --set parallel.sequence_parallel=true
hybrid_layout sp2 2 --set parallel.sp=2
hybrid_layout sp4 4 --set parallel.sp=4
hybrid_layout dp2_zero1 2 --set parallel.zero_stage=1
hybrid_layout ep2 2 --set parallel.ep=2
hybrid_layout tp2_ep2 2 --set parallel.tp=2 --set parallel.ep=2
hybrid_layout tp2_sp2_dp2_zero1 8 --set parallel.tp=2 --set parallel.sp=2 --set parallel.zero_stage=1 \
  --set checkpoint.every=3
all_to_all=(--set model.mamba_hybrid.mamba_sp_mode=ALL_TO_ALL)
hybrid_layout sp2_all_to_all 2 --set parallel.sp=2 "${all_to_all[@]}"
groups4=(--set model.mamba_hybrid.num_groups=4)
"$TESSERA" train --config "$TINY" --set train.run_dir="$WORK/single_groups4" "${common[@]}" \
  "${groups4[@]}" > "$WORK/single_groups4.log" 2>&1 ||
  { fail "single process, 4 groups"; tail -20 "$WORK/single_groups4.log"; finish; }
reference=single_groups4
hybrid_layout sp4_all_to_all 4 --set parallel.sp=4 "${all_to_all[@]}" "${groups4[@]}"
hybrid_layout tp2_sp2_all_to_all 4 --set parallel.tp=2 --set parallel.sp=2 "${all_to_all[@]}" \
  "${groups4[@]}"

# The FLOPs the trainer counts (peak_fraction's numerator) are the whole
# model's under every layout: each rank's share summed over the job.
flops() { grep -o 'training FLOPs: [0-9.e+-]* GFLOP per sample' "$WORK/$1.log"; }
same_flops() {  # REFERENCE NAME...: each run's count equals the one-process REFERENCE's
  local single_flops name
  single_flops=$(flops "$1")
  shift
  for name in "$@"; do
    if [ -n "$single_flops" ] && [ "$(flops $name)" = "$single_flops" ]; then
      pass "$name: $single_flops, as one process"
    else
      fail "$name: '$(flops $name)', one process '$single_flops'"
    fi
  done
}
same_flops single tp2 tp2_megatron_sp sp2 sp4 ep2 tp2_sp2_dp2_zero1 sp2_all_to_all
same_flops single_groups4 sp4_all_to_all tp2_sp2_all_to_all

# Per-expert load: metrics.jsonl's expert_assignments of the E layer at every
# step sum to the logging replica's tokens x top_k (one replica: 8 windows x
# 32 positions x 2 = 512; dp2: 256) and are one process's counts under tp2,
# tp2 + Megatron SP, sp2 and sp4 (the tokens of one replica, routed alike).
assignments() { grep -oE '"expert_assignments":\[\[[0-9,]*\]\]' "$WORK/$1/metrics.jsonl"; }
assignment_sums() {  # the distinct per-step sums of RUN's counts
  assignments "$1" | grep -oE '[0-9,]+\]\]' | tr -d ']' |
    awk -F, '{ s = 0; for (i = 1; i <= NF; i++) s += $i; print s }' | sort -u | tr '\n' ' '
}
if [ "$(assignments single | wc -l)" -eq "$steps" ] && [ "$(assignment_sums single)" = "512 " ] &&
   [ "$(assignment_sums dp2_zero1)" = "256 " ]; then
  pass "expert_assignments sum to tokens x top_k (512 at one process, 256 per replica at dp2): $(assignments single | tail -1)"
else
  fail "expert_assignments sums: one process $(assignment_sums single), dp2 $(assignment_sums dp2_zero1)"
fi
for name in tp2 tp2_megatron_sp sp2 sp4; do
  if [ "$(assignments "$name")" = "$(assignments single)" ]; then
    pass "$name: the $steps steps' expert_assignments equal one process's"
  else
    fail "$name: expert_assignments differ"; paste <(assignments single) <(assignments "$name")
  fi
done

# Resharding: the pieces saved at step 3 by one layout resume in another to
# the uninterrupted run's last losses and weights.
resumed() {  # NAME NP CHECKPOINT [--set ...]
  local name=$1 np=$2 checkpoint=$3
  shift 3
  mpi_hybrid "$name" "$np" --set checkpoint.resume="$checkpoint" "$@"
  local rc=$?
  if [ $rc -eq 0 ] && paste <(losses "$WORK/single" | tail -2) <(losses "$WORK/$name") |
      awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad = 1; n++ } END { exit bad || n != 2 }' \
      && h5diff -d 1e-6 "$WORK/single/weights.h5" "$WORK/$name/weights.h5" > "$WORK/$name.diff" 2>&1; then
    pass "$name: resumed from $(basename "$(dirname "$(dirname "$checkpoint")")")'s step 3, steps 4-5 and the final weights match one process"
  else
    fail "$name (exit $rc)"; paste <(losses "$WORK/single") <(losses "$WORK/$name"); head -5 "$WORK/$name.diff"
  fi
}
resumed tp2_sp2_dp2_to_single 1 "$WORK/tp2_sp2_dp2_zero1/checkpoints/step_00000003"
resumed single_to_tp2_megatron_sp 2 "$WORK/single/checkpoints/step_00000003" \
  --set parallel.tp=2 --set parallel.sequence_parallel=true

refused() {  # NAME NP MESSAGE [--set ...]
  local name=$1 np=$2 message=$3
  shift 3
  mpi_hybrid "$name" "$np" "$@"
  local rc=$?
  local said
  said=$(grep -cF -- "$message" "$WORK/$name.log")
  # mpirun ends the job once the first rank exits 2: ask for the exit code
  # and at least one rank naming the problem.
  if [ $rc -eq 2 ] && [ "$said" -ge 1 ] && [ ! -e "$WORK/$name" ]; then
    pass "$name: refused with exit code 2 naming the field, nothing written"
  else
    fail "$name: exit $rc, $said of $np ranks said \"$message\""; head -5 "$WORK/$name.log"
  fi
}
refused groups_tp 4 "model.mamba_hybrid.num_groups=2 must be divisible by parallel.tp=4" \
  --set parallel.tp=4
refused heads_tp 4 "the Mamba heads expand * hidden_size / head_dim = 2 must be divisible by parallel.tp=4" \
  --set parallel.tp=4 --set model.mamba_hybrid.head_dim=32 --set model.mamba_hybrid.num_groups=1
refused groups_all_to_all 4 "model.mamba_hybrid.num_groups=2 must be divisible by parallel.tp * parallel.sp = 4" \
  --set parallel.sp=4 "${all_to_all[@]}"
refused seq_sp 3 "model.mamba_hybrid.seq_len=32 must be divisible by parallel.sp=3" \
  --set parallel.sp=3 --set model.mamba_hybrid.pattern=M-M-E --set train.global_batch=6
finish
