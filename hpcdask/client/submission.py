"""Submitting work: calls turned into task records (`GraphTask`) and sent as update-graph
messages, in chunks. A mixin of Client, as collections.py's is (which sends graphs through
the same `_make_task` and `_send_graph`)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..protocol.records import GraphTask
from ..protocol.serialize import Pickled
from ..protocol.taskspec import dumps_args
from . import graph as graphs
from .collections import collection_args, has_collection
from .future import Future
from .structures import _workers_list

GRAPH_CHUNK = 1000  # tasks per update-graph message

_SUBMIT_OPTIONS = ("workers", "resources", "retries", "priority", "allow_other_workers",
                   "fifo_timeout", "actor", "actors")  # fmt: skip


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    return "lambda" if name == "<lambda>" else name


class Submission:
    """submit, map and the task records they make; mixed into Client."""

    _funcs: Any
    _funcs_sent: dict
    _states: dict
    _key_seq: int
    _key_base: str

    def _new_key(self, func: Any) -> str:
        self._key_seq += 1
        return f"{_func_name(func)}-{self._key_base}{self._key_seq:x}"

    def _make_task(self, func: Any, args: tuple, kwargs: dict, key: str | None, pure: bool,
                   opts: dict, funcs: dict) -> GraphTask:  # fmt: skip
        fid, pickled = self._funcs.dumps(func)
        if fid not in self._funcs_sent:
            funcs[fid] = pickled
        payload, deps = dumps_args(args, kwargs)
        if key is None:
            if pure:
                h = hashlib.blake2b(fid.encode(), digest_size=16)
                h.update(payload.data if type(payload) is Pickled else payload)
                key = f"{_func_name(func)}-{h.hexdigest()}"
            else:
                key = self._new_key(func)
        return GraphTask(key, fid, payload, deps, opts.get("priority") or 0,
                         opts.get("retries") or 0, _workers_list(opts.get("workers")),
                         opts.get("resources"), bool(opts.get("allow_other_workers")))  # fmt: skip

    def _send_graph(self, tasks: list, funcs: dict, wanted: list[str]) -> None:
        """Send tasks; the caller holds Futures for `wanted` first so no report is missed.

        Large graphs go in chunks (dependencies first, as given), so that neither side ever
        holds one huge decoded message: the scheduler's memory stays that of its tasks. What a
        later chunk needs is held until the last chunk is sent: the scheduler drops a task that
        nobody wants and nothing depends on yet.
        """
        self._funcs_sent.update(funcs)
        if len(tasks) <= GRAPH_CHUNK:
            self._send({"op": "update-graph", "tasks": tasks, "funcs": funcs, "wanted": wanted})
            return
        wanted_set = set(wanted)
        chunk_of = {t.key: i // GRAPH_CHUNK for i, t in enumerate(tasks)}
        pins = []
        for i, t in enumerate(tasks):
            for d in t.dependencies or ():
                c = chunk_of.get(d)
                if c is not None and c < i // GRAPH_CHUNK and d not in wanted_set:
                    wanted_set.add(d)
                    pins.append(Future(d, self))
        for i in range(0, len(tasks), GRAPH_CHUNK):
            chunk = tasks[i : i + GRAPH_CHUNK]
            self._send({"op": "update-graph", "tasks": chunk, "funcs": funcs if i == 0 else {},
                        "wanted": [t.key for t in chunk if t.key in wanted_set]})  # fmt: skip
        del pins  # released in order, after the last chunk

    def submit(self, func: Callable, *args: Any, key: str | None = None, pure: bool = True,
               **kwargs: Any) -> Future:  # fmt: skip
        """Run `func(*args, **kwargs)` on a worker; returns its Future at once."""
        if not callable(func):
            raise TypeError(
                f"the first argument of submit must be a callable, not {type(func).__name__}"
            )
        opts = {k: kwargs.pop(k) for k in _SUBMIT_OPTIONS if k in kwargs}
        if opts.pop("actor", False) or opts.pop("actors", False):  # client/actors.py
            from ..worker.actors import construct
            from .actors import Actor

            if key is None:
                key = f"{_func_name(func)}-{uuid.uuid4().hex}"
            func, args, kwargs, pure = construct, (func, args, kwargs, Actor), {}, False
        if key is not None and key in self._states:
            return Future(key, self)
        if has_collection(args, kwargs):  # dask collections: computed first, passed as Futures
            args, kwargs, _held = collection_args(self, args, kwargs)
        funcs: dict = {}
        task = self._make_task(func, args, kwargs, key, pure, opts, funcs)
        if task.key in self._states:
            return Future(task.key, self)
        future = Future(task.key, self)
        self._send_graph([task], funcs, [task.key])
        return future

    def map(self, func: Callable, *iterables: Iterable, key: str | list | None = None,
            pure: bool = True, batch_size: int | None = None, **kwargs: Any) -> list[Future]:  # fmt: skip
        """`submit(func, *items)` for items taken in step from `iterables`, sent in chunks of
        `batch_size` (default GRAPH_CHUNK) tasks, so that the first run while later ones are
        made (if an argument fails to pickle, the chunks sent before are released)."""
        if not callable(func):
            raise TypeError(
                f"the first argument of map must be a callable, not {type(func).__name__}"
            )
        if not iterables:
            raise TypeError("map needs at least one iterable of arguments")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"map(batch_size={batch_size!r}): a positive number of tasks")
        size = batch_size or GRAPH_CHUNK
        opts = {k: kwargs.pop(k) for k in _SUBMIT_OPTIONS if k in kwargs}
        items = list(zip(*iterables))
        if opts.get("actor") or opts.get("actors"):  # one actor per item, as dask's
            if isinstance(key, (list, tuple)) and len(key) != len(items):
                raise ValueError(f"map got {len(key)} keys for {len(items)} actors")
            keys = (
                list(key)
                if isinstance(key, (list, tuple))
                else [f"{key}-{uuid.uuid4().hex}" if isinstance(key, str) else None for _ in items]
            )
            return [self.submit(func, *args, key=k, pure=False, **opts, **kwargs)
                    for args, k in zip(items, keys)]  # fmt: skip
        _held = []
        for i, args in enumerate(items):
            if has_collection(args, kwargs):
                items[i], kwargs, held = collection_args(self, args, kwargs)
                _held.extend(held)
        keys: list = [None] * len(items)
        if isinstance(key, (list, tuple)):
            if len(key) != len(items):
                raise ValueError(f"map got {len(key)} keys for {len(items)} tasks")
            keys = list(key)
        # Tasks go out in chunks as they are made: no map ever holds all its records at once
        # (tasks of one map do not depend on each other, so no chunk waits for a later one).
        funcs: dict = {}
        chunk: list = []
        futures = []
        states = self._states
        for args, k in zip(items, keys):
            task = self._make_task(func, args, kwargs, k, pure, opts, funcs)
            if isinstance(key, str):
                task = task._replace(key=f"{key}-{task.key.rsplit('-', 1)[-1]}")
            if task.key not in states:  # else submitted before, or earlier in this map
                chunk.append(task)
            futures.append(Future(task.key, self))  # before the send: no report is missed
            if len(chunk) == size:
                self._send_graph(chunk, funcs, [t.key for t in chunk])
                chunk, funcs = [], {}
        if chunk:
            self._send_graph(chunk, funcs, [t.key for t in chunk])
        return futures

    async def _get_results(self, keys: Any, wanted: list, futures: list) -> Any:
        values = await self._gather(futures)
        return graphs.pack_results(keys, dict(zip(wanted, values)))
