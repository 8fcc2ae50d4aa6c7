"""Shared fixtures: real clusters with real worker processes, and polling helpers."""

from __future__ import annotations

import os
import tempfile

import pytest

# Tests must not touch the user's ~/.hpcdask; every process they start inherits this.
os.environ.setdefault("HPCDASK_SECRETS_DIR", tempfile.mkdtemp(prefix="hpcdask-test-secrets-"))


@pytest.fixture(scope="module")
def cluster():
    from hpcdask import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="2GB") as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    from hpcdask import Client

    with Client(cluster) as c:
        yield c


@pytest.fixture
def thread_cluster():
    """Workers as threads in this process: cheap, for tests that need a fresh cluster."""
    from hpcdask import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as c:
        yield c
