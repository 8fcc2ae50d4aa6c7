"""`hpcdask scheduler --dashboard-address` and `hpcdask-mpi --dashboard-address`, as processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest

from hpcdask import Client
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(90)
BIN = Path(sys.executable).parent
MPIRUN = shutil.which("mpirun", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))


@pytest.fixture
def spawn():
    procs = []

    def start(args, log):
        p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _check_dashboard(sched_file: Path, n_workers: int) -> None:
    with Client(scheduler_file=str(sched_file), set_as_default=False) as client:
        link = client.dashboard_link
        assert link and link.startswith("http://127.0.0.1:") and "token=" in link
        base, token = link.split("/status?token=")
        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            assert r.read() == b"ok\n"
        wait_for(lambda: len(_json(f"{base}/api/workers.json?token={token}")["workers"])
                 == n_workers, timeout=45)  # fmt: skip
        client.shutdown()


def test_hpcdask_scheduler_dashboard_address(spawn, tmp_path):
    sched_file = tmp_path / "s.json"
    log = tmp_path / "scheduler.log"
    p = spawn([sys.executable, "-m", "hpcdask", "scheduler", "--host", "127.0.0.1", "--port", "0",
               "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)], log)  # fmt: skip
    wait_for(lambda: "Dashboard at http://127.0.0.1:" in log.read_text(), timeout=30)
    _check_dashboard(sched_file, 0)
    assert p.wait(30) == 0


def test_hpcdask_scheduler_no_dashboard(spawn, tmp_path):
    sched_file = tmp_path / "s.json"
    spawn([sys.executable, "-m", "hpcdask", "scheduler", "--host", "127.0.0.1", "--port", "0",
           "--no-dashboard", "--scheduler-file", str(sched_file)], tmp_path / "log")  # fmt: skip
    wait_for(sched_file.exists, timeout=30)
    with Client(scheduler_file=str(sched_file), set_as_default=False) as client:
        assert client.dashboard_link is None
        client.shutdown()


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None or find_spec("mpi4py") is None,
                    reason="needs mpirun and mpi4py: run `ci/mpi_setup.sh .venv`")  # fmt: skip
def test_hpcdask_mpi_dashboard_address(spawn, tmp_path):
    sched_file = tmp_path / "s.json"
    spawn([MPIRUN, "-n", "2", sys.executable, "-m", "hpcdask.mpi", "--scheduler-file",
           str(sched_file), "--no-nanny", "--interface", "lo", "--dashboard-address",
           "127.0.0.1:0", "--local-directory", str(tmp_path)], tmp_path / "mpirun.log")  # fmt: skip
    wait_for(sched_file.exists, timeout=45)
    _check_dashboard(sched_file, 1)
