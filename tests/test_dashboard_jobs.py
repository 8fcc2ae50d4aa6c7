"""The jobs panel against the real single-node SLURM and SGE of ci/*_setup.sh: every batch job,
its state, and the batch system's reason while it is pending."""

from __future__ import annotations

import json
import urllib.request

import pytest

from hpcdask.jobqueue import SGECluster, SLURMCluster
from hpcdask.jobqueue._testing import requires_sge, requires_slurm
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(90)

# A job that can never start and what the batch system says about it.
CASES = [
    pytest.param(SLURMCluster, {"site": "ci-slurm", "job_cpu": 512}, "PartitionConfig",
                 marks=[pytest.mark.slurm, requires_slurm], id="slurm"),
    pytest.param(SGECluster, {"site": "ci-sge", "job_extra_directives": ["-l mem_free=100000G"]},
                 "mem_free", marks=[pytest.mark.sge, requires_sge], id="sge"),
]  # fmt: skip


@pytest.mark.parametrize("cls, options, reason", CASES)
def test_jobs_panel_shows_pending_jobs_and_why(cls, options, reason, tmp_path):
    with cls(log_directory=str(tmp_path), poll_interval=0.3, poll_interval_max=1.0,
             scheduler_options={"dashboard_address": ":0"}, **options) as cluster:  # fmt: skip
        cluster.scale(1)
        link = cluster.dashboard_link
        assert link.startswith("http://127.0.0.1:")  # bound like the scheduler (interface lo)
        base, token = link.split("/status?token=")

        def jobs():
            with urllib.request.urlopen(f"{base}/api/jobs.json?token={token}", timeout=10) as r:
                return json.loads(r.read())["jobs"]

        wait_for(lambda: (j := jobs()) and reason in j[0]["reason"], timeout=60, interval=0.2)
        (job,) = jobs()
        assert job["id"] in cluster.jobs and job["state"] == "pending"
        assert job["workers"] == list(cluster.jobs[job["id"]].names) and job["connected"] == []
