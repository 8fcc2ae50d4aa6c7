"""Workers in batch jobs: SLURMCluster, PBSCluster, SGECluster (as dask-jobqueue's).

`from hpcdask.jobqueue import SLURMCluster` replaces `from dask_jobqueue import SLURMCluster`.
"""

from __future__ import annotations

from .batch import JobFailedError, JobStatus, JobSubmissionError
from .core import Job, JobQueueCluster
from .pbs import PBSCluster
from .script import job_script
from .sge import SGECluster
from .slurm import SLURMCluster

__all__ = ["JobQueueCluster", "SLURMCluster", "PBSCluster", "SGECluster", "Job", "JobStatus",
           "JobFailedError", "JobSubmissionError", "job_script"]  # fmt: skip
