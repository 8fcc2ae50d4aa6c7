"""dask.distributed's constructor options: implemented, accepted at their default, or a
NotImplementedError naming them; anything else a TypeError. Nothing is silently ignored."""

from __future__ import annotations

import pytest

from hpcdask import Client, LocalCluster, Nanny, Scheduler, Security, Worker
from hpcdask.utils.options import LOCAL_CLUSTER, NANNY, SCHEDULER, WORKER, check_options

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("cls", "option", "value"), [
    (Scheduler, "idle_timeout", 60), (Scheduler, "validate", True), (Scheduler, "preload", ["x"]),
    (Worker, "silence_logs", 30), (Worker, "heartbeat_interval", "1s"), (Worker, "data", {}),
    (Worker, "dashboard", True), (Nanny, "quiet", True), (Nanny, "worker_class", "x"),
])  # fmt: skip
def test_unimplemented_option_names_itself_and_what_to_use(cls, option, value):
    if option == "data":
        value = {"a": 1}  # a non-empty mapping asks for a store
    with pytest.raises(NotImplementedError, match=f"{cls.__name__}\\({option}=\\).*\\(.+\\)"):
        cls(**{option: value})


def test_option_at_its_default_asks_for_nothing():
    # code written for dask.distributed that spells out defaults runs unchanged
    sec = Security(secret=b"x" * 32)
    Worker("tcp://127.0.0.1:1", security=sec, validate=False, dashboard=False, services=None,
           reconnect=True)  # fmt: skip
    with pytest.raises(NotImplementedError, match="reconnect="):
        Worker("tcp://127.0.0.1:1", security=sec, reconnect=False)


def test_misspelt_option_is_a_type_error():
    with pytest.raises(
        TypeError, match=r"Scheduler\(\) got unexpected keyword arguments \['prot'\]"
    ):
        Scheduler(prot="tcp")
    with pytest.raises(TypeError, match=r"\['nthread'\]"):
        Worker(nthread=1)
    with pytest.raises(
        TypeError, match=r"LocalCluster\(\) got unexpected keyword arguments \['n_worker'\]"
    ):
        LocalCluster(n_worker=1)


def test_tables_share_no_name_with_the_signatures():
    """An option in a table and in the signature would be both refused and implemented."""
    import inspect

    for cls, table in ((Scheduler, SCHEDULER), (Worker, WORKER)):
        assert not set(table) & set(inspect.signature(cls).parameters)
    assert not set(NANNY) & Nanny.WORKER_OPTIONS
    assert not set(LOCAL_CLUSTER) & set(inspect.signature(LocalCluster).parameters)
    with pytest.raises(NotImplementedError, match="start="):
        check_options("LocalCluster", {"start": False}, LOCAL_CLUSTER)


async def test_scheduler_takes_allowed_failures_and_dashboard():
    async with Scheduler(host="127.0.0.1", port=0, allowed_failures=7, dashboard=False,
                         dashboard_address="127.0.0.1:0") as s:  # fmt: skip
        assert s.state.killed_worker_limit == 8  # dask fails it after allowed_failures + 1
        assert s.dashboard is None


def test_local_cluster_takes_ip_scheduler_kwargs_and_worker_options(tmp_path):
    with LocalCluster(n_workers=1, processes=True, threads_per_worker=1, ip="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs={"allowed_failures": 5},
                      local_directory=str(tmp_path), death_timeout=30, lifetime=None,
                      services={}, loop=None, start=True) as cluster, Client(cluster) as client:  # fmt: skip
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert cluster.scheduler.state.killed_worker_limit == 6
        [info] = client.scheduler_info()["workers"].values()
        assert info["local_directory"].startswith(str(tmp_path))
    with pytest.raises(NotImplementedError, match=r"LocalCluster\(worker_dashboard_address=\)"):
        LocalCluster(n_workers=0, worker_dashboard_address=":0")
    with pytest.raises(NotImplementedError, match=r"processes=True"):
        LocalCluster(n_workers=0, processes=False, preload=["mod"])
