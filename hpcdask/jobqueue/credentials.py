"""What a batch cluster's workers need to join it, besides the secret: TLS credentials as files
on the shared file system, and dask-jobqueue's cluster-level keywords that are checked here.

Kept out of core.py, which tracks jobs; both only run when a cluster is made.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

from . import script


def for_jobs(security: Any, shared_temp_directory: str | None) -> tuple[Any, Any, list[Path]]:
    """(the scheduler's Security, the Security whose files the workers' --tls-* flags name,
    files to remove at close).

    `security=True` makes temporary credentials, as dask-jobqueue does; the workers get them as
    0600 files in `shared_temp_directory` (default: the current directory, with dask-jobqueue's
    warning). A Security with certificate files is used as it is.
    """
    from ..security import Security

    if security is None or security is False:
        return None, None, []
    if security is not True:
        if not isinstance(security, Security):
            raise TypeError(
                f"security= takes hpcdask.Security or True, not {type(security).__name__}"
            )
        return security, security, []
    security = Security.temporary()
    folder = shared_temp_directory
    if folder is None:
        folder = os.getcwd()
        warnings.warn(
            "Using a temporary security object without explicitly setting a "
            f"shared_temp_directory: writing temp files to current working directory ({folder}) "
            "instead. You can set this value by using dask for e.g. "
            "`dask.config.set({'jobqueue.pbs.shared_temp_directory': '~'})` or in "
            "~/.config/dask/jobqueue.yaml (or hpcdask's jobqueue.<system>.shared-temp-directory)",
            UserWarning,
            stacklevel=script._user_stacklevel(),
        )
    folder = os.path.expanduser(os.path.expandvars(folder))
    tag = uuid.uuid4().hex[:12]
    files: list[Path] = []
    for part in ("ca", "cert", "key"):
        path = Path(folder) / f".hpcdask-jobqueue.worker.{part}.{tag}.pem"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            for done in files:
                done.unlink(missing_ok=True)
            raise OSError(f"cannot write the temporary TLS credentials to "
                          f"shared_temp_directory {folder}: {e.strerror}") from None  # fmt: skip
        with os.fdopen(fd, "wb") as f:
            f.write(security._tls_memory[part])
        files.append(path)
    ca, cert, key = map(str, files)
    worker = Security(tls_ca_file=ca, tls_worker_cert=cert, tls_worker_key=key)
    return security, worker, files


def check_cluster_keywords(cls: str, dashboard_address: Any, host: Any, scheduler_cls: Any) -> None:
    """dask-jobqueue's cluster keywords that belong elsewhere, refused with its advice."""
    if dashboard_address is not None:
        raise ValueError(
            "Please pass 'dashboard_address' through 'scheduler_options': use\n"
            f'cluster = {cls}(..., scheduler_options={{"dashboard_address": ":12345"}}) rather '
            f'than\ncluster = {cls}(..., dashboard_address="12435")'
        )
    if host is not None:
        raise ValueError(
            "Please pass 'host' through 'scheduler_options': use\n"
            f'cluster = {cls}(..., scheduler_options={{"host": "your-host"}}) rather than\n'
            f'cluster = {cls}(..., host="your-host")'
        )
    if scheduler_cls is not None:
        from ..scheduler import Scheduler

        name = (
            f"{getattr(scheduler_cls, '__module__', '')}.{getattr(scheduler_cls, '__name__', '')}"
        )
        if scheduler_cls is not Scheduler and not name.startswith("distributed."):
            raise ValueError(
                f"scheduler_cls={scheduler_cls!r} is not supported: the cluster runs hpcdask's "
                "Scheduler (pass its options through scheduler_options)"
            )


def silence(level: Any) -> None:
    """dask-jobqueue's silence_logs: the level below which the in-process scheduler is quiet."""
    if level is True:
        level = "error"
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    if not isinstance(level, int):
        raise ValueError(f"silence_logs={level!r}: give a level such as 'error' or 'warning'")
    logging.getLogger("hpcdask.scheduler").setLevel(level)
