"""The scheduler's dashboard: routes, access control, static files.

Every path but `/health` needs the token (`?token=`, a cookie set from it, or an
`Authorization: Bearer` header); anything else gets 403 and no data. Pages are static HTML and
JavaScript shipped in the package (`static/`); they poll the JSON routes about once a second.

HTTPS when `dashboard.tls.cert` is set, or when the scheduler itself listens on tls:// or
wss:// (then with the scheduler's certificate): a cluster that encrypts its traffic does not
send the dashboard's token in the clear.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from importlib import resources
from typing import Any

from .. import config
from . import data
from .http import HTTPServer, Request, Response
from .link import dashboard_token, format_dashboard_link

logger = logging.getLogger("hpcdask.dashboard")

PAGES = ("status", "workers", "logs", "jobs")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'")  # fmt: skip


def static_files() -> dict[str, bytes]:
    """The shipped assets, read once: {"dashboard.js": b"..."}."""
    root = resources.files("hpcdask.dashboard") / "static"
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}


def web_ssl_context(scheduler: Any) -> Any:
    """The dashboard's SSLContext, or None for plain HTTP (see the module docstring)."""
    cert = config.get("dashboard.tls.cert")
    key = config.get("dashboard.tls.key")
    encrypted = scheduler.listen_address.startswith(("tls://", "wss://"))
    if not cert and key:
        raise ValueError("config dashboard.tls.key is set without dashboard.tls.cert; set both")
    if not cert and not encrypted:
        return None
    from ..security.tls import build_web_context

    return build_web_context(scheduler.security, cert, key)


class Dashboard:
    """The HTTP side of a Scheduler; `await Dashboard(scheduler, collector).start(host, port)`."""

    def __init__(self, scheduler: Any, collector: Any) -> None:
        self.scheduler = scheduler
        self.collector = collector
        self.token = dashboard_token(scheduler.security.secret)
        self.http = HTTPServer(self.handle)
        self.host = ""
        self.port = 0
        self.cookie = ""
        self.scheme = "http"
        self._static = static_files()
        self.requests = 0

    async def start(self, host: str, port: int) -> Dashboard:
        self.host = host
        ssl = web_ssl_context(self.scheduler)
        self.scheme = "https" if ssl is not None else "http"
        self.port = await self.http.start(host, port, ssl=ssl)
        self.cookie = f"hpcdask-dashboard-{self.port}"
        return self

    async def close(self) -> None:
        await self.http.close()

    def link(self, host: str) -> str:
        return format_dashboard_link(host, self.port, self.scheduler.security.secret,
                                     self.scheme)  # fmt: skip

    # ------------------------------------------------------------ requests

    def _authorized(self, req: Request) -> tuple[bool, bool]:
        """(allowed, came with ?token= so a cookie should be set)."""
        given = req.query.get("token")
        if given is not None:
            return hmac.compare_digest(given.encode(), self.token.encode()), True
        auth = req.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()), False
        cookie = req.cookies.get(self.cookie)
        if cookie is not None:
            return hmac.compare_digest(cookie.encode(), self.token.encode()), False
        return False, False

    async def handle(self, req: Request) -> Response:
        self.requests += 1
        if req.method not in ("GET", "HEAD"):
            return Response(405, "only GET and HEAD\n", headers=[("allow", "GET, HEAD")])
        path = req.path.rstrip("/") or "/"
        if path == "/health":
            return Response(200, "ok\n")
        allowed, from_query = self._authorized(req)
        if not allowed:
            return Response(403, "403 Forbidden: this dashboard needs its token; open the "
                                 "link from `client.dashboard_link` (it carries the token).\n")  # fmt: skip
        response = await self._route(path, req)
        if from_query:
            secure = "; Secure" if self.scheme == "https" else ""
            response.headers.append(("set-cookie", f"{self.cookie}={self.token}; Path=/; "
                                     f"HttpOnly; SameSite=Strict; Max-Age=2592000{secure}"))  # fmt: skip
        response.headers.append(("cache-control", "no-store"))
        return response

    async def _route(self, path: str, req: Request) -> Response:
        if path == "/":
            query = f"?token={req.query['token']}" if "token" in req.query else ""
            return Response(302, "", headers=[("location", "status" + query)])
        name = path[1:]
        if name in PAGES:
            return Response(200, self._static["index.html"], _TYPES[".html"],
                            headers=[("content-security-policy", _CSP)])  # fmt: skip
        if name.startswith("static/"):
            body = self._static.get(name[7:])
            if body is None:
                return Response(404, "not found\n")
            ext = name[name.rfind(".") :]
            return Response(200, body, _TYPES.get(ext, "application/octet-stream"))
        if name == "metrics":
            from .metrics import render

            self.collector.want(30.0, "metrics")  # keep byte counters fresh between scrapes
            body, ctype = render(self.scheduler, self.collector)
            return Response(200, body, ctype)
        if name.startswith("api/"):
            return await self._api(name[4:], req)
        return Response(404, "not found\n")

    async def _api(self, name: str, req: Request) -> Response:
        s, c = self.scheduler, self.collector
        if name == "status.json":
            c.want(5.0, "page")
            try:
                since = int(req.query.get("since", "-1"))
                tsince = int(req.query.get("tsince", "-1"))
            except ValueError:
                return Response(400, "since must be an integer\n")
            out = data.status(s, c, since, tsince)
        elif name == "workers.json":
            c.want(5.0, "page")
            out = data.workers(s, c)
        elif name == "logs.json":
            out = await data.logs(s, req.query.get("worker"))
        elif name == "jobs.json":
            out = data.jobs(s)
        else:
            return Response(404, "not found\n")
        out["now"] = time.time()
        return Response(200, json.dumps(out, separators=(",", ":"), default=str),
                        "application/json")  # fmt: skip
