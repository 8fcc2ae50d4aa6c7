"""Package versions of one process, and the comparison `Client.get_versions(check=True)` makes.

A cluster whose processes run different versions of the packages that pickle and run tasks
fails in confusing ways (a function pickled by one cloudpickle, loaded by another); saying
which package differs where is the useful error.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import struct
import sys
from typing import Any

# A mismatch of these is an error: they decide how tasks travel and run.
REQUIRED = ("python", "hpcdask", "cloudpickle", "msgpack", "dask")
# A mismatch of these is a warning: results may differ, nothing breaks in transit.
OPTIONAL = ("numpy", "pandas", "lz4", "toolz", "tblib")


def _version(name: str) -> str | None:
    if name == "python":
        return ".".join(map(str, sys.version_info[:3]))
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def get_versions(packages: list[str] | tuple = ()) -> dict[str, Any]:
    """{"host": {...}, "packages": {name: version or None}} of this process."""
    host = {
        "python": sys.version, "python-bits": struct.calcsize("P") * 8, "OS": platform.system(),
        "OS-release": platform.release(), "machine": platform.machine(),
        "processor": platform.processor(), "byteorder": sys.byteorder,
        "LC_ALL": os.environ.get("LC_ALL", "None"), "LANG": os.environ.get("LANG", "None"),
    }  # fmt: skip
    names = dict.fromkeys([*REQUIRED, *OPTIONAL, *packages])
    return {"host": host, "packages": {n: _version(n) for n in names}}


def mismatches(scheduler: dict, workers: dict, client: dict) -> tuple[str, str]:
    """(error text, warning text) for packages whose version differs between processes;
    empty strings when all agree."""
    procs = {"scheduler": scheduler, "client": client, **workers}
    names = dict.fromkeys(n for v in procs.values() for n in v.get("packages", {}))
    errors, warnings = [], []
    for name in names:
        seen = {who: v.get("packages", {}).get(name) for who, v in procs.items()}
        if len(set(seen.values())) <= 1:
            continue
        by_version: dict = {}
        for who, version in seen.items():
            by_version.setdefault(version, []).append(who)
        parts = "; ".join(f"{version or 'not installed'} on {', '.join(sorted(map(str, whos)))}"
                          for version, whos in by_version.items())  # fmt: skip
        (errors if name in REQUIRED else warnings).append(f"{name}: {parts}")
    fix = "install the same versions in the client's, the scheduler's and the workers' environment"
    error = ("Mismatched versions of required packages: " + " | ".join(errors) + f" ({fix})"
             if errors else "")  # fmt: skip
    warning = (
        "Mismatched versions of optional packages: " + " | ".join(warnings) if warnings else ""
    )
    return error, warning
