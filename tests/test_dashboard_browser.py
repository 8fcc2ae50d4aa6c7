"""Real headless Chromium opens the status page of a running LocalCluster.

Chromium is Debian's package, installed by ci/chromium_setup.sh; the test drives it over the
DevTools protocol (a websocket, with the `websockets` test dependency), so no browser download
and no node are needed. Under CI a missing Chromium is a failure, elsewhere a skip.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hpcdask import Client, LocalCluster, Security
from hpcdask.jobqueue._testing import requires_slurm
from hpcdask.testing.polling import wait_for

pytestmark = pytest.mark.timeout(120)

ARTIFACTS = Path(os.environ.get("HPCDASK_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "build" / "test-artifacts"))  # fmt: skip
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--window-size=1280,900"]  # fmt: skip


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: ci/chromium_setup.sh must install it")
    pytest.skip("chromium is not installed (bash ci/chromium_setup.sh installs it)")


class Browser:
    """Just enough of the DevTools protocol: one page, commands, and its console events."""

    def __init__(self) -> None:
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="hpcdask-chromium-")
        self.proc = subprocess.Popen(
            [chromium_binary(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            url = m and m.group(1)
        if url is None:
            self.close()
            raise RuntimeError("chromium did not start its DevTools endpoint")
        self._conn = connect(url, max_size=64 * 2**20, open_timeout=10)
        self.ws = self._conn.__enter__()
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, session: bool = False, timeout: float = 20, **params) -> dict:
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        return r["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 20):
        return wait_for(lambda: self.evaluate(expression), timeout, 0.05,
                        what=f"in the browser: {expression}")  # fmt: skip

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args"))[:500])
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        return out

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def slowinc(x):
    time.sleep(0.01)
    return x + 1


@pytest.fixture
def browser():
    b = Browser()
    yield b
    b.close()


def test_status_page_shows_workers_and_task_stream(browser):
    with LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:  # fmt: skip
        futures = client.map(slowinc, range(200))
        client.gather(futures)
        workers = sorted(cluster.scheduler.worker_info)

        browser.call("Page.navigate", session=True, url=cluster.dashboard_link)
        browser.wait_until("document.querySelectorAll('#memory .row').length === 2")
        titles = browser.evaluate(
            "[...document.querySelectorAll('#memory .row .label')].map(e => e.title).sort()"
        )
        assert titles == workers
        n = browser.wait_until("Number(document.getElementById('task-stream').dataset.count) || 0")
        assert n >= 200
        assert browser.evaluate(
            "[...document.querySelectorAll('#ts-legend li')].map(e => e.dataset.prefix)"
        ) == ["slowinc"]
        assert (
            browser.wait_until(
                "[...document.querySelectorAll('#progress .row')].map(r => r.dataset.prefix + ' ' + "
                "r.querySelector('.num').textContent).join()"
            )
            == "slowinc 200 / 200"
        )
        # live: the page keeps updating, more than once a second (the median gap it measured)
        first = int(browser.evaluate("document.body.dataset.updates"))
        browser.wait_until(f"Number(document.body.dataset.updates) >= {first + 5}")
        assert float(browser.evaluate("document.body.dataset.interval")) < 1000
        browser.screenshot(ARTIFACTS / "dashboard-status.png")

        browser.call("Page.navigate", session=True, url=cluster.dashboard_link.replace(
            "/status?", "/workers?"))  # fmt: skip
        rows = browser.wait_until(
            "[...document.querySelectorAll('#workers-table tbody tr')].map(r => r.dataset.worker)"
            ".sort()"
        )
        assert rows == workers
        browser.screenshot(ARTIFACTS / "dashboard-workers.png")

        # the other pages, through the page's own navigation
        browser.evaluate("document.querySelector('nav a[data-page=logs]').click()")
        browser.wait_until(
            "document.getElementById('log-lines').textContent.includes('Scheduler at')"
        )
        browser.evaluate("document.querySelector('nav a[data-page=jobs]').click()")
        browser.wait_until(
            "document.getElementById('jobs-none').textContent.includes('batch-system')"
        )
        assert browser.evaluate("location.pathname") == "/jobs"
        assert browser.errors() == []

        # a page without the token shows nothing
        bare = cluster.dashboard_link.split("?")[0].replace("127.0.0.1", "localhost")
        browser.call("Page.navigate", session=True, url=bare)
        text = browser.wait_until("document.readyState === 'complete' && document.body.innerText")
        assert "403" in text and "tcp://" not in text
    assert (ARTIFACTS / "dashboard-status.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_status_page_over_https_on_a_tls_cluster(browser):
    security = Security.temporary()
    with LocalCluster(n_workers=1, threads_per_worker=1, security=security,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:  # fmt: skip
        client.gather(client.map(slowinc, range(20)))
        assert cluster.dashboard_link.startswith("https://")
        # The temporary CA is in no browser's trust store; a site's CA would be.
        browser.call("Security.setIgnoreCertificateErrors", ignore=True)
        browser.call("Page.navigate", session=True, url=cluster.dashboard_link)
        browser.wait_until("document.querySelectorAll('#memory .row').length === 1")
        assert browser.evaluate("location.protocol") == "https:"
        assert browser.errors() == []


@pytest.mark.slurm
@requires_slurm
def test_jobs_page_shows_why_a_slurm_job_is_pending(browser, tmp_path):
    from hpcdask.jobqueue import SLURMCluster

    with SLURMCluster(site="ci-slurm", job_cpu=512, log_directory=str(tmp_path),
                      poll_interval=0.3, poll_interval_max=1.0,
                      scheduler_options={"dashboard_address": ":0"}) as cluster:  # fmt: skip
        cluster.scale(1)
        (job_id,) = cluster.jobs
        browser.call("Page.navigate", session=True,
                     url=cluster.dashboard_link.replace("/status?", "/jobs?"))  # fmt: skip
        row = f"document.querySelector('#jobs-table tr[data-job=\"{job_id}\"]')"
        browser.wait_until(f"{row} && {row}.cells[2].textContent.includes('PartitionConfig')",
                           timeout=60)  # fmt: skip
        assert browser.evaluate(f"{row}.dataset.state") == "pending"
        browser.screenshot(ARTIFACTS / "dashboard-jobs.png")
        assert browser.errors() == []
