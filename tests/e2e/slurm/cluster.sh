# A throwaway one-node Slurm cluster for the launch tests: sourced (after
# tests/e2e/lib.sh), not run. Needs root. Everything lives in one temp dir:
# munged with its own key and socket, slurmctld and slurmd on a slurm.conf of
# our own (SLURM_CONF points every client at it), state, spool and logs. The
# system's /etc/munge and /etc/slurm are never read or touched, so a munged
# or Slurm the package install may have started does not interfere.
#
#   slurm_install            apt-get slurm-wlm + munge when missing
#   slurm_start              up, or a loud FAIL and exit 1
#   slurm_wait_job ID SECS   polls until the job ends; prints its final state
#   slurm_job_field ID NAME  one field of `scontrol show job`
#   slurm_release_requeued ID SECS  starts a requeued job without Slurm's 120 s hold
#
# The EXIT trap stops every daemon this file started (by pid) and removes the
# temp dir, whatever path the test leaves by.

SLURM_TMP=""
SLURM_NODE=$(hostname -s)

slurm_die() {
  echo "================================================================"
  echo "FAIL: one-node Slurm: $*"
  echo "================================================================"
  local log
  for log in "$SLURM_TMP"/munge/munged.log "$SLURM_TMP"/slurmctld.log "$SLURM_TMP"/slurmd.log; do
    [ -f "$log" ] && { echo "--- $log (last 20 lines)"; tail -20 "$log"; }
  done
  exit 1
}

slurm_install() {
  local tools=(sbatch srun scontrol squeue slurmctld slurmd munged)
  local missing=0 tool
  for tool in "${tools[@]}"; do command -v "$tool" > /dev/null || missing=1; done
  [ $missing -eq 0 ] && return 0
  echo "installing slurm-wlm and munge (Debian packages)"
  local packages=(slurm-wlm munge) policy=/usr/sbin/policy-rc.d made_policy=0 ok=1
  # The packages' postinst would start the system's munged and slurmctld
  # (which fails without /etc/slurm/slurm.conf and fails the install); we
  # run our own daemons, so deny service starts as Docker images do.
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" \
      > "$WORK/apt.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update > "$WORK/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" \
      >> "$WORK/apt.log" 2>&1 || ok=0
  fi
  [ $made_policy -eq 1 ] && rm -f "$policy"
  [ $ok -eq 1 ] || { tail -20 "$WORK/apt.log"; slurm_die "apt-get install ${packages[*]} failed"; }
  for tool in "${tools[@]}"; do
    command -v "$tool" > /dev/null || slurm_die "$tool still missing after the install"
  done
}

_slurm_port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

_slurm_pid() { [ -f "$1" ] && cat "$1"; }

slurm_stop() {
  [ -n "$SLURM_TMP" ] && [ -d "$SLURM_TMP" ] || return 0
  if [ -f "$SLURM_TMP/slurmctld.pid" ]; then
    scancel --quiet --partition=debug 2> /dev/null  # our cluster's jobs only (SLURM_CONF)
    local i
    for i in $(seq 30); do
      [ -z "$(squeue -h -o %i 2> /dev/null)" ] && break
      sleep 1
    done
    scontrol shutdown > /dev/null 2>&1
  fi
  local pidfile pid
  for pidfile in "$SLURM_TMP/slurmd.pid" "$SLURM_TMP/slurmctld.pid" "$SLURM_TMP/munge/munged.pid"; do
    pid=$(_slurm_pid "$pidfile") || continue
    for i in $(seq 20); do kill -0 "$pid" 2> /dev/null || break; [ "$i" -eq 5 ] && kill "$pid" 2> /dev/null; sleep 0.5; done
    kill -0 "$pid" 2> /dev/null && kill -9 "$pid" 2> /dev/null
  done
  rm -rf "$SLURM_TMP"
  SLURM_TMP=""
}

slurm_start() {
  [ "$(id -u)" -eq 0 ] || slurm_die "needs root (slurmd and munged run as their users)"
  SLURM_TMP=$(mktemp -d /tmp/tessera_slurm.XXXXXX)
  trap 'slurm_stop; rm -rf "$WORK"' EXIT
  trap 'exit 130' INT TERM
  # munged refuses keys and sockets under directories others can write, and
  # runs as `munge`, which must be able to traverse to its own folder.
  chmod 755 "$SLURM_TMP"
  mkdir -p "$SLURM_TMP/munge" "$SLURM_TMP/state" "$SLURM_TMP/spool"
  dd if=/dev/urandom of="$SLURM_TMP/munge/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$SLURM_TMP/munge"
  chmod 711 "$SLURM_TMP/munge"
  chmod 400 "$SLURM_TMP/munge/munge.key"
  local socket=$SLURM_TMP/munge/munge.socket
  runuser -u munge -- munged --force --key-file="$SLURM_TMP/munge/munge.key" --socket="$socket" \
    --pid-file="$SLURM_TMP/munge/munged.pid" --log-file="$SLURM_TMP/munge/munged.log" \
    --seed-file="$SLURM_TMP/munge/munged.seed" || slurm_die "munged did not start"
  local i
  for i in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
  munge --socket="$socket" -n < /dev/null | unmunge --socket="$socket" > /dev/null 2>&1 ||
    slurm_die "munge round trip through $socket failed"

  local ctld_port=16817 slurmd_port
  while ! _slurm_port_free $ctld_port || ! _slurm_port_free $((ctld_port + 1)); do
    ctld_port=$((ctld_port + 2))
    [ $ctld_port -gt 16900 ] && slurm_die "no free port pair in 16817-16900"
  done
  slurmd_port=$((ctld_port + 1))
  # CPUs=8 on a 2-core machine: config_overrides makes slurmd accept the
  # declared size, so 4 single-CPU tasks fit (oversubscribed, on purpose).
  cat > "$SLURM_TMP/slurm.conf" << EOF
ClusterName=tessera-test
MailProg=/bin/true
SlurmctldHost=$SLURM_NODE(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$SLURM_TMP/state
SlurmdSpoolDir=$SLURM_TMP/spool
SlurmctldPidFile=$SLURM_TMP/slurmctld.pid
SlurmdPidFile=$SLURM_TMP/slurmd.pid
SlurmctldLogFile=$SLURM_TMP/slurmctld.log
SlurmdLogFile=$SLURM_TMP/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
MinJobAge=600
KillWait=10
InactiveLimit=0
NodeName=$SLURM_NODE NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$SLURM_TMP/slurm.conf
  slurmctld -c -f "$SLURM_CONF" || slurm_die "slurmctld did not start"
  slurmd -f "$SLURM_CONF" || slurm_die "slurmd did not start"
  for i in $(seq 60); do
    case "$(sinfo -h -n "$SLURM_NODE" -o %T 2> /dev/null)" in
      idle*) echo "one-node Slurm up: node $SLURM_NODE, conf $SLURM_CONF"; return 0 ;;
    esac
    sleep 1
  done
  sinfo 2>&1
  slurm_die "node $SLURM_NODE not idle after 60 s"
}

slurm_job_field() {  # ID NAME: the value of NAME=... in `scontrol show job -o`
  scontrol show job -o "$1" 2> /dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}

slurm_wait_job() {  # ID SECONDS: waits for a final state and prints it
  local id=$1 limit=$2 state="" start=$SECONDS
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    state=$(slurm_job_field "$id" JobState)
    case "$state" in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
        echo "$state"; return 0 ;;
    esac
    sleep 1
  done
  echo "STILL_${state:-UNKNOWN}_AFTER_${limit}s"
}

# Slurm holds a requeued batch job for 120 s (BeginTime) so that the old
# run's steps and epilog finish first. Once slurmd has logged the end of the
# batch step and of step 0 of the first run, nothing is left of it: release
# the job so the test does not sit idle. Starting it earlier makes the new
# step collide with the old one's id ("task launch failed").
slurm_release_requeued() {  # ID SECONDS
  local id=$1 limit=$2 start=$SECONDS
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    if [ "$(slurm_job_field "$id" Restarts)" = 1 ] && [ "$(slurm_job_field "$id" JobState)" = PENDING ] &&
        grep -q "\[$id.batch\] done with job" "$SLURM_TMP/slurmd.log" &&
        grep -q "\[$id.0\] done with job" "$SLURM_TMP/slurmd.log"; then
      scontrol update JobId="$id" StartTime=now
      return 0
    fi
    case "$(slurm_job_field "$id" JobState)" in COMPLETED | FAILED | CANCELLED | TIMEOUT) return 1 ;; esac
    sleep 0.5
  done
  return 1
}
