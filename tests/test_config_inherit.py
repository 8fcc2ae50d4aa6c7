"""Configuration that crosses from dask and from a nanny's process: dask.distributed's
`distributed.worker.memory.*` / `distributed.scheduler.worker-ttl` keys as a layer, and a
parent's `config.set()` / `dask.config.set()` reaching the worker processes it starts."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from hpcdask import config
from hpcdask.config import ConfigError
from hpcdask.jobqueue._testing import clean_config_fixture  # noqa: F401 - the "home" fixture

dask_config = pytest.importorskip("dask.config")

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("home")]


def test_dask_distributed_memory_keys_are_read():
    with dask_config.set({"distributed.worker.memory.target": 0.4,
                          "distributed.worker.memory.spill": False,
                          "distributed.worker.memory.monitor-interval": "50ms",
                          "distributed.scheduler.worker-ttl": "2 minutes"}):  # fmt: skip
        assert config.get("worker.memory.target") == 0.4
        assert config.get("worker.memory.spill") == 0  # dask's "off"
        assert config.get("worker.memory.monitor-interval") == 0.05
        assert config.get("scheduler.worker-ttl") == 120
        assert config.get("worker.memory")["target"] == 0.4
        assert "dask config distributed.*" in [where for where, _ in config.sources()]
    assert config.get("worker.memory.target") == 0.6  # back with dask's
    assert config.get("scheduler.worker-ttl") == 300
    with dask_config.set({"distributed.scheduler.worker-ttl": None}):
        assert config.get("scheduler.worker-ttl") == 0  # dask's None: never
    with dask_config.set({"distributed.scheduler.allowed-failures": 5}):
        assert config.get("scheduler.killed-worker-limit") == 6  # dask fails it at the 6th death


def test_dask_layer_sits_below_our_files_and_environment(home, monkeypatch):
    d = home / ".config" / "hpcdask"
    d.mkdir(parents=True)
    (d / "hpcdask.yaml").write_text("worker: {memory: {pause: 0.85}}\n")
    monkeypatch.setenv("HPCDASK_WORKER__MEMORY__TERMINATE", "0.9")
    config.refresh()
    with dask_config.set({"distributed.worker.memory.pause": 0.7,
                          "distributed.worker.memory.terminate": 0.99,
                          "distributed.worker.memory.target": 0.5}):  # fmt: skip
        assert config.get("worker.memory.pause") == 0.85  # user file over dask
        assert config.get("worker.memory.terminate") == 0.9  # HPCDASK_* over dask
        assert config.get("worker.memory.target") == 0.5  # dask over our defaults
        with config.set({"worker.memory.target": 0.45}):
            assert config.get("worker.memory.target") == 0.45


def test_dask_files_and_variables_count(home, monkeypatch):
    d = home / ".config" / "dask"
    d.mkdir(parents=True)
    (d / "distributed.yaml").write_text("distributed: {worker: {memory: {target: 0.55}}}\n")
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE", "0.75")
    config.refresh()
    assert config.get("worker.memory.target") == 0.55
    assert config.get("worker.memory.pause") == 0.75


def test_dask_is_imported_only_when_its_files_could_set_distributed(home):
    """`import hpcdask` and a `get` leave dask unloaded (it changes how exceptions pickle)
    unless dask's files or variables could set `distributed.*`."""
    code = ("import sys; from hpcdask import config; "
            "print(config.get('worker.memory.target'), 'dask.config' in sys.modules)")  # fmt: skip
    env = {"HOME": str(home), "DASK_CONFIG": str(home / "none")}
    d = home / ".config" / "dask"
    d.mkdir(parents=True)
    (d / "jobqueue.yaml").write_text(
        "jobqueue: {slurm: {worker-command: distributed.cli.dask_worker}}\n"
    )
    assert _child(env, code).stdout.split() == ["0.6", "False"]
    (d / "distributed.yaml").write_text("distributed:\n  worker:\n    memory: {target: 0.5}\n")
    out = _child(env, code)
    assert out.stdout.split() == ["0.5", "True"], out.stderr


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [("distributed.worker.memory.target", "lots", "fraction of memory_limit"),
     ("distributed.worker.memory.pause", 1.5, "between 0 and 1"),
     ("distributed.scheduler.worker-ttl", "soon", "must be a duration"),
     ("distributed.scheduler.allowed-failures", -1, "number of worker deaths")],
)  # fmt: skip
def test_bad_dask_values_name_the_dask_key(key, value, says):
    with dask_config.set({key: value}), pytest.raises(ConfigError, match=f"{key}: .*{says}"):
        config.get("worker.memory.target")


def _payload(env: dict) -> dict:
    return json.loads(base64.b64decode(env["HPCDASK_INTERNAL_INHERIT_CONFIG"]))


def test_inherited_env_carries_config_set_and_dask():
    assert _payload(config.inherited_env()) == {"dask": None}
    with config.set({"worker.memory.target": 0.33, "comm.timeouts.connect": 7}), \
            dask_config.set({"distributed.worker.memory.pause": 0.77,
                             "array.chunk-size": "7MiB",
                             "test-objects": {"a": object(), "b": [1, object()]}}):  # fmt: skip
        env = config.inherited_env()
    payload = _payload(env)
    assert payload["set"] == {"worker": {"memory": {"target": 0.33}},
                              "comm": {"timeouts": {"connect": 7}}}  # fmt: skip
    assert payload["dask"] == {"worker.memory.pause": 0.77}
    theirs = dask_config.deserialize(env["DASK_INTERNAL_INHERIT_CONFIG"])
    assert theirs["array"]["chunk-size"] == "7MiB"  # only what differs from dask's defaults
    assert "scheduler" not in theirs.get("distributed", {})
    assert theirs["test-objects"] == {}  # objects of this process are not passed on


def test_a_bad_config_set_value_fails_in_the_parent_naming_the_key():
    with config.set({"worker.memory.target": "most"}), \
            pytest.raises(ConfigError, match="config.set\\(\\): 'worker.memory.target' must be"):  # fmt: skip
        config.inherited_env()
    with config.set({"worker.memory.targte": 0.5}), \
            pytest.raises(ConfigError, match="'worker.memory.targte'.*did you mean 'target'"):  # fmt: skip
        config.inherited_env()


def _child(env: dict, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_the_child_takes_and_checks_what_it_inherits():
    with config.set({"worker.memory.target": 0.33}), \
            dask_config.set({"distributed.worker.memory.pause": 0.77}):  # fmt: skip
        env = config.inherited_env()
    code = ("import sys; from hpcdask import config; "
            "print(config.get('worker.memory.target'), config.get('worker.memory.pause'), "
            "'dask.config' in sys.modules)")  # fmt: skip
    out = _child(env, code)
    assert out.stdout.split() == ["0.33", "0.77", "False"], out.stderr  # dask not imported
    bad = base64.b64encode(json.dumps({"set": {"worker": {"memory": {"target": "x"}}}}).encode())
    out = _child({"HPCDASK_INTERNAL_INHERIT_CONFIG": bad.decode()}, code)
    assert out.returncode != 0
    assert (
        "HPCDASK_INTERNAL_INHERIT_CONFIG" in out.stderr and "'worker.memory.target'" in out.stderr
    )


@pytest.mark.timeout(90)
def test_config_set_in_the_parent_reaches_nanny_started_workers():
    """As dask.distributed's nanny passes dask's configuration to its worker processes."""
    from hpcdask import Client, LocalCluster

    def seen(dask_worker):
        import dask.config as dc

        from hpcdask import config as c

        return (c.get("worker.memory.target"), c.get("worker.memory.pause"),
                dask_worker.state.pause_fraction, dc.get("array.chunk-size"))  # fmt: skip

    with config.set({"worker.memory.target": 0.33}), \
            dask_config.set({"distributed.worker.memory.pause": 0.77, "array.chunk-size": "7MiB"}), \
            LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="1GiB", host="127.0.0.1",
                         dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        (values,) = client.run(seen).values()
    assert values == (0.33, 0.77, 0.77, "7MiB")
