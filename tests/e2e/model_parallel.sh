#!/usr/bin/env bash
# The oracle for model parallelism: DiT-MoE (tiny: 16 tokens, 4 heads, 4
# experts, balance loss on, gradient clipping active) for 6 steps with
# micro-batches of 2 under tp2, tp2 + Megatron SP, sp2 (Ulysses), ep2, ep4,
# dp4 x ep2, tp2 x sp2 and an 8-rank layout combining all four (tp2 x sp2 x
# dp2 with ep4, Megatron SP and ZeRO-1) reaches the same losses (relative
# 1e-5) and final parameters (h5diff -d 1e-6, gathered on rank 0) as one
# process on the same global batch of 8. Invalid layouts fail on every rank
# with the same message and exit code 2, writing nothing.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
command -v mpirun > /dev/null || { fail "mpirun not found"; finish; }
command -v h5diff > /dev/null || { fail "h5diff not found (hdf5-tools)"; finish; }
make_data "$WORK/data"
steps=6
common=(--set train.steps=$steps --set train.micro_batch=2 --set optim.ema_decay=0
        --set model.dit_moe.sample_grid_per_class=0 --set parallel.collective_timeout_s=60)

tiny "$WORK/single" "$WORK/data" "${common[@]}" > "$WORK/single.log" 2>&1 || fail "single process"
run_layout tp2 2 --set parallel.tp=2
run_layout tp2_megatron_sp 2 --set parallel.tp=2 --set parallel.sequence_parallel=true
run_layout sp2 2 --set parallel.sp=2
run_layout ep2 2 --set parallel.ep=2
run_layout ep4 4 --set parallel.ep=4
run_layout dp4_ep2 4 --set parallel.ep=2
run_layout tp2_sp2 4 --set parallel.tp=2 --set parallel.sp=2
run_layout tp2_sp2_dp2_ep4_zero1 8 --set parallel.tp=2 --set parallel.sp=2 --set parallel.ep=4 \
  --set parallel.sequence_parallel=true --set parallel.zero_stage=1
if grep -q "layout: 8 ranks = tp 2 x sp 2 x dp 2 (experts: ep 4 x edp 2), Megatron SP on, ZeRO stage 1" \
    "$WORK/tp2_sp2_dp2_ep4_zero1.log"; then
  pass "the 8-rank run reports its layout"
else
  fail "the 8-rank run's layout line is missing"; grep layout "$WORK/tp2_sp2_dp2_ep4_zero1.log"
fi

refused() {  # NAME NP MESSAGE [--set ...]
  local name=$1 np=$2 message=$3
  shift 3
  mpi_tiny "$name" "$np" "$@"
  local rc=$?
  local same
  same=$(grep -cF "$message" "$WORK/$name.log")
  # Every rank returns the same error, but mpirun ends the job once the first
  # rank exits 2, so how many get to print it is a race: ask for the exit
  # code and at least one rank naming the problem.
  if [ $rc -eq 2 ] && [ "$same" -ge 1 ] && [ ! -e "$WORK/$name" ]; then
    pass "$name: refused with exit code 2, nothing written ($same of $np ranks printed it before mpirun ended the job)"
  else
    fail "$name: exit $rc, $same of $np ranks said \"$message\""; head -5 "$WORK/$name.log"
  fi
}
refused heads_tp_sp 4 "model.dit_moe.num_heads=2 must be divisible by parallel.tp * parallel.sp = 4" \
  --set parallel.tp=2 --set parallel.sp=2 --set model.dit_moe.num_heads=2
refused experts_ep 3 "parallel.ep=3 must divide model.dit_moe.moe.num_experts=4" \
  --set parallel.ep=3 --set train.global_batch=6
refused tokens_sp 3 "= 16 must be divisible by parallel.sp=3" \
  --set parallel.sp=3 --set model.dit_moe.num_heads=6 --set model.dit_moe.hidden_size=36 \
  --set train.global_batch=6
finish
