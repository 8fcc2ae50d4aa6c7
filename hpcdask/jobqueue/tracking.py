"""How a JobQueueCluster follows its jobs: one record per batch job, and the polling that keeps
it true (state, the batch system's reason, output of a job that died early, replacements
submitted before walltime).

`JobTracking` is a mixin of JobQueueCluster (jobqueue/core.py), as the client's and the
scheduler's mixins are: it reads the cluster's `jobs`, `batch`, options and lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from .batch import CANCELLED, ENDED, FAILED, GONE, PENDING, RUNNING, JobStatus, tail

logger = logging.getLogger("hpcdask.jobqueue")


@dataclass
class Job:
    id: str
    names: list[str]  # the workers this job starts
    submitted: float
    state: str = PENDING
    reason: str = ""
    raw: str = ""
    started: float | None = None
    ended: float | None = None
    connected: set = field(default_factory=set)  # names that connected at least once
    cancelled: bool = False  # by us
    replaced: bool = False  # a replacement was submitted; its workers leave at their lifetime
    hopeless: bool = False  # pending, but the batch system says it can never start
    output: str = ""  # tail of the job's output when it went wrong

    def describe(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        text = f"job {self.id} ({self.state}{why})"
        if self.hopeless:
            text = f"job {self.id} cannot start ({self.state}{why})"
        elif self.ended and not self.connected and not self.cancelled:
            text = f"job {self.id} ended before its workers connected ({self.state}{why})"
        if self.output:
            text += "; last lines of its output:\n    " + self.output.replace("\n", "\n    ")
        return text


class _Slot:
    """A worker the cluster expects: `address` is set once it has connected."""

    __slots__ = ("job", "address")

    def __init__(self, job: str) -> None:
        self.job = job
        self.address: str | None = None

    def __repr__(self) -> str:
        return f"<worker of job {self.job} at {self.address or '(not connected)'}>"


class JobTracking:
    """Polling the batch system; mixed into JobQueueCluster."""

    jobs: dict[str, Job]
    batch: Any
    name: str
    status: str
    workers: dict
    _opts: dict
    _ctx: dict
    _wake: asyncio.Event | None
    _backoff: bool
    _waiting: int
    _failed_in_a_row: int
    _submit_dir: Any
    _lock: asyncio.Lock

    def _snapshot(self) -> tuple:
        return tuple((j.id, j.state, len(j.connected)) for j in self.jobs.values())

    def _poke(self) -> None:
        """Poll soon, at the base interval (new jobs, or someone waiting for workers)."""
        self._backoff = False
        if self._wake is not None:
            self._wake.set()

    async def _poll_loop(self) -> None:
        """One batched status call per interval; the interval doubles (up to poll_interval_max)
        while nothing changes, since many sites limit how often users may call squeue/qstat."""
        base = float(self._opts.get("poll_interval") or 3.0)
        top = max(base, float(self._opts.get("poll_interval_max") or base))
        interval = base
        self._wake = asyncio.Event()
        while self.status == "running":
            before = self._snapshot()
            self._wake.clear()
            self._backoff = True
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a flaky squeue must not stop tracking
                logger.warning("%s: could not poll the batch system: %s", self.name, e)
            changed = self._snapshot() != before
            calm = self._backoff and not changed and not self._waiting
            interval = min(top, interval * 2) if calm else base
            try:
                await asyncio.wait_for(self._wake.wait(), min(interval, self._next_due()))
            except asyncio.TimeoutError:
                pass

    async def _poll(self) -> None:
        self._match_workers()
        live = [j for j in self.jobs.values() if j.state not in ENDED]
        statuses = await self.batch.status([j.id for j in live])
        now = time.time()
        for job in live:
            st = statuses.get(job.id) or JobStatus("gone", "no longer in the queue")
            if st.state == RUNNING and job.started is None:
                job.started = now
            job.raw, job.hopeless = st.raw, st.hopeless
            job.reason = st.reason or job.reason
            if st.state in ENDED:
                await self._ended(job, st, now)
            else:
                job.state = st.state
        waiting = [j.id for j in live if j.state == PENDING and now - j.submitted > 2]
        if waiting and now - getattr(self, "_explained", 0) > 5:
            self._explained = now
            for job_id, why in (await self.batch.explain(waiting)).items():
                self.jobs[job_id].reason = why
        self._match_workers()
        await self._replace_expiring(now)

    async def _ended(self, job: Job, st: JobStatus, now: float) -> None:
        """Record how a job ended; one that never had a worker connect is a failure to explain.
        The state is set last, so that a waiter never sees the failure without its reason."""
        for name in job.names:
            self.workers.pop(name, None)
        if not job.cancelled and not job.connected:
            if st.state == FAILED:  # e.g. SGE's Eqw stays in the queue: say why, then remove it
                job.reason = (await self.batch.explain([job.id])).get(job.id) or job.reason
                await self.batch.cancel([job.id])
            for path in self.batch.output_files(
                job.id, self._ctx["job_name"], self._opts.get("log_directory"), self._submit_dir
            ):
                job.output = tail(path)
                if job.output:
                    break
            self._failed_in_a_row += 1
        # a job we cancelled may look failed (SGE: killed) or gone (SLURM: aged out)
        job.ended = now
        job.state = CANCELLED if job.cancelled and st.state in (FAILED, GONE) else st.state
        if not job.cancelled and not job.connected:
            logger.warning("%s: %s ended before its workers connected", self.name, job.describe())

    def _next_due(self) -> float:
        """Seconds until a running job is due for its replacement (inf if none is)."""
        life = self._lifetime
        if not life or not self._opts.get("replace_expiring"):
            return math.inf
        lead = self._ctx["lifetime_margin"]
        starts = [j.started for j in self._active() if j.started]
        return max(0.05, min(starts) + life - lead - time.time()) if starts else math.inf

    async def _replace_expiring(self, now: float) -> None:
        """Submit a new job when a running one nears its workers' lifetime, so that the
        newcomers are there to receive the data the leavers hand over."""
        life = self._lifetime
        if not life or not self._opts.get("replace_expiring") or self.status != "running":
            return
        lead = self._ctx["lifetime_margin"]
        due = [j for j in self._active() if j.started and now >= j.started + life - lead]
        if not due:
            return
        async with self._lock:
            for job in due:
                job.replaced = True
                for name in job.names:
                    self.workers.pop(name, None)
            logger.info("%s: jobs %s near their walltime; submitting replacements", self.name,
                        ", ".join(j.id for j in due))  # fmt: skip
            await self._submit(len(due))
