"""The dashboard over real HTTP: access control, JSON routes, /metrics, links, diagnostics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from hpcdask import Client, LocalCluster, config, get_task_stream, performance_report
from hpcdask.dashboard import dashboard_token, format_dashboard_link, parse_dashboard_address
from hpcdask.diagnostics.collector import key_prefix
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(120)


def slowinc(x, delay=0.005):
    time.sleep(delay)
    return x + 1


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address="127.0.0.1:0") as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster) as c:
        c.gather(c.map(slowinc, range(100)))
        yield c


def _get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def _base(cluster):
    return cluster.dashboard_link.split("/status")[0]


def _token(cluster):
    return cluster.dashboard_link.split("token=")[1]


# ------------------------------------------------------------------ access


def test_health_is_open_everything_else_needs_the_token(cluster, client):
    base = _base(cluster)
    assert _get(base + "/health")[:2] == (200, b"ok\n")
    for path in ("/status", "/workers", "/api/status.json", "/api/logs.json", "/metrics",
                 "/static/dashboard.js", "/", "/nonexistent"):  # fmt: skip
        status, body, _ = _get(base + path)
        assert status == 403, path
        assert b"tcp://" not in body and b"slowinc" not in body
    status, _, _ = _get(base + "/api/status.json?token=" + "0" * 32)
    assert status == 403
    port = cluster.scheduler.dashboard.port
    status, _, _ = _get(base + "/api/status.json", {"Cookie": f"hpcdask-dashboard-{port}=x"})
    assert status == 403


def test_token_in_link_sets_cookie_and_cookie_or_bearer_opens(cluster, client):
    base, token = _base(cluster), _token(cluster)
    assert token == dashboard_token(cluster.security.secret)
    assert token.encode() not in cluster.security.secret  # the token is not the secret
    status, body, headers = _get(cluster.dashboard_link)
    assert status == 200 and b"dashboard.js" in body
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    status, body, _ = _get(base + "/api/workers.json", {"Cookie": cookie})
    assert status == 200 and len(json.loads(body)["workers"]) == 2
    status, _, _ = _get(base + "/api/workers.json", {"Authorization": f"Bearer {token}"})
    assert status == 200
    status, _, headers = _get(base + "/status", {"Cookie": cookie})
    assert "script-src 'self'" in headers["Content-Security-Policy"]


def test_post_is_refused(cluster):
    req = urllib.request.Request(cluster.dashboard_link, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405


# ------------------------------------------------------------------ data


def test_status_json_has_workers_progress_and_task_stream(cluster, client):
    base, token = _base(cluster), _token(cluster)
    futures = client.map(slowinc, range(100, 140))
    client.gather(futures)

    def status():
        return json.loads(_get(f"{base}/api/status.json?since=-1&token={token}")[1])

    def ready():
        d = status()
        done = [p["memory"] for p in d["progress"] if p["prefix"] == "slowinc"]
        return any(r[1] == "slowinc" for r in d["records"]) and done == [40]

    wait_for(ready, timeout=20)
    d = status()
    assert {w["address"] for w in d["workers"]} == set(cluster.scheduler.worker_info)
    rec = next(r for r in d["records"] if r[1] == "slowinc")
    key, prefix, worker, lane, start, stop, ok = rec
    assert worker in cluster.scheduler.worker_info and lane in (0, 1) and stop >= start and ok
    (p,) = [p for p in d["progress"] if p["prefix"] == "slowinc"]
    assert p["memory"] == 40 and p["erred"] == 0 and p["waiting"] == 0
    again = json.loads(_get(f"{base}/api/status.json?since={d['cursor']}&token={token}")[1])
    assert all(r[0] != key for r in again["records"])  # the cursor returns only new runs


def test_large_drains_arrive_as_frames_and_still_parse(cluster, client):
    base, token = _base(cluster), _token(cluster)
    cursor = json.loads(_get(f"{base}/api/status.json?since=-1&token={token}")[1])["cursor"]
    futures = client.map(abs, range(-5000, 0))  # about 340 kB of records per drain: a frame
    client.gather(futures)

    def new_runs():
        d = json.loads(_get(f"{base}/api/status.json?since={cursor}&token={token}")[1])
        return [r for r in d["records"] if r[1] == "abs"]

    wait_for(lambda: len(new_runs()) >= 400, timeout=20)  # a sample of at most 750
    assert len(new_runs()) <= 750
    stream = client.get_task_stream(start="60s")
    assert sum(r["prefix"] == "abs" for r in stream) == 5000


def test_logs_and_jobs_routes(cluster, client):
    base, token = _base(cluster), _token(cluster)
    d = json.loads(_get(f"{base}/api/logs.json?token={token}")[1])
    assert any("Scheduler at" in line for line in d["scheduler"])
    worker = next(iter(cluster.scheduler.worker_info))
    d = json.loads(_get(f"{base}/api/logs.json?worker={worker}&token={token}")[1])
    assert isinstance(d["workers"][worker], list)
    assert json.loads(_get(f"{base}/api/jobs.json?token={token}")[1])["jobs"] is None


def test_metrics_parse_and_match_the_scheduler(cluster, client):
    from prometheus_client.parser import text_string_to_metric_families

    base, token = _base(cluster), _token(cluster)
    state = cluster.scheduler.state
    futures = client.map(slowinc, range(300, 320))
    client.gather(futures)

    def scrape():
        status, body, headers = _get(f"{base}/metrics", {"Authorization": f"Bearer {token}"})
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    def matches():
        fams = scrape()
        tasks = {s.labels["state"]: s.value for s in fams["hpcdask_scheduler_tasks"].samples}
        real = {}
        for ts in state.tasks.values():
            real[ts.state] = real.get(ts.state, 0) + 1
        return real.get("memory", 0) >= 20 and all(tasks[k] == real.get(k, 0) for k in tasks)

    wait_for(matches, timeout=10)
    fams = scrape()
    assert fams["hpcdask_scheduler_workers"].samples[0].value == 2
    assert fams["hpcdask_scheduler_threads"].samples[0].value == 4
    per = fams["hpcdask_worker_memory_managed_bytes"].samples
    assert {s.labels["worker"] for s in per} == set(cluster.scheduler.worker_info)
    spilled = fams["hpcdask_worker_memory_spilled_bytes"].samples
    assert {s.labels["worker"] for s in spilled} == set(cluster.scheduler.worker_info)
    assert "hpcdask_worker_transfer_incoming_bytes" in fams
    assert "hpcdask_scheduler_event_loop_lag_seconds" in fams
    prefix = {(s.labels["prefix"], s.labels["state"]): s.value
              for s in fams["hpcdask_scheduler_prefix_tasks"].samples}  # fmt: skip
    assert prefix.get(("slowinc", "memory"), 0) == sum(
        ts.state == "memory" and ts.key.startswith("slowinc") for ts in state.tasks.values()
    )


# ------------------------------------------------------------------ addresses and links


def test_parse_dashboard_address():
    assert parse_dashboard_address(":8787", "10.0.0.1") == ("10.0.0.1", 8787)
    assert parse_dashboard_address("0.0.0.0:0", "10.0.0.1") == ("0.0.0.0", 0)
    assert parse_dashboard_address(8788, None) == ("", 8788)
    assert parse_dashboard_address("[::1]:9000", None) == ("::1", 9000)
    assert parse_dashboard_address(None, "h") is None
    assert parse_dashboard_address(False, "h") is None
    with pytest.raises(ValueError, match="not a number"):
        parse_dashboard_address(":eighty", None)
    with pytest.raises(TypeError, match="dashboard_address"):
        parse_dashboard_address(["8787"], None)


def test_link_template_with_proxy_prefix_and_token(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    secret = b"s" * 32
    with config.set(
        {"dashboard.link": "https://hub.example{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"}
    ):
        link = format_dashboard_link("node1", 8787, secret)
    assert link == f"https://hub.example/user/ada/proxy/8787/status?token={dashboard_token(secret)}"
    with config.set({"dashboard.link": "http://{host}:{port}/status?t={token}"}):
        assert format_dashboard_link("n", 1, secret).endswith(f"?t={dashboard_token(secret)}")
    with config.set({"dashboard.link": "{nonsense}/status"}):
        with pytest.raises(ValueError, match="dashboard.link"):
            format_dashboard_link("n", 1, secret)


def test_reprs_show_the_dashboard_without_the_token(cluster, client):
    token = _token(cluster)
    assert "dashboard='http://127.0.0.1:" in repr(cluster) and token not in repr(cluster)
    assert cluster.dashboard_link in cluster._repr_html_().replace("&amp;", "&")
    assert client.dashboard_link == cluster.dashboard_link
    assert "Dashboard" in client._repr_html_()
    log = "\n".join(cluster.scheduler.logs.lines())
    assert re.search(r"Dashboard at http://127\.0\.0\.1:\d+/status", log) and token not in log


def test_remote_client_builds_the_link_from_identity(cluster, client):
    with Client(cluster.scheduler_address, security=cluster.security, set_as_default=False) as c:
        assert c.dashboard_link == cluster.dashboard_link


async def test_taken_port_falls_back_and_none_turns_it_off(caplog):
    from hpcdask import Scheduler

    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0") as a:
        port = a.dashboard.port
        async with Scheduler(host="127.0.0.1", dashboard_address=f"127.0.0.1:{port}") as b:
            assert b.dashboard.port not in (0, port)
            assert f"Dashboard port {port} is not available" in caplog.text
    async with Scheduler(host="127.0.0.1", dashboard_address=None) as s:
        assert s.dashboard is None and s.dashboard_link is None
        assert s.identity()["services"] == {}
    with pytest.raises(ValueError, match="dashboard_address"):
        Scheduler(dashboard_address="host:port")


# ------------------------------------------------------------------ diagnostics in Python


def test_key_prefix():
    assert key_prefix("slowinc-" + "ab12" * 8) == "slowinc"
    assert key_prefix("('sum-aggregate-" + "0f" * 16 + "', 3)") == "sum-aggregate"
    assert key_prefix("x-1") == "x"


def test_get_task_stream_records_runs_and_transfers(client):
    with get_task_stream(client) as ts:
        a = client.submit(slowinc, 1, workers=[list(client.cluster.scheduler.worker_info)[0]])
        b = client.submit(slowinc, a, workers=[list(client.cluster.scheduler.worker_info)[1]])
        assert b.result() == 3
    runs = [r for r in ts.data if r["prefix"] == "slowinc"]
    assert {r["key"] for r in runs} == {a.key, b.key}
    for r in runs:
        assert r["status"] == "OK" and r["stop"] >= r["start"] and r["thread"] in (0, 1)
        assert r["startstops"][0]["action"] == "compute"
    (x,) = [r for r in ts.data if r["prefix"] == "transfer"]
    assert x["nkeys"] == 1 and x["nbytes"] > 0 and x["source"] != x["worker"]
    recent = client.get_task_stream(start="60s")
    assert {a.key, b.key} <= {r["key"] for r in recent}
    with pytest.raises(ValueError, match="plot"):
        get_task_stream(client, plot=True)


def test_performance_report_is_self_contained(client, tmp_path):
    path = tmp_path / "report.html"
    with performance_report(filename=str(path)):
        client.gather(client.map(slowinc, range(200, 260)))
    text = path.read_text()
    assert "slowinc" in text and "<canvas" in text and "report-data" in text
    assert not re.search(r"(?:src|href)\s*=\s*['\"]?(?:https?:)?//", text)
    assert not re.search(r"https?://", text)  # no external URL at all
    data = json.loads(re.search(r'id="report-data" type="application/json">(.*?)</script>',
                                text, re.S).group(1))  # fmt: skip
    assert sum(r["prefix"] == "slowinc" for r in data["task_stream"]) == 60
    with pytest.raises(ValueError, match="storage_options"):
        performance_report(storage_options={"anon": True})


def test_worker_and_scheduler_logs(client):
    logs = client.get_worker_logs()
    assert set(logs) == set(client.cluster.scheduler.worker_info)
    assert any("Scheduler at" in line for line in client.get_scheduler_logs())


PROGRESS_SCRIPT = """
import time
from hpcdask import Client, LocalCluster, progress

def slow(x):
    time.sleep(0.02)
    return x

if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        futures = client.map(slow, range(40))
        progress(futures)
        assert all(f.done() for f in futures)
        print("RETURNED")
"""


def test_progress_prints_a_bar_that_reaches_100_percent(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PROGRESS_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=90, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    frames = out.stdout.split("\r")
    assert "100% Completed" in frames[-1] and "[" + "#" * 40 + "]" in frames[-1]
    assert out.stdout.rstrip().endswith("RETURNED")


def test_progress_rejects_what_it_cannot_watch():
    from hpcdask import progress

    with pytest.raises(TypeError, match="Futures"):
        progress(42)


def test_notebook_progress_renders_a_bar_per_prefix(client):
    from hpcdask.diagnostics.progress import _NotebookProgress

    futures = client.map(slowinc, range(400, 410)) + [client.submit(lambda: 1 / 0)]
    widget = _NotebookProgress(futures, multi=True, interval=0.1)
    wait_for(lambda: all(f.done() for f in futures), timeout=20)
    text = widget.render()
    assert "slowinc</td>" in text and "10 / 10" in text
    assert "lambda</td>" in text and "1 / 1" in text and "#d62728" in text  # the erred one


async def test_task_stream_and_report_with_an_asynchronous_client(tmp_path):
    async with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                            dashboard_address=None, asynchronous=True) as cluster:  # fmt: skip
        async with Client(cluster, asynchronous=True) as client:
            async with get_task_stream(client) as ts:
                assert await client.submit(slowinc, 1) == 2
            assert [r["prefix"] for r in ts.data] == ["slowinc"]
            async with performance_report(filename=str(tmp_path / "r.html"), client=client):
                await client.gather(client.map(slowinc, range(5)))
            assert "slowinc" in (tmp_path / "r.html").read_text()
