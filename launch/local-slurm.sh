#!/usr/bin/env bash
# Start a private one-node Slurm (munge + slurmctld + slurmd) for tests, as root.
# Usage: launch/local-slurm.sh start DIR | stop DIR
# After `start`, use: export SLURM_CONF=DIR/slurm.conf; sinfo; sbatch ...
# Needs Debian's slurm-wlm and munge. One node, 4 CPUs (SlurmdParameters=config_overrides lets a
# 2-core machine advertise 4), task/none, proctrack/linuxproc; see docs/operations.md.
set -euo pipefail
cmd=$1; dir=$(realpath -m "$2")
case $cmd in
start)
  mkdir -p "$dir"/{state,spool,log,munge}
  chown munge:munge "$dir/munge" 2>/dev/null || true
  host=$(hostname -s)
  cat > "$dir/slurm.conf" <<CONF
ClusterName=admmtest
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=30
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  munged --force --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
         --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$dir/slurm.conf"
  slurmd -f "$dir/slurm.conf"
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "slurm up: SLURM_CONF=$dir/slurm.conf"; exit 0; fi
    sleep 1
  done
  echo "slurm did not come up; logs in $dir/log" >&2; exit 1 ;;
stop)
  for pid in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
