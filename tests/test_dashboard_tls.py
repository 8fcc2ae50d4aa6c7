"""The dashboard over HTTPS: on a tls:// cluster with its own certificate, or with a configured
one; plain HTTP is refused there, and the token stays required."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import pytest

from hpcdask import Client, LocalCluster, Scheduler, Security, config

pytestmark = pytest.mark.timeout(120)


def _ca_context(security: Security) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=security._tls_memory["ca"].decode())
    ctx.check_hostname = False  # the temporary certificate names localhost and 127.0.0.1 only
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None):
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


@pytest.fixture(scope="module")
def tls_cluster():
    security = Security.temporary()
    with LocalCluster(n_workers=1, threads_per_worker=1, security=security,
                      dashboard_address="127.0.0.1:0") as cluster:  # fmt: skip
        yield cluster


def test_tls_cluster_serves_its_dashboard_over_https(tls_cluster):
    link = tls_cluster.dashboard_link
    assert tls_cluster.scheduler_address.startswith("tls://")
    assert link.startswith("https://127.0.0.1:")
    ctx = _ca_context(tls_cluster.security)
    status, body, headers = _get(link, ctx)
    assert status == 200 and b"<html" in body.lower()
    cookie = headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie
    base = link.split("/status")[0]
    assert _get(base + "/api/status.json", ctx)[0] == 403  # HTTPS does not replace the token
    assert _get(base + "/health", ctx)[:2] == (200, b"ok\n")


def test_plain_http_to_an_https_dashboard_gets_nothing(tls_cluster):
    base = tls_cluster.dashboard_link.split("/status")[0].replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        _get(base + "/status", None)


def test_a_remote_client_is_given_the_https_link(tls_cluster):
    with Client(tls_cluster.scheduler_address, security=tls_cluster.security) as client:
        assert client.dashboard_link.startswith("https://")
        assert client.dashboard_link == tls_cluster.dashboard_link


def test_configured_certificate_on_a_tcp_cluster(tmp_path):
    security = Security.temporary()
    pems = security._tls_memory
    cert, key = tmp_path / "dash.pem", tmp_path / "dash.key"
    cert.write_bytes(pems["cert"])
    key.write_bytes(pems["key"])
    with config.set({"dashboard.tls.cert": str(cert), "dashboard.tls.key": str(key)}):
        with LocalCluster(n_workers=0, dashboard_address="127.0.0.1:0") as cluster:
            assert cluster.scheduler_address.startswith("tcp://")
            link = cluster.dashboard_link
            assert link.startswith("https://")
            assert _get(link, _ca_context(security))[0] == 200


def test_plain_tcp_cluster_stays_http():
    with LocalCluster(n_workers=0, dashboard_address="127.0.0.1:0") as cluster:
        assert cluster.dashboard_link.startswith("http://")


async def test_key_without_certificate_is_an_error_naming_the_keys():
    with config.set({"dashboard.tls.key": "/nonexistent.key"}):
        with pytest.raises(ValueError, match="dashboard.tls.key .*dashboard.tls.cert"):
            async with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0"):
                pass
