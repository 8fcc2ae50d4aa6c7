"""Client methods that move data: gather results from the workers, scatter local data to them.

Results come straight from the workers that hold them (the scheduler only says where they
are); the scheduler relays them only when a worker cannot be reached directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

from ..protocol.serialize import Pickled
from . import graph as graphs
from .future import Future, FutureState
from .structures import _SKIP, _all_done, _collect, _rebuild, _workers_list


class DataMovement:
    """Mixed into `Client`; relies on its `_sync`, `pool`, `scheduler_address`,
    `direct_to_workers`, `_state_for` and `_send`."""

    def gather(self, futures: Any, errors: str = "raise", direct: bool | None = None,
               asynchronous: bool | None = None) -> Any:  # fmt: skip
        """Results of futures, in the same structure (list, dict, nested) they were given in.
        `direct=False` fetches them through the scheduler (default: the client's
        `direct_to_workers`, and the scheduler for a worker that cannot be reached)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        return self._sync(self._gather_structure, futures, errors, direct)

    async def _gather_structure(self, futures: Any, errors: str, direct: bool | None) -> Any:
        flat: list[Future] = []
        _collect(futures, flat)
        values = await self._gather(flat, errors, direct)
        results = dict(zip((f.key for f in flat), values))
        return _rebuild(futures, results, errors)

    async def _gather(self, futures: list[Future], errors: str = "raise",
                      direct: bool | None = None) -> list:  # fmt: skip
        out: dict[str, Any] = {}
        todo = list({f.key: f for f in futures}.values())
        while todo:
            await _all_done([f._state for f in todo])
            finished = []
            for f in todo:
                st = f._state
                if st.status in ("error", "cancelled"):
                    if errors == "raise":
                        raise st.error_to_raise()
                    out[f.key] = _SKIP
                elif st.data is not None:
                    out[f.key] = st.data.loads()
                elif st.status == "finished":
                    finished.append(st)
            # Where data lives is normally known from the report; ask only for the rest, at once.
            await self._locate([st for st in finished if not st.workers])
            by_worker: dict[str, list[str]] = {}
            for st in finished:
                if st.workers:
                    by_worker.setdefault(st.workers[0], []).append(st.key)
            results = await asyncio.gather(*(self._fetch(w, keys, direct)
                                             for w, keys in by_worker.items()))  # fmt: skip
            for data in results:
                out.update(data)
            todo = [f for f in todo if f.key not in out]
            # A holder vanished: find another copy, or wait for the recomputation.
            lost = [f._state for f in todo if f._state.status == "finished"]
            for st in lost:
                st.workers = None
            await self._locate(lost)
            for st in lost:
                if not st.workers:
                    st.reset()
        return [out[f.key] for f in futures]  # failed ones are _SKIP; _rebuild drops them

    async def _locate(self, states: list[FutureState]) -> None:
        """Fill in where these keys live, with one question to the scheduler."""
        if states:
            who = await self.pool.call(self.scheduler_address, "who-has",
                                       keys=[st.key for st in states])  # fmt: skip
            for st in states:
                st.workers = who.get(st.key) or None

    async def _fetch(self, worker: str, keys: list[str], direct: bool | None = None) -> dict:
        try:
            if (self.direct_to_workers if direct is None else direct) is False:
                raise OSError("direct_to_workers=False")
            data = await self.pool.call(worker, "get-data", keys=keys)
        except OSError:
            self.pool.remove(worker)
            reply = await self.pool.call(self.scheduler_address, "gather", keys=keys)
            data = reply["data"]
        return {k: v.loads() if type(v) is Pickled else v for k, v in data.items()}

    def scatter(self, data: Any, workers: Any = None, broadcast: bool = False,
                direct: bool | None = None, hash: bool = True, timeout: float | None = None,
                asynchronous: bool | None = None) -> Any:  # fmt: skip
        """Send local data to workers; returns futures in the structure of `data`.
        `timeout` (seconds): a TimeoutError if the workers have not taken it by then."""
        if direct is False:
            raise NotImplementedError(
                "scatter(direct=False): hpcdask's scatter sends the data to the workers itself; "
                "leave direct unset"
            )
        if timeout is None:
            return self._sync(self._scatter, data, workers, broadcast, hash)
        return self._sync(self._scatter_within, timeout, data, workers, broadcast, hash)

    async def _scatter_within(self, timeout: float, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(self._scatter(*args), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"scatter did not finish within timeout={timeout}s") from None

    async def _scatter(self, data: Any, workers: Any, broadcast: bool, hash: bool) -> Any:
        if isinstance(data, dict):
            items = list(data.items())
        elif isinstance(data, (list, tuple, set, frozenset)):
            items = [(None, v) for v in data]
        else:
            items = [(None, data)]
        pickled = []
        for k, v in items:
            p = Pickled.dumps(v)
            if k is None:
                if hash:
                    k = f"{type(v).__name__}-{hashlib.blake2b(p.data, digest_size=16).hexdigest()}"
                else:
                    k = f"{type(v).__name__}-{uuid.uuid4().hex}"
            pickled.append((graphs.stringify(k), p))
        info = await self.pool.call(self.scheduler_address, "identity")
        targets = list(info["workers"])
        if workers is not None:
            wanted = set(_workers_list(workers))
            targets = [a for a, w in info["workers"].items()
                       if a in wanted or w["name"] in wanted or w["host"] in wanted]  # fmt: skip
        if not targets:
            raise ValueError("scatter found no worker to send data to"
                             + (f" among {workers}" if workers else ": wait_for_workers first"))  # fmt: skip
        plan: dict[str, dict] = {}
        for i, (k, p) in enumerate(pickled):
            dests = targets if broadcast else [targets[i % len(targets)]]
            for d in dests:
                plan.setdefault(d, {})[k] = p
        replies = await asyncio.gather(*(self.pool.call(w, "update-data", data=d)
                                         for w, d in plan.items()))  # fmt: skip
        who_has = dict(zip(plan, replies))
        futures = {}
        for k, _ in pickled:
            st = self._state_for(k)
            if st.status != "finished":
                st.finish("", [w for w, d in who_has.items() if k in d])
            futures[k] = Future(k, self, st)
        self._send({"op": "update-data", "who_has": who_has})
        keys = [k for k, _ in pickled]
        if isinstance(data, dict):
            return {orig: futures[k] for (orig, _), k in zip(items, keys)}
        if isinstance(data, (list, tuple, set, frozenset)):
            return type(data)(futures[k] for k in keys) if not isinstance(data, (set, frozenset)) \
                else [futures[k] for k in keys]  # fmt: skip
        return futures[keys[0]]
