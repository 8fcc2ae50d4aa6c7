"""SpecCluster: specs of real worker processes, per-worker env, scale, adapt, logs, reprs."""

from __future__ import annotations

import os

import pytest

from hpcdask import Client, LocalCluster, Nanny, SpecCluster, Worker
from hpcdask.testing.polling import wait_for


def env_of(name):
    return os.environ.get(name)


def slow(x):
    import time

    time.sleep(0.2)
    return x


def test_per_worker_env_is_seen_inside_tasks():
    workers = {
        f"gpu-{i}": {"cls": Nanny, "options": {"nthreads": 1, "env": {"MY_DEVICE": str(i)},
                                                "host": "127.0.0.1"}}
        for i in range(2)
    }  # fmt: skip
    with SpecCluster(workers=workers) as cluster, Client(cluster) as client:
        assert set(cluster.workers) == {"gpu-0", "gpu-1"}
        client.wait_for_workers(2, timeout=30)
        seen = {}
        for name, w in cluster.workers.items():
            seen[name] = client.submit(env_of, "MY_DEVICE", workers=[w.address], pure=False)
        assert {n: f.result() for n, f in seen.items()} == {"gpu-0": "0", "gpu-1": "1"}
        info = client.scheduler_info()["workers"]
        assert sorted(w["name"] for w in info.values()) == ["gpu-0", "gpu-1"]
        assert "SpecCluster(" in repr(cluster) and "workers=2" in repr(cluster)
        assert "<table>" in cluster._repr_html_()


def test_template_scale_up_down_and_dotted_class_names():
    template = {"cls": "hpcdask.Worker", "options": {"nthreads": 2}}
    with SpecCluster(worker=template, scheduler={"cls": "hpcdask.Scheduler",
                                                  "options": {"protocol": "inproc"}}) as cluster:  # fmt: skip
        assert cluster.workers == {}
        cluster.scale(3)
        assert len(cluster.workers) == 3 and all(
            isinstance(w, Worker) for w in cluster.workers.values()
        )
        wait_for(lambda: len(cluster.scheduler.state.workers) == 3)
        cluster.scale(cores=2)  # 2 threads per worker: one worker
        wait_for(lambda: len(cluster.scheduler.state.workers) == 1)
        assert len(cluster.worker_spec) == 1
        logs = cluster.get_logs()
        assert "Scheduler" in logs and len(logs) == 2


def test_bad_specs_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"workers\['a'\] has unknown keys \['opts'\]"):
        SpecCluster(workers={"a": {"cls": Worker, "opts": {}}}, asynchronous=True)
    with pytest.raises(ImportError, match=r"worker\['cls'\]: cannot import 'hpcdask.Nope'"):
        SpecCluster(worker={"cls": "hpcdask.Nope"}, asynchronous=True)
    with pytest.raises(ValueError, match="'env' needs a process of its own"):
        SpecCluster(workers={0: {"cls": Worker, "options": {"env": {"A": "1"}}}})
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['wokers'\]"):
        SpecCluster(wokers={})
    with pytest.raises(ValueError, match="needs a scheduler outside this process"):
        SpecCluster(shutdown_on_close=False)
    with SpecCluster(scheduler={"cls": "hpcdask.Scheduler", "options": {"protocol": "inproc"}},
                     workers={0: {"cls": Worker, "options": {}}}) as cluster:  # fmt: skip
        with pytest.raises(ValueError, match="no worker template"):
            cluster.scale(2)
        with pytest.raises(TypeError, match=r"unexpected keyword arguments \['job'\]"):
            cluster.scale(job=2)


def test_failed_worker_start_names_the_worker():
    bad = {"cls": Nanny, "options": {"host": "127.0.0.1", "local_directory": "/proc/nope/x"}}
    with pytest.raises(RuntimeError, match="worker 'bad'"):
        SpecCluster(workers={"bad": bad})


def test_local_cluster_is_a_spec_cluster():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        assert isinstance(cluster, SpecCluster)
        assert list(cluster.worker_spec) == [0]
        assert cluster.new_spec["cls"] is Worker
        cluster.scale(2)
        assert list(cluster.worker_spec) == [0, 1]


def test_adapt_grows_and_shrinks_a_local_cluster():
    with LocalCluster(n_workers=0, threads_per_worker=1, processes=False) as cluster, \
            Client(cluster) as client:  # fmt: skip
        adaptive = cluster.adapt(minimum=0, maximum=3, interval=0.05, wait_count=2,
                                 target_duration=0.1)  # fmt: skip
        futures = client.map(slow, range(30))
        wait_for(lambda: len(cluster.workers) == 3, timeout=30)
        assert sum(client.gather(futures)) == sum(range(30))
        del futures
        wait_for(lambda: len(cluster.workers) == 0, timeout=30)
        assert adaptive.maximum == 3


# No GPU on this machine: a stand-in `nvidia-smi` reports three devices. What is tested for
# real is the counting (without CUDA libraries in this process), one worker process per
# device with its rotated CUDA_VISIBLE_DEVICES and GPU resource, and the protocol choice.
FAKE_SMI = """#!/bin/sh
case "$*" in *--query-gpu=index*) printf '0\\n1\\n2\\n' ;; *) exit 9 ;; esac
"""


def _fake_gpus(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_one_worker_per_gpu_with_rotated_devices(tmp_path, monkeypatch):
    import sys

    from hpcdask.deploy.gpu import LocalCUDACluster, visible_gpus

    _fake_gpus(tmp_path, monkeypatch)
    cuda = {"cupy", "numba", "rmm", "pynvml"}
    loaded_before = cuda & set(sys.modules)  # another test may have imported dask.distributed
    assert visible_gpus() == ["0", "1", "2"]
    with LocalCUDACluster(protocol="tcp", memory_limit="1GB") as cluster, \
            Client(cluster) as client:  # fmt: skip
        client.wait_for_workers(3, timeout=30)
        seen = {
            name: client.submit(env_of, "CUDA_VISIBLE_DEVICES", workers=[w.address],
                                pure=False).result()
            for name, w in cluster.workers.items()
        }  # fmt: skip
        assert seen == {"gpu-0": "0,1,2", "gpu-1": "1,2,0", "gpu-2": "2,0,1"}
        info = client.scheduler_info()["workers"].values()
        assert all(w["resources"] == {"GPU": 1} for w in info)
        assert client.submit(env_of, "HOME", resources={"GPU": 1}).result() is not None
    assert not (cuda & set(sys.modules)) - loaded_before  # counting GPUs loaded nothing CUDA


def test_gpu_selection_and_protocol(tmp_path, monkeypatch):
    import importlib.util

    from hpcdask.deploy.gpu import LocalCUDACluster, default_protocol, rotated

    assert rotated(["a", "b", "c"], 1) == "b,c,a"
    expected = "ucx" if importlib.util.find_spec("ucxx") else "tcp"
    assert default_protocol() == expected
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    cluster = LocalCUDACluster(asynchronous=True)  # not started: only the specs are checked
    assert cluster.scheduler_spec["options"]["protocol"] == expected
    assert {n: s["options"]["env"]["CUDA_VISIBLE_DEVICES"]
            for n, s in cluster.worker_spec.items()} == {"gpu-3": "3,5", "gpu-5": "5,3"}  # fmt: skip
    with pytest.raises(ValueError, match="n_workers=3 but 2 GPUs are visible"):
        LocalCUDACluster(n_workers=3, asynchronous=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match="found no GPU"):
        LocalCUDACluster(asynchronous=True)
