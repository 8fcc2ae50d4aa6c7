"""Running a client-supplied function on a worker or nanny (`Client.run`)."""

from __future__ import annotations

import inspect
from typing import Any

from ..protocol.serialize import Pickled


async def run_remote(msg: dict, **injected: Any) -> dict:
    """Call `msg["function"](*args, **kwargs)`; pass `dask_worker=` etc. if it asks for them."""
    try:
        func = msg["function"].loads()
        args = msg["args"].loads() if msg.get("args") is not None else ()
        kwargs = msg["kwargs"].loads() if msg.get("kwargs") is not None else {}
        try:
            params = set(inspect.signature(func).parameters)
        except (TypeError, ValueError):
            params = set()
        for name, value in injected.items():
            if name in params and name not in kwargs:
                kwargs[name] = value
        if "worker" in params and "worker" not in kwargs and "dask_worker" in injected:
            kwargs["worker"] = injected["dask_worker"]
        result = func(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    except Exception as e:
        return error_reply(e)
    return {"status": "OK", "result": Pickled.dumps(result)}


def error_reply(e: Exception) -> dict:
    """The reply for a remote call that raised: the exception (pickled, or a RuntimeError of
    its text where it does not pickle) and its text."""
    try:
        exc = Pickled.dumps(e)
    except Exception:
        exc = Pickled.dumps(RuntimeError(f"{type(e).__name__}: {e}"))
    return {"status": "error", "exception": exc, "text": f"{type(e).__name__}: {e}"}
