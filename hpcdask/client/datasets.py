"""Client methods for published datasets: share futures and collections between clients.

A dataset is pickled here with its futures as references (the same pickler as task arguments),
so the scheduler learns which keys it holds and keeps their data alive until it is unpublished;
`get_dataset` in another client turns the references back into futures of that client.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from ..protocol.serialize import Pickled
from ..protocol.taskspec import dumps_args, loads_args

_NO_DEFAULT = object()


class _FuturesFor(dict):
    """While unpickling a dataset: each referenced key becomes a Future of this client."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client

    def __missing__(self, key: str) -> Any:
        from .future import Future

        future = self[key] = Future(key, self.client)
        return future


class Datasets:
    """Mixed into `Client`; relies on its `_sync`, `pool`, `scheduler_address`, `id`, `_send`
    and `stream`."""

    def publish_dataset(self, *args: Any, name: str | None = None, override: bool = False,
                        **kwargs: Any) -> Any:  # fmt: skip
        """`publish_dataset(x=obj, y=obj2)` or `publish_dataset(obj, name="x")`: other clients
        of the cluster get them with `get_dataset("x")`; their data stays until unpublished."""
        items = dict(kwargs)
        if args:
            if name is None or len(args) != 1:
                raise TypeError("publish_dataset(obj, name='x') publishes one object by name; "
                                "for several use publish_dataset(x=obj1, y=obj2)")  # fmt: skip
            items[name] = args[0]
        elif name is not None:
            raise TypeError("publish_dataset(name=...) also needs the object to publish")
        if not items:
            raise TypeError("publish_dataset() needs something to publish, e.g. x=future")
        for key in items:
            if not isinstance(key, str) or not key:
                raise TypeError(f"a dataset name must be a non-empty string, not {key!r}")
        return self._sync(self._publish, items, override)

    async def _publish(self, items: dict, override: bool) -> None:
        for name, obj in items.items():
            payload, keys = dumps_args((obj,), None)
            if type(payload) is not Pickled:
                payload = Pickled(payload, [])
            if keys:  # in order with this client's graph, so the keys exist when held
                self._send({"op": "want-keys", "as": f"published-dataset:{name}", "keys": keys})
                self._flush_outbox()
                await self.stream.flush()
            reply = await self.pool.call(self.scheduler_address, "publish-dataset", name=name,
                                         data=payload, keys=keys, override=override)  # fmt: skip
            if reply.get("status") != "OK":
                raise KeyError(reply.get("text") or f"could not publish {name!r}")

    def get_dataset(self, name: str, default: Any = _NO_DEFAULT, **kwargs: Any) -> Any:
        """The published object called `name` (futures in it belong to this client);
        `default` if given and there is none, else KeyError."""
        if kwargs:
            raise TypeError(f"get_dataset() got unexpected keyword arguments {sorted(kwargs)}")
        return self._sync(self._get_dataset, name, default)

    async def _get_dataset(self, name: str, default: Any) -> Any:
        reply = await self.pool.call(self.scheduler_address, "get-dataset", name=name)
        if reply.get("status") != "OK":
            if default is not _NO_DEFAULT:
                return default
            raise KeyError(f"no dataset named {name!r} is published; list_datasets() shows "
                           "the names")  # fmt: skip
        futures = _FuturesFor(self)
        (obj,), _ = loads_args(reply["data"], futures)
        if futures:  # this client now holds them too: report their state to it
            self._send({"op": "want-keys", "keys": list(futures)})
        return obj

    def list_datasets(self, **kwargs: Any) -> Any:
        """Names of the published datasets."""
        return self._sync(self.pool.call, self.scheduler_address, "list-datasets")

    def unpublish_dataset(self, name: str, **kwargs: Any) -> Any:
        """Remove a dataset; its data goes once no client holds futures for it."""
        return self._sync(self._unpublish, name)

    async def _unpublish(self, name: str) -> None:
        reply = await self.pool.call(self.scheduler_address, "unpublish-dataset", name=name)
        if reply.get("status") != "OK":
            raise KeyError(f"no dataset named {name!r} is published")

    @property
    def datasets(self) -> DatasetsMapping:
        """The published datasets as a mapping: `client.datasets["x"] = obj`, `del ...`."""
        return DatasetsMapping(self)

    # the oldest docs' names for the same thing
    def set_collection(self, *args: Any, **kwargs: Any) -> Any:
        """Alias of `publish_dataset` (the name the oldest docs use)."""
        return self.publish_dataset(*args, **kwargs)

    def get_collection(self, name: str, default: Any = _NO_DEFAULT) -> Any:
        """Alias of `get_dataset` (the name the oldest docs use)."""
        return self.get_dataset(name, default)


class DatasetsMapping(MutableMapping):
    """`client.datasets`: a live view of the published datasets (synchronous clients)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getitem__(self, name: str) -> Any:
        return self._client.get_dataset(name)

    def __setitem__(self, name: str, obj: Any) -> None:
        self._client.publish_dataset(obj, name=name, override=True)

    def __delitem__(self, name: str) -> None:
        self._client.unpublish_dataset(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._client.list_datasets())

    def __len__(self) -> int:
        return len(self._client.list_datasets())

    def __contains__(self, name: object) -> bool:
        return name in self._client.list_datasets()

    def __repr__(self) -> str:
        return f"<Datasets: {list(self)}>"
