"""SpecCluster: a cluster described as data — which class runs the scheduler and each worker.

`workers={name: {"cls": Nanny, "options": {...}}}` is the desired state; `worker=` is the
template `scale(n)` copies for new workers. Starting and stopping always goes through
`_correct_state`, which makes the running workers match `worker_spec`: LocalCluster,
LocalCUDACluster and SSHCluster are SpecClusters that only build specs.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import math
from typing import Any

from ..scheduler import Scheduler
from ..security import Security
from .cluster import Cluster

_SPEC_KEYS = {"cls", "options"}


def resolve_class(cls: Any, where: str) -> type:
    """A class, or the class a dotted name (`"hpcdask.Nanny"`, `"pkg.mod:Cls"`) points to."""
    if isinstance(cls, type):
        return cls
    if not isinstance(cls, str) or not cls.strip():
        raise TypeError(f"{where}['cls'] must be a class or a dotted name, not {cls!r}")
    module, _, attr = cls.replace(":", ".").rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attr) if module else None
    except (ImportError, AttributeError) as e:
        raise ImportError(f"{where}['cls']: cannot import {cls!r}: {e}") from e
    if not isinstance(found, type):
        raise TypeError(f"{where}['cls']: {cls!r} is not a class")
    return found


def check_spec(spec: Any, where: str) -> dict:
    """Validate one `{"cls": ..., "options": {...}}` entry; errors name the entry and the key."""
    if not isinstance(spec, dict):
        raise TypeError(f"{where} must be a dict like {{'cls': Nanny, 'options': {{...}}}}, "
                        f"not {type(spec).__name__}")  # fmt: skip
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; a spec has 'cls' and "
                         "'options' (one worker per spec: groups are not supported)")  # fmt: skip
    if "cls" not in spec:
        raise ValueError(f"{where} needs a 'cls' (e.g. hpcdask.Nanny or 'hpcdask.Worker')")
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise TypeError(f"{where}['options'] must be a dict, not {type(options).__name__}")
    cls = resolve_class(spec["cls"], where)
    from ..worker import Worker

    if issubclass(cls, Worker) and options.get("env"):
        raise ValueError(f"{where}: 'env' needs a process of its own, and a Worker runs in this "
                         "process; use 'cls': Nanny (or SSH/batch workers) for per-worker env")  # fmt: skip
    return {"cls": cls, "options": dict(options)}


def _accepts(cls: type, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class SpecCluster(Cluster):
    """`SpecCluster(workers={...}, scheduler={...}, worker={...})`; see the module docstring."""

    def __init__(
        self,
        workers: dict | None = None,
        scheduler: dict | None = None,
        worker: dict | None = None,
        asynchronous: bool = False,
        security: Security | None = None,
        name: str | None = None,
        shutdown_on_close: bool = True,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword arguments {sorted(kwargs)}; "
                "it accepts workers, scheduler, worker, asynchronous, security, name, "
                "shutdown_on_close"
            )
        if scheduler is None:  # nothing said: listen on loopback, like a LocalCluster
            scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1"}}
        self.scheduler_spec = check_spec(scheduler, "scheduler")
        if not shutdown_on_close and issubclass(self.scheduler_spec["cls"], Scheduler):
            raise ValueError("shutdown_on_close=False needs a scheduler outside this process (an "
                             "SSH host, a batch job: scheduler_job=True); this one would stop "
                             "with the process anyway")  # fmt: skip
        opts = self.scheduler_spec["options"]
        super().__init__(asynchronous=asynchronous, security=security, scheduler_options=opts,
                         name=name or type(self).__name__,
                         shutdown_on_close=shutdown_on_close)  # fmt: skip
        if workers is not None and not isinstance(workers, dict):
            raise TypeError(f"workers must be a dict {{name: spec}}, not {type(workers).__name__}")
        self.worker_spec: dict[Any, dict] = {
            n: check_spec(s, f"workers[{n!r}]") for n, s in (workers or {}).items()
        }
        self.new_spec = check_spec(worker, "worker") if worker is not None else None
        self._counter = itertools.count()
        self._begin()

    # ------------------------------------------------------------ scheduler

    async def _start_scheduler(self) -> Any:
        cls, opts = self.scheduler_spec["cls"], self.scheduler_spec["options"]
        if issubclass(cls, Scheduler):
            return await super()._start_scheduler()
        if _accepts(cls, "security") and "security" not in opts:
            opts = {**opts, "security": self.security}
        scheduler = cls(**opts)
        await scheduler.start()
        return scheduler

    async def _post_start(self) -> None:
        await self._correct_state()

    # ------------------------------------------------------------ one path for workers

    def new_worker_spec(self) -> dict:
        """`{name: spec}` for one more worker, from the template."""
        if self.new_spec is None:
            raise ValueError(f"{self.name} has no worker template to scale up with: pass "
                             "worker={'cls': ..., 'options': {...}}")  # fmt: skip
        while (name := next(self._counter)) in self.worker_spec:
            pass
        return {name: {"cls": self.new_spec["cls"], "options": dict(self.new_spec["options"])}}

    def _threads_per_worker(self) -> int:
        spec = self.new_spec or next(iter(self.worker_spec.values()), None)
        return int((spec or {}).get("options", {}).get("nthreads") or 1)

    def _memory_per_worker(self) -> int:
        from ..utils.sizes import parse_bytes

        spec = self.new_spec or next(iter(self.worker_spec.values()), None)
        limit = (spec or {}).get("options", {}).get("memory_limit")
        if not limit or limit == "auto":
            return super()._memory_per_worker()
        return parse_bytes(limit)

    async def _start_workers(self, n: int) -> None:
        for _ in range(n):
            self.worker_spec.update(self.new_worker_spec())
        await self._correct_state()

    async def _stop_workers(self, names: list) -> None:
        for name in names:
            self.worker_spec.pop(name, None)
        await self._correct_state()

    def _make_worker(self, name: Any, spec: dict) -> Any:
        cls, opts = spec["cls"], dict(spec["options"])
        opts.setdefault("name", name)
        if "security" not in opts and _accepts(cls, "security"):
            opts["security"] = self.security
        return cls(self.scheduler_address, **opts)

    async def _correct_state(self) -> None:
        """Start the workers in `worker_spec` that do not run, stop those no longer in it."""
        gone = [n for n in self.workers if n not in self.worker_spec]
        stopping = [self.workers.pop(n) for n in gone]
        if stopping:
            await asyncio.gather(*(w.close() for w in stopping), return_exceptions=True)
        new = {n: self._make_worker(n, s) for n, s in self.worker_spec.items()
               if n not in self.workers}  # fmt: skip
        if not new:
            return
        results = await asyncio.gather(*(w.start() for w in new.values()), return_exceptions=True)
        errors = []
        for (name, w), r in zip(new.items(), results):
            if isinstance(r, BaseException):
                errors.append((name, r))
                self.worker_spec.pop(name, None)  # not retried forever by the next correction
            else:
                self.workers[name] = w
        if errors:
            name, first = errors[0]
            raise RuntimeError(
                f"{len(errors)} of {len(new)} workers failed to start; worker {name!r}: {first}"
            ) from first

    @property
    def plan(self) -> set:
        return set(self.worker_spec)

    @property
    def requested(self) -> set:
        return {n for n in self.workers if n in self.worker_spec}

    # ------------------------------------------------------------ scaling

    def scale(self, n: int | None = None, memory: Any = None, cores: int | None = None,
              **kwargs: Any) -> Any:  # fmt: skip
        """`scale(n)` workers, or enough for `cores=` or `memory=` with the template's sizes."""
        if kwargs:
            raise TypeError(f"scale() got unexpected keyword arguments {sorted(kwargs)}")
        if cores is not None:
            n = math.ceil(cores / self._threads_per_worker())
        elif memory is not None:
            from ..utils.sizes import parse_bytes

            limit = (self.new_spec or {}).get("options", {}).get("memory_limit")
            if not limit or limit == "auto":
                raise ValueError("scale(memory=) needs a worker template with a memory_limit")
            n = math.ceil(parse_bytes(memory) / parse_bytes(limit))
        return super().scale(n)
