"""The scheduler file: where the scheduler is and the secret to prove membership.

It is written 0600 because it holds the cluster's secret; a file that others can read is
refused rather than trusted, since anyone could have copied the secret from it.
"""

from __future__ import annotations

import json
import os
import stat
import time
from typing import Any


def read_scheduler_file(path: str) -> tuple[str, bytes | None]:
    path = os.path.expanduser(path)
    try:
        st = os.stat(path)
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"scheduler file {path} does not exist: start the scheduler with "
            f"--scheduler-file {path} first, or wait for it to write the file"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"scheduler file {path} is not valid JSON ({e}); is it half-written?"
        ) from None
    secret = info.get("secret")
    if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"scheduler file {path} holds the cluster secret but others can read it "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`"
        )
    if "address" not in info:
        raise ValueError(f"scheduler file {path} has no 'address' entry")
    return info["address"], bytes.fromhex(secret) if secret else None


def scheduler_file_exists(path: str) -> bool:
    return os.path.exists(os.path.expanduser(path))


def _not_ready(path: str, timeout: float, error: Exception) -> Exception:
    return TimeoutError(
        f"scheduler file {os.path.expanduser(path)} did not appear within {timeout}s ({error}); "
        "is the scheduler (or mpirun ... hpcdask-mpi --scheduler-file) running? "
        "Pass timeout= to wait longer"
    )


def wait_for_scheduler_file(path: str, timeout: float) -> tuple[str, bytes | None]:
    """read_scheduler_file, waiting up to *timeout* s for the file to appear and be complete:
    clients are often started while the scheduler (say, rank 0 of an MPI job) still starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read_scheduler_file(path)
        except (FileNotFoundError, ValueError) as e:  # missing, or half-written
            if time.monotonic() >= deadline:
                raise _not_ready(path, timeout, e) from None
            time.sleep(0.05)


async def await_scheduler_file(path: str, timeout: float) -> tuple[str, bytes | None]:
    """wait_for_scheduler_file without blocking the event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        try:
            return read_scheduler_file(path)
        except (FileNotFoundError, ValueError) as e:
            if time.monotonic() >= deadline:
                raise _not_ready(path, timeout, e) from None
            await asyncio.sleep(0.05)


def resolve_scheduler(address: str | None, scheduler_file: str | None, security: Any,
                      who: str) -> tuple[str, Any]:  # fmt: skip
    """(normalized scheduler address, Security holding the cluster secret) for a worker or
    nanny, from an address or a scheduler file, an explicit Security, config or secret files."""
    from ..comm import normalize_address
    from ..security import Security, resolve_secret

    if scheduler_file:
        address, secret = read_scheduler_file(scheduler_file)
        if security is None:
            security = Security(secret=secret)
        elif not security.secret:
            security.secret = secret  # keep its TLS settings (--tls-* flags)
    if not address:
        raise ValueError(f"{who} needs a scheduler address (or scheduler_file=)")
    address = normalize_address(address)
    security = security or Security()
    if not security.secret:
        security.secret = resolve_secret(address, security)
    return address, security
