"""dask collections on the cluster: the Client as dask's scheduler; get, compute, persist.

While a Client is current, dask's config points `scheduler` at `CURRENT`, a callable that
forwards to the current client (no strong reference to any client is held there, so a client
that is dropped is still collected). dask's task-based shuffle and rechunk are chosen too: the
P2P ones are dask.distributed's own. Closing the last current client puts back what dask's config
held before. Nothing here imports dask until a graph or a client needs it.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import importlib.util
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..protocol.taskspec import SCALARS
from . import graph as graphs
from .future import Future

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client

_ANNOTATIONS = ("priority", "retries", "workers", "resources", "allow_other_workers")
_CONTAINERS = (list, set, tuple, dict, Iterator)  # compute(traverse=True) looks into these


def dask_installed() -> bool:
    global _HAS_DASK
    if _HAS_DASK is None:
        _HAS_DASK = importlib.util.find_spec("dask") is not None
    return _HAS_DASK


_HAS_DASK: bool | None = None

# ------------------------------------------------------------------ which client is current

_stack: list[weakref.ref] = []  # clients made default, most recent last
_as_current: contextvars.ContextVar[Client | None] = contextvars.ContextVar(
    "hpcdask_current_client", default=None
)
_saved_config: dict | None = None  # dask config values before the first client changed them


def current_client() -> Client | None:
    """The client of `as_current()`, else the most recent default client still running."""
    c = _as_current.get()
    if c is not None:
        return c
    for ref in reversed(_stack):
        c = ref()
        if c is not None and c.status == "running":
            return c
    return None


class _CurrentScheduler:
    """What dask's `scheduler` config holds while a client is current."""

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return self._client().get(dsk, keys, **kwargs)

    def persist(self, collections: Any, **kwargs: Any) -> Any:  # dask.persist looks for it
        return self._client().persist(collections, **kwargs)

    @staticmethod
    def _client() -> Client:
        c = current_client()
        if c is None:
            raise RuntimeError(
                "dask's scheduler is set to hpcdask's current Client, but no Client is "
                "running: create one with Client(...), or pass scheduler='threads'"
            )
        return c

    def __repr__(self) -> str:
        return "<hpcdask: the current Client>"

    def __reduce__(self) -> str:  # a copy of dask's config (e.g. for a worker) stays usable
        return "CURRENT"


CURRENT = _CurrentScheduler()


def _our_config() -> dict:
    return {
        "scheduler": CURRENT,
        "dataframe.shuffle.method": "tasks",
        "array.rechunk.method": "tasks",
    }


def make_default(client: Client) -> None:
    """`client` becomes the default for hpcdask's get_client and for dask's compute."""
    global _saved_config
    _stack[:] = [r for r in _stack if r() is not None and r() is not client]
    _stack.append(weakref.ref(client))
    if not dask_installed() or _saved_config is not None:
        return
    import dask

    saved = {}
    for key in _our_config():
        saved[key] = dask.config.get(key, None)
    # A shuffle or rechunk method the user chose stays theirs.
    updates = {k: v for k, v in _our_config().items() if k == "scheduler" or saved[k] is None}
    dask.config.set(updates)
    _saved_config = {k: saved[k] for k in updates}


def drop_default(client: Client) -> None:
    global _saved_config
    _stack[:] = [r for r in _stack if r() is not None and r() is not client]
    if _stack or _saved_config is None:
        return
    import dask

    ours = _our_config()
    # Put back only what still holds our value: what the user set since stays.
    restore = {}
    for key, value in _saved_config.items():
        now = dask.config.get(key, None)
        if now is ours[key] or (key != "scheduler" and now == ours[key]):
            restore[key] = value
    dask.config.set(restore)
    _saved_config = None


# ------------------------------------------------------------------ the Client's methods


class CollectionsMixin:
    """`get`, `compute`, `persist` and `as_current` of the Client."""

    @contextlib.contextmanager
    def as_current(self: Client) -> Iterator[Client]:
        """Within the block, dask computes on this client, as does `get_client()`."""
        token = _as_current.set(self)
        try:
            if dask_installed():
                import dask

                with dask.config.set(scheduler=CURRENT):
                    yield self
            else:
                yield self
        finally:
            _as_current.reset(token)

    def get(self: Client, dsk: Any, keys: Any, *, sync: bool = True, **kwargs: Any) -> Any:
        """Compute `keys` of a graph: a dask expression, a HighLevelGraph or a dict of
        task-spec nodes or legacy tuples; `keys` may be nested in lists, and so is the result.
        With `sync=False` the result holds Futures instead of values."""
        opts = _pop_options(kwargs, "get")
        if dask_installed() or hasattr(dsk, "__dask_graph__"):
            outs = list(graphs.flatten_keys(keys))
            futures = self._submit_graph(dsk, outs, opts)
        else:
            futures = self._submit_plain_graph(dsk, keys, opts)
        wanted = list(futures)
        if not sync:
            return graphs.pack_results(keys, futures)
        return self._sync(self._get_results, keys, wanted, [futures[k] for k in wanted])

    def compute(
        self: Client,
        collections: Any,
        sync: bool = False,
        optimize_graph: bool = True,
        traverse: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Start computing dask collections; a Future per collection (values with sync=True).
        With `traverse` a list, set, tuple, dict or iterator among them is computed as one
        value (the collections inside it computed); other objects are returned as they are."""
        opts = _pop_options(kwargs, "compute")
        from dask._expr import FinalizeCompute
        from dask.base import collections_to_expr

        single, out, positions = _sort_out(collections)
        if traverse and any(isinstance(c, _CONTAINERS) for c in out):  # as dask.distributed:
            from dask import delayed  # a container (of collections) is computed as one value
            from dask.base import is_dask_collection

            out = [delayed(c) if isinstance(c, _CONTAINERS) else c for c in out]
            positions = [i for i, c in enumerate(out) if is_dask_collection(c)]
        if positions:
            expr = collections_to_expr([out[i] for i in positions], optimize_graph)
            expr = FinalizeCompute(expr).optimize()
            per = [next(iter(graphs.flatten_keys(k))) for k in expr.__dask_keys__()]
            futures = self._submit_graph(expr, per, opts)
            for i, key in zip(positions, per):
                out[i] = futures[graphs.stringify(key)]
        if sync:
            out = self.gather(out)
        return out[0] if single else out

    def persist(self: Client, collections: Any, optimize_graph: bool = True, **kwargs: Any) -> Any:
        """The same collections, backed by Futures whose data stays on the workers."""
        opts = _pop_options(kwargs, "persist")
        from dask.base import collections_to_expr

        single, out, positions = _sort_out(collections)
        if positions:
            colls = [out[i] for i in positions]
            expr = collections_to_expr(colls, optimize_graph)
            parts = _parts(expr, len(colls))
            composite = any(isinstance(e, _CompositeExpr()) for e in parts)
            expr = expr.optimize()
            parts = _parts(expr, len(colls)) if composite else [None] * len(colls)
            per = expr.__dask_keys__()
            flat = [k for ks in per for k in graphs.flatten_keys(ks)]
            futures = self._submit_graph(expr, flat, opts)
            for i, c, ks, e in zip(positions, colls, per, parts):
                out[i] = _rebuild(c, e, ks, futures)
        return out[0] if single else out

    def futures_of(self: Client, obj: Any) -> list[Future]:
        """The Futures of this client inside `obj` (see `hpcdask.futures_of`)."""
        return [f for f in futures_of(obj) if f.client is self]

    def normalize_collection(self: Client, collection: Any) -> Any:
        """A copy of `collection` whose tasks for keys this client holds futures of are those
        futures, without the tasks only they needed (as dask.distributed's). Delayed objects
        and collections with a settable `.dask` graph get the smaller graph; an expression
        collection (a DataFrame) is rebuilt from the futures when all of its keys are held,
        and is returned as it is otherwise: compute and persist skip held keys anyway."""
        if not hasattr(collection, "__dask_graph__"):
            raise TypeError(f"normalize_collection takes a dask collection, not "
                            f"{type(collection).__name__}")  # fmt: skip
        graph = collection.__dask_graph__()
        held = self._states
        hits = [k for k in graph if graphs.stringify(k) in held]
        if not hits:
            return collection
        from dask._task_spec import convert_legacy_graph

        dsk = convert_legacy_graph(dict(graph))
        futures = {k: Future(graphs.stringify(k), self) for k in hits}
        outs = graphs.flatten_keys(collection.__dask_keys__())
        kept: dict = {}
        stack = list(outs)
        while stack:  # what the outputs need, not looking past held keys
            k = stack.pop()
            if k in kept:
                continue
            node = futures.get(k) or dsk.get(k)
            if node is None:
                continue
            kept[k] = node
            if k not in futures:
                stack.extend(getattr(node, "dependencies", ()))
        from dask.delayed import Delayed

        if isinstance(collection, Delayed):
            return Delayed(collection.key, kept, length=getattr(collection, "_length", None))
        import copy

        out = copy.copy(collection)
        try:
            out.dask = kept
            return out
        except AttributeError:  # an expression collection: its graph is derived, not set
            pass
        if all(k in futures for k in outs):
            return _rebuild(collection, None, collection.__dask_keys__(),
                            {graphs.stringify(k): f for k, f in futures.items()})  # fmt: skip
        return collection

    # ---------------------------------------------------------------- graphs to tasks

    def _submit_graph(self: Client, dsk: Any, outs: list, opts: dict) -> dict[str, Future]:
        """Send what the outputs need and is not on the cluster yet; Futures for the outputs."""
        with _no_gc():  # a graph allocates millions of small objects and frees none of them
            return self._submit_graph_now(dsk, outs, opts)

    def _submit_graph_now(self: Client, dsk: Any, outs: list, opts: dict) -> dict[str, Future]:
        from . import taskgraph

        graph, annotations = taskgraph.materialize(dsk)
        resolve = taskgraph.Resolver(graph, outs)
        order, missing = taskgraph.dependency_order(graph, outs, resolve)
        known = self._states
        unknown = [k for k in missing if graphs.stringify(k) not in known]
        if unknown:
            raise KeyError(
                f"keys {unknown[:5]} are not in the graph, nor futures of this client: "
                "compute keys the graph defines, or pass the Futures themselves"
            )
        run = [k for k in order if graphs.stringify(k) not in known]
        opts, per_key = _annotations(annotations, opts)
        wanted = list(dict.fromkeys(graphs.stringify(k) for k in outs))
        new = [k for k in wanted if k not in known]
        futures = {k: Future(k, self) for k in wanted}
        funcs: dict = {}
        tasks = []
        for (skey, template, operands), k in zip(taskgraph.split(run, graph, resolve), run):
            o = per_key.get(k, opts)
            tasks.append(self._make_task(template, operands, {}, skey, False, o, funcs))
        if tasks:
            self._send_graph(tasks, funcs, new)
        return futures

    def _submit_plain_graph(self: Client, dsk: dict, keys: Any, opts: dict) -> dict[str, Future]:
        """Legacy dict graphs without dask installed: tuples `(func, *args)` are tasks."""
        from ..protocol.taskspec import execute_graph_task
        from .structures import _identity

        funcs: dict = {}
        tasks = []
        for skey, value in graphs.graph_to_tasks(dsk):
            if graphs.is_task(value):
                task = self._make_task(execute_graph_task, (value,), {}, skey, False, opts, funcs)
            else:
                task = self._make_task(_identity, (value,), {}, skey, False, opts, funcs)
            tasks.append(task)
        wanted = list(dict.fromkeys(graphs.stringify(k) for k in graphs.flatten_keys(keys)))
        missing = [k for k in wanted if k not in {t.key for t in tasks}]
        if missing:
            raise KeyError(f"keys {missing} are not in the graph")
        futures = {k: Future(k, self) for k in wanted}
        self._send_graph(tasks, funcs, wanted)
        return futures


def collection_args(client: Client, args: tuple, kwargs: dict) -> tuple[tuple, dict, list]:
    """dask collections passed to submit/map become Futures of their values (computed on the
    cluster); the Futures are returned too, to be held until the task was sent."""
    found = [a for a in (*args, *kwargs.values()) if _is_collection(a)]
    if not found:
        return args, kwargs, []
    futures = client.compute(found)
    sub = {id(c): f for c, f in zip(found, futures)}
    args = tuple([sub.get(id(a), a) for a in args])
    kwargs = {k: sub.get(id(v), v) for k, v in kwargs.items()}
    return args, kwargs, futures


_PLAIN = SCALARS | {tuple, list, dict, Future}


def has_collection(args: tuple, kwargs: dict) -> bool:
    """Cheap enough for every submit: plain values are never collections."""
    for a in args:
        if type(a) not in _PLAIN and _is_collection(a):
            return True
    for a in kwargs.values():
        if type(a) not in _PLAIN and _is_collection(a):
            return True
    return False


def _is_collection(a: Any) -> bool:
    g = getattr(type(a), "__dask_graph__", None)
    return g is not None and callable(g) and a.__dask_graph__() is not None


def _pop_options(kwargs: dict, what: str) -> dict:
    from .submission import _SUBMIT_OPTIONS

    opts = {k: kwargs.pop(k) for k in _SUBMIT_OPTIONS if k in kwargs}
    for ignored in ("asynchronous", "direct", "fifo_timeout"):
        kwargs.pop(ignored, None)
    if kwargs:
        raise TypeError(f"{what}() got unexpected keyword arguments {sorted(kwargs)}")
    unsupported = [k for k in ("actor", "actors") if opts.get(k)]
    if unsupported:
        raise NotImplementedError(
            f"{what}({unsupported[0]}=): actors inside a dask graph are not implemented by "
            "hpcdask; make them with client.submit(Cls, actor=True) or map(..., actor=True)"
        )
    return opts


def _annotations(annotations: dict, opts: dict) -> tuple[dict, dict]:
    """Options for every task and per key, from `dask.annotate` around the graph's creation
    or around this call; explicit keyword arguments win over both."""
    import dask

    base = {k: v for k, v in dask.get_annotations().items() if k in _ANNOTATIONS}
    base.update(opts)
    per_key: dict = {}
    for name, values in annotations.items():
        if name not in _ANNOTATIONS or name in opts:
            continue
        for key, value in values.items():
            per_key.setdefault(key, dict(base))[name] = value
    return base, per_key


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic collector off while a graph is built: it would walk the whole growing graph
    again and again (15-50% of the time of a 50,000-task graph) to find no garbage."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _sort_out(collections: Any) -> tuple[bool, list, list[int]]:
    """(one collection was given, the items, positions of the dask collections among them)."""
    from dask.base import is_dask_collection

    single = not isinstance(collections, (list, tuple, set))
    items = [collections] if single else list(collections)
    return single, items, [i for i, c in enumerate(items) if is_dask_collection(c)]


def _CompositeExpr() -> type:
    from dask._expr import CompositeExpr

    return CompositeExpr


def _parts(expr: Any, n: int) -> list:
    """One expression per collection (as dask.persist reads them), or Nones."""
    from dask._expr import _ExprSequence

    parts = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
    return parts if len(parts) == n else [None] * n


def _rebuild(coll: Any, expr: Any, keys: Any, futures: dict) -> Any:
    flat = list(graphs.flatten_keys(keys))
    data = {k: futures[graphs.stringify(k)] for k in flat}
    if expr is not None and isinstance(expr, _CompositeExpr()):
        from dask.base import _rebuild_composite_collection

        return _rebuild_composite_collection(coll, expr, data, cull_to_child_keys=True)
    rebuild, state = coll.__dask_postpersist__()
    return rebuild(data, *state)


def futures_of(obj: Any) -> list[Future]:
    """The Futures inside `obj`: Futures, lists/tuples/sets/dicts of them, persisted collections."""
    out: dict[str, Future] = {}
    stack = [obj]
    seen: set[int] = set()
    while stack:
        x = stack.pop()
        if isinstance(x, Future):
            out.setdefault(x.key, x)
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif hasattr(x, "__dask_graph__") and id(x) not in seen:
            seen.add(id(x))
            g = x.__dask_graph__()
            if g is not None:
                for v in g.values():
                    stack.append(getattr(v, "value", v))
    return list(out.values())
