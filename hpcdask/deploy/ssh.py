"""SSHCluster: the scheduler on the first host, workers on the others, started over SSH.

Each remote process is `python -m hpcdask.deploy._ssh_remote` on an asyncssh channel; its
configuration, including the secret and TLS material, goes down that channel's stdin (never a
command line, never a file), and it stops when the channel closes. Needs `hpcdask[ssh]`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import json
import logging
import pickle
import shlex
import sys
from typing import Any

from ..security import Security
from ._ssh_remote import READY
from .spec import SpecCluster

logger = logging.getLogger("hpcdask.deploy.ssh")
STARTUP_TIMEOUT = 60.0


class SSHError(ConnectionError):
    """An SSH host could not be used; the message says which and what to do."""


def _asyncssh() -> Any:
    try:
        import asyncssh
    except ImportError:
        raise ImportError("SSHCluster needs asyncssh: pip install 'hpcdask[ssh]'") from None
    return asyncssh


def portable_security(security: Security, role: str) -> str:
    """The Security as text for the remote process, TLS files read into memory (the remote
    host may not have them)."""
    sec = copy.copy(security)
    if security.has_tls and not security._tls_memory:

        def read(path: str | None) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        cert = getattr(security, f"tls_{role}_cert", None) or security.tls_client_cert
        key = getattr(security, f"tls_{role}_key", None) or security.tls_client_key
        sec._tls_memory = {"ca": read(security.tls_ca_file), "cert": read(cert),
                           "key": read(key or cert)}  # fmt: skip
        for field in ("tls_ca_file", "tls_client_cert", "tls_client_key", "tls_scheduler_cert",
                      "tls_scheduler_key", "tls_worker_cert", "tls_worker_key"):  # fmt: skip
            setattr(sec, field, None)
    return base64.b64encode(pickle.dumps(sec)).decode()


class SSHProcess:
    """One hpcdask process on a host, alive as long as its SSH channel."""

    role = "worker"

    def __init__(self, host: str, connect_options: dict | None = None,
                 remote_python: str | None = None, security: Security | None = None,
                 remote_env: dict | None = None) -> None:  # fmt: skip
        self.host = host
        self.connect_options = dict(connect_options or {})
        self.connect_options.setdefault("connect_timeout", 15)
        self.remote_python = remote_python or sys.executable
        self.security = security
        self.remote_env = dict(remote_env or {})
        self.address = ""
        self.status = "created"
        self.stderr: collections.deque = collections.deque(maxlen=200)
        self._conn: Any = None
        self._proc: Any = None
        self._drain: asyncio.Task | None = None

    def _config(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host} {self.address or '-'} {self.status}>"

    async def start(self) -> SSHProcess:
        asyncssh = _asyncssh()
        where = self.host
        port = self.connect_options.get("port")
        if port:
            where = f"{self.host}:{port}"
        try:
            self._conn = await asyncssh.connect(self.host, **self.connect_options)
        except asyncssh.PermissionDenied as e:
            user = self.connect_options.get("username", "your user name")
            raise SSHError(
                f"{where} refused the SSH login of {user} ({e.reason}): check that your key is "
                "in its ~/.ssh/authorized_keys, or pass connect_options={'client_keys': [...], "
                "'username': ...}"
            ) from None
        except asyncssh.HostKeyNotVerifiable as e:
            raise SSHError(
                f"the host key of {where} is not known ({e.reason}): ssh to it once to accept "
                "it, or pass connect_options={'known_hosts': path}"
            ) from None
        except (OSError, asyncio.TimeoutError, asyncssh.Error) as e:
            raise SSHError(
                f"could not reach {where} over SSH: {e or type(e).__name__}; check the host name "
                "and port (connect_options={'port': ...}) and that sshd runs there"
            ) from None
        command = f"exec {shlex.quote(self.remote_python)} -m hpcdask.deploy._ssh_remote"
        self._proc = await self._conn.create_process(command, encoding="utf-8")
        self._proc.stdin.write(json.dumps(self._config()) + "\n")
        try:
            self.address = await asyncio.wait_for(self._ready(), STARTUP_TIMEOUT)
        except BaseException:
            self._conn.close()
            raise
        self._drain = asyncio.ensure_future(self._drain_stderr())
        self.status = "running"
        logger.info("%s on %s at %s", self.role, self.host, self.address)
        return self

    async def _ready(self) -> str:
        """Wait for the address line; if the process ends first, say why."""
        stderr = asyncio.ensure_future(self._collect_stderr())
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                break
            if line.startswith(READY):
                stderr.cancel()
                return line.split(None, 1)[1].strip()
        await self._proc.wait()
        await asyncio.wait([stderr], timeout=2)
        code = self._proc.exit_status
        text = "".join(self.stderr).strip()
        if code == 127:
            raise SSHError(
                f"{self.host}: remote_python {self.remote_python!r} was not found there "
                f"({text or 'exit code 127'}); pass remote_python= the path of a Python that has "
                "hpcdask installed on that host"
            )
        if "No module named" in text and "hpcdask" in text:
            raise SSHError(
                f"{self.host}: hpcdask is not installed for {self.remote_python}; install it "
                "there (pip install hpcdask) or pass remote_python= another interpreter"
            )
        raise SSHError(f"the {self.role} on {self.host} exited with code {code} before "
                       f"serving:\n{text[-2000:]}")  # fmt: skip

    async def _collect_stderr(self) -> None:
        async for line in self._proc.stderr:
            self.stderr.append(line)

    async def _drain_stderr(self) -> None:
        try:
            await self._collect_stderr()
        except Exception:
            pass

    async def close(self) -> None:
        if self.status == "closed":
            return
        self.status = "closed"
        if self._proc is not None:
            try:
                self._proc.stdin.write_eof()  # the remote process stops when its stdin closes
                await asyncio.wait_for(self._proc.wait(), 10)
            except Exception:
                pass
        if self._drain is not None:
            self._drain.cancel()
        if self._conn is not None:
            self._conn.close()
            try:
                await asyncio.wait_for(self._conn.wait_closed(), 5)
            except Exception:
                pass

    async def finished(self) -> None:
        if self._proc is not None:
            await self._proc.wait()

    def logs(self) -> list[str]:
        return [line.rstrip("\n") for line in self.stderr]


class SSHScheduler(SSHProcess):
    role = "scheduler"

    def __init__(self, address: str, connect_options: dict | None = None,
                 kwargs: dict | None = None, remote_python: str | None = None,
                 security: Security | None = None, remote_env: dict | None = None) -> None:  # fmt: skip
        super().__init__(address, connect_options, remote_python, security, remote_env)
        self.kwargs = {"host": address, **(kwargs or {})}  # listen where the others reach it

    def _config(self) -> dict:
        return {"role": "scheduler", "options": self.kwargs, "env": self.remote_env,
                "security": portable_security(self.security, "scheduler")}  # fmt: skip


class SSHWorker(SSHProcess):
    def __init__(self, scheduler: str, address: str, connect_options: dict | None = None,
                 kwargs: dict | None = None, worker_class: str = "hpcdask.Nanny",
                 remote_python: str | None = None, security: Security | None = None,
                 name: Any = None, remote_env: dict | None = None) -> None:  # fmt: skip
        super().__init__(address, connect_options, remote_python, security, remote_env)
        self.scheduler = scheduler
        self.name = name
        self.worker_class = worker_class if isinstance(worker_class, str) else (
            f"{worker_class.__module__}.{worker_class.__qualname__}"
        )  # fmt: skip
        self.kwargs = {"host": address, **(kwargs or {})}
        if name is not None:
            self.kwargs["name"] = name

    def _config(self) -> dict:
        return {"role": "worker", "scheduler": self.scheduler, "cls": self.worker_class,
                "options": self.kwargs, "env": self.remote_env,
                "security": portable_security(self.security, "worker")}  # fmt: skip


def _per_host(connect_options: dict | list | None, hosts: list[str]) -> list[dict]:
    if isinstance(connect_options, list):
        if len(connect_options) != len(hosts):
            raise ValueError(f"connect_options has {len(connect_options)} entries for "
                             f"{len(hosts)} hosts: give one per host, or one dict for all")  # fmt: skip
        return [dict(c) for c in connect_options]
    return [dict(connect_options or {}) for _ in hosts]


class SSHCluster(SpecCluster):
    """`SSHCluster(["sched-host", "worker-1", "worker-2"], connect_options={...})`.

    The first host runs the scheduler, every other host `worker_options.get("n_workers", 1)`
    workers (`worker_class`, default Nanny). `remote_python` is the interpreter there (default:
    this one's path); `remote_env` sets environment variables in the remote processes.
    """

    def __init__(self, hosts: list[str], connect_options: dict | list | None = None,
                 worker_options: dict | None = None, scheduler_options: dict | None = None,
                 worker_class: str = "hpcdask.Nanny", remote_python: str | list | None = None,
                 remote_env: dict | None = None, asynchronous: bool = False,
                 security: Security | None = None, name: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        if kwargs:
            raise TypeError(f"SSHCluster() got unexpected keyword arguments {sorted(kwargs)}")
        if isinstance(hosts, str) or not hosts or len(hosts) < 2:
            raise ValueError("SSHCluster needs a list of at least two hosts: the first runs the "
                             f"scheduler, the others workers; got {hosts!r}")  # fmt: skip
        _asyncssh()
        hosts = list(hosts)
        options = _per_host(connect_options, hosts)
        pythons = (list(remote_python) if isinstance(remote_python, (list, tuple))
                   else [remote_python] * len(hosts))  # fmt: skip
        if len(pythons) != len(hosts):
            raise ValueError(f"remote_python has {len(pythons)} entries for {len(hosts)} hosts")
        worker_options = dict(worker_options or {})
        n_per_host = int(worker_options.pop("n_workers", 1))
        common = {"remote_env": remote_env}
        scheduler = {"cls": SSHScheduler, "options": {
            "address": hosts[0], "connect_options": options[0], "remote_python": pythons[0],
            "kwargs": dict(scheduler_options or {}), **common}}  # fmt: skip
        # one spec per worker host; scale() beyond the initial workers adds to the least used
        self._host_specs = [{"cls": SSHWorker, "options": {
            "address": host, "connect_options": options[i], "kwargs": worker_options,
            "worker_class": worker_class, "remote_python": pythons[i], **common}}
            for i, host in enumerate(hosts) if i]  # fmt: skip
        workers = {}
        for i, spec in enumerate(self._host_specs, start=1):
            for j in range(n_per_host):
                host = hosts[i]
                workers[f"{host}-{i}-{j}" if n_per_host > 1 else f"{host}-{i}"] = spec
        self.hosts = hosts
        super().__init__(workers=workers, scheduler=scheduler, asynchronous=asynchronous,
                         security=security, name=name or "SSHCluster")  # fmt: skip

    def new_worker_spec(self) -> dict:
        """One more worker, on the worker host that runs the fewest."""
        use = collections.Counter(s["options"]["address"] for s in self.worker_spec.values())
        i, spec = min(enumerate(self._host_specs, start=1),
                      key=lambda e: use[e[1]["options"]["address"]])  # fmt: skip
        while (name := f"{self.hosts[i]}-{i}-{next(self._counter)}") in self.worker_spec:
            pass
        return {name: {"cls": spec["cls"], "options": dict(spec["options"])}}

    def _threads_per_worker(self) -> int:
        spec = self._host_specs[0]
        return int(spec["options"].get("kwargs", {}).get("nthreads") or 1)
