#!/usr/bin/env bash
# The bad-input table of docs/reliability.md: runs the end-to-end scripts that
# feed tessera bad input (or break its world under it) and counts their cases
# by family: configs, command lines, data shards, checkpoints, signals,
# launches (MPI and Slurm), written files. A case is one "ok:" or "FAIL:" line
# of a script; its family comes from the words it names (the rules below, in
# order), so the scripts need no tags and new cases are counted as they land.
#
#   tests/bad_input_table.sh TESSERA_BINARY [SCRIPT...]
#
# SCRIPT defaults to every bad-input script in tests/e2e (bad_input,
# trusted_inputs, data_inputs, checkpoints, failures, fault_matrix, evaluation,
# data_parallel, model_parallel, dump_step; slurm and slurm_requeue when sbatch is
# there). Prints one row per family (cases, ok, failed, the exit codes the
# cases name) as a Markdown table, then every failed case; exits 1 if any
# case failed. Takes about 10 minutes on 2 cores. With LIST=1 every case is
# also printed with its family (on stderr), to check the rules. CASES=FILE
# recounts the "<script>\t<line>" cases of an earlier run (saved with
# KEEP=FILE) without running anything.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 TESSERA_BINARY [tests/e2e/SCRIPT.sh...]" >&2; exit 2; }
tessera=$(realpath "$1")
shift
source_dir=$(cd "$(dirname "$0")/.." && pwd)
scripts=("$@")
if [ ${#scripts[@]} -eq 0 ]; then
  for name in bad_input trusted_inputs data_inputs checkpoints failures fault_matrix evaluation \
              data_parallel model_parallel dump_step; do
    [ -f "$source_dir/tests/e2e/$name.sh" ] && scripts+=("$source_dir/tests/e2e/$name.sh")
  done
  if command -v sbatch > /dev/null; then
    scripts+=("$source_dir/tests/e2e/slurm.sh" "$source_dir/tests/e2e/slurm_requeue.sh")
  fi
fi

# As CTest's MPI tests run: mpirun as root and with more ranks than cores
# (not every script exports these itself).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

out=$(mktemp -d /tmp/tessera_bad_input_table.XXXXXX)
trap 'rm -rf "$out"' EXIT
if [ -n "${CASES:-}" ]; then cp "$CASES" "$out/cases.tsv"; scripts=(); fi
for script in "${scripts[@]}"; do
  name=$(basename "$script" .sh)
  echo "running $name ..." >&2
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} bash "$script" "$tessera" "$source_dir" > "$out/$name.log" 2>&1
  grep -E '^(ok|FAIL): ' "$out/$name.log" | sed "s|^|$name\t|" >> "$out/cases.tsv"
done

[ -n "${KEEP:-}" ] && cp "$out/cases.tsv" "$KEEP"

# Family rules, first match wins (extended regexes on "<script> <case name>",
# lower-cased; the case name is the line without expect_exit's stderr excerpt).
awk -F'\t' -v list="${LIST:-0}" '
function family(script, line,   l) {
  l = line
  sub(/ \(exit [0-9]+: .*/, "", l)  # the case name, not the stderr excerpt expect_exit appends
  l = tolower(script " " l)
  if (l ~ /sigterm|sigint|sigusr1|signal|ctrl-c|exit 75|exit 130/) return "signals"
  if (script ~ /^(data|model)_parallel$/) return "launches (MPI, Slurm, faults)"
  if (script == "dump_step" && l ~ /(tp2|sp2|ep2|one-process|another seed) dump|dump with another seed/) return "launches (MPI, Slurm, faults)"
  if (l ~ /slurm|srun|sbatch|requeue|mpirun|mpmd|ranks? (with|named|killed|hangs|[0-9])|world size|layout|killed|hang|watchdog|forged|np[0-9]|[0-9] of [0-9]+ ranks|different config|train\.steps = /) return "launches (MPI, Slurm, faults)"
  if (l ~ /ckpt|checkpoint|manifest\.pb|resume|step_|latest|rank_0|num_ranks|sampler|superseded|fallback|corrupt piece|other model/) return "checkpoints"
  if (l ~ /shard|data verify|verify|synth|import|idx|label|token|vocab|interaction|item|rating|timestamp|loss_mask|data dir|data directory|data error|data set|dataset|data\.|manifest/) return "data shards"
  if (l ~ /ulimit|full disk|write|hdf5-diag|metrics\.jsonl|file size/) return "written files"
  if (l ~ /option|argument|--[a-z]|flag|usage|sample /) return "command lines"
  return "configs"
}
{
  ok = ($2 ~ /^ok: /)
  f = family($1, $2)
  if (list == 1) print f "\t" $1 "\t" $2 > "/dev/stderr"
  cases[f]++; if (ok) good[f]++; else { bad[f]++; failed[++nf] = $1 ": " $2 }
  while (match($2, /exit (code )?[0-9]+/)) {
    code = substr($2, RSTART, RLENGTH); sub(/exit (code )?/, "", code)
    codes[f, code] = 1; seen[code] = 1
    $2 = substr($2, RSTART + RLENGTH)
  }
  total++; if (ok) total_ok++
}
END {
  order = "configs|command lines|data shards|checkpoints|written files|signals|launches (MPI, Slurm, faults)"
  n = split(order, fams, "|")
  print "| family | cases | ok | failed | exit codes named |"
  print "| --- | --- | --- | --- | --- |"
  for (i = 1; i <= n; i++) {
    f = fams[i]; if (!(f in cases)) continue
    list = ""
    for (c = 0; c <= 255; c++) if ((f, c) in codes) list = list (list == "" ? "" : ", ") c
    printf "| %s | %d | %d | %d | %s |\n", f, cases[f], good[f] + 0, bad[f] + 0, list
  }
  printf "| **all** | %d | %d | %d | |\n", total, total_ok, total - total_ok
  for (i = 1; i <= nf; i++) print "failed: " failed[i]
  exit (total_ok == total && total > 0) ? 0 : 1
}' "$out/cases.tsv"
