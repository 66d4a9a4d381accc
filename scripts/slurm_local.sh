#!/usr/bin/env bash
# A one-node Slurm on localhost for tests: `bash scripts/slurm_local.sh start|stop|status`.
#
# start: installs Debian's slurm-wlm and munge with apt-get when they are missing (root only), writes a one-node
#        /etc/slurm/slurm.conf from this machine's real CPU count and memory (`slurmd -C`), starts munged,
#        slurmctld and slurmd, and waits until the node accepts jobs. It never touches a slurm.conf it did not
#        write. Exit 0 when Slurm is up; otherwise one line "slurm_local: cannot ...: REASON" and exit 1.
# stop:  stops the daemons this script started (by their pid files).
# Runtime files (pid files, spool, logs) live in $SLURM_LOCAL_DIR (default /tmp/sparse-bench-slurm).
set -uo pipefail

STATE=${SLURM_LOCAL_DIR:-/tmp/sparse-bench-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by sparse-bench scripts/slurm_local.sh"
DAEMONS=(slurmd slurmctld munged)

fail() { echo "slurm_local: cannot start a local Slurm: $*"; exit 1; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" -eq 0 ] || fail "slurm-wlm/munge are not installed and installing them needs root"
  command -v apt-get >/dev/null || fail "slurm-wlm/munge are not installed and there is no apt-get"
  echo "slurm_local: installing slurm-wlm and munge with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
    >"$STATE/apt.log" 2>&1 || fail "apt-get install slurm-wlm munge failed (see $STATE/apt.log)"
}

write_conf() {
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script (a real cluster?); refusing to replace it"
  fi
  local node host
  node=$(slurmd -C | head -n 1) || fail "slurmd -C failed"
  host=$(hostname -s)
  mkdir -p "$(dirname "$CONF")" "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log"
  cat >"$CONF" <<EOF
$MARK: one node, this machine ($host)
ClusterName=sparsebench
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemons() {
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null
  if ! munge -n >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 && chown munge:munge /etc/munge/munge.key; } \
      || fail "no munge key and mungekey --create failed"
    runuser -u munge -- munged --pid-file=/run/munge/sparse-bench-munged.pid --force 2>"$STATE/log/munged.err" \
      || fail "munged did not start: $(tail -n 1 "$STATE/log/munged.err")"
  fi
  slurmctld -f "$CONF" 2>"$STATE/log/slurmctld.err" || fail "slurmctld did not start: $(tail -n 1 "$STATE/log/slurmctld.err")"
  slurmd -f "$CONF" 2>"$STATE/log/slurmd.err" || fail "slurmd did not start: $(tail -n 1 "$STATE/log/slurmd.err")"
  for _ in $(seq 60); do
    state=$(sinfo --noheader --format=%T 2>/dev/null | head -n 1)
    case "$state" in idle*|mix*|alloc*) echo "slurm_local: Slurm is up ($(sinfo --noheader --format='%P %D node(s), %c CPUs, %m MB' | head -n 1))"; return 0 ;; esac
    sleep 1
  done
  fail "the node did not become idle within 60 s (state: ${state:-none}; see $STATE/log/slurmd.log)"
}

stop_daemons() {
  for daemon in "${DAEMONS[@]}"; do
    local pidfile="$STATE/$daemon.pid"
    [ "$daemon" = munged ] && pidfile=/run/munge/sparse-bench-munged.pid
    [ -s "$pidfile" ] || continue
    local pid
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      echo "slurm_local: stopped $daemon ($pid)"
    fi
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  start)
    mkdir -p "$STATE/log"
    if sinfo --noheader >/dev/null 2>&1 && [ -s "$STATE/slurmctld.pid" ]; then echo "slurm_local: already running"; exit 0; fi
    install_packages
    write_conf
    start_daemons ;;
  stop) stop_daemons ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 start|stop|status"; exit 2 ;;
esac
