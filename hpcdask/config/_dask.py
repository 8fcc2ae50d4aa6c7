"""dask's own configuration as one more layer, so a centre's existing jobqueue.yaml works unchanged.

dask-jobqueue reads `jobqueue.<config_name>.*` through `dask.config` (its YAML files under
~/.config/dask and /etc/dask, `DASK_*` variables, `dask.config.set`). We read the same section,
keep only what someone set (not dask-jobqueue's packaged defaults, which dask holds once
dask_jobqueue is imported) and check it against our schema like any other layer. dask stays
optional: nothing here runs unless a batch cluster asks, and without dask there is no layer.

dask.distributed's own keys that mean the same here (`distributed.worker.memory.target`, ...,
`distributed.scheduler.worker-ttl`: `DISTRIBUTED_KEYS`) are read the same way, for every
process, so that a `distributed.yaml` or a `dask.config.set` carries over.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Any

from ._schema import normalize

#: dask-jobqueue's default worker command: it means "the worker", which here is hpcdask's.
DASK_WORKER_COMMANDS = {"distributed.cli.dask_worker", "dask worker", "dask-worker"}


def available() -> bool:
    return importlib.util.find_spec("dask") is not None


def _packaged_defaults(section: str) -> dict:
    """dask-jobqueue's defaults for *section*, as registered with dask (empty if not imported)."""
    import dask.config

    out: dict = {}
    for layer in getattr(dask.config, "defaults", []):
        block = (layer.get("jobqueue") or {}).get(section) if isinstance(layer, dict) else None
        if isinstance(block, dict):
            out.update({normalize(k): v for k, v in block.items()})
    return out


def _paths() -> list[str]:
    """dask's config folders, with ~/.config/dask and $DASK_CONFIG read now (dask fixes them
    when it is imported, which may be long before the cluster is made)."""
    import dask.config

    now = [os.path.join(os.path.expanduser("~"), ".config", "dask"), os.environ.get("DASK_CONFIG")]
    out: list[str] = []
    for p in [*dask.config.paths, *now]:
        if p and p not in out:
            out.append(p)
    return out


def _section(tree: Any, section: str) -> dict:
    block = (tree.get("jobqueue") or {}).get(section) if isinstance(tree, dict) else None
    return {normalize(k): v for k, v in block.items()} if isinstance(block, dict) else {}


def jobqueue_section(section: str) -> dict | None:
    """The values set in dask's `jobqueue.<section>`, keys normalised; None when dask is not
    installed or nobody set anything there.

    Files and `DASK_*` variables count whatever their value; of the live configuration
    (`dask.config.set`) only what differs from them and from dask-jobqueue's packaged defaults.
    """
    if not available():
        return None
    import dask.config

    out = _section(dask.config.collect(paths=_paths()), section)  # files and DASK_* variables
    packaged = _packaged_defaults(section)
    for key, value in _section(dask.config.config, section).items():
        if value is None or (key in packaged and packaged[key] == value):
            continue  # a default, or the live config has not seen a file written since
        out[key] = value  # dask.config.set (or a file read when dask was imported)
    out = {k: v for k, v in out.items() if v is not None}
    if out.get("worker-command") in DASK_WORKER_COMMANDS:
        del out["worker-command"]
    return out or None


#: dask.distributed's key (under `distributed.`) -> ours, and how its value is read.
DISTRIBUTED_KEYS = {
    "worker.memory.target": ("worker.memory.target", "fraction"),
    "worker.memory.spill": ("worker.memory.spill", "fraction"),
    "worker.memory.pause": ("worker.memory.pause", "fraction"),
    "worker.memory.terminate": ("worker.memory.terminate", "fraction"),
    "worker.memory.monitor-interval": ("worker.memory.monitor-interval", "seconds"),
    "scheduler.worker-ttl": ("scheduler.worker-ttl", "seconds"),
    # dask fails a task once more than allowed-failures workers died running it; ours counts
    # the deaths that fail it: one more
    "scheduler.allowed-failures": ("scheduler.killed-worker-limit", "failures"),
}


def _find(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return _MISSING
        if part in tree:
            tree = tree[part]
        else:  # dask lets `memory_limit` stand for `memory-limit`
            tree = next((v for k, v in tree.items() if normalize(k) == part), _MISSING)
    return tree


_MISSING = object()


def _convert(key: str, kind: str, value: Any) -> Any:
    """dask's value for `distributed.<key>` as ours: `False` (dask's "off") is 0, durations
    such as "100ms" are seconds (a worker-ttl of None: never); anything else is an error."""
    from ..utils.durations import parse_duration
    from ._schema import ConfigError

    where = f"dask config distributed.{key}"
    if kind == "failures":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value + 1
        raise ConfigError(f"{where}: must be a number of worker deaths (0 or more), not "
                          f"{value!r}")  # fmt: skip
    if kind == "fraction":
        if value is False:
            return 0.0
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
        raise ConfigError(f"{where}: must be a fraction of memory_limit between 0 and 1, or "
                          f"false to turn it off, not {value!r}")  # fmt: skip
    if value is None or value is False:
        return 0.0
    try:
        seconds = None if isinstance(value, bool) else parse_duration(value)
    except ValueError:
        seconds = None
    if seconds is None or seconds < 0:
        raise ConfigError(f"{where}: must be a duration (seconds, or e.g. '100ms', '5 minutes'), "
                          f"not {value!r}")  # fmt: skip
    return seconds


_DISTRIBUTED_TEXT = re.compile(rb"""(^|[\s{,'"])distributed['"]?\s*:""")


def _may_set_distributed() -> bool:
    """Whether dask's configuration could set `distributed.*`, found without importing dask
    (38 ms, and it changes how exceptions pickle): dask is loaded already, a
    `DASK_DISTRIBUTED__*` variable is set, or a YAML file in dask's folders has a
    `distributed:` key."""
    if "dask.config" in sys.modules:
        return True
    if any(name.upper().startswith("DASK_DISTRIBUTED__") for name in os.environ):
        return True
    import site

    prefixes = {sys.prefix, *getattr(site, "PREFIXES", [])}
    dirs = [os.environ.get("DASK_ROOT_CONFIG", "/etc/dask"), os.environ.get("DASK_CONFIG"),
            os.path.join(os.path.expanduser("~"), ".config", "dask"),
            *(os.path.join(p, "etc", "dask") for p in prefixes)]  # fmt: skip
    for d in filter(None, dirs):
        try:
            names = os.listdir(d) if os.path.isdir(d) else [d] if os.path.isfile(d) else []
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name) if os.path.isdir(d) else name
            if not path.endswith((".yaml", ".yml", ".json")):
                continue
            try:
                with open(path, "rb") as f:
                    if _DISTRIBUTED_TEXT.search(f.read()):
                        return True
            except OSError:
                continue
    return False


def distributed_values() -> dict | None:
    """Our dotted keys -> values, from the `distributed.*` keys of `DISTRIBUTED_KEYS` that
    someone set in dask's configuration (its files, `DASK_*` variables, `dask.config.set`);
    None when dask is not installed or nobody set any. As for jobqueue: files and variables
    count whatever their value, the live configuration only where it differs from them and
    from distributed's packaged defaults."""
    if not available() or not _may_set_distributed():
        return None
    import dask.config

    files = dask.config.collect(paths=_paths())
    packaged: dict = {}
    for layer in getattr(dask.config, "defaults", []):
        packaged = dask.config.merge(packaged, layer)
    out: dict = {}
    for key, (ours, kind) in DISTRIBUTED_KEYS.items():
        value = _find(files, "distributed." + key)
        live = _find(dask.config.config, "distributed." + key)
        if live is not _MISSING and live != value and live != _find(packaged, "distributed." + key):
            value = live
        if value is not _MISSING and not (value is None and kind == "fraction"):
            out[ours] = _convert(key, kind, value)
    return out or None


def distributed_fingerprint() -> Any:
    """The live values of dask's `DISTRIBUTED_KEYS` (cheap, no import): when it changes, a
    `dask.config.set` happened and the merged configuration must be read again."""
    mod = sys.modules.get("dask.config")
    if mod is None:
        return None
    tree = getattr(mod, "config", {})
    return tuple(repr(_find(tree, "distributed." + key)) for key in DISTRIBUTED_KEYS)
