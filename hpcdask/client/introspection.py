"""Client methods to look into the cluster and place data: has_what, nthreads, processing,
call_stack, profile, rebalance, replicate, metadata, dump_cluster_state, Client.current()."""

from __future__ import annotations

import gzip
import json
from typing import Any

from ..utils.options import refuse
from .future import Future
from .structures import _collect, _workers_list

_NO_DEFAULT = object()


def _keys(futures: Any) -> list | None:
    if futures is None:
        return None
    flat: list = []
    _collect(futures, flat)
    return [f.key if isinstance(f, Future) else f for f in flat]


class Introspection:
    """Mixed into `Client`; relies on its `_sync`, `pool` and `scheduler_address`."""

    @classmethod
    def current(cls, allow_global: bool = True) -> Any:
        """The client of `as_current()`, else (with allow_global) the default client."""
        from .collections import _as_current, current_client

        client = current_client() if allow_global else _as_current.get()
        if client is None:
            raise ValueError("No client is running: create one with Client(...)")
        return client

    def _ask(self, op: str, **kwargs: Any) -> Any:
        return self._sync(self.pool.call, self.scheduler_address, op, **kwargs)

    def has_what(self, workers: Any = None, **kwargs: Any) -> Any:
        """{worker: (keys held there)}."""
        refuse("has_what", kwargs)
        return self._sync(self._tuples, "has-what", workers)

    def processing(self, workers: Any = None) -> Any:
        """{worker: (keys it is running or has queued)}."""
        return self._sync(self._tuples, "processing", workers)

    async def _tuples(self, op: str, workers: Any) -> dict:
        out = await self.pool.call(self.scheduler_address, op, workers=_workers_list(workers))
        return {w: tuple(keys) for w, keys in out.items()}

    def nthreads(self, workers: Any = None, **kwargs: Any) -> Any:
        """{worker: number of threads}."""
        refuse("nthreads", kwargs)
        return self._ask("nthreads", workers=_workers_list(workers))

    ncores = nthreads

    def call_stack(self, futures: Any = None, keys: Any = None) -> Any:
        """{worker: {key: [frames]}} of the tasks running now (of these futures or keys)."""
        wanted = _keys(futures) if futures is not None else _keys(keys)
        return self._ask("call-stack", keys=wanted)

    def replicate(self, futures: Any, n: int | None = None, workers: Any = None,
                  branching_factor: int = 2, **kwargs: Any) -> Any:  # fmt: skip
        """Copy the futures' data to `n` workers (all of `workers` if None); returns once
        the copies are there."""
        refuse("replicate", kwargs)
        return self._ask("replicate", keys=_keys(futures), n=n, workers=_workers_list(workers))

    def rebalance(self, futures: Any = None, workers: Any = None, **kwargs: Any) -> Any:
        """Move data (of these futures, or all) from the fullest workers to the emptiest."""
        refuse("rebalance", kwargs)
        return self._ask("rebalance", keys=_keys(futures), workers=_workers_list(workers))

    def set_metadata(self, key: Any, value: Any) -> Any:
        """Store `value` (msgpack-able) on the scheduler under `key` (a list: a nested path)."""
        keys = list(key) if isinstance(key, (list, tuple)) else [key]
        return self._ask("set-metadata", keys=keys, value=value)

    def get_metadata(self, keys: Any, default: Any = _NO_DEFAULT) -> Any:
        return self._sync(self._get_metadata, keys, default)

    async def _get_metadata(self, keys: Any, default: Any) -> Any:
        path = list(keys) if isinstance(keys, (list, tuple)) else [keys]
        reply = await self.pool.call(self.scheduler_address, "get-metadata", keys=path)
        if reply.get("status") == "OK":
            return reply["value"]
        if default is not _NO_DEFAULT:
            return default
        raise KeyError(f"no metadata under {path!r}")

    def dump_cluster_state(self, filename: str = "dask-cluster-dump",
                           write_from_scheduler: bool | None = None, exclude: Any = (),
                           format: str = "msgpack", **kwargs: Any) -> Any:  # fmt: skip
        """Write the scheduler's and every worker's state to `filename` + .msgpack.gz (or
        .yaml), for debugging a stuck cluster offline."""
        refuse("dump_cluster_state", kwargs)
        if format not in ("msgpack", "yaml"):
            raise ValueError(f"format must be 'msgpack' or 'yaml', not {format!r}")
        if write_from_scheduler:
            raise NotImplementedError(
                "dump_cluster_state(write_from_scheduler=True): hpcdask writes the dump "
                "from the client; leave write_from_scheduler unset"
            )
        return self._sync(self._dump, filename, set(exclude or ()), format)

    async def _dump(self, filename: str, exclude: set, fmt: str) -> str:
        state = await self.pool.call(self.scheduler_address, "dump-state")
        workers = await self.pool.call(self.scheduler_address, "broadcast", msg_op="dump-state",
                                       payload={})  # fmt: skip
        dump = {"scheduler": {k: v for k, v in state.items() if k not in exclude},
                "workers": {a: ({k: v for k, v in w.items() if k not in exclude}
                                if isinstance(w, dict) and "exception" not in w else
                                {"error": str(w.get("text", w)) if isinstance(w, dict) else w})
                            for a, w in workers.items()}}  # fmt: skip
        if fmt == "yaml":
            import yaml

            path = filename if filename.endswith(".yaml") else filename + ".yaml"
            with open(path, "w") as f:
                yaml.safe_dump(json.loads(json.dumps(dump, default=str)), f)
            return path
        import msgpack

        path = filename if filename.endswith(".msgpack.gz") else filename + ".msgpack.gz"
        with gzip.open(path, "wb") as f:
            f.write(msgpack.packb(json.loads(json.dumps(dump, default=str))))
        return path

    def profile(self, key: str | None = None, start: Any = None, stop: Any = None,
                workers: Any = None, merge_workers: bool = True, plot: bool = False,
                filename: str | None = None, **kwargs: Any) -> Any:  # fmt: skip
        """A sampled profile of the task threads (or of one task prefix, `key`): a tree of
        {"description", "count", "children"} as dask's, merged over workers."""
        refuse("profile", kwargs, "a profile of the scheduler itself is not sampled")
        if start is not None or stop is not None:
            raise NotImplementedError(
                "profile(start=, stop=): hpcdask's workers keep one profile since their first "
                "profile request, not a history to cut a time window from"
            )
        if plot or filename:
            raise NotImplementedError(
                "profile(plot=..., filename=...): hpcdask returns the profile data only"
            )
        return self._sync(self._profile, key, workers, merge_workers)

    async def _profile(self, key: Any, workers: Any, merge: bool) -> Any:
        replies = await self.pool.call(self.scheduler_address, "broadcast", msg_op="profile",
                                       payload={"key": key}, workers=_workers_list(workers))  # fmt: skip
        trees = {a: r for a, r in replies.items() if isinstance(r, dict) and "count" in r}
        if not merge:
            return trees
        from ..worker.profile import merge as merge_trees

        return merge_trees(list(trees.values()))
