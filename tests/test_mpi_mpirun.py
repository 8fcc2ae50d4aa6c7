"""hpcdask-mpi and initialize() under a real mpirun (ci/mpi_setup.sh installs one).

Every test starts its own mpirun in a new session and kills that session at teardown, so a
failing test cannot leave ranks behind. Waiting is always polling against a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from hpcdask.testing.polling import wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MPIRUN = shutil.which("mpirun", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
HPCDASK_MPI = [sys.executable, "-m", "hpcdask.mpi"]
NOISE = ("Traceback", "CommClosedError", "Task was destroyed", "Exception ignored")

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        MPIRUN is None or find_spec("mpi4py") is None,
        reason="needs mpirun and mpi4py: run `ci/mpi_setup.sh .venv` "
        "(pip install 'hpcdask[mpi]' mpich)",
    ),
]


class Job:
    """One mpirun, its combined output in a file, and its process group for cleanup."""

    def __init__(
        self, tmp: Path, n: int, args: list, mpirun_args: tuple = (), env: dict | None = None
    ):
        self.log_path = tmp / f"mpirun-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        full_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HPCDASK_SECRETS_DIR": str(tmp / "secrets"),
            **(env or {}),
        }
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [MPIRUN, *mpirun_args, "-n", str(n), *map(str, args)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=tmp,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mpirun still running after {timeout}s:\n{self.output[-12000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Stop this mpirun and every process under it (ranks get their own process groups)."""
        import psutil

        if self.alive():
            try:
                tree = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                tree = []
            os.killpg(self.proc.pid, signal.SIGKILL)
            for p in tree:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            self.proc.wait()
        self.log.close()

    def rank_pids(self) -> dict[int, int]:
        """pid of each rank's process, found by the PMI_RANK that mpirun gives it."""
        import psutil

        pids = {}
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                env = p.environ()
            except (psutil.Error, OSError):
                continue
            if "PMI_RANK" in env and p.parent() and "PMI_RANK" not in p.parent().environ():
                pids[int(env["PMI_RANK"])] = p.pid
        return pids


@pytest.fixture
def mpirun(tmp_path):
    jobs = []

    def start(n: int, args: list, **kw) -> Job:
        job = Job(tmp_path, n, args, **kw)
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        job.kill()


def poll(cond, timeout: float, job: Job | None = None, what: str = "condition"):
    def mpirun_alive() -> None:
        if job is not None and not job.alive():
            pytest.fail(
                f"mpirun exited ({job.proc.returncode}) while waiting for {what}:\n"
                f"{job.output[-4000:]}"
            )

    return wait_for(cond, timeout, 0.02, what=what, check=mpirun_alive,
                    details=(lambda: job.output[-4000:]) if job else None)  # fmt: skip


def assert_quiet(output: str) -> None:
    for word in NOISE:
        assert word not in output, f"{word!r} in mpirun output:\n{output[-4000:]}"


def n_workers(client) -> int:
    return len(client.scheduler_info()["workers"])


# ---------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("n", [2, 4, 8])
def test_cli_with_scheduler_file(mpirun, tmp_path, n):
    from hpcdask.client import Client

    sched_file = tmp_path / "scheduler.json"
    job = mpirun(
        n,
        [
            *HPCDASK_MPI,
            "--scheduler-file",
            sched_file,
            "--no-nanny",
            "--nthreads",
            1,
            "--local-directory",
            tmp_path,
        ],
    )
    poll(sched_file.exists, 30, job, "the scheduler file")
    assert stat.S_IMODE(sched_file.stat().st_mode) == 0o600
    info = json.loads(sched_file.read_text())
    assert info["secret"] and info["address"].startswith("tcp://")

    client = Client(scheduler_file=str(sched_file))
    try:
        poll(lambda: n_workers(client) == n - 1, 45, job, f"{n - 1} workers")
        names = sorted(str(w["name"]) for w in client.scheduler_info()["workers"].values())
        assert names == sorted(f"dask_mpi-{r}" for r in range(1, n))  # dask-mpi's default
        assert sum(client.gather(client.map(lambda x: x * 2, range(50)))) == 2 * sum(range(50))
        assert_secret_not_passed(job, info["secret"])
        client.shutdown()
    finally:
        client.close()
    assert job.wait(60) == 0  # generous: a restarted worker must start up on a loaded machine
    assert not sched_file.exists()
    assert_quiet(job.output)


def assert_secret_not_passed(job: Job, secret_hex: str) -> None:
    """The secret reached the ranks by MPI broadcast: no rank has it in argv or environment."""
    import psutil

    pids = job.rank_pids()
    assert len(pids) >= 2
    for pid in pids.values():
        proc = psutil.Process(pid)
        assert not any(secret_hex in arg for arg in proc.cmdline())
        assert not any(secret_hex in value for value in proc.environ().values())


def test_cli_with_nanny_names_and_inclusive_workers(mpirun, tmp_path):
    from hpcdask.client import Client

    sched_file = tmp_path / "scheduler.json"
    job = mpirun(
        2,
        [
            *HPCDASK_MPI,
            "--scheduler-file",
            sched_file,
            "--nanny",
            "--name",
            "job7",
            "--inclusive-workers",
            "--local-directory",
            tmp_path,
        ],
    )
    poll(sched_file.exists, 30, job, "the scheduler file")
    client = Client(scheduler_file=str(sched_file))
    try:
        poll(lambda: n_workers(client) == 2, 45, job, "2 workers")
        names = sorted(str(w["name"]) for w in client.scheduler_info()["workers"].values())
        assert names == ["job7-0", "job7-1"]
        assert client.submit(lambda: os.getpid()).result(timeout=30) not in job.rank_pids().values()
        client.shutdown()
    finally:
        client.close()
    assert job.wait(60) == 0  # generous: a restarted worker must start up on a loaded machine
    assert_quiet(job.output)


def test_cli_sigterm_closes_gracefully(mpirun, tmp_path):
    """scancel/walltime/Ctrl-C: mpirun forwards the signal and every rank closes and exits 0."""
    from hpcdask.client import Client

    sched_file = tmp_path / "scheduler.json"
    job = mpirun(3, [*HPCDASK_MPI, "--scheduler-file", sched_file, "--no-nanny"])
    poll(sched_file.exists, 30, job, "the scheduler file")
    with Client(scheduler_file=str(sched_file)) as client:
        poll(lambda: n_workers(client) == 2, 45, job, "2 workers")
    job.proc.send_signal(signal.SIGTERM)
    rc = job.wait(20)
    assert rc == 0, job.output[-4000:]
    assert not sched_file.exists()  # the scheduler closed rather than being killed


def test_a_rank_that_leaves_does_not_stop_the_others(mpirun, tmp_path):
    """A worker rank retired mid-job closes; the rest carry on with its data moved.

    After the start-up broadcast hpcdask does no MPI communication, so nothing ties the
    remaining ranks to the one that left. (Its process then waits in MPI_Finalize, which in
    MPICH returns only when every rank finalizes: an exit without it would make mpirun kill
    the whole job.)
    """
    from hpcdask.client import Client

    sched_file = tmp_path / "scheduler.json"
    job = mpirun(4, [*HPCDASK_MPI, "--scheduler-file", sched_file, "--no-nanny"])
    poll(sched_file.exists, 30, job, "the scheduler file")
    client = Client(scheduler_file=str(sched_file))
    try:
        poll(lambda: n_workers(client) == 3, 45, job, "3 workers")
        futures = client.map(lambda x: x + 1, range(60))
        assert client.gather(futures) == list(range(1, 61))
        by_name = {str(w["name"]): a for a, w in client.scheduler_info()["workers"].items()}
        client.retire_workers([by_name["dask_mpi-2"]])
        poll(lambda: n_workers(client) == 2, 30, job, "rank 2's worker to leave")
        total = client.submit(lambda *xs: sum(xs), *futures)
        assert total.result(timeout=30) == sum(range(1, 61))
        client.shutdown()
    finally:
        client.close()
    assert job.wait(60) == 0  # generous: a restarted worker must start up on a loaded machine
    assert_quiet(job.output)


def test_a_killed_rank_ends_the_job_rather_than_hanging_it(mpirun, tmp_path):
    """mpirun, not hpcdask, decides what a crashed rank means; MPICH's ends the job (even with
    -disable-auto-cleanup in MPICH 5.0). What hpcdask must not do is leave ranks waiting."""
    sched_file = tmp_path / "scheduler.json"
    job = mpirun(3, [*HPCDASK_MPI, "--scheduler-file", sched_file, "--no-nanny"])
    poll(sched_file.exists, 30, job, "the scheduler file")
    victim = poll(lambda: job.rank_pids().get(2), 20, job, "the pid of rank 2")
    os.kill(victim, signal.SIGKILL)
    assert job.wait(20) != 0


def test_nanny_restarts_a_dead_worker_process_and_the_rank_survives(mpirun, tmp_path):
    """With --nanny (the CLI default) a worker crash is not a rank death, whatever mpirun does."""
    import psutil

    from hpcdask.client import Client

    sched_file = tmp_path / "scheduler.json"
    job = mpirun(
        3, [*HPCDASK_MPI, "--scheduler-file", sched_file, "--nanny", "--local-directory", tmp_path]
    )
    poll(sched_file.exists, 30, job, "the scheduler file")
    client = Client(scheduler_file=str(sched_file))
    try:
        poll(lambda: n_workers(client) == 2, 45, job, "2 workers")
        futures = client.map(lambda x: x * 3, range(40))
        assert client.gather(futures) == [x * 3 for x in range(40)]
        rank2 = job.rank_pids()[2]
        child = poll(lambda: psutil.Process(rank2).children(), 10, job, "the worker process")[0]
        child.kill()

        def restarted() -> bool:  # one snapshot: two calls could straddle the dead worker's removal
            workers = client.scheduler_info()["workers"]
            return len(workers) == 2 and child.pid not in {w["pid"] for w in workers.values()}

        poll(restarted, 45, job, "the nanny to restart its worker")
        assert client.submit(lambda *xs: sum(xs), *futures).result(timeout=30) == 3 * sum(range(40))
        assert psutil.pid_exists(rank2)
        client.shutdown()
    finally:
        client.close()
    assert job.wait(60) == 0  # generous: a restarted worker must start up on a loaded machine


# -------------------------------------------------------------------------------- batch mode

SCRIPT = """
import json, os, sys
from hpcdask.mpi import initialize
initialize(**json.loads(sys.argv[1]))
from hpcdask.client import Client
client = Client()  # found through initialize(), left open as scripts usually do
info = client.scheduler_info()["workers"]
print("WORKERS", json.dumps(sorted(str(w["name"]) for w in info.values())), flush=True)
print("RESULT", sum(client.gather(client.map(lambda x: x + 1, range(100)))), flush=True)
if os.environ.get("CLIENT_FAILS"):
    raise RuntimeError("boom in client code")
"""


def run_script(mpirun, tmp_path, n, env=None, **kwargs) -> tuple[Job, int, float]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    job = mpirun(n, [sys.executable, script, json.dumps(kwargs)], env=env)
    rc = job.wait(60)
    return job, rc, time.monotonic() - job.started


def result_lines(output: str) -> dict:
    return dict(
        line.split(" ", 1)
        for line in output.splitlines()
        if line.startswith(("WORKERS ", "RESULT "))
    )


@pytest.mark.parametrize(
    "n, kwargs, workers",
    [
        (4, {}, ["2", "3"]),
        (2, {"client_rank": 0}, ["1"]),
        (3, {"exclusive_workers": False}, ["0", "2"]),
        (8, {"client_rank": 0}, [str(r) for r in range(1, 8)]),
        (3, {"nanny": True}, ["2"]),
    ],
)
def test_batch_mode_runs_and_exits_cleanly(mpirun, tmp_path, n, kwargs, workers):
    job, rc, elapsed = run_script(mpirun, tmp_path, n, **kwargs)
    out = job.output
    assert rc == 0, out[-4000:]
    lines = result_lines(out)
    assert json.loads(lines["WORKERS"]) == workers  # initialize() waited for all of them
    assert lines["RESULT"] == str(sum(range(1, 101)))
    assert_quiet(out)
    assert elapsed < 30


def test_exception_in_client_code_fails_the_job(mpirun, tmp_path):
    job, rc, _ = run_script(mpirun, tmp_path, 3, env={"CLIENT_FAILS": "1"})
    assert rc != 0
    assert "boom in client code" in job.output
    assert result_lines(job.output)["RESULT"] == str(sum(range(1, 101)))


def test_batch_world_too_small(mpirun, tmp_path):
    job, rc, _ = run_script(mpirun, tmp_path, 2)
    assert rc != 0
    assert "WorldTooSmallError" in job.output and "mpirun -n N" in job.output


NO_EXIT_SCRIPT = """
import sys
from hpcdask.mpi import initialize, send_close_signal
is_client = initialize(exit=False)
if is_client:
    from hpcdask.client import Client
    with Client() as client:
        print("RESULT", client.submit(lambda: 6 * 7).result(), flush=True)
    send_close_signal()
sys.stdout.write(f"RETURNED {is_client}\\n")  # one write: ranks share stdout, lines must not interleave
sys.stdout.flush()  # every rank gets here, as with dask-mpi
"""


def test_batch_mode_without_exit_returns_on_every_rank(mpirun, tmp_path):
    script = tmp_path / "no_exit.py"
    script.write_text(NO_EXIT_SCRIPT)
    job = mpirun(4, [sys.executable, script])
    assert job.wait(60) == 0, job.output[-4000:]
    assert "RESULT 42" in job.output
    assert job.output.count("RETURNED False") == 3 and job.output.count("RETURNED True") == 1
    assert_quiet(job.output)
