"""The scheduler's web dashboard and Prometheus `/metrics`; see docs/dashboard.md.

`start(scheduler, address)` is what `Scheduler.start` calls: it always adds the diagnostics
collector (which `get_task_stream` and `performance_report` use too) and, unless the address is
None/False, serves the dashboard. Both are scheduler plugins, so `Scheduler.close` stops them.
"""

from __future__ import annotations

from typing import Any

from .link import DEFAULT_ADDRESS, dashboard_token, format_dashboard_link, parse_dashboard_address

__all__ = ["DEFAULT_ADDRESS", "dashboard_link", "dashboard_token", "format_dashboard_link",
           "parse_dashboard_address", "start"]  # fmt: skip


async def start(scheduler: Any, address: Any) -> Any:
    """Add the collector and (if `address`) the dashboard to a starting scheduler."""
    from ..diagnostics.collector import Collector

    collector = Collector()
    collector.start(scheduler)
    scheduler.plugins[collector.name] = collector
    scheduler.collector = collector
    host = _bind_host(scheduler)
    bind = parse_dashboard_address(address, host)
    if bind is None:
        return None
    from .server import Dashboard

    dashboard = await Dashboard(scheduler, collector).start(*bind)
    scheduler.plugins["hpcdask-dashboard"] = dashboard
    scheduler.dashboard = dashboard
    return dashboard


def _bind_host(scheduler: Any) -> str:
    """The dashboard binds like the scheduler: same host or interface, loopback for inproc://."""
    from ..comm import get_address_host_port

    listen = scheduler.listen_address
    if listen.startswith("inproc"):
        return "127.0.0.1"
    try:
        host, _ = get_address_host_port(listen)
    except (ValueError, TypeError):
        return ""
    return host or ""


def dashboard_link(scheduler: Any) -> str | None:
    """The link (with token) to this scheduler's dashboard, or None when it has none."""
    dashboard = getattr(scheduler, "dashboard", None)
    if dashboard is None or not dashboard.port:
        return None
    host = dashboard.host
    if host in ("", "0.0.0.0", "::"):
        from ..comm import get_address_host

        try:
            host = get_address_host(scheduler.address) or host
        except (ValueError, TypeError):
            pass
        if scheduler.address.startswith("inproc"):
            host = "127.0.0.1"
    return dashboard.link(host)


def link_from_identity(address: str, info: dict, secret: bytes | None) -> str | None:
    """The dashboard link of a remote scheduler, from its `identity` reply and our secret."""
    port = (info.get("services") or {}).get("dashboard")
    if not port:
        return None
    from ..comm import get_address_host

    try:
        host = get_address_host(address)
    except (ValueError, TypeError):
        host = "127.0.0.1"
    if address.startswith("inproc"):
        host = "127.0.0.1"
    return format_dashboard_link(host, port, secret, info.get("dashboard_scheme") or "http")
