"""Every available transport against the one conformance suite, under asyncio and uvloop.

The tests drive the event loop themselves (rather than through pytest-asyncio) so that each
check runs once per loop implementation.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("UCX_NET_DEVICES", "lo")  # UCX would otherwise use every interface
os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")

from hpcdask.testing.conformance import CHECKS, builtin_transports
from hpcdask.testing.loops import run_on_loop

TRANSPORTS = {t.scheme: t for t in builtin_transports()}

pytestmark = pytest.mark.timeout(90)


def _run(loop_kind: str, coro) -> None:
    if loop_kind == "uvloop":
        pytest.importorskip("uvloop")
    run_on_loop(loop_kind, coro)


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
@pytest.mark.parametrize(
    "scheme",
    [pytest.param(s, marks=[pytest.mark.ucx] if s == "ucx" else []) for s in sorted(TRANSPORTS)],
)
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_conformance(loop_kind, scheme, check):
    _run(loop_kind, check(TRANSPORTS[scheme]))
