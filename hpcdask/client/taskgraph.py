"""dask graphs in, tasks out: what a current dask hands a scheduler, split into templates.

dask (2025 and later) hands a scheduler an expression whose `__dask_graph__()` maps keys to
task-spec nodes (`dask._task_spec`: Task, Alias, DataNode, TaskRef, List/Tuple/Set/Dict and
fused subgraphs); older code hands a HighLevelGraph or a dict of legacy tuples, which dask's own
`convert_legacy_graph` turns into the same nodes. Every node becomes one task whose function is
a `protocol.templates.Template` (its call structure plus the objects it shares with other
tasks) and whose arguments are the rest. This module imports dask: only graphs that come from
dask reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..protocol.taskspec import SCALARS, KeyRef
from ..protocol.templates import Template
from .graph import stringify

# Operands that are never kept in a template: cheap to send per task, and their identity
# says nothing (small ints and strings are shared by the interpreter).
_PER_TASK = SCALARS | {KeyRef}


class _Walk:
    """Flattens one top-level node into (steps, out shape, operands)."""

    __slots__ = ("ops", "steps", "nreg", "resolve")

    def __init__(self, resolve: Callable[[Any], Any]) -> None:
        self.ops: list = []
        self.steps: list = []
        self.nreg = 0
        self.resolve = resolve

    def op(self, obj: Any) -> int:
        self.ops.append(obj)
        return len(self.ops) - 1

    def ref(self, key: Any, env: dict | None) -> Any:
        if env is not None:
            if key in env:
                return env[key]
        else:
            key = self.resolve(key)
        return self.op(KeyRef(stringify(key)))

    def arg(self, a: Any, env: dict | None) -> Any:
        t = type(a)
        if t in SCALARS:
            return self.op(a)
        if t is _TaskRef:
            return self.ref(a.key, env)
        if isinstance(a, _GraphNode):
            if isinstance(a, _Task):
                return self.task(a, env)
            if t is _Alias:
                return self.ref(a.target, env)
            if t is _DataNode:
                return self.op(a.value)
        elif isinstance(a, _TaskRef):  # e.g. dask.distributed's Future, a TaskRef subclass
            return self.ref(a.key, env)
        return self.op(a)

    def task(self, node: Any, env: dict | None) -> Any:
        t = type(node)
        kind = _CONTAINERS.get(t)
        if kind is not None:
            return (kind, *[self.arg(x, env) for x in node.args])
        func = node.func
        if func is _execute_subgraph:
            return self.subgraph(node, env)
        if func is _identity_cast and len(node.kwargs) == 1:
            kind = _CAST.get(node.kwargs.get("typ"))
            if kind is not None:
                return (kind, *[self.arg(x, env) for x in node.args])
        f = self.op(func)
        args = tuple([self.arg(x, env) for x in node.args])
        kws = tuple([(k, self.arg(v, env)) for k, v in node.kwargs.items()])
        return ("C", f, args, kws)

    def subgraph(self, node: Any, env: dict | None) -> Any:
        """A fused subgraph becomes steps of this template: no inner graph travels or runs."""
        inner, outkey, inkeys, *deps = node.args
        env2 = {k: self.arg(d, env) for k, d in zip(inkeys, deps)}
        for k in _inner_order(inner, outkey, env2):
            v = inner[k]
            tv = type(v)
            if tv is _Alias:
                env2[k] = self.ref(v.target, env2)
            elif tv is _DataNode:
                env2[k] = self.op(v.value)
            elif isinstance(v, _Task):
                shape = self.task(v, env2)
                reg = self.nreg
                self.nreg += 1
                self.steps.append((reg, shape))
                env2[k] = ("R", reg)
            else:
                env2[k] = self.op(v)
        return env2[outkey]


def _postorder(roots: Iterable, children: Callable[[Any], Any], seen: set) -> list:
    """Keys reachable from `roots`, each after its children (depth first, no recursion).
    `children(k)` gives k's children, or None for a key to leave out; `seen` is skipped."""
    order: list = []
    stack = [(k, False) for k in reversed(list(roots))]
    while stack:
        k, done = stack.pop()
        if done:
            order.append(k)
            continue
        if k in seen:
            continue
        seen.add(k)
        kids = children(k)
        if kids is None:
            continue
        stack.append((k, True))
        stack.extend((d, False) for d in kids if d not in seen)
    return order


def _inner_order(inner: dict, outkey: Any, known: dict) -> list:
    """Keys of a fused subgraph that `outkey` needs, dependencies first."""

    def children(k: Any) -> Any:
        v = inner.get(k)
        if v is None:
            return None
        return v.dependencies if isinstance(v, _GraphNode) else ()

    return _postorder((outkey,), children, set(known))


def materialize(dsk: Any) -> tuple[dict, dict]:
    """`(graph of task-spec nodes, annotations by type)` from whatever dask handed us."""
    _load_dask()
    annotations: dict = {}
    if hasattr(dsk, "__dask_graph__") and callable(dsk.__dask_graph__):
        get_ann = getattr(dsk, "__dask_annotations__", None)
        graph = dsk.__dask_graph__()
        if callable(get_ann):
            annotations = get_ann() or {}
    else:
        graph = dsk
    if isinstance(graph, _HighLevelGraph):
        for layer in graph.layers.values():
            ann = getattr(layer, "annotations", None)
            if ann:
                keys = layer.get_output_keys()
                for name, value in ann.items():
                    per = annotations.setdefault(name, {})
                    for k in keys:
                        per[k] = value(k) if callable(value) else value
        graph = dict(graph)
    if not isinstance(graph, dict):
        graph = dict(graph)
    return _convert_legacy_graph(graph), annotations


class Resolver:
    """Follows Alias nodes to the key that holds the data, so that an alias costs no task
    (dask puts one behind most fused tasks); outputs keep theirs, the client asked for them."""

    def __init__(self, graph: dict, keep: Iterable) -> None:
        self.graph = graph
        self.keep = set(keep)
        self.adopted: dict = {}  # output alias -> the node it runs (see dependency_order)

    def __call__(self, key: Any) -> Any:
        graph, keep = self.graph, self.keep
        for _ in range(1000):
            if key in keep:
                return key
            node = graph.get(key)
            if type(node) is not _Alias:
                return key
            key = node.target
        raise ValueError(f"the graph has a cycle of aliases through key {key!r}")


def dependency_order(graph: dict, outs: list, resolve: Resolver) -> tuple[list, list]:
    """Keys the outputs need, dependencies first (depth first, so that a reduction's inputs are
    computed just before it: the scheduler runs tasks of one priority in the order sent), and
    the keys referred to that the graph does not hold.

    An output that is an alias of a task nothing else uses runs that task under its own key
    (`resolve.adopted`): dask puts such an alias behind every chunk of a persisted array."""
    missing: list = []
    refs: dict = {}
    keep = resolve.keep

    def children(k: Any) -> Any:
        node = graph.get(k)
        if node is None:
            missing.append(k)
            return None
        if type(node) is _Alias and k in keep:
            deps: Any = (resolve(node.target),)
        else:
            deps = [resolve(d) for d in node.dependencies]
        for d in deps:
            refs[d] = refs.get(d, 0) + 1
        return deps

    order = _postorder(outs, children, set())
    dropped = set()
    for k in keep:
        node = graph.get(k)
        if type(node) is _Alias:
            t = resolve(node.target)
            if t not in keep and refs.get(t) == 1 and isinstance(graph.get(t), _Task):
                resolve.adopted[k] = graph[t]
                dropped.add(t)
    if dropped:
        order = [k for k in order if k not in dropped]
    return order, missing


def split(keys: list, graph: dict, resolve: Resolver) -> list[tuple[str, Template, tuple]]:
    """`[(key, template, operands)]` for `keys`, in their order.

    An object is kept in a template when more than one task of the graph holds it (by
    identity), so that it travels once; everything else travels with its task. Templates are
    deduplicated here within one graph and by content (their function id) across graphs.
    """
    walked = []
    counts: dict[int, int] = {}
    fused: dict[tuple, tuple] = {}
    adopted = resolve.adopted
    for k in keys:
        steps, out, ops = _walk_node(adopted.get(k) or graph[k], resolve, fused)
        for o in ops:
            if type(o) not in _PER_TASK:
                i = id(o)
                counts[i] = counts.get(i, 0) + 1
        walked.append((k, steps, out, ops))
    templates: dict[tuple, Template] = {}
    result = []
    for k, steps, out, ops in walked:
        shared = {
            i: o
            for i, o in enumerate(ops)
            if type(o) not in _PER_TASK and counts[id(o)] > 1 and not _holds_future(o)
        }
        sig = (steps, out, len(ops), tuple([(i, id(o)) for i, o in shared.items()]))
        t = templates.get(sig)
        if t is None:
            _refuse_p2p(ops)
            t = templates[sig] = Template(steps, out, len(ops), shared, _prefix(k))
        own = tuple([o for i, o in enumerate(ops) if i not in shared]) if shared else tuple(ops)
        result.append((stringify(k), t, own))
    return result


def _walk_node(node: Any, resolve: Resolver, fused: dict) -> tuple[tuple, Any, list]:
    """(steps, out, operands) of one node. Blockwise tasks share their fused subgraph (the same
    dict object): it is walked once per graph and only the inputs are walked per task."""
    w = _Walk(resolve)
    if type(node) is _Task and node.func is _execute_subgraph:
        inner, outkey, inkeys, *deps = node.args
        simple = not any(isinstance(d, _Task) for d in deps)  # one operand each
        ck = (id(inner), outkey, tuple(inkeys))
        hit = fused.get(ck) if simple else None
        if hit is not None:
            steps, out, inner_ops = hit
            for d in deps:
                w.arg(d, None)
            return steps, out, w.ops + inner_ops
        out = w.task(node, None)
        inner_ops = w.ops[len(deps) :]
        if simple and not any(type(o) is KeyRef for o in inner_ops):
            fused[ck] = (tuple(w.steps), out, inner_ops)
        return tuple(w.steps), out, w.ops
    if isinstance(node, _Task):
        out = w.task(node, None)
    elif type(node) is _Alias:
        out = w.op(KeyRef(stringify(resolve(node.target))))
    else:
        out = w.op(node.value)
    return tuple(w.steps), out, w.ops


def _refuse_p2p(ops: list) -> None:
    for o in ops:
        module = getattr(o, "__module__", None) or ""
        if callable(o) and module.startswith("distributed.shuffle"):
            raise NotImplementedError(
                "this graph uses dask.distributed's P2P shuffle or rechunk, an extension of "
                "its scheduler that hpcdask does not have: pass shuffle_method='tasks' or "
                "method='tasks' (the default while an hpcdask Client is current)"
            )


def _holds_future(obj: Any) -> bool:
    return getattr(obj, "_hpcdask_future_key", None) is not None


def _prefix(key: Any) -> str:
    """'sum-aggregate' from ('sum-aggregate-fbba8e4a...', 0): a name for the template."""
    name = key[0] if type(key) is tuple and key else key
    if not isinstance(name, str):
        return "task"
    parts = name.split("-")
    words = [p for p in parts if not (len(p) >= 8 and all(c in "0123456789abcdef" for c in p))]
    return "-".join(words[:3]) or "task"


# --------------------------------------------------------------------- dask, loaded on first use

_CONTAINERS: dict = {}
_CAST = {list: "L", tuple: "T", set: "S"}
_TaskRef: Any = None
_GraphNode: Any = None
_Task: Any = None
_Alias: Any = None
_DataNode: Any = None
_HighLevelGraph: Any = None
_execute_subgraph: Any = None
_identity_cast: Any = None
_convert_legacy_graph: Callable = lambda g: g  # noqa: E731 - replaced on first use


def _load_dask() -> None:
    global _TaskRef, _GraphNode, _Task, _Alias, _DataNode, _HighLevelGraph
    global _execute_subgraph, _identity_cast, _convert_legacy_graph
    if _Task is not None:
        return
    try:
        from dask import _task_spec as ts
        from dask.highlevelgraph import HighLevelGraph
    except ImportError as e:  # pragma: no cover - only graphs from dask come here
        raise ImportError(
            "computing dask collections needs dask: pip install 'hpcdask[dask]'"
        ) from e
    _CONTAINERS.update({ts.List: "L", ts.Tuple: "T", ts.Set: "S", ts.Dict: "D"})
    _TaskRef, _GraphNode, _Task = ts.TaskRef, ts.GraphNode, ts.Task
    _Alias, _DataNode, _HighLevelGraph = ts.Alias, ts.DataNode, HighLevelGraph
    _execute_subgraph = ts._execute_subgraph
    _identity_cast = ts._identity_cast
    _convert_legacy_graph = ts.convert_legacy_graph
