"""Graphs in dask's dict form, `{'x': 1, 'y': (add, 'x', 2)}`, turned into tasks.

A value that is a tuple starting with a callable is a task; any other value that equals a key of
the graph is a reference to that key's result. Keys may be strings or tuples (dask collections
use `('name', i)`); on the wire every key is a string.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from ..protocol.taskspec import KeyRef


def stringify(key: Any) -> str:
    return key if type(key) is str else repr(key)


def is_task(value: Any) -> bool:
    return type(value) is tuple and bool(value) and callable(value[0])


def _refs(value: Any, keys: dict) -> Any:
    """`value` with graph keys replaced by KeyRef, keeping task tuples as they are."""
    if is_task(value):
        return (value[0],) + tuple(_refs(v, keys) for v in value[1:])
    if type(value) is list:
        return [_refs(v, keys) for v in value]
    if type(value) is dict:
        return {k: _refs(v, keys) for k, v in value.items()}
    if isinstance(value, Hashable):
        try:
            if value in keys:
                return KeyRef(keys[value])
        except TypeError:
            pass
    return value


def _deps(value: Any, keys: dict, out: set) -> None:
    if is_task(value):
        for v in value[1:]:
            _deps(v, keys, out)
    elif type(value) in (list, tuple):
        for v in value:
            _deps(v, keys, out)
    elif type(value) is dict:
        for v in value.values():
            _deps(v, keys, out)
    elif isinstance(value, Hashable):
        try:
            if value in keys:
                out.add(value)
        except TypeError:
            pass


def toposort(dsk: dict) -> list:
    """Keys ordered dependencies first; a cycle is an error naming a key on it."""
    deps = {}
    for k, v in dsk.items():
        found: set = set()
        _deps(v, dsk, found)
        found.discard(k)
        deps[k] = found
    order: list = []
    state: dict = {}
    for root in dsk:
        if root in state:
            continue
        stack = [(root, iter(deps[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            for dep in it:
                if state.get(dep) == 1:
                    raise ValueError(f"the graph has a cycle through key {dep!r}")
                if dep not in state:
                    state[dep] = 1
                    stack.append((dep, iter(deps[dep])))
                    break
            else:
                stack.pop()
                state[node] = 2
                order.append(node)
    return order


def graph_to_tasks(dsk: dict) -> list[tuple[str, Any, tuple]]:
    """`[(str_key, value_with_refs, ...)]` in dependency order; values are evaluated on workers."""
    keys = {k: stringify(k) for k in dsk}
    return [(keys[k], _refs(dsk[k], keys)) for k in toposort(dsk)]


def flatten_keys(keys: Any) -> list:
    """Keys nested in lists, in order (a loop, not nested generators: persist flattens one
    list per chunk of a collection)."""
    out: list = []
    _flatten(keys, out)
    return out


def _flatten(keys: Any, out: list) -> None:
    if type(keys) is not list:
        out.append(keys)
        return
    for k in keys:
        if type(k) is list:
            _flatten(k, out)
        else:
            out.append(k)


def pack_results(keys: Any, results: dict) -> Any:
    if type(keys) is list:
        return [pack_results(k, results) for k in keys]
    return results[stringify(keys)]
