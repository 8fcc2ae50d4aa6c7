#!/usr/bin/env bash
# Install and start the real services the tests use: SLURM, SGE (as root) and MPI (in the venv).
# A service that cannot be set up is reported loudly; its tests then skip with the reason.
set -u
venv=${1:-.venv}
here=$(cd "$(dirname "$0")" && pwd)
status=0
run() {
  local name=$1; shift
  echo "== setting up $name"
  if ! "$@"; then
    echo "!! $name could not be set up; its tests will be skipped" >&2
    status=1
  fi
}
[ -f "$here/mpi_setup.sh" ] && run MPI bash "$here/mpi_setup.sh" "$venv"
# UCX runs on CPU from PyPI wheels (no GPU needed): the ucx:// tests use it over loopback.
run UCX "$venv/bin/python" -m pip install -q --disable-pip-version-check "ucxx-cu12>=0.52,<0.53"
if [ "$(id -u)" = 0 ]; then
  [ -f "$here/slurm_setup.sh" ] && run SLURM bash "$here/slurm_setup.sh"
  [ -f "$here/sge_setup.sh" ] && run SGE bash "$here/sge_setup.sh"
  # sshd (loopback + network-namespace hosts) for tests/test_ssh*.py: CI fails without it
  if [ -f "$here/ssh_setup.sh" ] && ! bash "$here/ssh_setup.sh"; then
    echo "!! sshd could not be started: failing" >&2
    exit 1
  fi
else
  echo "== not root: SLURM and SGE tests will be skipped"
fi
exit 0
