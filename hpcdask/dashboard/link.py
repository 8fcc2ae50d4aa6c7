"""The dashboard's address, its access token and the link users click.

The token is derived from the cluster's secret, so every process that holds the secret (a
client, the scheduler) computes the same token and nobody else can; it is not the secret itself,
so a link pasted into a chat does not give away the cluster.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import string
from typing import Any

from .. import config

DEFAULT_ADDRESS = ":8787"


def dashboard_token(secret: bytes) -> str:
    """The token that opens the dashboard of the cluster holding *secret*."""
    return hmac.new(secret, b"hpcdask dashboard token v1", hashlib.sha256).hexdigest()[:32]


def parse_dashboard_address(address: Any, scheduler_host: str | None) -> tuple[str, int] | None:
    """(host, port) to bind, or None when the dashboard is turned off.

    Accepts dask's forms: ":8787" (the scheduler's host), "host:port", "0.0.0.0:8787", a bare
    port number, ":0" (any free port), and None/False (off).
    """
    if address is None or address is False:
        return None
    if address is True:
        address = DEFAULT_ADDRESS
    if isinstance(address, int) and not isinstance(address, bool):
        address = f":{address}"
    if not isinstance(address, str):
        raise TypeError(
            f"dashboard_address must be a string like ':8787' or 'host:port', or None to turn "
            f"the dashboard off; got {address!r}"
        )
    text = address.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(
            f"dashboard_address {address!r}: the port {port_text!r} is not a number; "
            "use ':8787', 'host:8787' or ':0' for any free port"
        ) from None
    if not 0 <= port < 65536:
        raise ValueError(f"dashboard_address {address!r}: port {port} is out of range")
    if not host:
        host = scheduler_host or ""
    return host, port


def format_dashboard_link(host: str, port: int, secret: bytes | None, scheme: str = "http") -> str:
    """The link from the `dashboard.link` template, with the access token.

    The template takes `{scheme}`, `{host}`, `{port}`, `{token}` and environment variables
    (e.g. `{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status`); without `{token}` in it the token
    is appended as a query parameter.
    """
    template = str(config.get("dashboard.link", "{scheme}://{host}:{port}/status"))
    if host in ("", "0.0.0.0", "::"):
        host = _this_host()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    token = dashboard_token(secret) if secret else ""
    values = {**os.environ, "scheme": scheme, "host": host, "port": port, "token": token}
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    missing = sorted(n for n in names if n not in values)
    if missing:
        raise ValueError(
            f"config dashboard.link = {template!r} names {missing}, which is neither one of "
            "scheme, host, port, token nor a set environment variable"
        )
    link = template.format(**values)
    if token and "token" not in names:
        link += ("&" if "?" in link else "?") + f"token={token}"
    return link


def _this_host() -> str:
    import socket

    try:
        return socket.gethostname()
    except OSError:
        return "localhost"
