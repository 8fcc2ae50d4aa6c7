"""Batch adapters: parsers on recorded text, then submit / batched status / cancel against the
real SLURM and SGE started by ci/slurm_setup.sh and ci/sge_setup.sh, with plain shell jobs."""

from __future__ import annotations

import pytest

from hpcdask.jobqueue._testing import requires_sge, requires_slurm
from hpcdask.jobqueue.batch import (
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    JobSubmissionError,  # fmt: skip
    tail,
)
from hpcdask.jobqueue.pbs import PBS
from hpcdask.jobqueue.sge import SGE
from hpcdask.jobqueue.slurm import SLURM
from hpcdask.testing.polling import async_wait_for

pytestmark = pytest.mark.timeout(60)


def until(predicate, timeout=30.0, interval=0.2):
    """Poll an async predicate until it returns something truthy; fail with the last value."""
    return async_wait_for(predicate, timeout, interval)


# ------------------------------------------------------------ parsers (no daemon needed)


def test_slurm_parser():
    text = "12|RUNNING|None\n13|PENDING|PartitionConfig\n14|FAILED|NonZeroExitCode\n99|PENDING|Priority\n"
    st = SLURM().parse_status(text, ["12", "13", "14"])
    assert (st["12"].state, st["12"].reason) == (RUNNING, "")
    assert st["13"].state == PENDING and st["13"].hopeless and st["13"].reason == "PartitionConfig"
    assert (st["14"].state, st["14"].reason) == (FAILED, "NonZeroExitCode")
    assert "99" not in st


def test_sge_parser():
    text = """job-ID  prior   name       user         state submit/start at     queue   slots ja-task-ID
-----------------------------------------------------------------------------------------------
      7 0.55500 hpcdask-wo root         r     11/23/2026 20:17:19 all.q@vm   1
      8 0.55500 hpcdask-wo root         qw    11/23/2026 20:17:20            1
      9 0.55500 hpcdask-wo root         Eqw   11/23/2026 20:17:20            1
     10 0.55500 hpcdask-wo root         dr    11/23/2026 20:17:20 all.q@vm   1
"""
    st = SGE().parse_status(text, ["7", "8", "9", "10"])
    assert [st[j].state for j in "7 8 9 10".split()] == [RUNNING, PENDING, FAILED, CANCELLED]


def test_pbs_parser_on_pbs_pro_qstat_f_text():
    text = """Job Id: 101.gadi-pbs
    Job_Name = hpcdask-worker
    job_state = Q
    comment = Not Running: Insufficient amount of resource: ncpus (R: 48 A: 0 T:
\t 1000)
    queue = normal

Job Id: 102.gadi-pbs
    job_state = F
    Exit_status = 1
    comment = Job run at Mon Nov 23 at 10:00 on (gadi-cpu-1:ncpus=48) and failed

Job Id: 103.gadi-pbs
    job_state = F
    Exit_status = 271

Job Id: 104.gadi-pbs
    job_state = R
"""
    ids = ["101.gadi-pbs", "102.gadi-pbs", "103.gadi-pbs", "104.gadi-pbs"]
    st = PBS().parse_status(text, ids)
    assert st["101.gadi-pbs"].state == PENDING
    assert st["101.gadi-pbs"].reason.endswith("(R: 48 A: 0 T: 1000)")
    assert st["102.gadi-pbs"].state == FAILED and "exit status 1" in st["102.gadi-pbs"].reason
    assert st["103.gadi-pbs"].state == CANCELLED and st["104.gadi-pbs"].state == RUNNING
    assert (
        PBS.job_id_regexp
        and __import__("re").search(PBS.job_id_regexp, "101.gadi-pbs\n").group("job_id")
        == "101.gadi-pbs"
    )


TORQUE_QSTAT_F = """Job Id: 201.torque-srv
    Job_Name = hpcdask-worker
    job_state = C
    exit_status = 0

Job Id: 202.torque-srv
    job_state = C
    exit_status = 271

Job Id: 203.torque-srv
    job_state = C
    exit_status = -1

Job Id: 204.torque-srv
    job_state = Q
"""


async def test_torque_status_and_flavour_detection():
    from hpcdask.jobqueue.pbs import flavour_of

    assert flavour_of("Version: 6.1.3\nCommit: 0a3b") == "torque"
    assert flavour_of("version: 4.2.10") == "torque"
    assert flavour_of("pbs_version = 2022.1.1") == "pbspro"
    b = PBS(flavour="torque")
    ids = ["201.torque-srv", "202.torque-srv", "203.torque-srv", "204.torque-srv"]
    st = b.parse_status(TORQUE_QSTAT_F, ids)  # Torque spells it exit_status
    assert [st[i].state for i in ids] == [FINISHED, CANCELLED, FAILED, PENDING]
    assert b.status_command(ids[:1]) == ["qstat", "-f", "201.torque-srv"]  # -x is XML there
    assert PBS(flavour="pbspro").status_command(ids[:1])[:3] == ["qstat", "-x", "-f"]


def test_sge_submit_output_with_and_without_terse():
    import re

    for text, job_id in [('Your job 123 ("t") has been submitted\n', "123"), ("456\n", "456"),
                         ('Your job-array 77.1-3:1 ("a") has been submitted\n', "77")]:  # fmt: skip
        assert re.search(SGE.job_id_regexp, text).group("job_id") == job_id


def test_tail(tmp_path):
    assert tail(tmp_path / "missing") == ""
    (tmp_path / "out").write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(tmp_path / "out", 3) == "line 97\nline 98\nline 99"


# ------------------------------------------------------------ real batch systems


def job(tmp_path, name, body, header=""):
    path = tmp_path / name
    path.write_text(f"#!/bin/bash\n{header}\n{body}\n")
    return path.read_text()


@pytest.mark.slurm
@requires_slurm
async def test_slurm_submit_status_cancel(tmp_path):
    b = SLURM()
    hdr = f"#SBATCH -o {tmp_path}/%x-%j.out\n#SBATCH -J t"
    long_id = await b.submit(job(tmp_path, "a", "echo started; sleep 60", hdr))
    bad_id = await b.submit(job(tmp_path, "b", "echo oops >&2; exit 3", hdr))
    stuck_id = await b.submit(job(tmp_path, "c", "true", hdr + "\n#SBATCH --cpus-per-task=512"))
    ids = [long_id, bad_id, stuck_id]

    async def settled():
        st = await b.status(ids)  # one squeue call for all three
        ok = st[long_id].state == RUNNING and st[bad_id].state == FAILED and st[stuck_id].hopeless
        return st if ok else None

    try:
        st = await until(settled)
        assert st[bad_id].reason == "NonZeroExitCode" and st[stuck_id].reason == "PartitionConfig"
        assert "oops" in tail(b.output_files(bad_id, "t", str(tmp_path), ".")[0])
    finally:  # a failed run must not leave a job pending forever in the queue
        await b.cancel([long_id, stuck_id])

    async def cancelled():
        st = await b.status([long_id, stuck_id])
        return all(s.state == CANCELLED for s in st.values())

    await until(cancelled)


@pytest.mark.slurm
@requires_slurm
async def test_slurm_rejects_a_job_with_its_reason(tmp_path):
    with pytest.raises(JobSubmissionError, match="Memory specification can not be satisfied"):
        await SLURM().submit(job(tmp_path, "m", "true", "#SBATCH --mem=100000G"))


@pytest.mark.slurm
@requires_slurm
async def test_slurm_unknown_job_is_gone():
    st = await SLURM().status(["999999"])
    assert st["999999"].state == "gone"


@pytest.mark.sge
@requires_sge
async def test_sge_submit_status_cancel(tmp_path):
    b = SGE()
    hdr = "#$ -cwd\n#$ -j y\n#$ -S /bin/bash\n#$ -N t"
    long_id = await b.submit(job(tmp_path, "a", "echo started; sleep 60", hdr), cwd=str(tmp_path))
    bad_id = await b.submit(job(tmp_path, "b", "echo oops; exit 3", hdr), cwd=str(tmp_path))
    stuck_id = await b.submit(job(tmp_path, "c", "true", hdr + "\n#$ -l mem_free=100000G"),
                              cwd=str(tmp_path))  # fmt: skip

    async def settled():
        st = await b.status([long_id, bad_id, stuck_id])  # one qstat (+ qacct once per ended job)
        ok = (st[long_id].state, st[bad_id].state, st[stuck_id].state) == (RUNNING, FAILED, PENDING)
        return st if ok else None

    async def explained():
        # While other jobs fill the queue, SGE only says it is full; the reason this job can
        # never run (mem_free) shows once a slot is free.
        text = (await b.explain([stuck_id])).get(stuck_id) or ""
        return text if "mem_free" in text else None

    try:
        st = await until(settled)
        assert "exit status 3" in st[bad_id].reason
        assert "oops" in tail(b.output_files(bad_id, "t", None, str(tmp_path))[0])
        assert "cannot run" in await until(explained, timeout=90)
    finally:  # a failed run must not leave a job pending forever in the queue
        await b.cancel([long_id, stuck_id])

    async def gone():
        st = await b.status([long_id, stuck_id])
        return all(s.state in (CANCELLED, FAILED, FINISHED, "gone") for s in st.values())

    await until(gone)


@pytest.mark.sge
@requires_sge
async def test_sge_terse_submit(tmp_path):
    b = SGE(["-terse"])
    job_id = await b.submit(job(tmp_path, "t", "true", "#$ -cwd\n#$ -j y\n#$ -S /bin/bash"),
                            cwd=str(tmp_path))  # fmt: skip
    assert job_id.isdigit()
    await b.cancel([job_id])


@pytest.mark.sge
@requires_sge
async def test_sge_rejects_a_job_with_its_reason(tmp_path):
    with pytest.raises(JobSubmissionError, match="refused the job: .*(queue|Unable)"):
        await SGE().submit(job(tmp_path, "q", "true", "#$ -q no-such-queue.q"))
