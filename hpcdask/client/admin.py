"""Client methods that administer the cluster: restart some workers, remove plugins, setup
callbacks, package versions, bytes per key, the scheduler file, a hardware benchmark, the
active memory manager and forwarding the workers' log records here (scheduler/admin.py and
worker/admin.py answer them)."""

from __future__ import annotations

import inspect
import json
import logging
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from ..plugins import WorkerPlugin
from ..utils.durations import parse_duration
from ..utils.options import refuse
from ..utils.versions import get_versions, mismatches

_FORWARDED = "forwarded-log-record"  # topic prefix of forward_logging's events


class _WorkerSetupPlugin(WorkerPlugin):
    """What `register_worker_callbacks(setup)` registers: `setup()` (or
    `setup(dask_worker=worker)`) on every worker, now and when it joins."""

    def __init__(self, setup: Callable) -> None:
        self.setup_function = setup
        self.name = f"{getattr(setup, '__name__', 'setup')}-{uuid.uuid4().hex}"

    def setup(self, worker: Any) -> Any:
        try:
            params = inspect.signature(self.setup_function).parameters
        except (TypeError, ValueError):
            params = {}
        if "dask_worker" in params:
            return self.setup_function(dask_worker=worker)
        return self.setup_function()


class _Forwarder(logging.Handler):
    """Sends each record it handles to the scheduler's event log, for the client."""

    def __init__(self, worker: Any, topic: str, level: int) -> None:
        super().__init__(level)
        self.worker = worker
        self.topic = topic
        self._busy = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._busy:  # a record logged while sending one
            return
        self._busy = True
        try:
            attrs = {}
            for k, v in record.__dict__.items():
                attrs[k] = v if v is None or isinstance(v, (str, int, float, bool)) else str(v)
            attrs["msg"] = record.getMessage()
            attrs["args"] = None
            attrs["exc_info"] = None
            if record.exc_info:
                attrs["exc_text"] = logging.Formatter().formatException(record.exc_info)
            attrs["worker"] = self.worker.address
            self.worker.log_event(self.topic, attrs)
        except Exception:
            self.handleError(record)
        finally:
            self._busy = False


class ForwardLogging(WorkerPlugin):
    """What `forward_logging` registers: a handler on the worker's logger `logger_name`
    (None: the root) that sends what it handles, at `level` or above, to the client."""

    def __init__(self, logger_name: str | None, level: int, topic: str, name: str) -> None:
        self.logger_name = logger_name
        self.level = level
        self.topic = topic
        self.name = name
        self._handler: _Forwarder | None = None

    def setup(self, worker: Any) -> None:
        self._handler = _Forwarder(worker, self.topic, self.level)
        logging.getLogger(self.logger_name).addHandler(self._handler)

    def teardown(self, worker: Any) -> None:
        if self._handler is not None:
            logging.getLogger(self.logger_name).removeHandler(self._handler)
            self._handler = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handler": None}


def _handle_forwarded(event: tuple) -> None:
    _, attrs = event
    record = logging.makeLogRecord(attrs)
    logging.getLogger(record.name).handle(record)


class ClusterAdmin:
    """Mixed into `Client`; relies on its `_sync`, `_rpc`, `pool` and `scheduler_address`."""

    def restart_workers(self, workers: list, timeout: Any = None,
                        raise_for_error: bool = True) -> Any:  # fmt: skip
        """Restart these workers (addresses or names) through their nannies and wait for them
        to come back: {worker as given: "OK" | "removed" (no nanny: closed) | "timed out"}.
        Their tasks run again elsewhere or on the new worker; their data is recomputed when
        needed. `raise_for_error`: a TimeoutError when one did not come back in time."""
        if isinstance(workers, (str, int)) or workers is None:
            raise TypeError(f"restart_workers takes a list of worker addresses or names, "
                            f"not {workers!r}")  # fmt: skip
        seconds = 4 * self.timeout if timeout is None else parse_duration(timeout)
        return self._sync(self._restart_workers, list(workers), seconds, raise_for_error)

    async def _restart_workers(self, workers: list, timeout: float, raise_for_error: bool) -> dict:
        reply = await self.pool.call(self.scheduler_address, "restart-workers", workers=workers,
                                     timeout=timeout)  # fmt: skip
        if "unknown" in reply:
            raise ValueError(f"restart_workers: no worker {reply['unknown']!r} in the cluster "
                             f"(workers: {', '.join(reply['known'])})")  # fmt: skip
        result = {name: status for name, status in reply["result"]}
        late = [str(w) for w, s in result.items() if s == "timed out"]
        if late and raise_for_error:
            raise TimeoutError(f"workers {', '.join(late)} did not come back within {timeout}s "
                               "of their restart")  # fmt: skip
        return result

    def unregister_worker_plugin(self, name: str, nanny: bool | None = None) -> Any:
        """Remove the worker plugin `name` from every worker (its `teardown` runs) and from
        those that join later; with `nanny=True` the nanny plugin `name` from every nanny."""
        if nanny:
            return self._sync(self._unregister_nanny_plugin, name)
        return self._sync(self._unregister_worker_plugin, name)

    async def _unregister_nanny_plugin(self, name: str) -> dict:
        from ..rpc import RemoteError

        try:
            replies = await self.pool.call(self.scheduler_address, "unregister-nanny-plugin",
                                           name=name)  # fmt: skip
        except RemoteError as e:
            if "no nanny plugin named" in str(e):
                raise ValueError(str(e).split("ValueError: ", 1)[-1]) from None
            raise
        return _raise_failed(replies, f"the teardown of nanny plugin {name!r}")

    async def _unregister_worker_plugin(self, name: str) -> dict:
        reply = await self.pool.call(self.scheduler_address, "unregister-worker-plugin", name=name)
        if "missing" in reply:
            raise ValueError(f"no worker plugin named {name!r} is registered (registered: "
                             f"{', '.join(reply['missing']) or 'none'})")  # fmt: skip
        return _raise_failed(reply["replies"], f"the teardown of worker plugin {name!r}")

    def unregister_scheduler_plugin(self, name: str) -> Any:
        """Remove the scheduler plugin `name`; its `before_close` and `close` run."""
        return self._sync(self._unregister_scheduler_plugin, name)

    async def _unregister_scheduler_plugin(self, name: str) -> None:
        reply = await self.pool.call(self.scheduler_address, "unregister-scheduler-plugin",
                                     name=name)  # fmt: skip
        if "missing" in reply:
            raise ValueError(f"no scheduler plugin named {name!r} is registered (registered: "
                             f"{', '.join(reply['missing']) or 'none'})")  # fmt: skip

    def register_worker_callbacks(self, setup: Callable | None = None) -> Any:
        """Run `setup()` (or `setup(dask_worker=worker)`) on every worker now and on each
        one that joins later; dask.distributed's older form of `register_plugin`."""
        if not callable(setup):
            raise TypeError(f"register_worker_callbacks needs a callable setup, not {setup!r}")
        return self._sync(self._install_plugin, _WorkerSetupPlugin(setup))

    def get_versions(self, check: bool = False, packages: list | None = None) -> Any:
        """{"scheduler", "workers": {address: ...}, "client"}: each one's host and package
        versions. `check=True`: a ValueError if a required package (python, hpcdask,
        cloudpickle, msgpack, dask) differs anywhere, a warning for optional ones."""
        packages = list(packages or ())
        if not all(isinstance(p, str) for p in packages):
            raise TypeError(f"packages must be a list of package names, not {packages!r}")
        return self._sync(self._get_versions, check, packages)

    async def _get_versions(self, check: bool, packages: list) -> dict:
        scheduler = await self.pool.call(self.scheduler_address, "versions", packages=packages)
        replies = await self.pool.call(self.scheduler_address, "broadcast", msg_op="versions",
                                       payload={"packages": packages})  # fmt: skip
        workers = {a: v for a, v in replies.items() if isinstance(v, dict) and "packages" in v}
        result = {"scheduler": scheduler, "workers": workers, "client": get_versions(packages)}
        if check:
            error, warning = mismatches(scheduler, workers, result["client"])
            if warning:
                warnings.warn(warning, stacklevel=3)
            if error:
                raise ValueError(error)
        return result

    def nbytes(self, keys: Any = None, summary: bool = True, **kwargs: Any) -> Any:
        """Bytes of each key in memory (of these keys or futures, or all): {key: n}, or per
        key prefix with summary=True ({"inc": n}), as dask.distributed measures: sizeof."""
        refuse("nbytes", kwargs)
        if keys is not None:
            from .introspection import _keys

            keys = _keys(keys)
        return self._rpc("nbytes", keys=keys, summary=bool(summary))

    def write_scheduler_file(self, scheduler_file: str) -> Any:
        """Write a scheduler file (owner-only: it holds the cluster's secret) that
        `Client(scheduler_file=...)` and workers connect with."""
        if getattr(self, "scheduler_file", None):
            raise ValueError(f"this client already has a scheduler file ({self.scheduler_file})")
        from ..scheduler.server import _write_private

        info = self.scheduler_info()
        secret = self.security.secret if self.security is not None else None
        _write_private(scheduler_file, json.dumps({
            "type": "Scheduler", "id": info.get("id"), "address": self.scheduler_address,
            "secret": secret.hex() if secret else None,
        }))  # fmt: skip
        self.scheduler_file = scheduler_file

    def benchmark_hardware(self) -> Any:
        """{"memory", "disk", "network": {size: bytes per second}}, averaged over workers
        (network: each worker sending to the next; empty with one worker). Small sizes, so
        that it takes about a second: an order of magnitude, not peak figures."""
        return self._rpc("benchmark-hardware")

    @property
    def amm(self) -> Any:
        """The scheduler's active memory manager (client/amm.py)."""
        from .amm import AMMClientProxy

        return AMMClientProxy(self)

    def forward_logging(self, logger_name: str | None = None, level: Any = logging.NOTSET) -> Any:
        """Re-emit here the log records that the workers' logger `logger_name` (None: the
        root, so all) handles at `level` or above: tasks' `logging.getLogger(...).warning`
        reach this process's handlers, with a `worker` attribute."""
        if isinstance(level, str):
            level = logging.getLevelName(level.upper())
            if not isinstance(level, int):
                raise ValueError(f"unknown logging level {level!r}")
        name = f"forward-logging-{logger_name or '<root>'}"
        topic = f"{_FORWARDED}-{name}"
        plugin = ForwardLogging(logger_name, level, topic, name)
        return self._sync(self._forward_logging, topic, plugin)

    async def _forward_logging(self, topic: str, plugin: ForwardLogging) -> dict:
        await _awaited(self.subscribe_topic(topic, _handle_forwarded))
        return await self._install_plugin(plugin)  # replaces one of the same name: once only

    def unforward_logging(self, logger_name: str | None = None) -> Any:
        """Stop forwarding the workers' logger `logger_name` (None: the root)."""
        return self._sync(self._unforward_logging, f"forward-logging-{logger_name or '<root>'}")

    async def _unforward_logging(self, name: str) -> dict:
        await _awaited(self.unsubscribe_topic(f"{_FORWARDED}-{name}"))
        return await self._unregister_worker_plugin(name)


def _raise_failed(replies: dict, what: str) -> dict:
    for addr, r in replies.items():
        if isinstance(r, dict) and r.get("status") == "error":
            raise RuntimeError(f"{what} failed on {addr}: {r.get('text')}")
    return replies


async def _awaited(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result
