"""The async Worker: runs tasks, serves its data to peers, reports to the scheduler.

Decisions (what to run next, what to fetch from whom) are made by `core.worker_state`; this
module carries them out: a thread pool for tasks, a connection pool for peers, and one batched
stream to the scheduler.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import queue
import random
import threading
import time
import traceback
from collections import deque
from typing import Any

import psutil

from .. import config
from ..comm import Comm, address_from
from ..core import worker_state as ws
from ..core.exceptions import Reschedule
from ..diagnostics.recorder import TaskRecorder
from ..protocol import records as rec
from ..protocol.records import read
from ..protocol.serialize import Pickled, dumps_exception
from ..protocol.taskspec import loads_args
from ..rpc import BatchedSend, ConnectionPool, Server
from ..security import Security
from ..utils.logs import LogBuffer
from ..utils.options import WORKER, check_options
from ..utils.schedfile import resolve_scheduler
from ..utils.sizes import parse_bytes, sizeof
from . import memory
from .actors import install as install_actors
from .admin import install as install_admin
from .introspection import install as install_introspection
from .monitor import Monitoring
from .secede import _HANDOVER, _hand_over, close_task_client

logger = logging.getLogger("hpcdask.worker")

_current_worker: contextvars.ContextVar[Worker | None] = contextvars.ContextVar(
    "hpcdask_worker", default=None
)
_thread_state = threading.local()
_process_workers: list[Worker] = []

INLINE_RESULT_BYTES = 1024
_INLINE_TYPES = {int, float, bool, str, bytes, type(None), complex, tuple, list, dict}
EXIT_RESTART = 17  # asks the nanny to start a new worker
EXIT_SCHEDULER_GONE = 18  # tells the nanny not to bother


def get_worker() -> Worker:
    """The worker running the current task (or the only worker in this process)."""
    w = getattr(_thread_state, "worker", None) or _current_worker.get()
    if w is None and len(_process_workers) == 1:
        w = _process_workers[0]
    if w is None:
        raise ValueError("get_worker() was called outside a task running on a worker")
    return w


class Worker(Monitoring, Server):
    def __init__(
        self,
        scheduler_address: str | None = None,
        nthreads: int | None = None,
        name: Any = None,
        memory_limit: str | int | float | None = "auto",
        local_directory: str | None = None,
        resources: dict | None = None,
        security: Security | None = None,
        interface: str | None = None,
        protocol: str | None = None,
        host: str | None = None,
        port: int = 0,
        death_timeout: float | None = None,
        lifetime: float | None = None,
        lifetime_stagger: float | None = None,
        scheduler_file: str | None = None,
        nanny: str | None = None,
        plugins: list | None = None,
        **kwargs: Any,
    ) -> None:
        check_options("Worker", kwargs, WORKER)
        self.scheduler_address, security = resolve_scheduler(
            scheduler_address, scheduler_file, security, "Worker"
        )
        super().__init__(security=security)
        self.nthreads = int(nthreads or os.cpu_count() or 1)
        self.name = name
        self.memory_limit = parse_memory_limit(memory_limit, 1)
        self.local_directory = local_directory or os.path.join(
            os.environ.get("TMPDIR", "/tmp"), "hpcdask-worker-space"
        )
        self.resources = dict(resources or {})
        scheme = self.scheduler_address.split("://")[0]
        if getattr(security, "require_encryption", False) and scheme in ("tcp", "ws"):
            scheme = None  # tls, chosen by address_from
        self.listen_address = address_from(
            protocol=protocol or scheme, host=host, port=port, interface=interface,
            security=security,
        )  # fmt: skip
        self.death_timeout = death_timeout
        self.lifetime = lifetime
        if lifetime and lifetime_stagger:
            self.lifetime = lifetime + random.uniform(-lifetime_stagger, lifetime_stagger)
        self.nanny = nanny
        self.address = ""
        self.data: Any = {}  # a memory.ManagedData (spilling) once started with a memory limit
        self.memory_fractions = memory.memory_fractions()  # target, spill, pause, terminate
        self._memory: memory.ProcessMemory | None = None
        # Results larger than this make the worker sample its memory at once (~10 us).
        self._sample_bytes = self.memory_limit // 64 if self.memory_limit else 1 << 62
        self._sample_due = False
        self.funcs: dict[str, Any] = {}
        self.plugins: dict[str, Any] = {}
        self._initial_plugins = list(plugins or [])
        self.state: ws.WorkerState | None = None
        self.pool = ConnectionPool(security=security)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._results: deque = deque()
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._threads: list[threading.Thread] = []
        self._rejoiners: deque = deque()  # threading.Events of seceded tasks that rejoin
        self._avg_duration = 0.01
        self._inline: dict[str, Pickled] = {}
        self._msg_seq = 0  # numbers the stimulus ids of the story
        self.logs = LogBuffer.attach("hpcdask")
        self.recorder = TaskRecorder()  # task runs and transfers, for the task stream
        self.stream: BatchedSend | None = None
        self.status = "created"
        self.exit_code = 0
        self._finished: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.handlers.update({
            "get-data": self._get_data,
            "update-data": self._update_data,
            "run": self._run,
            "plugin-add": self._plugin_add,
            "acquire-replicas": self._acquire_replicas,
            "get-logs": self._get_logs,
            "drain-task-stream": self.recorder.handler,
            "close": self._close_request,
        })  # fmt: skip
        install_introspection(self)  # call stacks, state dump (worker/introspection.py)
        install_actors(self)  # submit(Cls, actor=True) (worker/actors.py)
        install_admin(self)  # plugin removal, versions, benchmarks (worker/admin.py)

    # ------------------------------------------------------------ lifecycle

    def __repr__(self) -> str:
        return (
            f"<Worker {self.address or self.listen_address} {self.status} nthreads={self.nthreads}>"
        )

    async def start(self) -> Worker:
        if self.status == "running":
            return self
        self._loop = asyncio.get_running_loop()
        self._finished = asyncio.Event()
        os.makedirs(self.local_directory, exist_ok=True)
        target, spill, pause, _ = self.memory_fractions
        if not self.data:  # (a mapping given before start is kept as it is)
            self.data = memory.make_data(self.memory_limit, self.local_directory, target, spill)
        self._memory = memory.ProcessMemory(self.data, self.memory_limit)
        listener = await self.listen(self.listen_address)
        self.address = listener.contact_address
        self.state = ws.WorkerState(self.address, self.nthreads, self.resources,
                                    memory_limit=self.memory_limit,
                                    memory_fractions=(target, spill, pause))  # fmt: skip
        for _ in range(self.nthreads):
            self._start_task_thread()
        timeout = self.death_timeout or float(config.get("comm.timeouts.connect", 30))
        try:
            from ..comm import connect

            comm = await connect(self.scheduler_address, security=self.security, timeout=timeout)
            await comm.send({
                "op": "register-worker", "address": self.address, "nthreads": self.nthreads,
                "name": self.name if self.name is not None else self.address,
                "memory_limit": self.memory_limit, "resources": self.resources,
                "pid": os.getpid(), "nanny": self.nanny, "local_directory": self.local_directory,
                "keys": memory.data_sizes(self.data),
            })  # fmt: skip
            response = await comm.recv()
        except BaseException:
            await self.stop_serving()
            self._stop_threads()
            raise
        if response.get("status") != "OK":
            comm.abort()
            await self.stop_serving()
            raise RuntimeError(f"scheduler refused worker: {response.get('text')}")
        self.stream = BatchedSend(comm)
        self.status = "running"
        _process_workers.append(self)
        for name, plugin in response["result"].get("plugins", {}).items():
            try:  # one broken plugin must not keep every later worker from starting
                await self._setup_plugin(name, plugin)
            except Exception:
                self.plugins.pop(name, None)
                logger.exception("worker plugin %s failed in setup; the worker runs without it",
                                 name)  # fmt: skip
        for plugin in self._initial_plugins:
            await self._setup_plugin(getattr(plugin, "name", None) or repr(plugin), plugin)
        self.spawn(self._read_scheduler(comm))
        self.spawn(self._heartbeat())
        if self.memory_limit or str(self.nanny or "").isdigit():
            self.spawn(self._watch_memory())
        if self.lifetime:
            self.spawn(self._retire_after(self.lifetime))
        logger.info("Worker %s registered with %s", self.address, self.scheduler_address)
        return self

    async def close(self, reason: str = "closed", exit_code: int = 0) -> None:
        if self.status in ("closing", "closed"):
            if self._finished is not None:
                await self._finished.wait()
            return
        self.status = "closing"
        self.exit_code = exit_code
        for name, plugin in list(self.plugins.items()):
            teardown = getattr(plugin, "teardown", None)
            if teardown is not None:
                try:
                    result = teardown(self)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    logger.exception("worker plugin %s failed in teardown", name)
        if self.stream is not None and not self.stream.closed():
            try:
                self.stream.send({"op": "closing"})
                await asyncio.wait_for(self.stream.close(), 2)
            except (OSError, asyncio.TimeoutError):
                self.stream.abort()
        await close_task_client(self)
        self.profiler.stop()
        await self.stop_serving()
        await self.pool.close()
        self._stop_threads()
        if self in _process_workers:
            _process_workers.remove(self)
        if isinstance(self.data, memory.ManagedData):
            self.data.close()  # its spill files go with it
        self.status = "closed"
        logger.info("Worker %s closed (%s)", self.address, reason)
        if self._finished is not None:
            self._finished.set()

    def _stop_threads(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    # ------------------------------------------------------------ scheduler stream

    async def _read_scheduler(self, comm: Comm) -> None:
        reason, code = "scheduler connection closed", EXIT_SCHEDULER_GONE
        try:
            while True:
                batch = await comm.recv()
                events = []
                for msg in batch:
                    if type(msg) is list:  # the hot path: records.Compute, Func, Free
                        op = msg[0]
                        if op == rec.COMPUTE:  # the state machine's ComputeTask event
                            events.append(read(rec.Compute, msg))
                        elif op == rec.FUNC:
                            f = read(rec.Func, msg)
                            self.funcs[f.fid] = f.pickled
                        elif op == rec.FREE:
                            events.append(ws.FreeKeys(read(rec.Free, msg).keys))
                        continue
                    if msg.get("op") == "close":
                        if events:
                            self._handle(*events, cause="scheduler-batch")
                        if msg.get("restart"):
                            reason, code = "restart requested", EXIT_RESTART
                        else:
                            reason, code = "closed by the scheduler", 0
                        return
                if events:
                    self._handle(*events, cause="scheduler-batch")
                batch = events = msg = None
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if self.status == "running":
                self.spawn(self.close(reason, exit_code=code))

    def _handle(self, *events: Any, cause: str = "") -> None:
        """Feed events to the state machine and carry out what it decides; `cause` names
        the message and its peer for the story."""
        state = self.state
        self._tune_prefetch()
        self._msg_seq += 1
        stim = f"{cause} #{self._msg_seq}" if cause else None
        for ins in state.handle(*events, stimulus_id=stim):
            kind = type(ins)
            if kind is ws.Execute:
                self._execute(state.tasks[ins.key])
            elif kind is ws.SendToScheduler:
                msg = ins.msg
                if msg["op"] == "task-finished":
                    msg = rec.make(rec.TaskFinished, (
                        rec.TASK_FINISHED, msg["key"], msg["nbytes"], msg["type"],
                        msg["duration"], self._inline.pop(msg["key"], None),
                    ))  # fmt: skip
                self._send(msg)
            elif kind is ws.GatherDep:
                self.spawn(self._gather_dep(ins.worker, ins.keys))
            elif kind is ws.DropData:
                for key in ins.keys:
                    self.data.pop(key, None)
                    self._inline.pop(key, None)
                    self.actors.pop(key, None)
            elif kind is ws.SpillData:
                if self._memory.spill(ins.nbytes):  # look again now: maybe it may run again
                    self._loop.call_soon(self._resample)

    def log_event(self, topic: str | list, msg: Any) -> None:
        """Record `msg` (msgpack-able) in the scheduler's event log under `topic` (or several),
        from a task or a plugin; `client.get_events(topic)` reads it."""
        topics = [topic] if isinstance(topic, str) else list(topic)
        self._loop.call_soon_threadsafe(self._send, {"op": "log-event", "topics": topics,
                                                     "msg": msg})  # fmt: skip

    def _send(self, msg: Any) -> None:
        if self.stream is not None and not self.stream.closed():
            self.stream.send(msg)

    # ------------------------------------------------------------ running tasks

    def _execute(self, ts: ws.WTask) -> None:
        self._queue.put((ts.key, self._load_function(ts.func), ts.args))

    def _thread_main(self) -> None:
        """A task thread: run queued tasks back to back, post results in batches.

        A task that seceded (worker/secede.py) got a replacement thread: its own thread leaves
        the pool once the task is done. A task that rejoins takes over the slot of the next
        pool thread that is between tasks (`_HANDOVER` wakes an idle one)."""
        _thread_state.worker = self
        get, results, tasks = self._queue.get, self._results, self.state.tasks
        while True:
            item = get()
            if item is None:
                return
            if item is _HANDOVER:
                if self._rejoiners and _hand_over(self):
                    return
                continue
            key, func, args = item
            ts = tasks.get(key)
            if ts is None or ts.state == "cancelled":  # freed while it waited in the queue
                results.append((key, False, None, None, 0.0))
            else:
                results.append(self._run_task(key, func, args))
            if not self._wake():
                return
            if getattr(_thread_state, "seceded", False):  # a replacement has its slot
                _thread_state.seceded = False
                self._threads.remove(threading.current_thread())
                return
            if self._rejoiners and _hand_over(self):
                return

    def _wake(self) -> bool:
        """Have the event loop drain the results; False once the loop is gone."""
        with self._wake_lock:
            if self._wake_pending:
                return True
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._drain_results)
        except RuntimeError:  # the loop closed under us: the worker is gone
            return False
        return True

    def _start_task_thread(self) -> None:
        t = threading.Thread(target=self._thread_main, daemon=True,
                             name=f"hpcdask-task-{len(self._threads)}")  # fmt: skip
        self._threads.append(t)  # before it runs: it may hand its slot over at once
        t.start()

    def _drain_results(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        results = self._results
        events = []
        while results:
            events.append(self._result_event(*results.popleft()))
        if self._sample_due:  # a large result: look at memory now, not at the next tick
            self._sample_due = False
            events.append(self._memory_sample())
        if events and self.status == "running":
            self._handle(*events, cause="task-results")

    def _load_function(self, fid: Any) -> Any:
        func = self.funcs.get(fid)
        if type(func) is Pickled:
            try:
                func = self.funcs[fid] = func.loads()
            except Exception as e:
                return _Raiser(e)
        return func

    def _run_task(self, key: str, func: Any, args: Any) -> tuple:
        _thread_state.key = key
        start = time.perf_counter()
        try:
            a, kw = loads_args(args, self.data)
            result = func(*a, **kw)
        except BaseException as e:  # noqa: BLE001 - a task may raise anything, even SystemExit
            stop = time.perf_counter()
            self.recorder.tasks.append((key, threading.get_ident(), start, stop, False))
            return key, False, e, _frames(e), stop - start
        stop = time.perf_counter()
        self.recorder.tasks.append((key, threading.get_ident(), start, stop, True))
        return key, True, result, None, stop - start

    def _result_event(self, key: str, ok: bool, value: Any, tb: Any, duration: float) -> Any:
        if ok:
            nbytes = sizeof(value)
            memory.store_value(self.data, key, value, nbytes)
            if nbytes > self._sample_bytes:
                self._sample_due = True
            self._avg_duration = 0.9 * self._avg_duration + 0.1 * duration
            if self.plugins:
                self._notify_plugins(key, "memory")
            if nbytes <= INLINE_RESULT_BYTES and type(value) in _INLINE_TYPES:
                # Small results ride along with the report, saving the client a round trip.
                self._inline[key] = Pickled.dumps(value)
            return ws.ExecuteSuccess(key, nbytes, type(value).__name__, duration)
        if value is None and tb is None:  # skipped: cancelled before it started
            return ws.ExecuteFailure(key, None, None, "cancelled")
        if isinstance(value, Reschedule):  # given back, not failed (the error path only)
            return ws.RescheduleTask(key)
        logger.warning("Task %r raised %s: %s", key, type(value).__name__, value)
        try:
            exc = dumps_exception(value)
        except Exception:
            exc = Pickled.dumps(RuntimeError(f"{type(value).__name__}: {value}"))
        self._notify_plugins(key, "error")
        return ws.ExecuteFailure(key, exc, tb, f"{type(value).__name__}: {value}")

    def _notify_plugins(self, key: str, finish: str) -> None:
        for plugin in self.plugins.values():
            hook = getattr(plugin, "transition", None)
            if hook is not None:
                try:
                    hook(key, "executing", finish)
                except Exception:
                    logger.exception("worker plugin failed in transition")

    def _tune_prefetch(self) -> None:
        """Queue about 2 ms of work per thread ahead, and none for long tasks, except one per
        thread when results may be spilled: the event loop writes them to disk, and the
        threads compute the next ones meanwhile instead of waiting for the write."""
        per_thread = int(0.002 / max(self._avg_duration, 1e-6))
        floor = 1 if isinstance(self.data, memory.ManagedData) else 0
        self.state.prefetch = self.nthreads * max(floor, min(64, per_thread))

    # ------------------------------------------------------------ data transfer

    async def _gather_dep(self, worker: str, keys: list) -> None:
        start = time.perf_counter()
        try:
            data = await self.pool.call(worker, "get-data", keys=keys)
        except Exception as e:
            logger.info("could not fetch %d keys from %s: %s", len(keys), worker, e)
            self.pool.remove(worker)
            if self.status == "running":
                self._handle(ws.GatherFailed(worker, keys), cause=f"get-data from {worker}")
            return
        nbytes = {}
        for key, value in data.items():
            value = value.loads() if type(value) is Pickled else value
            nbytes[key] = sizeof(value)
            memory.store_value(self.data, key, value, nbytes[key])
        self.recorder.transfer(worker, len(nbytes), sum(nbytes.values()), start,
                               time.perf_counter())  # fmt: skip
        if self.status == "running":
            missing = [k for k in keys if k not in data]
            self._handle(ws.GatherDone(worker, nbytes, missing), cause=f"get-data from {worker}")

    async def _get_data(self, comm: Comm, msg: dict) -> dict:
        data = self.data  # spilled values go out as stored, not read back into memory
        return {k: memory.serialized(data, k) for k in msg["keys"] if k in data}

    async def _update_data(self, comm: Comm, msg: dict) -> dict:
        nbytes = {}
        for key, value in msg["data"].items():
            value = value.loads() if type(value) is Pickled else value
            nbytes[key] = sizeof(value)
            memory.store_value(self.data, key, value, nbytes[key])
        self._handle(ws.AddData(nbytes), cause="update-data")
        return nbytes

    async def _acquire_replicas(self, comm: Comm, msg: dict) -> None:
        """Copy keys from other workers (one is retiring), through the same fetch machinery
        as a task's inputs: batched per peer, limited in flight, reported as add-keys."""
        self._handle(
            ws.AcquireReplicas(msg["who_has"], msg.get("nbytes") or {}),
            cause="acquire-replicas from the scheduler",
        )

    # ------------------------------------------------------------ other requests

    async def _run(self, comm: Comm, msg: dict) -> dict:
        from ..utils.remote import run_remote

        return await run_remote(msg, dask_worker=self)

    async def _plugin_add(self, comm: Comm, msg: dict) -> dict:
        await self._setup_plugin(msg["name"], msg["plugin"])
        return {"status": "OK"}

    async def _setup_plugin(self, name: str, plugin: Any) -> None:
        if type(plugin) is Pickled:
            plugin = plugin.loads()
        old = self.plugins.pop(name, None)
        if old is not None and hasattr(old, "teardown"):
            result = old.teardown(self)
            if asyncio.iscoroutine(result):
                await result
        self.plugins[name] = plugin
        setup = getattr(plugin, "setup", None)
        if setup is not None:
            result = setup(self)
            if asyncio.iscoroutine(result):
                await result

    async def _get_logs(self, comm: Comm, msg: dict) -> list:
        return self.logs.lines(msg.get("n"))

    async def _close_request(self, comm: Comm, msg: dict) -> None:
        asyncio.get_running_loop().call_soon(lambda: self.spawn(self.close("closed by request")))

    async def _retire_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.status == "running":
            logger.info("Worker %s reached its lifetime; handing its data over", self.address)
            self._send({"op": "retire-me"})


class _Raiser:
    """Stands in for a function that failed to unpickle, so the task errs with the reason."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"could not deserialize the task's function: {self.exc}") from self.exc


def _frames(exc: BaseException) -> list:
    """The task's frames, `[filename, lineno, name, line]` each, for the client to rebuild a
    traceback from (this module's own frame left out)."""
    frames = traceback.extract_tb(exc.__traceback__)[1:]
    return [[f.filename, f.lineno, f.name, f.line or ""] for f in frames]


def parse_memory_limit(limit: Any, nthreads_total_fraction: float) -> int:
    """`"auto"` = this machine's memory times the fraction; `0`/None = no limit."""
    if limit is None or limit == 0 or limit == "0":
        return 0
    total = psutil.virtual_memory().total
    if limit == "auto":
        return int(total * nthreads_total_fraction)
    if isinstance(limit, float) and limit <= 1:
        return int(total * limit)
    value = parse_bytes(limit) if isinstance(limit, str) else int(limit)
    return min(value, total)
