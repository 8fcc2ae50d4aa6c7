"""The three things a batch system must do for us: submit, report (one call for all jobs), cancel.

Each system is a small subclass: its commands as class attributes, a parser for its status
output, and where a job's output file lands. Everything runs the real command line tools
asynchronously, so a slow `squeue` never blocks the scheduler.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Normalised job states. "gone" = the batch system no longer knows the job (ended a while ago).
PENDING, RUNNING, FINISHED, FAILED, CANCELLED, GONE = (
    "pending", "running", "finished", "failed", "cancelled", "gone")  # fmt: skip
ENDED = {FINISHED, FAILED, CANCELLED, GONE}


class JobSubmissionError(RuntimeError):
    """The batch system refused a job; the message carries its own explanation."""


class JobFailedError(RuntimeError):
    """Jobs ended or cannot start, so the workers asked for will not arrive."""


@dataclass
class JobStatus:
    state: str
    reason: str = ""  # the batch system's explanation, e.g. SLURM's pending reason
    raw: str = ""  # the batch system's own state word
    hopeless: bool = False  # pending, but the batch system says it can never start


async def run(
    cmd: list[str], timeout: float = 60.0, cwd: str | None = None
) -> tuple[int, str, str]:
    """(returncode, stdout, stderr) of a command, without a shell."""
    env = {k: v for k, v in os.environ.items() if k != "HPCDASK_SECRET"}
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd
        )
    except FileNotFoundError:
        raise JobSubmissionError(f"`{cmd[0]}` is not installed or not on PATH") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise JobSubmissionError(
            f"`{' '.join(cmd)}` did not answer within {timeout:.0f}s"
        ) from None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def tail(path: Path | None, lines: int = 20) -> str:
    """The last lines of a job's output file ('' if it is not there, e.g. PBS before job end)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class BatchSystem:
    """Subclasses set the commands and implement `parse_status` and `output_files`."""

    name = ""
    submit_command: list[str] = []
    cancel_command: list[str] = []
    job_id_regexp = r"(?P<job_id>\d+)"

    def __init__(self, submit_extra: list[str] | None = None) -> None:
        self.submit_extra = list(submit_extra or [])

    def status_command(self, job_ids: list[str]) -> list[str]:
        raise NotImplementedError

    def parse_status(self, stdout: str, job_ids: list[str]) -> dict[str, JobStatus]:
        raise NotImplementedError

    def output_files(self, job_id: str, job_name: str, log_directory: str | None,
                     cwd: str) -> list[Path]:  # fmt: skip
        """Where the job's stdout may be, most likely first."""
        raise NotImplementedError

    async def submit(self, script: str, cwd: str | None = None) -> str:
        fd, path = tempfile.mkstemp(prefix=f"hpcdask-{self.name}-", suffix=".sh")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(script)
            cmd = [*self.submit_command, *self.submit_extra, path]
            rc, out, err = await run(cmd, cwd=cwd)  # the cwd decides where default output goes
        finally:
            os.unlink(path)
        match = re.search(self.job_id_regexp, out)
        if rc != 0 or not match:
            msg = (err.strip() or out.strip() or f"exit code {rc}").replace("\n", "; ")
            raise JobSubmissionError(f"{self.name}: `{' '.join(cmd[:-1])}` refused the job: {msg}")
        return match.group("job_id")

    async def status(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """One call for all *job_ids*; unknown ids come back as GONE."""
        if not job_ids:
            return {}
        rc, out, err = await run(self.status_command(job_ids))
        if rc != 0 and not self.missing_ok(err):
            raise JobSubmissionError(
                f"{self.name}: status call failed: {err.strip() or out.strip()}"
            )
        found = self.parse_status(out, job_ids)
        gone = [j for j in job_ids if j not in found]
        if gone:
            found.update(await self.ended(gone))
        return found

    def missing_ok(self, stderr: str) -> bool:
        """True when a failed status call only means that some jobs are no longer known."""
        return False

    async def ended(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """How jobs the queue no longer lists ended (systems with accounting override this)."""
        return {j: JobStatus(GONE, "no longer in the queue") for j in job_ids}

    async def explain(self, job_ids: list[str]) -> dict[str, str]:
        """More detail on why jobs wait or failed, if the system has a separate command for it."""
        return {}

    async def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            await run([*self.cancel_command, *job_ids])
