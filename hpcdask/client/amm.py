"""`client.amm`: the scheduler's active memory manager, driven from the client.

hpcdask's AMM has one policy, dask.distributed's default one (ReduceReplicas: copies of a key
beyond what its waiting dependents need are dropped; core/amm.py). Unlike dask.distributed it
is off until started: replicas come only from `replicate()` or from tasks fetching inputs,
and dropping them periodically costs a walk over the scheduler's tasks. Other policies and
dask's `distributed.scheduler.active-memory-manager` config are not implemented."""

from __future__ import annotations

from typing import Any


class AMMClientProxy:
    """start/stop/running/run_once of the scheduler's active memory manager, as dask's."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def _call(self, action: str, **fields: Any) -> Any:
        return self._client._rpc("amm", action=action, **fields)

    def start(self, interval: float | None = None) -> Any:
        """Run the policy every `interval` seconds (2 by default) from now on."""
        if interval is not None and not (isinstance(interval, (int, float)) and interval > 0):
            raise ValueError(f"interval must be a number of seconds > 0, not {interval!r}")
        return self._call("start", interval=interval)

    def stop(self) -> Any:
        return self._call("stop")

    def running(self) -> Any:
        """Whether the periodic runs are on."""
        return self._call("running")

    def run_once(self) -> Any:
        """Drop surplus replicas now; returns how many copies were dropped."""
        return self._call("run_once")

    def __repr__(self) -> str:
        return f"<AMMClientProxy of {self._client!r}>"
