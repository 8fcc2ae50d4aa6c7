"""One error for dask.distributed's options that hpcdask does not implement (utils/options.py)."""

from __future__ import annotations

from ..utils.options import refuse

__all__ = ["refuse"]
