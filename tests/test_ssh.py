"""SSHCluster against real sshd servers started by ci/ssh_setup.sh: one on 127.0.0.1:2222 and
three "hosts" with their own addresses in network namespaces (10.77.0.11-13)."""

from __future__ import annotations

import os
import socket

import pytest

from hpcdask import Client, Security
from hpcdask.testing.polling import wait_for

asyncssh = pytest.importorskip("asyncssh")
from hpcdask.deploy.ssh import SSHCluster, SSHError  # noqa: E402

STATE = os.environ.get("SSH_STATE_DIR", "/tmp/hpcdask-sshd")
pytestmark = pytest.mark.ssh


def _hosts() -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {"loopback": [], "netns": []}
    try:
        with open(os.path.join(STATE, "hosts")) as f:
            for line in f:
                kind, addr, port = line.split()
                found[kind].append((addr, int(port)))
    except FileNotFoundError:
        pass
    return found


def _listening(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), timeout=2).close()
    except OSError:
        return False
    return True


def _need(kind: str, n: int = 1) -> list[tuple[str, int]]:
    hosts = [h for h in _hosts()[kind] if _listening(*h)]
    if len(hosts) < n:
        why = f"no {kind} sshd from ci/ssh_setup.sh is running (see {STATE})"
        if os.environ.get("CI"):
            pytest.fail(why + "; in CI it must be")  # a CI service that did not start fails CI
        pytest.skip(why)
    return hosts


def _env() -> dict:
    # the remote processes keep their secret files where this test run keeps its own (and,
    # these "hosts" sharing this file system, import the hpcdask under test)
    env = {"HPCDASK_SECRETS_DIR": os.environ["HPCDASK_SECRETS_DIR"],
           "HPCDASK_LOGGING_LEVEL": "WARNING"}  # fmt: skip
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


# Functions the remote workers can unpickle: builtins, or defined inside a test (pickled by
# value); this module itself is not importable on the "remote" hosts.
_pid = os.getpid


def _double(x):
    return 2 * x


_double.__module__ = "__main__"  # pickle by value


def test_loopback_cluster_runs_tasks_with_the_secret_kept_off_command_lines():
    (addr, port), *_ = _need("loopback")
    cluster = SSHCluster([addr, addr, addr], connect_options={"port": port},
                         worker_options={"nthreads": 1}, remote_env=_env())  # fmt: skip
    with cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=30)
        assert cluster.scheduler_address.startswith(f"tcp://{addr}:")
        pids = set(client.run(_pid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        assert client.submit(_double, 21).result() == 42
        secret = cluster.security.secret.hex()
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        assert secret.encode() not in f.read()
                except OSError:
                    pass
        logs = cluster.get_logs()
        assert "Scheduler" in logs and len(logs) == 3
        assert "workers=2" in repr(cluster) and cluster.name == "SSHCluster"
        cluster.scale(3)  # a third worker, on the worker host with the fewest
        client.wait_for_workers(3, timeout=30)
        pids |= set(client.run(_pid).values())
        cluster.scale(1)  # scale down retires the idlest
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=30)
    remaining = [p for p in pids if os.path.exists(f"/proc/{p}")]
    wait_for(lambda: not [p for p in remaining if os.path.exists(f"/proc/{p}")], timeout=20)


def test_tls_material_travels_over_the_ssh_channel():
    (addr, port), *_ = _need("loopback")
    security = Security.temporary()
    cluster = SSHCluster([addr, addr], connect_options={"port": port}, security=security,
                         scheduler_options={"protocol": "tls"}, remote_env=_env())  # fmt: skip
    with cluster, Client(cluster) as client:
        assert cluster.scheduler_address.startswith("tls://")
        assert client.submit(_double, 2).result() == 4
        assert all(a.startswith("tls://") for a in client.scheduler_info()["workers"])


def test_scheduler_and_workers_on_hosts_with_their_own_addresses():
    hosts = _need("netns", 3)
    (a, _), (b, _), (c, _) = hosts[:3]
    with SSHCluster([a, b, c], worker_options={"nthreads": 1}, remote_env=_env()) as cluster, \
            Client(cluster) as client:  # fmt: skip
        client.wait_for_workers(2, timeout=30)
        assert cluster.scheduler_address.startswith(f"tcp://{a}:")
        workers = sorted(client.scheduler_info()["workers"])
        assert [w.split("//")[1].split(":")[0] for w in workers] == [b, c]
        on_b = client.submit(_double, 5, workers=[workers[0]])
        on_c = client.submit(_double, on_b, workers=[workers[1]])  # C fetches from B
        assert on_c.result() == 20

        def where():
            from hpcdask import get_worker

            return get_worker().address

        assert client.submit(where, workers=[workers[1]], pure=False).result() == workers[1]


def test_unreachable_host_says_so():
    with pytest.raises(SSHError, match=r"could not reach 127.0.0.1:1 over SSH.*sshd runs there"):
        SSHCluster(["127.0.0.1", "127.0.0.1"], connect_options={"port": 1})


def test_refused_key_says_so(tmp_path):
    (addr, port), *_ = _need("loopback")
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(SSHError, match=r"refused the SSH login of root.*authorized_keys"):
        SSHCluster([addr, addr], connect_options={"port": port, "username": "root",
                                                  "client_keys": [key], "agent_path": None})  # fmt: skip


def test_missing_remote_python_says_so():
    (addr, port), *_ = _need("loopback")
    with pytest.raises(SSHError, match=r"remote_python '/nonexistent/python' was not found"):
        SSHCluster([addr, addr], connect_options={"port": port},
                   remote_python="/nonexistent/python")  # fmt: skip


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least two hosts"):
        SSHCluster(["only-one"])
    with pytest.raises(ValueError, match="connect_options has 1 entries for 2 hosts"):
        SSHCluster(["a", "b"], connect_options=[{}])
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['worker_opts'\]"):
        SSHCluster(["a", "b"], worker_opts={})


def test_hpcdask_ssh_command(tmp_path):
    import signal
    import subprocess
    import sys

    (addr, port), *_ = _need("loopback")
    sched_file = tmp_path / "sched.json"
    env_args = [a for k, v in _env().items() for a in ("--env", f"{k}={v}")]
    proc = subprocess.Popen([sys.executable, "-m", "hpcdask", "ssh", addr, addr, "--ssh-port",
                             str(port), "--scheduler-port", "0", "--scheduler-file",
                             str(sched_file), *env_args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: sched_file.exists() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, proc.stderr.read()
        assert oct(sched_file.stat().st_mode & 0o777) == "0o600"
        with Client(scheduler_file=str(sched_file)) as client:
            client.wait_for_workers(1, timeout=30)
            assert client.submit(_double, 4).result() == 8
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert "scheduler at tcp://" in proc.stdout.read()


def test_a_lost_ssh_connection_leaves_no_process_behind():
    (addr, port), *_ = _need("loopback")
    cluster = SSHCluster([addr, addr], connect_options={"port": port}, remote_env=_env())
    try:
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=30)
            pids = {*client.run(_pid).values(), client.run_on_scheduler(_pid)}
        for proc in [cluster.scheduler, *cluster.workers.values()]:
            cluster.loop.call_soon_threadsafe(proc._conn.abort)  # the network drops: no goodbye
        wait_for(lambda: not [p for p in pids if os.path.exists(f"/proc/{p}")], timeout=30)
    finally:
        cluster.close()
