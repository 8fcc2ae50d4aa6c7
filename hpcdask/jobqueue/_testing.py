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


# ------------------------------------------------------------ a fake Torque

_FAKE_TORQUE = r'''#!{python}
"""Fake Torque {cmd}, from Torque 6's documented output (no Torque package runs here).

Jobs live as JSON files in $FAKE_TORQUE_DIR. qsub runs the script in the background unless
$FAKE_TORQUE_DIR/hold exists (the job then stays queued until the file is removed).
"""
import json, os, re, signal, subprocess, sys, time
D = os.environ["FAKE_TORQUE_DIR"]
SERVER = "torque-test"


def load(seq):
    try:
        with open(os.path.join(D, seq + ".json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def save(job):
    tmp = os.path.join(D, job["seq"] + ".tmp")
    with open(tmp, "w") as f:
        json.dump(job, f)
    os.replace(tmp, os.path.join(D, job["seq"] + ".json"))


def qsub(args):
    script = args[-1]
    text = open(script).read()
    name = (re.findall(r"^#PBS -N (\S+)", text, re.M) or ["STDIN"])[0]
    outdir = (re.findall(r"^#PBS -o (\S+)/$", text, re.M) or [os.getcwd()])[0]
    with open(os.path.join(D, "counter"), "a+") as f:
        f.seek(0)
        seq = str(int(f.read() or 100) + 1)
        f.seek(0); f.truncate(); f.write(seq)
    body = os.path.join(D, seq + ".sh")
    with open(body, "w") as f:
        f.write(text)
    job = dict(seq=seq, name=name, state="Q", out=os.path.join(outdir, f"{{name}}.o{{seq}}"))
    save(job)
    runner = [sys.executable, os.path.join(os.path.dirname(sys.argv[0]), "qstat"), "--run", seq]
    subprocess.Popen(runner, start_new_session=True, cwd=os.getcwd(),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"{{seq}}.{{SERVER}}")


def run(seq):
    while os.path.exists(os.path.join(D, "hold")):
        time.sleep(0.05)
    job = load(seq)
    if job["state"] == "C":
        return
    env = dict(os.environ, PBS_JOBID=f"{{seq}}.{{SERVER}}", PBS_JOBNAME=job["name"])
    with open(job["out"], "w") as out:
        proc = subprocess.Popen(["bash", os.path.join(D, seq + ".sh")], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        job.update(state="R", pid=proc.pid)
        save(job)
        code = proc.wait()
    job = load(seq)
    job["state"] = "C"
    job.setdefault("exit_status", code if code >= 0 else 256 - code)
    save(job)


def qstat(args):
    if args == ["--version"]:
        print("Version: 6.1.3\nCommit: 0a3b4c5d6e7f")
        return 0
    if "-x" in args:  # Torque's -x is XML
        print("<Data><Job><Job_Id>?</Job_Id></Job></Data>")
        return 0
    rc = 0
    for full in [a for a in args if not a.startswith("-")]:
        job = load(full.split(".")[0])
        if job is None:
            print(f"qstat: Unknown Job Id Error {{full}}", file=sys.stderr)
            rc = 153
            continue
        print(f"Job Id: {{job['seq']}}.{{SERVER}}")
        print(f"    Job_Name = {{job['name']}}")
        print(f"    Job_Owner = user@{{SERVER}}")
        print(f"    job_state = {{job['state']}}")
        print("    queue = batch")
        print(f"    server = {{SERVER}}")
        if "exit_status" in job:
            print(f"    exit_status = {{job['exit_status']}}")
        print()
    return rc


def qdel(args):
    for full in args:
        job = load(full.split(".")[0])
        if job is None:
            continue
        if job.get("pid"):
            try:
                os.killpg(job["pid"], signal.SIGTERM)
            except OSError:
                pass
        job.update(state="C", exit_status=271)
        save(job)


if __name__ == "__main__":
    cmd, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    if cmd == "qstat" and args[:1] == ["--run"]:
        sys.exit(run(args[1]))
    sys.exit({{"qsub": qsub, "qstat": qstat, "qdel": qdel}}[cmd](args) or 0)
'''


def fake_torque(root: Path) -> dict[str, str]:
    """Write fake Torque `qsub`/`qstat`/`qdel` under *root*; returns the environment to use
    (PATH first, FAKE_TORQUE_DIR). Used because no Torque package can run on our CI machine."""
    import sys

    bin_dir, state = root / "bin", root / "state"
    bin_dir.mkdir(parents=True, exist_ok=True)
    state.mkdir(exist_ok=True)
    for cmd in ("qsub", "qstat", "qdel"):
        path = bin_dir / cmd
        path.write_text(_FAKE_TORQUE.format(python=sys.executable, cmd=cmd))
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_TORQUE_DIR": str(state)}  # fmt: skip
