"""JobQueueCluster: workers in batch jobs, scaled in whole jobs, tracked by polling the queue.

Jobs are tracked, not assumed: one batched status call per `poll_interval` gives every job's
real state and the batch system's reason; a job that ends before its workers connect is kept
with the tail of its output, and `wait_for_workers` fails with that instead of waiting forever.
Workers leave before walltime (`--lifetime`) and the cluster submits replacement jobs first.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shlex
import subprocess
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from ..deploy.cluster import Cluster
from ..utils.durations import parse_duration
from ..utils.sizes import parse_bytes
from . import credentials, script
from .batch import (
    ENDED,
    RUNNING,
    BatchSystem,
    JobFailedError,  # fmt: skip
    JobSubmissionError,
    tail,
)
from .tracking import Job, JobTracking, _Slot

logger = logging.getLogger("hpcdask.jobqueue")
MAX_FAILED_IN_A_ROW = 3


class JobQueueCluster(JobTracking, Cluster):
    """Base of SLURMCluster, PBSCluster and SGECluster; subclasses name the system and its
    batch adapter. Options as dask-jobqueue (`cores`, `memory`, `processes`, `walltime`, ...),
    defaults from configuration `jobqueue.<system>` and an optional site profile (`site=`)."""

    system = ""
    batch_class: type[BatchSystem] = BatchSystem

    def __init__(self, n_workers: int = 0, *, site: str | None = None,
                 template_dir: str | None = None, security: Any = None,
                 asynchronous: bool = False, config_name: str | None = None,
                 loop: Any = None, silence_logs: Any = None, dashboard_address: Any = None,
                 host: Any = None, scheduler_cls: Any = None, scheduler_job: Any = False,
                 shutdown_on_close: bool = True, **options: Any) -> None:  # fmt: skip
        credentials.check_cluster_keywords(type(self).__name__, dashboard_address, host,
                                           scheduler_cls)  # fmt: skip
        # the scheduler in a job of its own (scheduler_job.py); a detached cluster needs one
        self._scheduler_job = scheduler_job or (not shutdown_on_close and {})
        if not shutdown_on_close and not options.get("name"):
            raise ValueError("a cluster that outlives this process (shutdown_on_close=False) "
                             "needs name=, to find it again: Client(name), hpcdask cluster ...")  # fmt: skip
        self.cluster_name = None if shutdown_on_close else options["name"]
        self._opts = script.options(self.system, site=site, template_dir=template_dir,
                                    config_name=config_name, **options)  # fmt: skip
        if self._opts.get("protocol"):  # dask-jobqueue spells it "tls://"
            self._opts["protocol"] = str(self._opts["protocol"]).split("://")[0]
        if security is True or getattr(security, "has_tls", False) or \
                getattr(security, "require_encryption", False):  # fmt: skip
            self._opts["protocol"] = self._opts.get("protocol") or "tls"  # as dask-jobqueue
        self._ctx = script.context(self.system, self._opts)  # fails early on missing cores/memory
        security, self._worker_security, self._tls_files = credentials.for_jobs(
            security, self._opts.get("shared_temp_directory")
        )
        self._ctx["tls_args"] = script.tls_args(self._worker_security)
        sched = dict(self._opts.get("scheduler_options") or {})
        if not {"interface", "host"} & set(sched) and self._opts.get("interface"):
            sched["interface"] = self._opts["interface"]  # scheduler_options may pick another
        if "protocol" not in sched and self._opts.get("protocol"):
            sched["protocol"] = self._opts["protocol"]
        if silence_logs:
            credentials.silence(silence_logs)
        log_directory = self._opts.get("log_directory")
        if log_directory:  # the batch system does not create it, and the job then dies unseen
            expanded = os.path.expandvars(os.path.expanduser(log_directory))
            if "$" not in expanded:  # else a variable of the compute nodes: theirs to create
                os.makedirs(expanded, exist_ok=True)
                self._opts["log_directory"] = self._ctx["log_directory"] = expanded
        super().__init__(asynchronous=asynchronous, security=security, scheduler_options=sched,
                         shutdown_on_close=shutdown_on_close)  # fmt: skip
        self.processes: int = self._ctx["processes"]
        self.batch = self._make_batch()
        self.jobs: dict[str, Job] = {}
        self._n_workers = n_workers
        self._submit_dir = os.getcwd()
        self._secret_path: Path | None = None
        self._script = ""
        self._poller: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._backoff = False
        self._waiting = 0  # wait_for_workers calls in progress: no backing off meanwhile
        self._failed_in_a_row = 0
        self._begin()

    async def _start_scheduler(self) -> Any:
        if self._scheduler_job is False:
            return await super()._start_scheduler()
        from . import scheduler_job

        return await scheduler_job.start(self, self._scheduler_job)

    def _make_batch(self) -> BatchSystem:
        return self.batch_class(self._opts.get("submit_command_extra"))

    # ------------------------------------------------------------ scripts and secrets

    def job_script(self) -> str:
        """The script this cluster submits (the scheduler's address once it has started)."""
        if self._script:
            return self._script
        return script.render(self.system, self._ctx)

    @property
    def job_header(self) -> str:
        """The script's batch-system directives (dask-jobqueue's `job_header`)."""
        prefix = {"slurm": "#SBATCH", "pbs": "#PBS", "sge": "#$"}[self.system]
        return "\n".join(x for x in self.job_script().splitlines() if x.startswith(prefix + " "))

    @property
    def job_name(self) -> str:
        return self._ctx["job_name"]

    @property
    def submit_command(self) -> str:
        return shlex.join(self.batch.submit_command)

    @submit_command.setter
    def submit_command(self, command: str) -> None:  # as dask-jobqueue: a shell-like string
        self.batch.submit_command = shlex.split(command)

    @property
    def cancel_command(self) -> str:
        return shlex.join(self.batch.cancel_command)

    @cancel_command.setter
    def cancel_command(self, command: str) -> None:
        self.batch.cancel_command = shlex.split(command)

    def _write_secret(self) -> Path:
        from ..security import secrets_dir

        d = secrets_dir()
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = d / f"jobqueue-{uuid.uuid4().hex}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.security.secret.hex() + "\n")
        return path

    async def _post_start(self) -> None:
        self._secret_path = self._write_secret()
        ctx = script.context(self.system, self._opts, self.scheduler_address,
                             str(self._secret_path), self._worker_security)  # fmt: skip
        self._script = script.render(self.system, ctx)
        self._poller = asyncio.ensure_future(self._poll_loop())
        # jobs must not outlive a script that forgot close(): cancel them at exit
        if self.shutdown_on_close:
            weakref.finalize(self, _cancel_leftovers, list(self.batch.cancel_command), self.jobs,
                             [self._secret_path, *self._tls_files])  # fmt: skip
        if self._n_workers:
            await self._scale(self._n_workers)

    # ------------------------------------------------------------ scaling in whole jobs

    @property
    def _lifetime(self) -> int | None:
        return self._ctx.get("lifetime")

    def _threads_per_worker(self) -> int:
        return self._ctx["nthreads"]

    def scale(self, n: int | None = None, jobs: int | None = None, memory: Any = None,
              cores: int | None = None) -> Any:  # fmt: skip
        """`scale(n)` workers, or enough for `jobs=`, `cores=` or `memory=`; rounds up to jobs."""
        if jobs is not None:
            n = jobs * self.processes
        elif cores is not None:
            n = math.ceil(cores / self._ctx["nthreads"])
        elif memory is not None:
            n = math.ceil(parse_bytes(memory) / parse_bytes(self._ctx["memory_limit"]))
        self._failed_in_a_row = 0  # an explicit request tries again after failures
        return super().scale(n)

    def adapt(self, minimum: int | None = None, maximum: float | None = None,
              minimum_jobs: int | None = None, maximum_jobs: int | None = None,
              minimum_cores: int | None = None, maximum_cores: int | None = None,
              minimum_memory: Any = None, maximum_memory: Any = None,
              **kwargs: Any) -> Any:  # fmt: skip
        """Adapt between `minimum`/`maximum` workers, or bounds in jobs, cores or memory (as
        dask's: a lower bound in cores or memory rounds up to whole workers, an upper one down)."""
        per_cores = self._ctx["nthreads"]
        per_memory = parse_bytes(self._ctx["memory_limit"])
        low = [minimum or 0]
        high = [math.inf if maximum is None else maximum]
        if minimum_jobs is not None:
            low.append(minimum_jobs * self.processes)
        if maximum_jobs is not None:
            high.append(maximum_jobs * self.processes)
        if minimum_cores is not None:
            low.append(math.ceil(minimum_cores / per_cores))
        if maximum_cores is not None:
            high.append(math.floor(maximum_cores / per_cores))
        if minimum_memory is not None:
            low.append(math.ceil(parse_bytes(minimum_memory) / per_memory))
        if maximum_memory is not None:
            high.append(math.floor(parse_bytes(maximum_memory) / per_memory))
        for key in ("interval", "target_duration"):  # dask's spelling: "10s"
            if isinstance(kwargs.get(key), str):
                kwargs[key] = parse_duration(kwargs[key])
        return super().adapt(minimum=max(low), maximum=min(high), **kwargs)

    def _active(self) -> list[Job]:
        return [j for j in self.jobs.values()
                if j.state not in ENDED and not j.cancelled and not j.replaced]  # fmt: skip

    async def _scale(self, n: int) -> None:
        async with self._lock:
            want, active = math.ceil(n / self.processes), self._active()
            if want > len(active):
                await self._submit(want - len(active))
            elif want < len(active):
                await self._stop_jobs(self._cheapest(active)[: len(active) - want])

    def _cheapest(self, jobs: list[Job]) -> list[Job]:
        """Jobs to stop first: not yet running (newest first), then the least busy running ones."""
        addr = self._addresses()
        newest_first = sorted(jobs, key=lambda job: -job.submitted)  # the order among equals
        groups = {job.id: [addr[n] for n in job.names if n in addr] for job in newest_first}
        rank = {jid: i for i, jid in enumerate(self.scheduler.state.retirement_order(groups))}
        return sorted(jobs, key=lambda job: (job.state == RUNNING, rank[job.id]))

    async def _start_workers(self, n: int) -> None:
        await self._submit(math.ceil(n / self.processes))

    async def _stop_workers(self, names: list) -> None:
        ids = {self.workers[n].job for n in names if n in self.workers}
        await self._stop_jobs([self.jobs[i] for i in ids if i in self.jobs])

    async def _submit(self, count: int) -> None:
        if self._failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            bad = [j for j in self.jobs.values() if j.state in ENDED and not j.connected
                   and not j.cancelled][-1:]  # fmt: skip
            raise JobFailedError(
                f"{self.name}: {self._failed_in_a_row} jobs in a row ended before their workers "
                f"connected, so no more are submitted until you call scale() again. Last one: "
                + "".join(j.describe() for j in bad))  # fmt: skip
        results = await asyncio.gather(*(self.batch.submit(self._script, cwd=self._submit_dir)
                                         for _ in range(count)), return_exceptions=True)  # fmt: skip
        for job_id in results:
            if isinstance(job_id, str):
                self._add_job(job_id)
        self._poke()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def _add_job(self, job_id: str) -> Job:
        prefix = f"{self._opts['name']}-{job_id}"
        names = (
            [prefix] if self.processes == 1 else [f"{prefix}-{i}" for i in range(self.processes)]
        )
        job = self.jobs[job_id] = Job(job_id, names, time.time())
        for name in names:
            self.workers[name] = _Slot(job_id)
        logger.info("%s: submitted job %s for workers %s", self.name, job_id, ", ".join(names))
        return job

    async def _stop_jobs(self, jobs: list[Job]) -> None:
        """Hand the workers' data to others first, then cancel the jobs."""
        addr = self._addresses()
        leaving = [
            addr[n] for j in jobs for n in j.names if addr.get(n) in self.scheduler.state.workers
        ]
        if leaving and self.status == "running":
            await self.scheduler.retire_workers(leaving, close=False)
        for job in jobs:
            job.cancelled = True
            for name in job.names:
                self.workers.pop(name, None)
        await self.batch.cancel([j.id for j in jobs if j.state not in ENDED])

    # ------------------------------------------------------------ tracking

    def _addresses(self) -> dict[str, str]:
        """Worker name -> address, for the workers connected now."""
        info = self.scheduler.worker_info if self.scheduler is not None else {}
        return {w.get("name"): a for a, w in info.items() if w.get("name") is not None}

    def _job_of(self, name: Any) -> Job | None:
        """The job a worker belongs to, from the job id its name ends with (`NAME-ID` or
        `NAME-ID-i`); works when NAME had shell variables the job expanded ($SLURM_JOB_ID...)."""
        text = str(name)
        head, sep, index = text.rpartition("-")
        candidates = [head, text] if self.processes > 1 and sep and index.isdigit() else [text]
        for candidate in candidates:
            parts = candidate.split("-")
            for k in range(len(parts) - 1, 0, -1):  # the shortest suffix first
                job = self.jobs.get("-".join(parts[k:]))
                if job is not None:
                    return job
        return None

    def _adopt(self, addr: dict[str, str]) -> None:
        """Give the slots of a job the names its workers really have (see `_job_of`)."""
        for name in addr:
            if name in self.workers:
                continue
            job = self._job_of(name)
            if job is None:
                continue
            for i, expected in enumerate(job.names):
                if expected not in addr and expected in self.workers:
                    self.workers[name] = self.workers.pop(expected)
                    job.names[i] = name
                    break

    def _match_workers(self) -> None:
        addr = self._addresses()
        if any(name not in self.workers for name in addr):
            self._adopt(addr)
        for name, slot in self.workers.items():
            slot.address = addr.get(name)
        for job in self.jobs.values():
            new = {n for n in job.names if n in addr} - job.connected
            if new:
                job.connected |= new
                self._failed_in_a_row = 0

    # ------------------------------------------------------------ waiting and reporting

    def _hopeless_jobs(self, n: int) -> list[Job]:
        """Jobs explaining why n workers cannot all arrive (empty if they still may)."""
        addr = self._addresses()
        coming = sum(1 for j in self.jobs.values()
                     if j.state not in ENDED and not j.cancelled and not j.hopeless
                     for name in j.names if name not in addr)  # fmt: skip
        if len(self.scheduler.state.workers) + coming >= n:
            return []
        return [
            j
            for j in self.jobs.values()
            if j.hopeless or (j.state in ENDED and not j.connected and not j.cancelled)
        ]

    async def _wait_for_workers(self, n: int, timeout: float | None = None) -> None:
        self._waiting += 1
        self._poke()
        try:
            await self._wait_for(n, timeout)
        finally:
            self._waiting -= 1

    async def _wait_for(self, n: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self.scheduler.state.workers) < n:
            bad = self._hopeless_jobs(n)
            if bad:
                raise JobFailedError(f"{self.name}: {n} workers cannot arrive: "
                                     + "\n".join(j.describe() for j in bad))  # fmt: skip
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: only {len(self.scheduler.state.workers)} of {n} workers arrived "
                    f"within {timeout}s. Jobs: "
                    + (
                        "; ".join(j.describe() for j in self.jobs.values())
                        or "none submitted (call scale() first)"
                    )
                )
            await asyncio.sleep(0.05)

    async def _get_logs(self, scheduler: bool, workers: bool) -> dict:
        """The scheduler's and workers' logs, plus the tail of each job's output file."""
        logs = await super()._get_logs(scheduler, workers)
        for job in self.jobs.values():
            for path in self.batch.output_files(
                job.id, self._ctx["job_name"], self._opts.get("log_directory"), self._submit_dir
            ):
                text = tail(path, 50)
                if text:
                    logs[f"job {job.id}"] = text.splitlines()
                    break
        return logs

    def job_states(self) -> dict[str, str]:
        """{job id: state} as last seen in the queue."""
        return {j.id: j.state for j in self.jobs.values()}

    def __repr__(self) -> str:
        text = super().__repr__()
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            counts[job.state] = counts.get(job.state, 0) + 1
        if not counts:
            return text
        return (
            text[:-1] + ", jobs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"
        )

    # ------------------------------------------------------------ closing

    async def _close(self) -> None:
        if self.status in ("closed", "closing"):
            return
        if not self.shutdown_on_close and self.scheduler is not None:  # detached: leave it all
            from . import scheduler_job

            scheduler_job.remember_jobs(self)
            if self._poller is not None:
                self._poller.cancel()
            await self.scheduler.detach()
            return await super()._close()
        if self._poller is not None:
            self._poller.cancel()
        if self._adaptive is not None:
            self._adaptive.stop()
            self._adaptive = None
        mine = [j for j in self.jobs.values() if j.state not in ENDED]
        for job in mine:
            job.cancelled = True
        try:
            await self.batch.cancel([j.id for j in mine])
        except JobSubmissionError as e:
            logger.warning("%s: could not cancel jobs: %s", self.name, e)
        self.workers.clear()
        await super()._close()
        for path in [self._secret_path, *self._tls_files]:
            if path is not None:
                path.unlink(missing_ok=True)


def _cancel_leftovers(cancel_command: list[str], jobs: dict[str, Job], files: list) -> None:
    for path in files:
        if path is not None:
            path.unlink(missing_ok=True)
    ids = [j.id for j in jobs.values() if j.state not in ENDED and not j.cancelled]
    if ids:
        try:
            subprocess.run([*cancel_command, *ids], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
