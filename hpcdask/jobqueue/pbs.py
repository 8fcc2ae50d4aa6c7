"""PBS Pro / OpenPBS and Torque: qsub / one `qstat -f` call for all jobs / qdel.

The two share qsub and qdel but not qstat: PBS Pro needs `-x` to list finished jobs (and says
`Exit_status`), while on Torque `-x` means XML output, finished jobs stay listed as `C` for a
while by themselves, and the attribute is `exit_status`. Which one runs is asked once, of
`qstat --version` (or set `qstat_flavour`). No PBS or Torque runs on our test machine: both are
tested through fake `qstat`/`qsub` built from their documented output (`_testing.py`).
"""

from __future__ import annotations

import re
from pathlib import Path

from .batch import CANCELLED, FAILED, FINISHED, PENDING, RUNNING, BatchSystem, JobStatus, run
from .core import JobQueueCluster

_STATES = {"Q": PENDING, "W": PENDING, "H": PENDING, "T": PENDING, "S": PENDING, "U": PENDING,
           "M": PENDING, "R": RUNNING, "E": RUNNING, "B": RUNNING, "F": FINISHED,
           "X": FINISHED, "C": FINISHED}  # fmt: skip
FLAVOURS = ("pbspro", "torque")


def flavour_of(version_text: str) -> str:
    """`qstat --version`: PBS Pro/OpenPBS print `pbs_version = 19.1.3`, Torque `Version: 6.1.3`."""
    if "pbs_version" not in version_text and re.search(
        r"^\s*version:\s*\d", version_text, re.M | re.I
    ):
        return "torque"
    return "pbspro"


class PBS(BatchSystem):
    name = "pbs"
    submit_command = ["qsub"]
    cancel_command = ["qdel"]
    job_id_regexp = r"(?P<job_id>\d+(?:\[\d*\])?(?:\.[\w.-]+)?)"

    def __init__(self, submit_extra: list[str] | None = None, flavour: str | None = None) -> None:
        super().__init__(submit_extra)
        if flavour not in (None, *FLAVOURS):
            raise ValueError(f"qstat_flavour={flavour!r}: use one of {', '.join(FLAVOURS)}")
        self.flavour = flavour

    async def detect(self) -> str:
        """Which qstat this is, asked once."""
        if self.flavour is None:
            try:
                _, out, err = await run(["qstat", "--version"], timeout=30)
            except Exception:  # noqa: BLE001 - no answer: keep the PBS Pro reading, ask again later
                return "pbspro"
            self.flavour = flavour_of(out + err)
        return self.flavour

    async def status(self, job_ids: list[str]) -> dict[str, JobStatus]:
        if job_ids:
            await self.detect()
        return await super().status(job_ids)

    def status_command(self, job_ids: list[str]) -> list[str]:
        if self.flavour == "torque":
            return ["qstat", "-f", *job_ids]  # finished jobs stay listed as C (keep_completed)
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
            exit_status = attrs.get("Exit_status", attrs.get("exit_status"))  # PBS Pro, Torque
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
        if log_directory:  # -o DIR/: PBS Pro names the file after the job id, Torque after the name
            return [
                Path(log_directory) / f"{job_id}.OU",
                Path(log_directory) / f"{job_name}.o{seq}",
                Path(log_directory) / f"{job_name}.o{job_id}",
            ]
        return [Path(cwd) / f"{job_name}.o{seq}"]  # copied back when the job ends


class PBSCluster(JobQueueCluster):
    """Workers in PBS jobs: `PBSCluster(site="gadi", project="vp91", cores=48, memory="192GB")`."""

    system = "pbs"
    batch_class = PBS

    def _make_batch(self) -> BatchSystem:
        return PBS(self._opts.get("submit_command_extra"), self._opts.get("qstat_flavour"))
