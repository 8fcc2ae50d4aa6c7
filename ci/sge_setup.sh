#!/bin/bash
# Start a single-node Son of Grid Engine (Debian 12 gridengine 8.1.9) as root, without systemd.
#
# Why: hpcdask's jobqueue tests (pytest -m sge) submit real jobs. Queue `all.q` (one slot per CPU)
# with parallel environment `smp`. Idempotent: exits 0 at once when qmaster and execd are up and
# all.q exists; installs the Debian packages only when missing. Stop: `qconf -ke all; qconf -km`.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive SGE_ROOT=/var/lib/gridengine SGE_CELL=default
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
H=$(hostname)

alive() { [ -n "$1" ] && [ -d "/proc/$1" ] && ! grep -q "^State:.*Z" "/proc/$1/status" 2>/dev/null; }
qm_pid() { cat /var/spool/gridengine/qmaster/qmaster.pid 2>/dev/null || true; }
ed_pid() { cat /var/spool/gridengine/execd/*/execd.pid 2>/dev/null | head -1 || true; }
if command -v qstat >/dev/null && alive "$(qm_pid)" && alive "$(ed_pid)" \
   && qconf -sql 2>/dev/null | grep -qx all.q && qstat >/dev/null 2>&1; then
  echo "sge_setup: SGE already running"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "sge_setup: must run as root" >&2; exit 1; }

if ! dpkg -s gridengine-master gridengine-exec gridengine-client >/dev/null 2>&1; then
  for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
    printf '%s shared/gridengineconfig boolean true\n%s shared/gridenginecell string default\n%s shared/gridenginemaster string %s\n' \
      $p $p $p "$H"
  done | debconf-set-selections
  apt-get -o DPkg::Lock::Timeout=600 -qq update
  apt-get -o DPkg::Lock::Timeout=600 -qq install -y --no-install-recommends \
    gridengine-master gridengine-exec gridengine-client >/dev/null
fi
C=$SGE_ROOT/$SGE_CELL/common
# the host name resolves to 127.0.0.1, which reverse-resolves to "localhost": alias the two,
# or commlib rejects clients as coming from another host
echo "$H localhost" > $C/host_aliases
echo "$H" > $C/act_qmaster
chown sgeadmin:sgeadmin $C/host_aliases $C/act_qmaster
mkdir -p /var/run/gridengine && chown sgeadmin:sgeadmin /var/run/gridengine
answers() { for _ in $(seq "$1"); do qstat >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
# a qmaster that is alive but does not answer is still shutting down: let it go, then start anew
if alive "$(qm_pid)" && ! answers 25; then
  for _ in $(seq 100); do alive "$(qm_pid)" || break; sleep 0.2; done
fi
alive "$(qm_pid)" || /usr/sbin/sge_qmaster
answers 100 || { echo "sge_setup: sge_qmaster does not answer" >&2; exit 1; }

T=$(mktemp -d); trap 'rm -rf $T' EXIT
# root's jobs are refused with min_uid/min_gid 1000; the file must be named "global"
qconf -sconf global > $T/global
sed -i -e 's/^min_uid .*/min_uid                      0/' \
       -e 's/^min_gid .*/min_gid                      0/' \
       -e 's|^mailer .*|mailer                       /bin/true|' \
       -e 's/^load_report_time .*/load_report_time             00:00:10/' \
       -e 's/flush_time=00:00:15/flush_time=00:00:01 accounting_flush_time=00:00:00/' $T/global
qconf -Mconf $T/global >/dev/null
# schedule every second (default 15 s) and keep the reasons why a job cannot be scheduled
qconf -ssconf > $T/sched
sed -i -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
       -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
       -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' \
       -e 's/^schedd_job_info .*/schedd_job_info                   true/' \
       -e 's/^job_load_adjustments .*/job_load_adjustments              NONE/' \
       -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time        0:0:0/' $T/sched
qconf -Msconf $T/sched >/dev/null
qconf -sh | grep -qx "$H" || qconf -ah "$H" >/dev/null
qconf -ss 2>/dev/null | grep -qx "$H" || qconf -as "$H" >/dev/null
# execd reads min_uid when it starts, so it starts after the global config change
for _ in $(seq 10); do alive "$(ed_pid)" || break; sleep 0.2; done  # an execd told to stop goes
alive "$(ed_pid)" || /usr/sbin/sge_execd
for _ in $(seq 100); do qconf -sel 2>/dev/null | grep -qx "$H" && break; sleep 0.2; done
if ! qconf -shgrpl 2>/dev/null | grep -qx '@allhosts'; then
  printf 'group_name @allhosts\nhostlist %s\n' "$H" > $T/allhosts; qconf -Ahgrp $T/allhosts >/dev/null
fi
if ! qconf -spl 2>/dev/null | grep -qx smp; then
  cat > $T/smp <<'PE'
pe_name            smp
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
PE
  qconf -Ap $T/smp >/dev/null
fi
if ! qconf -sql 2>/dev/null | grep -qx all.q; then
  { cat <<'Q'
qname                 all.q
hostlist              @allhosts
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      unix_behavior
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
Q
    echo "slots                 $(nproc)"
    for l in s_rt h_rt s_cpu h_cpu s_fsize h_fsize s_data h_data s_stack h_stack s_core h_core s_rss h_rss s_vmem h_vmem; do
      printf '%-21s INFINITY\n' $l; done; } > $T/all.q
  qconf -Aq $T/all.q >/dev/null
fi
qmod -c 'all.q' >/dev/null 2>&1 || true
# the queue instance is usable once the execd reports (state without 'u', unknown)
usable() { qstat -f -q all.q 2>/dev/null | grep '^all\.q@' | awk '{print $NF}' | grep -qv u; }
for _ in $(seq 100); do usable && break; sleep 0.2; done
if ! usable; then
  alive "$(ed_pid)" || /usr/sbin/sge_execd
  for _ in $(seq 100); do usable && break; sleep 0.2; done
  usable || { qstat -f; echo "sge_setup: the execution daemon does not report" >&2; exit 1; }
fi
echo "sge_setup: SGE running (qmaster pid $(qm_pid), execd pid $(ed_pid))"
