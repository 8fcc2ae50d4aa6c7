"""hpcdask: task graphs and futures on HPC clusters.

Public names are re-exported here (the rest is private); they follow dask.distributed, so
`from hpcdask import Client, LocalCluster` replaces `from distributed import ...`.
"""

from __future__ import annotations

from typing import Any

from .client import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Client,
    Future,
    as_completed,
    fire_and_forget,
    futures_of,
    wait,
)
from .client.client import default_client
from .client.worker_client import get_client, worker_client
from .client.worker_client import worker_client as local_client  # dask's older name
from .comm import connect
from .deploy import Cluster, LocalCluster, SpecCluster, SubprocessCluster
from .exceptions import CancelledError, FutureCancelledError, KilledWorker, Reschedule
from .plugins import (
    CondaInstall,
    Environ,
    InstallPlugin,
    NannyPlugin,
    PipInstall,
    SchedulerPlugin,
    UploadDirectory,
    UploadFile,
    WorkerPlugin,
)
from .rpc import Status
from .scheduler import Scheduler
from .security import Security
from .utils.loop import sync
from .worker import Nanny, Worker, get_worker
from .worker.printing import print, warn  # noqa: A004 - dask's names: forwarded to clients
from .worker.secede import rejoin, secede

__version__ = "0.1.0"
TimeoutError = TimeoutError  # what timeouts raise (dask.distributed exports the same name)

_LAZY = {
    "JobQueueCluster": "hpcdask.jobqueue",
    "SLURMCluster": "hpcdask.jobqueue",
    "PBSCluster": "hpcdask.jobqueue",
    "SGECluster": "hpcdask.jobqueue",
    "initialize": "hpcdask.mpi",
    "SSHCluster": "hpcdask.deploy.ssh",
    "LocalCUDACluster": "hpcdask.deploy.gpu",
    "progress": "hpcdask.diagnostics",
    "performance_report": "hpcdask.diagnostics",
    "get_task_stream": "hpcdask.diagnostics",
    "get_task_metadata": "hpcdask.diagnostics.spans",
    "span": "hpcdask.diagnostics.spans",
    "Adaptive": "hpcdask.deploy.adaptive",
    "CompatibleExecutor": "hpcdask.client.executor",
    "dask": "dask",  # the module itself, as `from distributed import dask` gives
    "Lock": "hpcdask.client.primitives",
    "MultiLock": "hpcdask.client.primitives",
    "Semaphore": "hpcdask.client.primitives",
    "Event": "hpcdask.client.primitives",
    "Queue": "hpcdask.client.primitives",
    "Variable": "hpcdask.client.primitives",
    "Pub": "hpcdask.client.primitives",
    "Sub": "hpcdask.client.primitives",
    "Actor": "hpcdask.client.actors",
    "ActorFuture": "hpcdask.client.actors",
    "BaseActorFuture": "hpcdask.client.actors",
}


def __getattr__(name: str) -> Any:
    # Optional layers load on first use so `import hpcdask` stays fast.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hpcdask' has no attribute {name!r}")
    import importlib

    found = importlib.import_module(module)
    return found if module == name else getattr(found, name)


__all__ = [
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "Client", "Cluster", "Future",
    "CancelledError", "FutureCancelledError", "KilledWorker", "LocalCluster", "Nanny",
    "Reschedule", "Scheduler", "SubprocessCluster", "Status", "connect", "sync", "print",
    "warn", "CondaInstall", "Environ", "InstallPlugin", "NannyPlugin", "UploadFile",
    "PipInstall", "SchedulerPlugin", "Security", "SpecCluster", "UploadDirectory", "Worker",
    "WorkerPlugin", "as_completed",
    "fire_and_forget", "futures_of",
    "default_client", "get_client", "get_worker", "local_client", "rejoin", "secede",
    "TimeoutError", "wait", "worker_client",
    *_LAZY,
]  # fmt: skip
