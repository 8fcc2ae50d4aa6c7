"""dask's own configuration as one more layer, so a centre's existing jobqueue.yaml works unchanged.

dask-jobqueue reads `jobqueue.<config_name>.*` through `dask.config` (its YAML files under
~/.config/dask and /etc/dask, `DASK_*` variables, `dask.config.set`). We read the same section,
keep only what someone set (not dask-jobqueue's packaged defaults, which dask holds once
dask_jobqueue is imported) and check it against our schema like any other layer. dask stays
optional: nothing here runs unless a batch cluster asks, and without dask there is no layer.
"""

from __future__ import annotations

import importlib.util
import os
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
