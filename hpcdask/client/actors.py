"""Actor proxies: `client.submit(Cls, actor=True).result()` is an `Actor`.

Calling a method returns an `ActorFuture` (`.result()`, or `await` it); reading an attribute
returns its value, fetched from the worker. Calls go straight to the worker that holds the
instance (worker/actors.py). If that worker is gone, every call fails with `ActorLost`,
naming the actor and the worker: the actor's state went with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from ..protocol.serialize import Pickled

_PROBES = frozenset({"nbytes", "shape", "dtype"})  # what sizeof & co look for: not remote


class ActorLost(RuntimeError):
    """The worker holding the actor left; its state is gone."""


class Actor:
    """A remote object: methods return ActorFutures, attributes are read remotely. It holds
    its task's future, so that the instance lives as long as the proxy."""

    _hpcdask_actor = True
    _future: Any = None

    def __init__(self, cls: type, address: str, key: str, client: Any = None) -> None:
        self._cls = cls
        self._address = address
        self.key = key
        self._client = client

    @property
    def _hpc_client(self) -> Any:
        if self._client is None:
            from .worker_client import get_client

            self._client = get_client()
        return self._client

    def __reduce__(self) -> tuple:
        return (Actor, (self._cls, self._address, self.key))

    def __repr__(self) -> str:
        return f"<Actor: {self._cls.__name__}, key={self.key}>"

    def __dir__(self) -> list:
        return sorted(set(object.__dir__(self)) | set(dir(self._cls)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in _PROBES:
            raise AttributeError(name)
        member = getattr(self._cls, name, None)
        if callable(member):

            def method(*args: Any, **kwargs: Any) -> ActorFuture:
                return self._call(name, args, kwargs)

            method.__name__ = name
            return method
        try:
            client = self._hpc_client
        except ValueError as e:  # no client here (e.g. the worker's own event loop)
            raise AttributeError(f"{name} (no client to read it with: {e})") from None
        return client._sync(self._request, name, None, None, True)

    def _call(self, name: str, args: tuple, kwargs: dict) -> ActorFuture:
        client = self._hpc_client
        coro = self._request(name, args, kwargs, False)
        if client.asynchronous or client._in_loop():
            return ActorFuture(asyncio.ensure_future(coro))
        return ActorFuture(asyncio.run_coroutine_threadsafe(coro, client.loop))

    async def _request(self, name: str, args: Any, kwargs: Any, attribute: bool) -> Any:
        client = self._hpc_client
        msg: dict = {"key": self.key, "name": name, "attribute": attribute}
        if not attribute:
            msg["args"] = Pickled.dumps((args, kwargs))
        order = self.__dict__.get("_order")
        if order is None:
            order = self._order = asyncio.Lock()
        try:
            async with order:  # this proxy's calls run in the order they were made
                reply = await _pool(client).call(self._address, "actor-call", **msg)
        except OSError as e:
            raise ActorLost(f"actor {self.key!r} ({self._cls.__name__}) is lost: its worker "
                            f"{self._address} cannot be reached ({e})") from e  # fmt: skip
        status = reply.get("status")
        if status == "OK":
            return reply["result"].loads()
        if status == "lost":
            raise ActorLost(f"actor {self.key!r} ({self._cls.__name__}) is lost: "
                            f"{reply.get('text')}")  # fmt: skip
        exc = reply.get("exception")
        raise exc.loads() if exc is not None else RuntimeError(reply.get("text"))


ACTOR_CONNECT_TIMEOUT = 3.0  # a worker that does not answer by then is taken as gone


def _pool(client: Any) -> Any:
    """Connections to actors' workers: a short connect timeout, so a lost actor is told fast."""
    pool = client.__dict__.get("_actor_pool")
    if pool is None:
        from ..rpc import ConnectionPool

        pool = client._actor_pool = ConnectionPool(security=client.security,
                                                   timeout=ACTOR_CONNECT_TIMEOUT)  # fmt: skip
    return pool


class ActorFuture:
    """The result of an actor's method call."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def result(self, timeout: float | None = None) -> Any:
        if isinstance(self._inner, concurrent.futures.Future):
            return self._inner.result(timeout)
        if not self._inner.done():
            raise RuntimeError("await an ActorFuture of an asynchronous client")
        return self._inner.result()

    def done(self) -> bool:
        return self._inner.done()

    def __await__(self):
        if isinstance(self._inner, concurrent.futures.Future):
            return asyncio.wrap_future(self._inner).__await__()
        return self._inner.__await__()

    def __repr__(self) -> str:
        return "<ActorFuture>"


BaseActorFuture = ActorFuture  # dask.distributed's name of the base class
