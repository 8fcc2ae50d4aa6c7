"""Test helpers for the jobqueue layer: an isolated configuration and live batch-system checks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcdask import config


@pytest.fixture(name="home")
def clean_config_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No user files, no HPCDASK_* variables: HOME is an empty temporary folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith("HPCDASK_"):
            monkeypatch.delenv(name)
    config.refresh()
    yield home
    config.refresh()


def _quiet(cmd: list[str]) -> bool:
    if shutil.which(cmd[0]) is None:
        return False
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def slurm_running() -> bool:
    return _quiet(["scontrol", "ping"]) and _quiet(["sinfo", "-h"])


def sge_running() -> bool:
    return _quiet(["qstat"]) and _quiet(["qconf", "-sql"])


requires_slurm = pytest.mark.skipif(
    not slurm_running(), reason="no running SLURM here: run `sudo ci/slurm_setup.sh` first"
)
requires_sge = pytest.mark.skipif(
    not sge_running(), reason="no running SGE here: run `sudo ci/sge_setup.sh` first"
)
