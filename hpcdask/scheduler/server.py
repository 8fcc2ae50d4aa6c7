"""The async Scheduler: carries the state machine's instructions over comms.

All decisions are in `core.scheduler_state.SchedulerState`; this module only turns messages
into events and instructions into messages, and answers requests (who has what, run a function
on every worker, restart, retire workers...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections import deque
from typing import Any

from .. import config
from ..comm import Comm, address_from, get_address_host
from ..core import scheduler_events as ev
from ..core.scheduler_state import FIRE_AND_FORGET, SchedulerState
from ..dashboard import dashboard_link, parse_dashboard_address
from ..dashboard import start as start_dashboard
from ..protocol import records as rec
from ..protocol.records import read
from ..protocol.serialize import Pickled
from ..rpc import BatchedSend, ConnectionPool, Server
from ..security import Security, as_secret, new_secret, remove_secret, save_secret
from ..utils.durations import parse_duration
from ..utils.logs import LogBuffer
from ..utils.options import SCHEDULER, check_options
from .admin import install as install_admin
from .coordination import install as install_coordination
from .datasets import install as install_datasets
from .introspection import install as install_introspection
from .lifecycle import WorkerLifecycle
from .nanny_plugins import install as install_nanny_plugins
from .remote_code import RemoteCode, _maybe_await

logger = logging.getLogger("hpcdask.scheduler")

_HTTP_ROUTES = {"/health": lambda: (200, "ok\n")}
HEIR_WAIT = 60.0  # seconds a worker at its lifetime waits for another to take its unique data


class Scheduler(WorkerLifecycle, RemoteCode, Server):
    """Central scheduler. `await Scheduler(...)` starts it; `.address` is where to connect."""

    def __init__(
        self,
        host: str | None = None,
        port: int = 0,
        interface: str | None = None,
        protocol: str | None = None,
        security: Security | None = None,
        scheduler_file: str | None = None,
        killed_worker_limit: int | None = None,
        worker_ttl: float | str | None = None,
        inproc: bool = False,
        dashboard_address: Any = ":8787",
        allowed_failures: int | None = None,
        dashboard: bool = True,
        **kwargs: Any,
    ) -> None:
        """`allowed_failures` and `dashboard` are dask.distributed's names: a task fails once
        more than `allowed_failures` workers died running it (killed_worker_limit counts the
        deaths that fail it: one more); `dashboard=False` turns the dashboard off."""
        check_options("Scheduler", kwargs, SCHEDULER)
        if allowed_failures is not None and killed_worker_limit is None:
            killed_worker_limit = allowed_failures + 1
        if not dashboard:
            dashboard_address = None
        if security is None:
            security = Security()
        if not security.secret:
            security.secret = (
                as_secret(config.get("secret")) if config.get("secret") else new_secret()
            )
        super().__init__(security=security)
        self.listen_address = address_from(protocol=protocol, host=host, port=port,
                                           interface=interface, security=security)  # fmt: skip
        self.scheduler_file = scheduler_file
        self.id = f"Scheduler-{uuid.uuid4().hex[:12]}"
        limit = killed_worker_limit or int(config.get("scheduler.killed-worker-limit", 3))
        ttl = config.get("scheduler.worker-ttl") if worker_ttl is None else worker_ttl
        self.worker_ttl = _seconds(ttl, "scheduler.worker-ttl")
        self.state = SchedulerState(killed_worker_limit=limit, worker_ttl=self.worker_ttl)
        self.address = ""
        self.inproc_address: str | None = None
        self._want_inproc = inproc and not self.listen_address.startswith("inproc")
        self._inline: dict[str, Any] = {}
        self.worker_streams: dict[str, BatchedSend] = {}
        self.client_streams: dict[str, BatchedSend] = {}
        self.worker_info: dict[str, dict] = {}
        self.closing_workers: set[str] = set()
        self._close_retired: dict[str, bool] = {}  # retiring worker -> close it when done
        self._msg_seq = 0  # numbers the stimulus ids of incoming messages
        self.funcs: dict[str, Any] = {}
        self.funcs_sent: dict[str, set] = {}
        self.worker_plugins: dict[str, Any] = {}
        self.plugins: dict[str, Any] = {}
        self.events: deque = deque(maxlen=1000)
        self.pool = ConnectionPool(security=security)
        self.logs = LogBuffer.attach("hpcdask")
        self.status = "created"
        self._workers_changed: asyncio.Event | None = None  # made in start(), on the loop
        self._finished: asyncio.Event | None = None
        self._start_lock: asyncio.Lock | None = None
        parse_dashboard_address(dashboard_address, None)  # a bad address fails here, not later
        self.dashboard_address = dashboard_address
        self.dashboard: Any = None  # dashboard.server.Dashboard, started in start()
        self.collector: Any = None  # diagnostics.collector.Collector (task stream, progress)
        self.cluster_ref: Any = None  # weakref to the Cluster owning this scheduler, if any
        self.handlers.update({
            "register-worker": self._register_worker,
            "register-client": self._register_client,
            "identity": self._identity,
            "who-has": self._who_has,
            "gather": self._gather,
            "broadcast": self._broadcast,
            "run-on-scheduler": self._run_on_scheduler,
            "restart": self._restart,
            "retire-workers": self._retire_workers,
            "register-worker-plugin": self._register_worker_plugin,
            "register-scheduler-plugin": self._register_scheduler_plugin,
            "get-logs": self._get_logs,
            "adaptive-target": self._adaptive_target,
            "wait-for-workers": self._wait_for_workers,
            "story": self._story,
            "log-event": self._log_event,
            "terminate": self._terminate,
            "shutdown": self._shutdown,
        })  # fmt: skip
        install_datasets(self)  # publish_dataset & co (scheduler/datasets.py)
        install_coordination(self)  # Lock, Queue, Event... (scheduler/coordination.py)
        install_introspection(self)  # has_what, rebalance... (scheduler/introspection.py)
        install_nanny_plugins(self)  # NannyPlugin, Environ (scheduler/nanny_plugins.py)
        install_admin(self)  # restart_workers, plugin removal, AMM... (scheduler/admin.py)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> Scheduler:
        if self.status == "running":
            return self
        self._workers_changed = asyncio.Event()
        self._finished = asyncio.Event()
        # Transports that speak HTTP (ws://, wss://) answer health checks on the same port,
        # e.g. a load balancer's or an ingress's; nothing there reveals anything about the cluster.
        listener = await self.listen(self.listen_address, http_routes=_HTTP_ROUTES)
        self.address = listener.contact_address
        if self._want_inproc:  # clients in this process skip the network stack
            self.inproc_address = (await self.listen("inproc://")).contact_address
        save_secret(self.address, self.security.secret)
        if self.scheduler_file:
            _write_private(self.scheduler_file, json.dumps({
                "type": "Scheduler", "id": self.id, "address": self.address,
                "secret": self.security.secret.hex(),
            }))  # fmt: skip
        await start_dashboard(self, self.dashboard_address)
        self.status = "running"
        if self.worker_ttl:
            self.spawn(self._watch_worker_ttl())
        logger.info("Scheduler at %s", self.address)
        if self.dashboard is not None:  # without the token: logs may be readable by others
            logger.info("Dashboard at %s (the link with its token: client.dashboard_link)",
                        self.dashboard_link.split("?token=")[0])  # fmt: skip
        return self

    async def close(self, close_workers: bool = False) -> None:
        if self.status in ("closing", "closed"):
            if self._finished is not None:
                await self._finished.wait()
            return
        self.status = "closing"
        if close_workers:
            await self._close_workers()
        for plugin in list(self.plugins.values()):
            await _maybe_await(getattr(plugin, "close", None))
        for bs in list(self.client_streams.values()) + list(self.worker_streams.values()):
            bs.abort()
        await self.stop_serving()
        await self.pool.close()
        if self.address:
            remove_secret(self.address)
        if self.scheduler_file and os.path.exists(self.scheduler_file):
            os.unlink(self.scheduler_file)
        self.status = "closed"
        if self._finished is not None:
            self._finished.set()

    async def _close_workers(self, timeout: float = 5.0) -> None:
        for addr, bs in list(self.worker_streams.items()):
            self.closing_workers.add(addr)
            try:
                bs.send({"op": "close", "nanny": True})
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while self.worker_streams and time.monotonic() < deadline:
            await self._wait_workers_changed(deadline - time.monotonic())

    async def _wait_workers_changed(self, timeout: float) -> None:
        self._workers_changed.clear()
        try:
            await asyncio.wait_for(self._workers_changed.wait(), max(timeout, 0.001))
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------ carrying out instructions

    def _stimulus(self, what: str, peer: str) -> str:
        """A stimulus id for the story: which message from which peer."""
        self._msg_seq += 1
        return f"{what} from {peer} #{self._msg_seq}"

    def apply(self, *events: Any, stimulus_id: str | None = None) -> None:
        """Feed events to the state machine and carry out what it decides."""
        send_worker = self.worker_streams.get
        send_client = self.client_streams.get
        inline, self._inline = self._inline, {}
        for ins in self.state.handle(*events, stimulus_id=stimulus_id):
            kind = type(ins)
            if kind is ev.Compute:
                bs = send_worker(ins.worker)
                if bs is None or bs.closed():
                    continue
                sent = self.funcs_sent[ins.worker]
                if ins.func not in sent:
                    sent.add(ins.func)
                    bs.send(rec.Func(rec.FUNC, ins.func, self.funcs.get(ins.func)))
                bs.send(rec.make(rec.Compute, (rec.COMPUTE, ins.key, ins.func, ins.args,
                                               ins.who_has, ins.nbytes, ins.priority,
                                               ins.resources)))  # fmt: skip
            elif kind is ev.FreeKeys:
                bs = send_worker(ins.worker)
                if bs is not None and not bs.closed():
                    bs.send(rec.Free(rec.FREE, ins.keys))
            elif kind is ev.ReportToClient:
                bs = send_client(ins.client)
                if bs is not None and not bs.closed():
                    msg = ins.msg
                    if inline and msg["op"] == "key-in-memory" and msg["key"] in inline:
                        msg = {**msg, "data": inline[msg["key"]]}
                    elif isinstance(msg.get("exception"), BaseException):
                        msg = {**msg, "exception": Pickled.dumps(msg["exception"])}
                    bs.send(msg)
            else:
                self._carry_out(ins)

    def _carry_out(self, ins: Any) -> None:
        """The rare instructions: retirement and restart."""
        kind = type(ins)
        if kind is ev.AcquireReplicas:
            self.spawn(self.pool.call(ins.worker, "acquire-replicas", who_has=ins.who_has,
                                      nbytes=ins.nbytes))  # fmt: skip
        elif kind is ev.WorkerRetired:
            self.closing_workers.add(ins.worker)
            bs = self.worker_streams.get(ins.worker)
            if self._close_retired.pop(ins.worker, True) and bs is not None and not bs.closed():
                bs.send({"op": "close", "nanny": True})
            self._workers_changed.set()
        elif kind is ev.CloseWorker:
            self.closing_workers.add(ins.worker)
            bs = self.worker_streams.get(ins.worker)
            if bs is not None and not bs.closed():
                bs.send({"op": "close", "restart": True} if ins.restart else {"op": "close"})
                if ins.reason:  # removed already (worker-ttl): it learns why if it comes back
                    logger.warning("Removed worker %s: %s", ins.worker, ins.reason)
                    self.events.append((time.time(), ins.worker, f"removed: {ins.reason}"))
                    self.spawn(_close_soon(bs))

    # ------------------------------------------------------------ worker streams

    async def _register_worker(self, comm: Comm, msg: dict) -> Any:
        addr = msg["address"]
        if addr in self.worker_streams:
            await comm.send(
                {"status": "error", "text": f"a worker at {addr} is already registered"}
            )
            return Server.STREAM
        self.worker_info[addr] = {
            "name": msg.get("name"), "nthreads": msg["nthreads"],
            "memory_limit": msg.get("memory_limit", 0), "resources": msg.get("resources") or {},
            "host": get_address_host(addr), "pid": msg.get("pid"), "nanny": msg.get("nanny"),
            "local_directory": msg.get("local_directory"), "metrics": {}, "last_seen": time.time(),
        }  # fmt: skip
        await comm.send({"status": "OK", "result": {
            "address": self.address, "id": self.id,
            "plugins": dict(self.worker_plugins),
        }})  # fmt: skip
        bs = BatchedSend(comm)
        self.worker_streams[addr] = bs
        self.funcs_sent[addr] = set()
        info = self.worker_info[addr]
        self.apply(ev.AddWorker(addr, msg["nthreads"], msg.get("name"), info["memory_limit"],
                                info["resources"], info["host"], msg.get("keys")),
                   stimulus_id=self._stimulus("register-worker", addr))  # fmt: skip
        self._notify_plugins("add_worker", worker=addr)
        self._workers_changed.set()
        logger.info("Register worker %s (%s threads)", addr, msg["nthreads"])
        reason = "connection closed"
        try:
            while True:
                batch = await comm.recv()
                self._worker_batch(addr, batch)
                batch = None  # not kept alive while waiting for the next one
        except OSError:
            pass
        except asyncio.CancelledError:
            reason = "scheduler closing"
        finally:
            safe = addr in self.closing_workers
            self.closing_workers.discard(addr)
            self.worker_streams.pop(addr, None)
            bs.abort()
            self.funcs_sent.pop(addr, None)
            self.worker_info.pop(addr, None)
            self.pool.remove(addr)
            if self.status == "running":
                self.apply(
                    ev.RemoveWorker(addr, reason="closed" if safe else reason, safe=safe),
                    stimulus_id=self._stimulus(f"stream closed ({reason})", addr),
                )
                self._notify_plugins("remove_worker", worker=addr)
                if not safe:
                    logger.warning("Worker %s left unexpectedly (%s)", addr, reason)
                    self.events.append((time.time(), addr, f"lost: {reason}"))
            self._workers_changed.set()
            comm.abort()
        return Server.STREAM

    def _worker_batch(self, addr: str, batch: list) -> None:
        events = []
        for msg in batch:
            if type(msg) is list:  # the hot path: a task finished (records.TaskFinished)
                tf = read(rec.TaskFinished, msg)
                events.append(ev.TaskFinished(addr, tf.key, tf.nbytes, tf.typename, tf.duration))
                if tf.data is not None:  # passed on to clients that want it, never kept
                    self._inline[tf.key] = tf.data
                continue
            op = msg["op"]
            if op == "task-erred":
                events.append(ev.TaskErred(addr, msg["key"], msg.get("exception"),
                                           msg.get("traceback"), msg.get("text", "")))  # fmt: skip
            elif op == "add-keys":
                events.append(ev.DataAdded(addr, msg["nbytes"]))
            elif op == "reschedule":  # the task raised Reschedule
                events.append(ev.RescheduleTask(addr, msg["key"]))
            elif op == "long-running":  # the task seceded (worker/secede.py)
                events.append(ev.LongRunning(addr, msg["key"]))
            elif op == "log-event":  # Worker.log_event
                self.coordination.log(msg["topics"], msg["msg"])
            elif op == "missing-data":
                events.append(ev.MissingData(msg["key"], msg["errant"], addr, msg.get("dependent")))
            elif op == "released-keys":
                events.extend(ev.WorkerReleasedKey(addr, k) for k in msg["keys"])
            elif op == "heartbeat":
                info = self.worker_info.get(addr)
                if info is not None:
                    info["metrics"] = msg.get("metrics", {})
                    info["last_seen"] = time.time()
                    events.append(ev.WorkerHeartbeat(addr, time.monotonic()))
            elif op == "worker-status":  # paused past worker.memory.pause, or running again
                events.append(ev.WorkerStatusChanged(addr, msg["status"]))
            elif op == "closing":
                self.closing_workers.add(addr)
            elif op == "retire-me":  # a worker at its lifetime (walltime): wait for heirs
                self.spawn(self.retire_workers([addr], close=True, heir_wait=HEIR_WAIT))
        if events:
            self.apply(*events, stimulus_id=self._stimulus("worker-batch", addr))

    # ------------------------------------------------------------ client streams

    async def _register_client(self, comm: Comm, msg: dict) -> Any:
        client = msg["client"]
        await comm.send({"status": "OK", "result": {"address": self.address, "id": self.id}})
        bs = BatchedSend(comm)
        self.client_streams[client] = bs
        self.apply(ev.AddClient(client), stimulus_id=self._stimulus("register-client", client))
        self.coordination.client_joined(client)
        try:
            while True:
                batch = await comm.recv()
                for m in batch:
                    if self._client_msg(client, m) is False:
                        return Server.STREAM
                batch = m = None  # a graph message must not outlive its processing
        except OSError:
            pass
        finally:
            self.client_streams.pop(client, None)
            bs.abort()
            if self.status == "running":
                self.apply(ev.RemoveClient(client), stimulus_id=self._stimulus("closed", client))
                self._notify_plugins("remove_client", client=client)
            comm.abort()
        return Server.STREAM

    def _client_msg(self, client: str, msg: dict) -> bool:
        op = msg["op"]
        stim = self._stimulus(op, client)
        if op == "update-graph":
            funcs = msg.get("funcs")
            if funcs:
                self.funcs.update(funcs)
            tasks = [read(rec.GraphTask, t) for t in msg["tasks"]]
            self.apply(ev.UpdateGraph(client, tasks, msg.get("wanted", [])), stimulus_id=stim)
        elif op == "release-keys":
            self.apply(ev.ReleaseKeys(client, msg["keys"]), stimulus_id=stim)
        elif op == "want-keys":
            self.apply(ev.WantKeys(msg.get("as", client), msg["keys"]), stimulus_id=stim)
        elif op == "fire-and-forget":
            self.apply(ev.WantKeys(FIRE_AND_FORGET, msg["keys"]), stimulus_id=stim)
        elif op == "cancel":
            self.apply(
                ev.CancelKeys(
                    client, msg["keys"], msg.get("reason") or "cancelled", msg.get("force", True)
                ),  # fmt: skip
                stimulus_id=stim,
            )
        elif op == "retry":
            self.apply(ev.RetryKeys(client, msg["keys"]), stimulus_id=stim)
        elif op == "update-data":
            for worker, nbytes in msg["who_has"].items():
                self.apply(ev.DataAdded(worker, nbytes, client), stimulus_id=stim)
        elif op == "close-client":
            return False
        return True

    # ------------------------------------------------------------ requests

    def identity(self) -> dict:
        workers = {}
        for addr, info in self.worker_info.items():
            ws = self.state.workers.get(addr)
            workers[addr] = {
                "type": "Worker", "id": info["name"], "name": info["name"], "host": info["host"],
                "nthreads": info["nthreads"], "memory_limit": info["memory_limit"],
                "resources": info["resources"], "pid": info["pid"], "nanny": info["nanny"],
                "local_directory": info["local_directory"], "metrics": info["metrics"],
                "last_seen": info["last_seen"],
                "processing": len(ws.processing) if ws else 0,
                "in_memory": len(ws.has_what) if ws else 0,
                "nbytes": ws.nbytes if ws else 0,
            }  # fmt: skip
        return {"type": "Scheduler", "id": self.id, "address": self.address,
                "workers": workers, "n_tasks": len(self.state.tasks),
                "services": {"dashboard": self.dashboard.port} if self.dashboard else {},
                "dashboard_scheme": self.dashboard.scheme if self.dashboard else None}  # fmt: skip

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's address with its access token (None when it is off)."""
        return dashboard_link(self)

    async def _identity(self, comm: Comm, msg: dict) -> dict:
        return self.identity()

    async def _who_has(self, comm: Comm, msg: dict) -> dict:
        out = {}
        keys = msg["keys"]
        if keys is None:  # all keys in memory, as dask's who_has()
            keys = [k for k, ts in self.state.tasks.items() if ts.who_has]
        for key in keys:
            ts = self.state.tasks.get(key)
            out[key] = [ws.address for ws in ts.who_has] if ts and ts.who_has else []
        return out

    async def _gather(self, comm: Comm, msg: dict) -> dict:
        """Fetch keys from workers for a client that cannot reach them; data stays pickled."""
        by_worker: dict[str, list] = {}
        missing = []
        for key in msg["keys"]:
            ts = self.state.tasks.get(key)
            if ts is None or not ts.who_has:
                missing.append(key)
            else:
                by_worker.setdefault(next(iter(ts.who_has)).address, []).append(key)
        data: dict = {}
        for worker, keys in by_worker.items():
            try:
                data.update(await self.pool.call(worker, "get-data", keys=keys))
            except OSError:
                missing.extend(keys)
        return {"data": data, "missing": missing}

    async def _get_logs(self, comm: Comm, msg: dict) -> list:
        return self.logs.lines(msg.get("n"))

    async def _adaptive_target(self, comm: Comm, msg: dict) -> int:
        return self.state.adaptive_target(msg.get("target_duration", 1.0))

    async def _story(self, comm: Comm, msg: dict) -> list:
        return [list(e) for e in self.state.story(*msg["keys"])]

    async def _log_event(self, comm: Comm, msg: dict) -> None:
        if msg.get("worker"):  # a nanny says why it kills its worker: for KilledWorker
            self.apply(ev.WorkerDeathReason(msg["worker"], msg.get("text", "")),
                       stimulus_id=self._stimulus("log-event", msg["worker"]))  # fmt: skip
        self.events.append((time.time(), msg.get("topic", ""), msg.get("text", "")))
        logger.warning("%s: %s", msg.get("topic", "event"), msg.get("text", ""))

    async def _terminate(self, comm: Comm, msg: dict) -> None:
        asyncio.get_running_loop().call_soon(lambda: self.spawn(self.close()))

    async def _shutdown(self, comm: Comm, msg: dict) -> None:
        await self._close_workers()
        asyncio.get_running_loop().call_soon(lambda: self.spawn(self.close()))


async def _close_soon(bs: BatchedSend, timeout: float = 5.0) -> None:
    """Write what is queued (a frozen peer's socket buffer takes it), then close."""
    try:
        await asyncio.wait_for(bs.close(), timeout)
    except (OSError, asyncio.TimeoutError):
        bs.abort()


def _seconds(value: Any, key: str) -> float:
    """A duration in seconds from a number or dask's text ("300s", "5 minutes")."""
    if value is None or value is False:
        return 0.0
    if not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = None
        if seconds is not None and seconds >= 0:
            return seconds
    raise ValueError(f"{key}: expected seconds (a number >= 0, or e.g. '30s', '5 minutes'), "
                     f"got {value!r}")  # fmt: skip


def _write_private(path: str, text: str) -> None:
    """Write a file only its owner can read: it may hold the cluster's secret."""
    path = os.path.expanduser(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
