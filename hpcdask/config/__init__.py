"""Layered configuration: package defaults < site profile < system and user files < environment.

`get("comm.timeouts.connect")` reads a dotted key; `set({...})` / `set(a__b=1)` overrides keys
for this process (and undoes it when used as a context manager). Files are checked against the
defaults file, so a misspelt key or a wrong type fails loudly, naming the key and the file.

Batch clusters also read dask's `jobqueue.<system>` (or `jobqueue.<config_name>`) as a layer
between the site profile and these files (`_dask.py`; only when asked, only if dask is installed).
dask.distributed's `distributed.worker.memory.*`, `scheduler.worker-ttl` and
`scheduler.allowed-failures` are a layer at the same place for every process (`_dask.DISTRIBUTED_KEYS`).

A process started by a nanny gets its parent's `config.set()` layers and that dask layer
(`inherited_env()`, checked in the parent and again here), and dask's own configuration as
dask.distributed passes it (`DASK_INTERNAL_INHERIT_CONFIG`).

Environment: `HPCDASK_A__B_C=value` sets `a.b-c` (value read as a YAML scalar; string-typed keys
keep the raw text). `HPCDASK_CONFIG` names one more YAML file or folder.
Batch systems share `jobqueue.common`; `jobqueue.<system>` overrides it, layer by layer, so that
`get("jobqueue.slurm.cores")` already includes the common block.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from ._schema import ConfigError, Typed, load_file, normalize, parse_scalar, validate
from ._sites import find_site, list_sites, load_site

__all__ = ["ConfigError", "get", "set", "refresh", "collect", "sources", "find_site",
           "list_sites", "load_site", "defaults", "SYSTEMS", "config_paths", "dask_layer",
           "inherited_env"]  # fmt: skip

_DEFAULTS_FILE = Path(__file__).with_name("hpcdask.yaml")
_ENV_PREFIX = "HPCDASK_"
_INHERIT = "HPCDASK_INTERNAL_INHERIT_CONFIG"  # a nanny's configuration, for its worker
_NOT_KEYS = {"HPCDASK_CONFIG", "HPCDASK_READY_FD", "HPCDASK_NANNY_PID", _INHERIT}  # plumbing
_lock = threading.RLock()
_cache: dict[str, Any] = {}
_overrides: list[dict] = []  # stack of set() layers, innermost last
_inherited: dict = {}  # what the parent passed in _INHERIT ("dask": its distributed.* layer)


def defaults() -> dict:
    """The parsed defaults file (typed nulls kept as `Typed` markers): the schema."""
    if "defaults" not in _cache:
        _cache["defaults"] = load_file(_DEFAULTS_FILE)
    return _cache["defaults"]


def _jobqueue_schema() -> tuple[dict, dict]:
    jq = defaults()["jobqueue"]
    common = jq["common"]
    systems = {k: v for k, v in jq.items() if isinstance(v, dict) and k != "common"}
    return common, systems


SYSTEMS = ("slurm", "pbs", "sge")


def schema() -> dict:
    """Defaults with every system block widened by the common keys (what a layer may contain)."""
    if "schema" not in _cache:
        s = copy.deepcopy(defaults())
        common, systems = _jobqueue_schema()
        for name, own in systems.items():
            s["jobqueue"][name] = {**common, **own}
        _cache["schema"] = s
    return _cache["schema"]


def _strip(value: Any) -> Any:
    if isinstance(value, Typed):
        return None
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()}
    return value


def _merge(base: dict, new: dict) -> dict:
    """Deep merge; mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and out.get(k):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _expand_common(layer: dict) -> dict:
    """Copy a layer's jobqueue.common into each of its system blocks (the system wins)."""
    jq = layer.get("jobqueue")
    if not isinstance(jq, dict) or not jq.get("common"):
        return layer
    _, systems = _jobqueue_schema()
    jq = dict(jq)
    for name in systems:
        jq[name] = _merge(jq["common"], jq.get(name) or {})
    return {**layer, "jobqueue": jq}


def _check_common(layer: dict, source: str) -> dict:
    common_schema, systems = _jobqueue_schema()
    jq = layer.get("jobqueue")
    common = jq.get("common") if isinstance(jq, dict) else None
    for key in map(normalize, common if isinstance(common, dict) else ()):
        if key not in common_schema:
            owner = [s for s, own in systems.items() if key in own]
            where = f" (it belongs under jobqueue.{owner[0]})" if owner else ""
            raise ConfigError(f"{source}: unknown configuration key 'jobqueue.common.{key}'{where}")
    return layer


def read_layer(data: dict, source: str) -> dict:
    """Validate one layer and expand its common jobqueue block."""
    _check_common(data, source)
    return _expand_common(validate(data, schema(), source))


def config_paths() -> list[Path]:
    """User and system files, lowest precedence first."""
    paths: list[Path] = []
    dirs = [Path("/etc/hpcdask"), Path(os.path.expanduser("~/.config/hpcdask"))]
    extra = os.environ.get("HPCDASK_CONFIG")
    for d in dirs:
        if d.is_dir():
            paths += sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if extra:
        p = Path(os.path.expanduser(extra))
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml"))
        else:
            paths.append(p)  # a missing file named explicitly is an error when read
    return paths


def _file_layers() -> list[tuple[str, dict]]:
    if "files" not in _cache:
        _cache["files"] = [(str(p), read_layer(load_file(p), str(p))) for p in config_paths()]
    return _cache["files"]


def _env_key(name: str) -> str:
    return ".".join(normalize(part) for part in name[len(_ENV_PREFIX) :].split("__"))


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


_MISSING = object()


def _env_value(name: str, raw: str) -> tuple[str, Any]:
    """(key, value) of one HPCDASK_* variable; unknown single-word names are not config."""
    key = _env_key(name)
    default = _lookup(schema(), key)
    if default is _MISSING and "__" not in name[len(_ENV_PREFIX) :]:
        return key, _MISSING
    string_typed = isinstance(default, str) or (
        isinstance(default, Typed) and default.type == "str"
    )
    value = raw if string_typed else parse_scalar(raw)
    return key, value


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _env_layers() -> list[tuple[str, dict]]:
    layers = []
    for name in sorted(os.environ):
        if not name.startswith(_ENV_PREFIX) or name in _NOT_KEYS:
            continue
        key, value = _env_value(name, os.environ[name])
        if value is _MISSING:
            continue
        source = f"environment variable {name}"
        layers.append((source, read_layer(_nest(key, value), source)))
    return layers


def dask_layer(system: str, section: str | None = None) -> tuple[str, dict] | None:
    """dask's `jobqueue.<section>` (default: the system's) as a layer for *system*, or None.

    This is how dask-jobqueue's configuration (~/.config/dask/jobqueue.yaml, `DASK_*`,
    `dask.config.set`) reaches a cluster; read only when asked, and only if dask is installed.
    """
    from . import _dask

    data = _dask.jobqueue_section(section or system)
    if data is None:
        return None
    source = f"dask config jobqueue.{section or system}"
    return source, read_layer({"jobqueue": {system: data}}, source)


def _distributed_layer() -> tuple[str, dict] | None:
    """dask.distributed's keys that mean the same here, as a layer (None: nobody set any).
    A nanny's worker takes its parent's reading rather than importing dask to ask again."""
    from . import _dask

    if "dask" in _inherited and "dask.config" not in sys.modules:
        values = _inherited["dask"]
    else:
        values = _dask.distributed_values()
    if not values:
        return None
    data: dict = {}
    for key, value in values.items():
        data = _merge(data, _nest(key, value))
    source = "dask config distributed.*"
    return source, read_layer(data, source)


def sources(site: str | None = None, dask: tuple[str, str | None] | None = None
            ) -> list[tuple[str, dict]]:  # fmt: skip
    """Every layer as (where it came from, validated data), lowest precedence first.

    dask's `distributed.*` keys that we share (`_dask.DISTRIBUTED_KEYS`) come just above the
    site profile and below hpcdask's own files; *dask* = (system, config_name) adds dask's
    jobqueue section for that system there too."""
    with _lock:
        user = _file_layers() + _env_layers()
        if site is None:
            for _, layer in reversed(user + [("", o) for o in _overrides]):
                chosen = _lookup(layer, "jobqueue.site")
                if chosen is not _MISSING and chosen:
                    site = chosen
                    break
        layers = [(str(_DEFAULTS_FILE), _expand_common(_strip(defaults())))]
        if site:
            path = find_site(site, _site_dirs(user))
            layers.append((str(path), read_layer(load_site(path)["config"], str(path))))
        distributed = _distributed_layer()
        if distributed is not None:
            layers.append(distributed)
        if dask is not None:
            layer = dask_layer(*dask)
            if layer is not None:
                layers.append(layer)
        return layers + user + [("config.set()", o) for o in _overrides]


def _site_dirs(user: list[tuple[str, dict]]) -> list[str]:
    """jobqueue.site-dirs from the highest user layer that sets it."""
    for _, layer in reversed(user):
        dirs = _lookup(layer, "jobqueue.site-dirs")
        if dirs is not _MISSING and dirs is not None:
            return dirs
    return []


def collect(site: str | None = None, dask: tuple[str, str | None] | None = None) -> dict:
    """The merged configuration, re-reading the environment (and a given site profile, and
    dask's jobqueue section for *dask* = (system, config_name))."""
    out: dict = {}
    for _, layer in sources(site, dask):
        out = _merge(out, layer)
    return out


def _merged() -> dict:
    with _lock:
        if "merged" not in _cache:
            from . import _dask

            _cache["dask-fingerprint"] = _dask.distributed_fingerprint()
            _cache["merged"] = collect()
        return _cache["merged"]


def _dask_watched() -> frozenset:
    """Our keys that dask's `distributed.*` can set, and the sections above them."""
    if "watched" not in _cache:
        from . import _dask

        keys = {ours for ours, _ in _dask.DISTRIBUTED_KEYS.values()}
        _cache["watched"] = frozenset(
            {".".join(k.split(".")[:n]) for k in keys for n in range(1, k.count(".") + 2)}
        )
    return _cache["watched"]


def get(key: str, default: Any = None) -> Any:
    """The value of dotted *key*, or *default* when it is unset (None) or unknown."""
    key = ".".join(normalize(p) for p in key.split("."))
    for layer in reversed(_overrides):
        value = _lookup(layer, key)
        if value is not _MISSING:
            return copy.deepcopy(value) if value is not None else default
    if key in _dask_watched() and "merged" in _cache:
        from . import _dask

        if _dask.distributed_fingerprint() != _cache.get("dask-fingerprint"):
            _cache.pop("merged", None)  # a dask.config.set since: read it again
    env = _ENV_PREFIX + key.upper().replace(".", "__").replace("-", "_")
    raw = os.environ.get(env)
    if raw is not None and env not in _NOT_KEYS:
        _, value = _env_value(env, raw)
        if value is not _MISSING:
            return value
    value = _lookup(_merged(), key)
    if value is _MISSING or value is None:
        return default
    return copy.deepcopy(value) if isinstance(value, (dict, list)) else value


class set:  # noqa: N801 - a function-like context manager, as dask.config.set
    """Override keys for this process: `set({"a.b": 1})`, `set(a__b=1)`, or `with set(...):`."""

    def __init__(self, arg: dict | None = None, **kwargs: Any) -> None:
        items = {**(arg or {}), **{k.replace("__", "."): v for k, v in kwargs.items()}}
        layer: dict = {}
        for key, value in items.items():
            key = ".".join(normalize(p) for p in key.split("."))
            layer = _merge(layer, _nest(key, value))
        self._layer = _expand_common(layer)
        with _lock:
            _overrides.append(self._layer)
            _cache.pop("merged", None)

    def __enter__(self) -> set:
        return self

    def __exit__(self, *exc: Any) -> None:
        with _lock:
            for i in range(len(_overrides) - 1, -1, -1):
                if _overrides[i] is self._layer:
                    del _overrides[i]
                    break
            _cache.pop("merged", None)


def refresh() -> None:
    """Forget what was read: the next `get` re-reads files and environment."""
    with _lock:
        for k in ("files", "merged"):
            _cache.pop(k, None)


def inherited_env() -> dict[str, str]:
    """Environment variables that give a worker process this process's configuration, read
    now: the `config.set()` layers and dask's `distributed.*` layer (`HPCDASK_INTERNAL_INHERIT_CONFIG`,
    JSON) and, when dask is loaded, dask's own configuration as dask.distributed's nanny
    passes it (what differs from dask's packaged defaults, in `DASK_INTERNAL_INHERIT_CONFIG`).

    Files and environment variables reach the worker by themselves; these would not. A
    value that is wrong for its key raises ConfigError here, naming it, before any process
    starts."""
    with _lock:
        layer: dict = {}
        for o in _overrides:
            layer = _merge(layer, o)
    payload: dict = {}
    if layer:
        payload["set"] = read_layer(layer, "config.set()")
        _check_json(payload["set"], "config.set()", "")
    distributed = _distributed_layer()
    payload["dask"] = _flatten(distributed[1]) if distributed else None
    env = {_INHERIT: base64.b64encode(json.dumps(payload).encode()).decode()}
    dask_config = sys.modules.get("dask.config")
    if dask_config is not None:
        set_here = _portable(_diff(dask_config.config, _dask_defaults(dask_config)))
        if set_here:
            env["DASK_INTERNAL_INHERIT_CONFIG"] = dask_config.serialize(set_here)
    return env


def _check_json(value: Any, source: str, key: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _check_json(v, source, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_json(v, source, key)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{source}: {key!r} is a {type(value).__name__}, which cannot be "
                          "passed to a worker process: give a string, number, list or mapping")  # fmt: skip


def _portable(tree: Any) -> Any:
    """*tree* without the values JSON cannot carry: dask's configuration may hold objects of
    this process (the `scheduler` a Client sets as the default), which mean nothing in another."""
    if isinstance(tree, dict):
        out = {k: _portable(v) for k, v in tree.items() if isinstance(k, str)}
        return {k: v for k, v in out.items() if v is not _MISSING}
    if isinstance(tree, (list, tuple)):
        items = [_portable(v) for v in tree]
        return _MISSING if _MISSING in items else items
    if tree is None or isinstance(tree, (str, int, float, bool)):
        return tree
    return _MISSING


def _flatten(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _dask_defaults(dask_config: Any) -> dict:
    out: dict = {}
    for layer in getattr(dask_config, "defaults", []):
        out = dask_config.merge(out, layer)
    return out


def _diff(tree: Any, base: Any) -> Any:
    """What of *tree* differs from *base* (mappings compared key by key)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        b = base.get(k, _MISSING) if isinstance(base, dict) else _MISSING
        if isinstance(v, dict) and isinstance(b, dict):
            d = _diff(v, b)
            if d:
                out[k] = d
        elif b is _MISSING or b != v:
            out[k] = v
    return out


def _inherit() -> None:
    """Take the configuration a nanny passed (`inherited_env`), checked again."""
    text = os.environ.get(_INHERIT)
    if not text:
        return
    source = f"the nanny's configuration ({_INHERIT})"
    try:
        payload = json.loads(base64.b64decode(text))
    except ValueError as e:
        raise ConfigError(f"{source}: not valid: {e}") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{source}: expected a mapping, not {type(payload).__name__}")
    if payload.get("set"):
        _overrides.insert(0, read_layer(payload["set"], f"{source}, config.set()"))
    dask_values = payload.get("dask")
    if dask_values:
        data: dict = {}
        for key, value in dask_values.items():
            data = _merge(data, _nest(key, value))
        read_layer(data, f"{source}, dask config distributed.*")
    _inherited["dask"] = dask_values or None


_inherit()
