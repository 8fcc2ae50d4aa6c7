#!/usr/bin/env bash
# Install and start the real services the tests use: SLURM, SGE (as root) and MPI (in the venv).
# Usage: ci/services.sh [VENV [SERVICE...]]; SERVICE is any of MPI UCX CHROMIUM SLURM SGE SSH (all by
# default). A service it was asked to start that did not start makes it exit 1 (so CI fails
# instead of passing with those tests skipped); without root, SLURM, SGE and SSH are skipped.
set -u
venv=${1:-.venv}
[ $# -gt 0 ] && shift
wanted=" ${*:-MPI UCX CHROMIUM SLURM SGE SSH} "
here=$(cd "$(dirname "$0")" && pwd)
failed=""
run() {
  local name=$1; shift
  [[ $wanted == *" $name "* ]] || return 0
  echo "== setting up $name"
  if ! "$@"; then
    echo "!! $name could not be set up" >&2
    failed="$failed $name"
  fi
}
run MPI bash "$here/mpi_setup.sh" "$venv"
# UCX runs on CPU from PyPI wheels (no GPU needed): the ucx:// tests use it over loopback.
run UCX "$venv/bin/python" -m pip install -q --disable-pip-version-check "ucxx-cu12>=0.52,<0.53"
# Headless Chromium (Debian's package) for the dashboard's browser tests.
run CHROMIUM bash "$here/chromium_setup.sh"
if [ "$(id -u)" = 0 ]; then
  run SLURM bash "$here/slurm_setup.sh"
  run SGE bash "$here/sge_setup.sh"
  # sshd (loopback + network-namespace hosts) for tests/test_ssh*.py
  run SSH bash "$here/ssh_setup.sh"
else
  echo "== not root: SLURM, SGE and SSH tests will be skipped"
fi
if [ -n "$failed" ]; then
  echo "!! services that did not start:$failed" >&2
  exit 1
fi
exit 0
