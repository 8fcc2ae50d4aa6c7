"""The Client: submit work, get futures back, gather results.

Synchronous use runs everything on the process-wide background loop (`utils.loop`);
`asynchronous=True` uses the caller's loop and every method returns an awaitable. Results are
fetched straight from the workers that hold them; the scheduler only says where they are.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from .. import config
from ..comm import Comm, connect, normalize_address
from ..protocol.taskspec import FunctionCache
from ..rpc import BatchedSend, ConnectionPool, RemoteError
from ..security import Security, resolve_secret
from ..utils.durations import parse_duration
from ..utils.loop import SyncAsync, done_awaitable, get_loop_thread
from ..utils.options import refuse
from .admin import ClusterAdmin
from .collections import (
    CollectionsMixin,
    current_client,
    drop_default,
    make_default,
)
from .data import DataMovement
from .datasets import Datasets
from .environment import WorkerEnvironment
from .executor import ExecutorMixin
from .future import Future, FutureState
from .introspection import Introspection
from .operations import ClusterOperations
from .primitives import EventLog
from .structures import (
    _collect,
)
from .submission import Submission

logger = logging.getLogger("hpcdask.client")

# dask.distributed's Client options that hpcdask has no use for: an error, never ignored
_NOT_IMPLEMENTED = ("heartbeat_interval", "serializers", "deserializers", "extensions",
                    "connection_limit")  # fmt: skip


def default_client() -> Client:
    """The current client: of `Client.as_current()`, else the newest default still running."""
    client = current_client()
    if client is None:
        raise ValueError("No client is running: create one with Client(...)")
    return client


class Client(Submission, CollectionsMixin, DataMovement, ClusterOperations, ClusterAdmin,
             Datasets, WorkerEnvironment, EventLog, Introspection, ExecutorMixin,
             SyncAsync):  # fmt: skip
    """Connects to a scheduler (or starts a LocalCluster) and submits work to it."""

    def __init__(
        self,
        address: Any = None,
        *,
        timeout: float | None = None,
        set_as_default: bool = True,
        scheduler_file: str | None = None,
        security: Security | bool | None = None,
        asynchronous: bool = False,
        name: str | None = None,
        direct_to_workers: bool | None = None,
        loop: Any = None,  # dask's: accepted; hpcdask runs its own loop (see utils/loop.py)
        **cluster_kwargs: Any,
    ) -> None:
        refuse("Client", {k: v for k, v in cluster_kwargs.items() if k in _NOT_IMPLEMENTED})
        self.id = f"Client-{name or ''}{uuid.uuid4().hex[:16]}"
        self.asynchronous = asynchronous
        self.status = "newly-created"
        self.cluster = None
        self._own_cluster = False
        self._cluster_kwargs = cluster_kwargs
        self.timeout = timeout or float(config.get("comm.timeouts.connect", 30))
        self.direct_to_workers = direct_to_workers
        self.scheduler_info_cache: dict = {}
        self._states: dict[str, FutureState] = {}  # each counts its Futures (refs)
        self._stream_handlers: dict[str, Callable[[dict], None]] = {}
        from ..worker.printing import install_client_handlers  # hpcdask.print/warn in tasks

        install_client_handlers(self)  # print and warn here too
        self._funcs = FunctionCache()
        self._funcs_sent: set[str] = set()
        self._outbox: list[dict] = []
        self._flush_scheduled = False
        self._lock = threading.Lock()
        self.stream: BatchedSend | None = None
        self.pool: ConnectionPool | None = None
        self._reader: asyncio.Task | None = None
        self._key_seq = 0
        self._key_base = uuid.uuid4().hex[:12]
        self._starting: asyncio.Future | None = None  # start() of an asynchronous client

        self._scheduler_file = None
        named = isinstance(address, str) and address.replace("-", "_").isidentifier()
        if scheduler_file is None and named:
            from ..jobqueue.detached import lookup  # Client("exp1"): a detached cluster by name

            if (found := lookup(address)) is not None:
                address, scheduler_file = None, found
        if scheduler_file is not None:
            from ..utils.schedfile import scheduler_file_exists, wait_for_scheduler_file
        if (
            scheduler_file is not None
            and asynchronous
            and not scheduler_file_exists(scheduler_file)
        ):
            self._scheduler_file = scheduler_file  # waited for in _start, without blocking
            address = "tcp://scheduler-file-pending:0"
        elif scheduler_file is not None:
            address, secret = wait_for_scheduler_file(scheduler_file, self.timeout)
            if secret is not None and isinstance(security, Security) and not security.secret:
                security.secret = secret  # keep its TLS settings
            elif secret is not None and not isinstance(security, Security):
                security = Security(secret=secret)
        self.scheduler_file = scheduler_file  # write_scheduler_file refuses to replace it
        if address is not None and not isinstance(address, str):
            self.cluster = address  # a Cluster object
            if cluster_kwargs:
                raise TypeError(
                    f"Client(cluster) got unexpected keyword arguments {sorted(cluster_kwargs)}"
                )
            security = getattr(address, "security", None) if security is None else security
            address = address.scheduler_address
        if address is None:
            address = config.get("scheduler-address")
        elif cluster_kwargs:
            raise TypeError(f"Client() got unexpected keyword arguments {sorted(cluster_kwargs)}")
        self.scheduler_address = normalize_address(address) if address else None
        self.security = security if isinstance(security, Security) else None
        self._security_arg = security

        if asynchronous:
            self.loop = None
        else:
            self.loop = get_loop_thread().loop
            self._sync(self._start)
        if set_as_default:
            make_default(self)

    # ------------------------------------------------------------ sync/async plumbing

    def _call_in_loop(self, func: Callable, *args: Any) -> None:
        if self._in_loop():
            func(*args)
        else:
            self.loop.call_soon_threadsafe(func, *args)

    def start(self, **kwargs: Any) -> Any:
        """Connect now: an awaitable for an asynchronous client (started once however often
        it is awaited); a synchronous client is started by its constructor already."""
        refuse("start", kwargs)
        if self.status != "newly-created":
            return done_awaitable() if self.asynchronous else None
        if not self.asynchronous:
            return self._sync(self._start)
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return self._starting

    def sync(self, func: Callable, *args: Any, asynchronous: bool | None = None,
             callback_timeout: Any = None, **kwargs: Any) -> Any:  # fmt: skip
        """`func(*args, **kwargs)` (a coroutine function, or a plain one) run on the client's
        event loop: its result, or an awaitable for asynchronous use. `callback_timeout`
        (seconds or e.g. "10s"): a TimeoutError if it takes longer."""
        timeout = None if callback_timeout is None else parse_duration(callback_timeout)

        async def call() -> Any:
            result = func(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        if asynchronous or (asynchronous is None and self.asynchronous) or self._in_loop():
            return asyncio.wait_for(call(), timeout) if timeout is not None else call()
        try:
            return get_loop_thread().run_sync(call(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{getattr(func, '__name__', func)!s} did not finish within "
                               f"callback_timeout={callback_timeout}") from None  # fmt: skip

    async def _start(self) -> None:
        if self.status == "running":
            return
        starting = self._starting
        if starting is not None and starting is not asyncio.current_task():
            await starting  # start() began it: one connection, however often awaited
            return
        self.loop = asyncio.get_running_loop()
        if self._scheduler_file is not None:
            from ..utils.schedfile import await_scheduler_file

            address, secret = await await_scheduler_file(self._scheduler_file, self.timeout)
            self._scheduler_file, self.scheduler_address = None, normalize_address(address)
            if secret is not None and self.security is not None and not self.security.secret:
                self.security.secret = secret  # keep its TLS settings
            elif secret is not None and self.security is None:
                self.security = Security(secret=secret)
        if self.scheduler_address is None:
            from ..deploy.local import LocalCluster

            self.cluster = await LocalCluster(asynchronous=True, security=self._security_arg,
                                              **self._cluster_kwargs)  # fmt: skip
            self._own_cluster = True
            self.scheduler_address = self.cluster.scheduler_address
            self.security = self.cluster.security
        elif self.cluster is not None and getattr(self.cluster, "status", "running") != "running":
            await self.cluster
        connect_to = self.scheduler_address
        sched = getattr(self.cluster, "scheduler", None)
        if sched is not None and getattr(sched, "inproc_address", None) and \
                getattr(self.cluster, "loop", None) is self.loop:  # fmt: skip
            connect_to = sched.inproc_address  # same process, same loop: no sockets needed
        if self.security is None or not self.security.secret:
            security = self.security or Security()
            try:
                security.secret = resolve_secret(self.scheduler_address, security)
            except PermissionError:
                await _raise_if_unreachable(self.scheduler_address, self.timeout)
                raise
            self.security = security
        self.pool = ConnectionPool(security=self.security, timeout=self.timeout)
        comm = await connect(connect_to, security=self.security, timeout=self.timeout)
        await comm.send({"op": "register-client", "client": self.id})
        reply = await comm.recv()
        if reply.get("status") != "OK":
            comm.abort()
            raise RemoteError(f"scheduler refused the client: {reply.get('text')}")
        self.stream = BatchedSend(comm)
        self._reader = asyncio.ensure_future(self._read_reports(comm))
        self.status = "running"

    async def _read_reports(self, comm: Comm) -> None:
        states = self._states
        try:
            while True:
                for msg in await comm.recv():
                    op = msg["op"]
                    st = states.get(msg.get("key"))
                    if st is None:
                        if op in self._stream_handlers:  # e.g. pub/sub messages
                            self._stream_handlers[op](msg)
                        continue
                    if op == "key-in-memory":
                        st.finish(msg.get("type", ""), msg.get("workers"), msg.get("data"))
                    elif op == "task-erred":
                        st.fail(msg.get("exception"), msg.get("traceback"), msg.get("text", ""))
                    elif op == "cancelled":
                        st.cancel(msg.get("reason", ""))
                    elif op == "lost":
                        st.reset()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if self.status == "running":
                logger.warning("lost the connection to the scheduler at %s", self.scheduler_address)
                self.status = "disconnected"
                for st in list(states.values()):
                    if st.status == "pending":
                        st.cancel("the connection to the scheduler was lost")

    # ------------------------------------------------------------ futures bookkeeping

    def _state_for(self, key: str) -> FutureState:
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = FutureState(key)
        return st

    def _decref(self, st: FutureState) -> None:
        """A Future of `st` was released; the last one releases the key."""
        key = st.key
        with self._lock:
            st.refs -= 1
            if st.refs > 0:
                return
            if self._states.get(key) is st:
                del self._states[key]
        if self.status == "running":
            self._enqueue(None, release=key)

    def _enqueue(self, msg: dict | None, release: str | None = None) -> None:
        """Queue a message for the scheduler from any thread, keeping the order of calls.

        Releases and graph updates must reach the scheduler in the order they happened, or a
        task could arrive after its input was forgotten.
        """
        with self._lock:
            box = self._outbox
            if release is not None:
                if box and box[-1]["op"] == "release-keys":
                    box[-1]["keys"].append(release)
                else:
                    box.append({"op": "release-keys", "keys": [release]})
            else:
                box.append(msg)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            self._call_in_loop(self._flush_outbox)
        except RuntimeError:  # the loop is gone (interpreter exit)
            pass

    def _flush_outbox(self) -> None:
        with self._lock:
            msgs, self._outbox = self._outbox, []
            self._flush_scheduled = False
        if msgs and self.stream is not None and not self.stream.closed():
            self.stream.send(*msgs)

    def _send(self, msg: dict) -> None:
        if self.status != "running":
            raise RuntimeError(f"the client is {self.status}; create a new Client to submit work")
        self._enqueue(msg)

    # ------------------------------------------------------------ cancel, retry

    def cancel(self, futures: Any, asynchronous: bool | None = None, force: bool = False,
               reason: str | None = None, msg: str | None = None) -> Any:  # fmt: skip
        """Cancel these futures and what depends on them. Tasks other clients also hold go on
        for them unless `force=True` cancels them for every client. `msg` is added to the
        reason."""
        if msg:
            reason = f"{reason or 'cancelled by the client'}: {msg}"
        flat: list[Future] = []
        _collect(futures, flat)
        keys = [f.key for f in flat]
        for f in flat:
            if not f.done():
                f._state.cancel(reason or "cancelled by the client")
        self._send({"op": "cancel", "keys": keys, "reason": reason or "cancelled by the client",
                    "force": bool(force)})  # fmt: skip
        return done_awaitable() if self.asynchronous else None

    def retry(self, futures: Any, asynchronous: bool | None = None) -> Any:
        flat: list[Future] = []
        _collect(futures, flat)
        for f in flat:
            if f._state.status == "error":
                f._state.reset()
        self._send({"op": "retry", "keys": [f.key for f in flat]})
        return done_awaitable() if self.asynchronous else None

    def fire_and_forget(self, futures: Any) -> None:
        flat: list[Future] = []
        _collect(futures, flat)
        self._send({"op": "fire-and-forget", "keys": [f.key for f in flat]})

    def shutdown(self) -> Any:
        """Stop the scheduler and all workers, then close this client."""
        return self._sync(self._shutdown)

    async def _shutdown(self) -> None:
        if self.cluster is not None:
            await self._close(close_cluster=True)
            return
        try:
            await self.pool.call(self.scheduler_address, "shutdown")
        except OSError:
            pass
        await self._close()

    def close(self, timeout: float | None = None) -> Any:
        if self.status in ("closed", "newly-created") and self.stream is None:
            self.status = "closed"
            return done_awaitable() if self.asynchronous else None
        return self._sync(self._close, None, 2.0 if timeout is None else parse_duration(timeout))

    async def _close(self, close_cluster: bool | None = None, timeout: float = 2.0) -> None:
        if self.status == "closed":
            return
        self.status = "closing"
        if self.stream is not None and not self.stream.closed():
            try:
                self._flush_outbox()
                self.stream.send({"op": "close-client"})
                await asyncio.wait_for(self.stream.close(), timeout)  # what is queued goes out
            except (OSError, asyncio.TimeoutError):
                self.stream.abort()
        if self._reader is not None:
            self._reader.cancel()
        if self.pool is not None:
            await self.pool.close()
        if (actor_pool := self.__dict__.get("_actor_pool")) is not None:  # client/actors.py
            await actor_pool.close()
        self.status = "closed"
        if (
            self._own_cluster if close_cluster is None else close_cluster
        ) and self.cluster is not None:
            await self.cluster._close()
        drop_default(self)

    def __del__(self) -> None:
        if getattr(self, "status", None) == "running" and not self.asynchronous:
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        if self.status != "running":
            return f"<Client: {self.status}>"
        info = self.scheduler_info_cache
        if not self.asynchronous and not self._in_loop():
            try:
                info = self.scheduler_info_cache = self.scheduler_info()
            except Exception:
                pass
        workers = info.get("workers", {})
        threads = sum(w["nthreads"] for w in workers.values())
        from ..utils.sizes import format_bytes

        memory = format_bytes(sum(w["memory_limit"] for w in workers.values()))
        return (f"<Client: '{self.scheduler_address}' processes={len(workers)} "
                f"threads={threads}, memory={memory}>")  # fmt: skip

    def _repr_html_(self) -> str:
        text = f"<pre>{self!r}</pre>".replace("<Client", "&lt;Client").replace(">", "&gt;", 1)
        link = self.dashboard_link if self.status == "running" else None
        if link:
            import html

            text += (f"<p>Dashboard: <a href='{html.escape(link)}' target='_blank'>"
                     f"{html.escape(link.split('?token=')[0])}</a></p>")  # fmt: skip
        return text

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard, with the access token derived from our secret."""
        if self.cluster is not None and hasattr(self.cluster, "dashboard_link"):
            return self.cluster.dashboard_link
        info = self.scheduler_info_cache
        if "services" not in info and not self.asynchronous and not self._in_loop():
            info = self.scheduler_info_cache = self.scheduler_info()
        from ..dashboard import link_from_identity

        secret = self.security.secret if self.security else None
        return link_from_identity(self.scheduler_address, info, secret)


async def _raise_if_unreachable(address: str, timeout: float) -> None:
    """Without a secret we cannot talk to the scheduler, but if nothing listens there at all,
    saying so is the more useful error."""
    from ..comm.registry import get_backend

    get_backend(address.split("://")[0])  # an unknown scheme is the clearest error of all
    try:
        comm = await connect(address, security=Security(secret=b"reachability-probe"),
                             timeout=timeout)  # fmt: skip
    except PermissionError:
        return
    except OSError:
        raise
    comm.abort()
