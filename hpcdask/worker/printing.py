"""`print` and `warn` that also reach the clients: called in a task, they print or warn on the
worker as the builtins do, and log an event under the topic "print" or "warn"; the scheduler
subscribes every client to both when it connects (scheduler/coordination.py), and the client
prints or warns the same in its own process. Outside a task they are the builtins.

The event carries text only (msgpack, never pickle): the arguments as `str()`, a warning's
category by name, resolved on the client among classes already imported there."""

from __future__ import annotations

import builtins
import sys
import warnings
from typing import Any

TOPICS = ("print", "warn")


def _worker() -> Any:
    """The worker whose task calls this, if any (not merely a worker in this process)."""
    from .worker import _current_worker, _thread_state

    return getattr(_thread_state, "worker", None) or _current_worker.get()


def print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None,
          flush: bool = False) -> None:  # fmt: skip
    """`builtins.print`, and in a task also in every client of the cluster; `file` may be
    `sys.stdout` or `sys.stderr` (what the client prints to), nothing else."""
    worker = _worker()
    if worker is not None:
        if file not in (None, sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            raise TypeError(f"hpcdask.print in a task prints to sys.stdout or sys.stderr (the "
                            f"client's), not {file!r}")  # fmt: skip
        stream = 2 if file in (sys.stderr, sys.__stderr__) else 1
        msg = {"args": [str(a) for a in args], "sep": sep, "end": end, "file": stream,
               "flush": bool(flush)}  # fmt: skip
        worker.log_event("print", msg)
    builtins.print(*args, sep=sep, end=end, file=file, flush=flush)


def warn(message: Any, category: type[Warning] | None = UserWarning, stacklevel: int = 1,
         source: Any = None) -> None:  # fmt: skip
    """`warnings.warn`, and in a task also in every client of the cluster."""
    worker = _worker()
    if worker is not None:
        cls = type(message) if isinstance(message, Warning) else (category or UserWarning)
        worker.log_event("warn", {"message": str(message),
                                  "category": f"{cls.__module__}:{cls.__qualname__}"})  # fmt: skip
    warnings.warn(message, category=category, stacklevel=stacklevel + 1, source=source)


# ------------------------------------------------------------ the client's side


def _handle_print(event: tuple) -> None:
    _, msg = event
    if not isinstance(msg, dict) or "args" not in msg:  # logged by hand under "print"
        builtins.print(msg)
        return
    file = sys.stderr if msg.get("file") == 2 else sys.stdout
    builtins.print(*msg["args"], sep=msg.get("sep"), end=msg.get("end"), file=file,
                   flush=bool(msg.get("flush")))  # fmt: skip


def _category(name: Any) -> type[Warning]:
    """The warning class named `module:qualname`, if that module is already imported here
    (nothing is imported on a worker's say-so); UserWarning otherwise."""
    module, _, qualname = str(name).partition(":")
    obj: Any = sys.modules.get(module)
    for part in qualname.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and issubclass(obj, Warning) else UserWarning


def _handle_warn(event: tuple) -> None:
    _, msg = event
    if not isinstance(msg, dict) or "message" not in msg:
        warnings.warn(str(msg), stacklevel=2)
        return
    warnings.warn(msg["message"], category=_category(msg.get("category")), stacklevel=2)


def install_client_handlers(client: Any) -> None:
    """Print and warn what the cluster's tasks do (the scheduler sends every client their
    events); `client.unsubscribe_topic("print")` stops it. No round trip: called in
    `Client.__init__`."""
    handlers = client._topic_handlers()
    handlers.setdefault("print", _handle_print)
    handlers.setdefault("warn", _handle_warn)
