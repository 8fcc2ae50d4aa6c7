#!/usr/bin/env bash
# Install an MPI implementation (the `mpich` PyPI wheel) and mpi4py into a Python environment.
#
# Why wheels and not apt: they install in seconds, need no root, put `mpirun`/`mpiexec` in the
# venv's bin/ next to python, and are the same on a laptop, CI and this machine.
#
# Usage: ci/mpi_setup.sh [VENV_DIR]   (default: the python on PATH / the active venv)
# Idempotent: does nothing when mpirun and mpi4py already work.
set -euo pipefail

if [[ $# -ge 1 && -n "$1" ]]; then
    PY="$1/bin/python"
else
    PY="$(command -v python3 || command -v python)"
fi
[[ -x "$PY" ]] || { echo "mpi_setup: no python at $PY" >&2; exit 1; }
BIN="$(dirname "$PY")"

check() {
    [[ -x "$BIN/mpirun" ]] && "$PY" - <<'PY' >/dev/null 2>&1
from mpi4py import MPI
MPI.Get_library_version()
PY
}

if check; then
    echo "mpi_setup: mpirun and mpi4py already work in $BIN"
    exit 0
fi

"$PY" -m pip install --quiet --disable-pip-version-check "mpich" "mpi4py>=3.1"

if ! check; then
    echo "mpi_setup: mpich/mpi4py installed but 'mpirun' or 'from mpi4py import MPI' fails" >&2
    exit 1
fi
"$BIN/mpirun" -n 2 "$PY" -c "from mpi4py import MPI; c = MPI.COMM_WORLD; assert c.Get_size() == 2"
echo "mpi_setup: ok ($("$PY" -c 'from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])'))"
