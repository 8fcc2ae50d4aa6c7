"""SLURM: sbatch / one squeue call for all jobs / scancel."""

from __future__ import annotations

from pathlib import Path

from .batch import CANCELLED, FAILED, FINISHED, PENDING, RUNNING, BatchSystem, JobStatus
from .core import JobQueueCluster

_STATES = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "SUSPENDED": PENDING,
    "RESV_DEL_HOLD": PENDING, "REQUEUE_HOLD": PENDING, "REQUEUE_FED": PENDING,
    "RUNNING": RUNNING, "COMPLETING": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING,
    "RESIZING": RUNNING, "COMPLETED": FINISHED, "TIMEOUT": FINISHED, "CANCELLED": CANCELLED,
    "FAILED": FAILED, "BOOT_FAIL": FAILED, "NODE_FAIL": FAILED, "OUT_OF_MEMORY": FAILED,
    "DEADLINE": FAILED, "PREEMPTED": FAILED, "REVOKED": CANCELLED, "SPECIAL_EXIT": FAILED,
}  # fmt: skip
#: Pending reasons after which the job will never start without someone changing it.
HOPELESS = {
    "PartitionConfig", "PartitionTimeLimit", "PartitionNodeLimit", "BadConstraints",
    "InvalidAccount", "InvalidQOS", "AccountNotAllowed", "QOSNotAllowed",
    "DependencyNeverSatisfied", "QOSMaxWallDurationPerJobLimit", "QOSMaxCpuPerJobLimit",
    "QOSMaxMemoryPerJob", "PartitionDown", "PartitionInactive", "AssociationJobLimit",
}  # fmt: skip


class SLURM(BatchSystem):
    name = "slurm"
    submit_command = ["sbatch", "--parsable"]
    cancel_command = ["scancel"]
    job_id_regexp = r"^(?P<job_id>\d+)"

    def status_command(self, job_ids: list[str]) -> list[str]:
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%r",
                "--jobs=" + ",".join(job_ids)]  # fmt: skip

    def missing_ok(self, stderr: str) -> bool:
        return "Invalid job id" in stderr  # squeue fails when the only id asked for is gone

    def parse_status(self, stdout: str, job_ids: list[str]) -> dict[str, JobStatus]:
        out = {}
        for line in stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 3 or parts[0] not in job_ids:
                continue
            raw, reason = parts[1], "" if parts[2] in ("None", "(null)") else parts[2]
            state = _STATES.get(raw.split()[0], PENDING)
            out[parts[0]] = JobStatus(state, reason, raw,
                                      hopeless=state == PENDING and reason in HOPELESS)  # fmt: skip
        return out

    def output_files(self, job_id: str, job_name: str, log_directory: str | None,
                     cwd: str) -> list[Path]:  # fmt: skip
        if log_directory:
            return [Path(log_directory) / f"{job_name}-{job_id}.out"]
        return [Path(cwd) / f"slurm-{job_id}.out"]


class SLURMCluster(JobQueueCluster):
    """Workers in SLURM jobs: `SLURMCluster(cores=32, memory="128GB", queue="cpu").scale(n=10)`."""

    system = "slurm"
    batch_class = SLURM
