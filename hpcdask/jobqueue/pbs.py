"""PBS Pro / OpenPBS (and Torque, mostly): qsub / one `qstat -x -f` for all jobs / qdel.

No PBS runs on our test machine: the scripts are tested by rendering and this parser on text
in the format PBS Pro prints.
"""

from __future__ import annotations

import re
from pathlib import Path

from .batch import CANCELLED, FAILED, FINISHED, PENDING, RUNNING, BatchSystem, JobStatus
from .core import JobQueueCluster

_STATES = {"Q": PENDING, "W": PENDING, "H": PENDING, "T": PENDING, "S": PENDING, "U": PENDING,
           "M": PENDING, "R": RUNNING, "E": RUNNING, "B": RUNNING, "F": FINISHED,
           "X": FINISHED, "C": FINISHED}  # fmt: skip


class PBS(BatchSystem):
    name = "pbs"
    submit_command = ["qsub"]
    cancel_command = ["qdel"]
    job_id_regexp = r"(?P<job_id>\d+(?:\[\d*\])?(?:\.[\w.-]+)?)"

    def status_command(self, job_ids: list[str]) -> list[str]:
        return ["qstat", "-x", "-f", *job_ids]  # -x: finished jobs too (PBS Pro history)

    def missing_ok(self, stderr: str) -> bool:
        return "Unknown Job Id" in stderr or "Job has finished" in stderr

    def parse_status(self, stdout: str, job_ids: list[str]) -> dict[str, JobStatus]:
        out = {}
        short = {j.split(".")[0]: j for j in job_ids}
        for block in re.split(r"^Job Id:\s*", stdout, flags=re.M)[1:]:
            first, _, body = block.partition("\n")
            job_id = short.get(first.strip().split(".")[0])
            if job_id is None:
                continue
            attrs = dict(re.findall(r"^\s+([\w.]+) = (.*(?:\n\t.*)*)", body, re.M))
            attrs = {k: re.sub(r"\n\t", "", v).strip() for k, v in attrs.items()}
            raw = attrs.get("job_state", "")
            state = _STATES.get(raw, PENDING)
            exit_status = attrs.get("Exit_status")
            reason = attrs.get("comment", "")
            if state == FINISHED and exit_status not in (None, "0"):
                code = int(exit_status) if exit_status.lstrip("-").isdigit() else None
                state = CANCELLED if code == 271 else FAILED  # 271 = 256 + SIGTERM from qdel
                reason = f"{reason}; exit status {exit_status}".strip("; ")
            hopeless = state == PENDING and "can never run" in reason.lower()
            out[job_id] = JobStatus(state, reason, raw, hopeless=hopeless)
        return out

    def output_files(self, job_id: str, job_name: str, log_directory: str | None,
                     cwd: str) -> list[Path]:  # fmt: skip
        seq = job_id.split(".")[0]
        if log_directory:  # -o DIR/: PBS Pro names the file after the job id
            return [
                Path(log_directory) / f"{job_id}.OU",
                Path(log_directory) / f"{job_name}.o{seq}",
            ]
        return [Path(cwd) / f"{job_name}.o{seq}"]  # copied back when the job ends


class PBSCluster(JobQueueCluster):
    """Workers in PBS jobs: `PBSCluster(site="gadi", project="vp91", cores=48, memory="192GB")`."""

    system = "pbs"
    batch_class = PBS
