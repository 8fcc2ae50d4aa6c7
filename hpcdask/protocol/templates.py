"""How the tasks of a dask graph travel: one *template* per distinct shape, small arguments per task.

dask's collections repeat the same callables and constants (a `partial`, a dataframe's `meta`,
a fused subgraph's structure) in thousands of tasks. A task is split into

- a template: the call structure (nested calls, containers, fused subgraphs as a short program
  of steps) with every object that occurs in more than one task of the graph kept inside it, and
- its operands: whatever is particular to the task (input references, indices, scalars),

and the template travels as the task's *function*: it is pickled once, sent to each worker once
(the function cache every task already goes through) and compiled there into closures once, so
a 100,000-task graph sends its shared objects once and each task carries a few bytes.

A template's shape is nested tuples: an int is operand i; `("C", f, args, kwargs)` a call;
`("L"|"T"|"S", items)` a list, tuple or set; `("D", k1, v1, k2, v2, ...)` a dict; `("R", j)` the
result of step j. This module has no dask import: workers only need it to run templates. The
compiler from dask's task spec lives in `client/taskgraph.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Shape = Any  # int | tuple (see the module docstring)


class Template:
    """A callable run as `template(*operands)` on a worker: rebuilds and runs the task."""

    __slots__ = ("steps", "out", "nops", "shared", "name", "_run", "__weakref__")

    def __init__(
        self, steps: tuple, out: Shape, nops: int, shared: dict[int, Any], name: str
    ) -> None:
        self.steps = steps  # ((register, shape), ...) run in order before `out`
        self.out = out
        self.nops = nops  # operands in all; those not in `shared` come with each task, in order
        self.shared = shared  # operand index -> the object every task of this shape shares
        self.name = name
        self._run: Callable | None = None

    @property
    def __name__(self) -> str:  # FunctionCache names the task's function after this
        return self.name

    def __reduce__(self) -> tuple:
        return Template, (self.steps, self.out, self.nops, self.shared, self.name)

    def __repr__(self) -> str:
        return f"<Template {self.name}: {len(self.steps)} steps, {len(self.shared)} shared>"

    def __call__(self, *operands: Any) -> Any:
        run = self._run
        if run is None:
            run = self._run = _compile(self)
        return run(operands)


def _compile(t: Template) -> Callable[[tuple], Any]:
    """Turn the shape into closures once per worker, so that a task costs a few calls."""
    own = [i for i in range(t.nops) if i not in t.shared]
    slot = {i: pos for pos, i in enumerate(own)}  # operand index -> position in the task's
    nregs = max((r for r, _ in t.steps), default=-1) + 1

    def build(e: Shape) -> Callable[[tuple, list], Any]:
        if type(e) is int:
            if e in t.shared:
                c = t.shared[e]
                return lambda a, r: c
            j = slot[e]
            return lambda a, r: a[j]
        kind = e[0]
        if kind == "C":
            func, args = e[1], [build(x) for x in e[2]]
            kws = tuple((k, build(v)) for k, v in e[3])
            if type(func) is int and func in t.shared:
                f = t.shared[func]
                if kws:
                    return lambda a, r: f(*[g(a, r) for g in args], **{k: g(a, r) for k, g in kws})
                if len(args) == 1:
                    g0 = args[0]
                    return lambda a, r: f(g0(a, r))
                if len(args) == 2:
                    g0, g1 = args
                    return lambda a, r: f(g0(a, r), g1(a, r))
                return lambda a, r: f(*[g(a, r) for g in args])
            fg = build(func)
            return lambda a, r: fg(a, r)(*[g(a, r) for g in args], **{k: g(a, r) for k, g in kws})
        if kind == "R":
            j = e[1]
            return lambda a, r: r[j]
        items = [build(x) for x in e[1:]]
        if kind == "L":
            return lambda a, r: [g(a, r) for g in items]
        if kind == "T":
            return lambda a, r: tuple([g(a, r) for g in items])
        if kind == "S":
            return lambda a, r: {g(a, r) for g in items}
        if kind == "D":
            keys, vals = items[0::2], items[1::2]
            return lambda a, r: {k(a, r): v(a, r) for k, v in zip(keys, vals)}
        raise ValueError(f"unknown template node {kind!r}")

    steps = [(reg, build(shape)) for reg, shape in t.steps]
    out = build(t.out)
    if not steps:
        none: list = []
        return lambda a: out(a, none)

    def run(a: tuple) -> Any:
        r: list = [None] * nregs
        for reg, step in steps:
            r[reg] = step(a, r)
        return out(a, r)

    return run


def identity(x: Any) -> Any:
    """The task of a dask DataNode or Alias: its value, or its input's."""
    return x
