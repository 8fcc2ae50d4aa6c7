"""The rank layout and the launcher's error messages: no runtime and no mpirun needed.

The error-message tests run real subprocesses because what matters is what a user sees on
stderr and the exit code, not the exception object.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcdask.mpi._world import CLIENT, SCHEDULER, WORKER, Layout, WorldTooSmallError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(60)


def run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=50,
        cwd=ROOT,
    )


def test_default_batch_layout():
    layout = Layout(4)
    assert layout.roles(0) == {SCHEDULER}
    assert layout.roles(1) == {CLIENT}
    assert layout.roles(2) == layout.roles(3) == {WORKER}
    assert layout.worker_ranks == [2, 3]


def test_client_beside_scheduler_and_inclusive_workers():
    assert Layout(2, client_rank=0).roles(0) == {SCHEDULER, CLIENT}
    assert Layout(2, client_rank=0).worker_ranks == [1]
    assert Layout(3, exclusive_workers=False).worker_ranks == [0, 2]
    assert Layout(1, client_rank=0, exclusive_workers=False).roles(0) == {SCHEDULER, CLIENT, WORKER}


def test_cli_layout_has_no_client():
    layout = Layout(3, client_rank=None)
    assert [layout.roles(r) for r in range(3)] == [{SCHEDULER}, {WORKER}, {WORKER}]


@pytest.mark.parametrize(
    "layout, needs",
    [
        (Layout(2), "at least 3"),
        (Layout(1, client_rank=0), "at least 2"),
        (Layout(1, client_rank=None), "at least 2"),
    ],
)
def test_world_too_small_says_how_many_and_how_to_fix(layout, needs):
    with pytest.raises(WorldTooSmallError, match=needs) as info:
        layout.check()
    assert "mpirun -n" in str(info.value)


def test_bad_client_rank():
    with pytest.raises(ValueError, match="client_rank"):
        Layout(4, client_rank=-1)
    with pytest.raises(ValueError, match="scheduler_rank"):
        Layout(4, scheduler_rank="0")


def test_dask_mpi_scheduler_and_client_ranks_anywhere():
    layout = Layout(4, client_rank=3, scheduler_rank=2)
    assert [layout.roles(r) for r in range(4)] == [{WORKER}, {WORKER}, {SCHEDULER}, {CLIENT}]
    with pytest.raises(WorldTooSmallError, match="at least 4 .*client on rank 3"):
        Layout(3, client_rank=3, scheduler_rank=2).check()
    joining = Layout(2, client_rank=None, scheduler_rank=None)  # --no-scheduler
    assert joining.worker_ranks == [0, 1]
    joining.check()


def test_missing_mpi4py_says_what_to_install():
    proc = run("import sys; sys.modules['mpi4py'] = None\nfrom hpcdask.mpi.cli import main; main()")
    assert proc.returncode == 1
    assert "pip install 'hpcdask[mpi]' mpich" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_mpi4py_in_batch_mode_raises_importerror():
    proc = run(
        "import sys; sys.modules['mpi4py'] = None\n"
        "from hpcdask.mpi import initialize, MPIUnavailableError\n"
        "try:\n    initialize()\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MPIUnavailableError")
    assert "pip install 'hpcdask[mpi]' mpich" in proc.stdout


def test_import_does_not_need_mpi4py():
    proc = run("import sys; sys.modules['mpi4py'] = None\nimport hpcdask.mpi; print('ok')")
    assert proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.mpi
def test_missing_mpi_library_says_what_to_install():
    pytest.importorskip("mpi4py", reason="mpi4py not installed (ci/mpi_setup.sh)")
    proc = run(
        "from hpcdask.mpi.cli import main; main()",
        env={"MPI4PY_LIBMPI": "/nonexistent/libmpi.so.12"},
    )
    assert proc.returncode == 1
    assert "cannot load an MPI library" in proc.stderr
    assert "pip install 'hpcdask[mpi]' mpich" in proc.stderr


@pytest.mark.mpi
def test_cli_outside_mpirun_is_a_world_of_one():
    pytest.importorskip("mpi4py", reason="mpi4py not installed (ci/mpi_setup.sh)")
    proc = run("from hpcdask.mpi.cli import main; main()")
    assert proc.returncode == 1
    assert "1 rank(s)" in proc.stderr and "mpirun -n N" in proc.stderr


def test_dask_mpi_worker_class_names_map_to_hpcdask():
    from hpcdask.mpi._servers import resolve_worker_class
    from hpcdask.worker import Nanny, Worker

    assert resolve_worker_class(None, nanny=False) is Worker
    assert resolve_worker_class(None, nanny=True) is Nanny
    assert resolve_worker_class("distributed.Nanny", nanny=False) is Nanny
    assert resolve_worker_class("distributed.Worker", nanny=True) is Worker
    assert resolve_worker_class("hpcdask.worker.Nanny", nanny=False) is Nanny
    assert resolve_worker_class(Worker, nanny=True) is Worker
