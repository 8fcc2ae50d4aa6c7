"""ci/services.sh fails when a service it was asked to start did not start.

Run on a copy of the script whose setup scripts are stand-ins (they only exit 0 or 1): the
real ones install SLURM and SGE, which the suite's own start-up already did."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = Path(__file__).parent.parent / "ci" / "services.sh"
SETUPS = {"MPI": "mpi_setup.sh", "CHROMIUM": "chromium_setup.sh", "SLURM": "slurm_setup.sh",
          "SGE": "sge_setup.sh", "SSH": "ssh_setup.sh"}  # fmt: skip


def stage(tmp_path: Path, failing: set[str] = frozenset(), uid: int = 0) -> Path:
    ci = tmp_path / "ci"
    ci.mkdir()
    shutil.copy(SCRIPT, ci / "services.sh")
    for name, script in SETUPS.items():
        (ci / script).write_text(f"echo {name} stand-in\nexit {int(name in failing)}\n")
    bin_ = tmp_path / "venv" / "bin"
    bin_.mkdir(parents=True)
    # The venv's python only runs `pip install ucxx...`; a stand-in answers for it.
    (bin_ / "python").write_text(f"#!/bin/sh\nexit {int('UCX' in failing)}\n")
    (bin_ / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for f in (bin_ / "python", bin_ / "id"):
        f.chmod(0o755)
    return tmp_path


def services(root: Path, *names: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{root / 'venv' / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(root / "ci" / "services.sh"), str(root / "venv"), *names],
                          capture_output=True, text=True, env=env, timeout=30)  # fmt: skip


def test_all_services_up_exits_0(tmp_path):
    proc = services(stage(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert all(f"{n} stand-in" in proc.stdout for n in SETUPS)


@pytest.mark.parametrize("name", ["MPI", "UCX", "CHROMIUM", "SLURM", "SGE", "SSH"])
def test_a_service_that_did_not_start_fails_the_script(tmp_path, name):
    proc = services(stage(tmp_path, failing={name}))
    assert proc.returncode == 1
    assert f"did not start: {name}" in proc.stderr


def test_a_missing_setup_script_is_a_failure(tmp_path):
    root = stage(tmp_path)
    (root / "ci" / "sge_setup.sh").unlink()
    proc = services(root)
    assert proc.returncode == 1 and "SGE" in proc.stderr


def test_only_the_services_asked_for_are_started(tmp_path):
    proc = services(stage(tmp_path, failing={"SLURM"}), "MPI", "UCX")
    assert proc.returncode == 0, proc.stderr
    assert "MPI stand-in" in proc.stdout and "SLURM" not in proc.stdout


def test_without_root_the_root_only_services_are_skipped_not_failed(tmp_path):
    proc = services(stage(tmp_path, failing={"SLURM", "SGE", "SSH"}, uid=1000))
    assert proc.returncode == 0, proc.stderr
    assert "not root" in proc.stdout
