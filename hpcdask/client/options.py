"""One error for dask.distributed's options that hpcdask does not implement."""

from __future__ import annotations

from typing import Any


def refuse(where: str, kwargs: dict[str, Any], why: str = "") -> None:
    """NotImplementedError naming each option in `kwargs` (nothing is silently ignored)."""
    if kwargs:
        names = ", ".join(f"{k}=" for k in sorted(kwargs))
        raise NotImplementedError(
            f"{where}({names}): dask.distributed's option{'s' if len(kwargs) > 1 else ''} "
            f"{names} {'are' if len(kwargs) > 1 else 'is'} not implemented by hpcdask"
            + (f" ({why})" if why else "; docs/compatibility.md lists what is")
        )
