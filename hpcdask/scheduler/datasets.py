"""Published datasets: named objects any client of the cluster can fetch.

The scheduler keeps each one still pickled (it never unpickles client data) with the keys of
the futures inside it. Those keys are held by a pseudo-client per dataset, so their data stays
on the workers until the dataset is unpublished, whoever published it and whenever they leave.
"""

from __future__ import annotations

from typing import Any

from ..comm import Comm
from ..core import scheduler_events as ev

PREFIX = "published-dataset:"


def holder(name: str) -> str:
    """The pseudo-client that keeps a dataset's keys alive."""
    return PREFIX + name


def install(scheduler: Any) -> None:
    """Add the dataset requests to a Scheduler's handlers."""
    datasets: dict[str, dict] = {}
    scheduler.datasets = datasets

    async def publish(comm: Comm, msg: dict) -> dict:
        name = msg["name"]
        if name in datasets and not msg.get("override"):
            return {"status": "error", "text": f"a dataset named {name!r} is already published; "
                    "unpublish it first or pass override=True"}  # fmt: skip
        if name in datasets:
            scheduler.apply(ev.RemoveClient(holder(name)))
        datasets[name] = {"data": msg["data"], "keys": list(msg.get("keys") or ())}
        scheduler.apply(
            ev.AddClient(holder(name)), ev.WantKeys(holder(name), msg.get("keys") or [])
        )
        return {"status": "OK"}

    async def get(comm: Comm, msg: dict) -> dict:
        entry = datasets.get(msg["name"])
        if entry is None:
            return {"status": "missing"}
        return {"status": "OK", "data": entry["data"], "keys": entry["keys"]}

    async def names(comm: Comm, msg: dict) -> list:
        return sorted(datasets)

    async def unpublish(comm: Comm, msg: dict) -> dict:
        name = msg["name"]
        if datasets.pop(name, None) is None:
            return {"status": "missing"}
        scheduler.apply(ev.RemoveClient(holder(name)))
        return {"status": "OK"}

    scheduler.handlers.update({
        "publish-dataset": publish,
        "get-dataset": get,
        "list-datasets": names,
        "unpublish-dataset": unpublish,
    })  # fmt: skip
