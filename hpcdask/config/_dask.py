"""dask's own configuration as one more layer, so a centre's existing jobqueue.yaml works unchanged.

dask-jobqueue reads `jobqueue.<config_name>.*` through `dask.config` (its YAML files under
~/.config/dask and /etc/dask, `DASK_*` variables, `dask.config.set`). We read the same section,
keep only what someone set (not dask-jobqueue's packaged defaults, which dask holds once
dask_jobqueue is imported) and check it against our schema like any other layer. dask stays
optional: nothing here runs unless a batch cluster asks, and without dask there is no layer.
"""

from __future__ import annotations

import importlib.util
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

    out = _section(dask.config.collect(), section)  # files and DASK_* variables
    packaged = _packaged_defaults(section)
    for key, value in _section(dask.config.config, section).items():
        if key in out and out[key] != value:
            out[key] = value  # dask.config.set over a file's value
        elif key not in out and not (key in packaged and packaged[key] == value):
            out[key] = value
    out = {k: v for k, v in out.items() if v is not None}
    if out.get("worker-command") in DASK_WORKER_COMMANDS:
        del out["worker-command"]
    return out or None
