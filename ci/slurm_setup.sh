#!/bin/bash
# Start a single-node SLURM (Debian 12 slurm-wlm + munge) on this machine, as root, without systemd.
#
# Why: hpcdask's jobqueue tests (pytest -m slurm) and benchmarks/bench_jobqueue.py submit real jobs.
# Idempotent: exits 0 at once when slurmctld answers and the node is usable; installs the Debian
# packages only when missing; writes slurm.conf only when it differs. Partition: `debug` (default).
# Stop with `scontrol shutdown` (stops slurmctld and slurmd; munged keeps running).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

node_ready() { sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc|comp)'; }
if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP && node_ready; then
  echo "slurm_setup: SLURM already running"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "slurm_setup: must run as root" >&2; exit 1; }

APT="apt-get -o DPkg::Lock::Timeout=600 -qq"
if ! dpkg -s slurmctld slurmd slurm-client munge >/dev/null 2>&1; then
  $APT update
  $APT install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

HOST=$(hostname -s)
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts   # slurmd looks itself up

# munge: key, runtime dir, daemon
[ -s /etc/munge/munge.key ] || /usr/sbin/mungekey --create --force 2>/dev/null || \
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null

# slurm.conf with this node's real CPUs / memory
NODESPEC=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
if [ -f /etc/slurm/slurmdbd.conf ]; then
  ACCT=$'JobAcctGatherType=jobacct_gather/linux\nAccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\nAccountingStoragePort=6819'
else
  ACCT=$'JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none'
fi
CONF=$(mktemp)
cat > "$CONF" <<CONF
ClusterName=localcluster
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
${ACCT}
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default a job without --mem takes the whole node's memory and jobs serialise
DefMemPerCPU=1024
# the default batch_sched_delay of 3 s would delay every job start
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
MinJobAge=300
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
NodeName=${HOST} NodeAddr=127.0.0.1 ${NODESPEC} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
cmp -s "$CONF" /etc/slurm/slurm.conf || install -m 0644 "$CONF" /etc/slurm/slurm.conf
rm -f "$CONF"

# alive = exists and is not a zombie (PID 1 may reap orphans late)
alive() { [ -n "$1" ] && [ -d "/proc/$1" ] && ! grep -q "^State:.*Z" "/proc/$1/status" 2>/dev/null; }
running() { [ -f "$1" ] && alive "$(cat "$1")"; }
running /run/slurmctld.pid || /usr/sbin/slurmctld
running /run/slurmd.pid || /usr/sbin/slurmd
for _ in $(seq 150); do node_ready && break; sleep 0.2; done
# a node left DOWN/DRAIN by an earlier unclean stop is put back into service
node_ready || scontrol update nodename="$HOST" state=resume 2>/dev/null || true
for _ in $(seq 50); do node_ready && break; sleep 0.2; done
node_ready || { sinfo; echo "slurm_setup: node not ready" >&2; exit 1; }
echo "slurm_setup: SLURM running ($(sinfo -h -o '%P %D %t %c CPUs %m MB' | head -1))"
