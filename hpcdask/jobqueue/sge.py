"""Son of Grid Engine / Univa: qsub / one qstat call for all jobs (qacct for ended ones) / qdel."""

from __future__ import annotations

import re
from pathlib import Path

from .batch import CANCELLED, FAILED, FINISHED, GONE, PENDING, RUNNING, BatchSystem, JobStatus, run
from .core import JobQueueCluster


def _state(raw: str) -> str:
    if "E" in raw:
        return FAILED  # Eqw: the job cannot start; `qstat -j` says why
    if "d" in raw:
        return CANCELLED
    if any(c in raw for c in "rtR"):
        return RUNNING
    return PENDING  # qw, hqw, suspended


class SGE(BatchSystem):
    name = "sge"
    submit_command = ["qsub"]
    cancel_command = ["qdel"]
    # "Your job 42 ("name") has been submitted", or just "42" with qsub -terse
    job_id_regexp = r"(?m)(?:^|Your job(?:-array)? )(?P<job_id>\d+)"

    def status_command(self, job_ids: list[str]) -> list[str]:
        return ["qstat"]  # lists all of this user's jobs; SGE has no filter by job id list

    def parse_status(self, stdout: str, job_ids: list[str]) -> dict[str, JobStatus]:
        out = {}
        for line in stdout.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0] in job_ids:
                out[parts[0]] = JobStatus(_state(parts[4]), "", parts[4])
        return out

    async def ended(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """Accounting says how a job that left the queue ended (one qacct per job, once)."""
        out = {}
        for job_id in job_ids:
            rc, text, _ = await run(["qacct", "-j", job_id])
            failed = re.search(r"^failed\s+(.*?)\s*$", text, re.M)
            code = re.search(r"^exit_status\s+(\d+)", text, re.M)
            if rc != 0 or not code:
                out[job_id] = JobStatus(GONE, "no longer in the queue")
            elif failed and failed.group(1) != "0":
                out[job_id] = JobStatus(
                    FAILED, f"failed {failed.group(1)}, exit status {code.group(1)}"
                )
            elif code.group(1) != "0":
                out[job_id] = JobStatus(FAILED, f"exit status {code.group(1)}")
            else:
                out[job_id] = JobStatus(FINISHED, "exit status 0")
        return out

    async def explain(self, job_ids: list[str]) -> dict[str, str]:
        """`qstat -j ids`: scheduling info (why a job waits) and error reasons (Eqw)."""
        if not job_ids:
            return {}
        _, text, _ = await run(["qstat", "-j", ",".join(job_ids)])
        out: dict[str, list[str]] = {}
        current = None
        for line in text.splitlines():
            m = re.match(r"job_number:\s+(\d+)", line)
            if m:
                current = m.group(1)
            elif current and re.match(r"(scheduling info|error reason\s*\d*):", line):
                out.setdefault(current, []).append(line.split(":", 1)[1].strip())
            elif current and line.startswith((" ", "\t")) and out.get(current):
                out[current].append(line.strip())
        return {j: "; ".join(v) for j, v in out.items()}

    def output_files(self, job_id: str, job_name: str, log_directory: str | None,
                     cwd: str) -> list[Path]:  # fmt: skip
        return [Path(log_directory or cwd) / f"{job_name}.o{job_id}"]


class SGECluster(JobQueueCluster):
    """Workers in Grid Engine jobs: `SGECluster(cores=8, memory="32GB", queue="all.q", pe="smp")`."""

    system = "sge"
    batch_class = SGE
