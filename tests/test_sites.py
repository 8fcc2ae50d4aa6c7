"""Every shipped site profile loads, validates and renders; users' profiles shadow them; CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from hpcdask import config
from hpcdask.cli.jobqueue import register
from hpcdask.config import ConfigError
from hpcdask.config._sites import PACKAGED
from hpcdask.jobqueue import script as js
from hpcdask.jobqueue._testing import clean_config_fixture  # noqa: F401 - the "home" fixture

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("home")]

SHIPPED = sorted(p.stem for p in PACKAGED.glob("*.yaml"))
REQUIRED = {"gadi": {"account": "ab12"}, "perlmutter": {"account": "m1234"}}


def test_the_required_sites_ship():
    assert {"gadi", "perlmutter", "ucl-myriad", "ci-slurm", "ci-sge"} <= set(SHIPPED)
    systems = {s["name"]: s["system"] for s in config.list_sites()}
    assert systems["gadi"] == "pbs" and systems["perlmutter"] == "slurm"
    assert "sge" in systems.values()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_renders(name, tmp_path):
    site = config.load_site(PACKAGED / f"{name}.yaml")
    text = js.job_script(site["system"], site=name, **REQUIRED.get(name, {}))
    prefix = {"slurm": "#SBATCH", "pbs": "#PBS", "sge": "#$"}[site["system"]]
    assert text.startswith("#!") and (f"{prefix} -N " in text or f"{prefix} -J " in text)
    assert "-m hpcdask worker" in text and "None" not in text and "{{" not in text
    path = tmp_path / "job.sh"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_perlmutter_profile():
    lines = js.job_script("slurm", site="perlmutter", account="m1234").splitlines()
    for expected in ["#SBATCH --constraint=cpu", "#SBATCH --qos=regular", "#SBATCH -A m1234"]:
        assert expected in lines
    assert "--interface hsn0" in lines[-1] and "#SBATCH -p" not in "\n".join(lines)


def test_user_profile_shadows_shipped_one_and_path_works(home, tmp_path):
    sites = home / ".config" / "hpcdask" / "sites"
    sites.mkdir(parents=True)
    (sites / "gadi.yaml").write_text(
        "site: {name: gadi, system: pbs, description: my gadi}\njobqueue: {pbs: {queue: express}}\n"
    )
    assert {s["name"]: s["description"] for s in config.list_sites()}["gadi"] == "my gadi"
    text = js.job_script("pbs", site="gadi", cores=4, memory="8GB")
    assert "#PBS -q express" in text and "select=1" in text  # the shipped profile is not merged in
    own = tmp_path / "lab.yaml"
    own.write_text(
        "site: {name: lab, system: slurm, description: lab}\n"
        "jobqueue: {common: {cores: 2, memory: 4GB}, slurm: {queue: lab}}\n"
    )
    assert "#SBATCH -p lab" in js.job_script("slurm", site=str(own))


def test_bad_profiles_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown site 'nowhere'.*gadi"):
        js.job_script("pbs", site="nowhere")
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobqueue: {pbs: {queue: q}}\n")
    with pytest.raises(ConfigError, match="starts with a 'site:' block"):
        js.job_script("pbs", site=str(bad))
    bad.write_text("site: {name: b, system: pbs, description: d}\njobqueue: {pbs: {qeue: q}}\n")
    with pytest.raises(ConfigError, match=rf"{bad}: unknown configuration key 'jobqueue.pbs.qeue'"):
        js.job_script("pbs", site=str(bad), cores=1, memory="1GB")


@pytest.fixture
def cli():
    import click

    @click.group()
    def group() -> None:
        pass

    register(group)
    runner = CliRunner()
    return lambda *args: runner.invoke(group, list(args))


def test_cli_sites(cli):
    out = cli("sites")
    assert out.exit_code == 0
    assert all(name in out.output for name in SHIPPED)
    out = cli("sites", "--system", "pbs", "--paths")
    assert "gadi" in out.output and "perlmutter" not in out.output and "gadi.yaml" in out.output


def test_cli_job_script(cli):
    out = cli("job-script", "--system", "pbs", "--site", "gadi", "--account", "vp91",
              "--prologue", "module load python3", "-o", "worker_extra_args=[--foo]")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "#PBS -P vp91" in out.output and "module load python3" in out.output
    assert "--foo" in out.output
    out = cli("job-script", "--system", "slurm")
    assert out.exit_code == 1 and "cores= is required" in out.output


def test_main_cli_has_the_commands():
    out = subprocess.run([sys.executable, "-m", "hpcdask", "sites"], capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert out.returncode == 0 and "gadi" in out.stdout


def test_site_of_another_system_is_an_error():
    with pytest.raises(ValueError, match="'gadi' is a pbs site, not slurm: use PBSCluster"):
        js.job_script("slurm", site="gadi")


PACKAGE_DATA = ("config/sites", "jobqueue/templates")  # folders of files the code reads


def test_package_data_are_regular_files_inside_the_package():
    """The templates and profiles the code reads are plain files in the package (links break in
    sdists and on some filesystems), and nothing in the package is a link."""
    import os
    from pathlib import Path

    import hpcdask

    pkg = Path(hpcdask.__file__).parent
    assert PACKAGED == pkg / "config" / "sites" and js.PACKAGED_TEMPLATES.parent == pkg / "jobqueue"
    for folder in PACKAGE_DATA:
        files = list((pkg / folder).iterdir())
        assert files and all(f.is_file() and not f.is_symlink() for f in files), folder
    assert {"slurm.sh.j2", "pbs.sh.j2", "sge.sh.j2"} <= {
        p.name for p in js.PACKAGED_TEMPLATES.iterdir()
    }
    links = [os.path.join(d, n) for d, dirs, names in os.walk(pkg) for n in dirs + names
             if os.path.islink(os.path.join(d, n))]  # fmt: skip
    assert not links


@pytest.mark.timeout(180)
def test_a_built_wheel_contains_the_package_data(tmp_path):
    """pip builds a wheel from a copy of the sources (not in the shared tree); every template
    and profile is in it, as a file."""
    import shutil
    import stat
    import zipfile
    from pathlib import Path

    import hpcdask

    pkg = Path(hpcdask.__file__).parent
    src = tmp_path / "src"
    shutil.copytree(pkg, src / "hpcdask", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(pkg.parent / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q",
                          "-w", str(tmp_path / "wheel")], capture_output=True, text=True,
                         timeout=170)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "wheel").glob("hpcdask-*.whl")
    with zipfile.ZipFile(wheel) as z:
        entries = {i.filename: i.external_attr >> 16 for i in z.infolist()}
    for folder in PACKAGE_DATA:
        for f in (pkg / folder).iterdir():
            name = f"hpcdask/{folder}/{f.name}"
            assert name in entries, f"{name} is not in the wheel: see pyproject's package-data"
            assert not stat.S_ISLNK(entries[name])


def test_gadi_cluster_script_has_address_and_secret_file_not_the_secret(home):
    """No PBS here, but a PBSCluster still starts its scheduler and renders the real script."""
    import os
    import re

    from hpcdask.jobqueue import PBSCluster

    with PBSCluster(site="gadi", account="vp91", cores=48, memory="192GB",
                    scheduler_options={"interface": "lo"}) as cluster:  # fmt: skip
        text = cluster.job_script()
        assert f"-m hpcdask worker {cluster.scheduler_address} " in text
        assert "--interface ib0" in text and "#PBS -P vp91" in text
        path = re.search(r"HPCDASK_SECRET_FILE=(\S+)", text).group(1)
        assert path.startswith(str(home)) and os.stat(path).st_mode & 0o777 == 0o600
        secret = cluster.security.secret.hex()
        assert open(path).read().strip() == secret and secret not in text
    assert not os.path.exists(path)  # removed with the cluster
