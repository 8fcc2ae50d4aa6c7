"""dask-jobqueue's documented options, read as it reads them, in the scripts we render.

Nothing here needs a batch system: the scripts are compared line by line with what
dask-jobqueue's options mean (its docs and tests). Live runs are in test_jobqueue_live_compat.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from hpcdask.jobqueue import PBSCluster, SGECluster, SLURMCluster
from hpcdask.jobqueue import script as js
from hpcdask.jobqueue._testing import clean_config_fixture  # noqa: F401 - the "home" fixture

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("home")]
dask_config = pytest.importorskip("dask.config")


def lines(system: str, **kw) -> list[str]:
    return js.job_script(system, **kw).splitlines()


def worker_line(text: str) -> str:
    return next(line for line in text.splitlines() if " -m " in line)


# ------------------------------------------------------------ dask's configuration


def test_dask_config_set_reaches_the_script():
    with dask_config.set({"jobqueue.pbs.walltime": "00:02:00", "jobqueue.pbs.cores": 4,
                          "jobqueue.pbs.memory": "8GB", "jobqueue.pbs.queue": "short"}):  # fmt: skip
        text = js.job_script("pbs")
    assert "#PBS -l walltime=00:02:00" in text and "#PBS -q short" in text
    assert "select=1:ncpus=4:mem=7630MB" in text
    assert "walltime=00:30:00" in js.job_script("pbs", cores=1, memory="1GB")  # set() undone


def test_dask_jobqueue_yaml_shipped_file_works_unchanged(home):
    """A centre's ~/.config/dask/jobqueue.yaml: dask-jobqueue's own file, values filled in."""
    import dask_jobqueue

    shipped = Path(dask_jobqueue.__file__).with_name("jobqueue.yaml").read_text()
    slurm = shipped[shipped.index("  slurm:") :]
    slurm = slurm.replace("cores: null", "cores: 36", 1).replace("memory: null", "memory: 100GB", 1)
    slurm = slurm.replace("queue: null", "queue: compute", 1)
    site = shipped[: shipped.index("  slurm:")] + slurm
    (home / ".config" / "dask").mkdir(parents=True)
    (home / ".config" / "dask" / "jobqueue.yaml").write_text(site)
    text = js.job_script("slurm")
    assert "#SBATCH -p compute" in text and "#SBATCH --cpus-per-task=36" in text
    assert "#SBATCH --mem=95368M" in text
    # dask-jobqueue's worker-command (distributed's worker) means ours; its name is kept
    assert "-m hpcdask worker" in text and "--name dask-worker-$SLURM_JOB_ID" in text
    assert "--nworkers 6 --nthreads 6" in text


def test_dask_environment_variables(monkeypatch, home):
    monkeypatch.setenv("DASK_JOBQUEUE__SGE__CORES", "3")
    monkeypatch.setenv("DASK_JOBQUEUE__SGE__MEMORY", "3GB")
    monkeypatch.setenv("DASK_JOBQUEUE__SGE__PROJECT", "proj9")
    text = js.job_script("sge")
    assert "#$ -P proj9" in text and "--nworkers 3" in text


def test_hpcdask_config_wins_over_dask_config(monkeypatch):
    monkeypatch.setenv("HPCDASK_JOBQUEUE__SLURM__QUEUE", "ours")
    with dask_config.set({"jobqueue.slurm.queue": "theirs"}):
        assert "#SBATCH -p ours" in lines("slurm", cores=1, memory="1GB")


def test_config_name_picks_a_dask_section():
    with dask_config.set({"jobqueue.bigmem": {"cores": 2, "memory": "64GB", "queue": "bigmem"}}):
        text = js.job_script("slurm", config_name="bigmem")
        assert "#SBATCH -p bigmem" in text and "--cpus-per-task=2" in text
        cluster = SLURMCluster(config_name="bigmem", asynchronous=True)
        assert "#SBATCH -p bigmem" in cluster.job_script()
    with pytest.raises(ValueError, match="config_name='nosuch'.*jobqueue.nosuch"):
        SLURMCluster(config_name="nosuch", asynchronous=True)


def test_a_misspelt_key_in_dask_config_names_it():
    from hpcdask.config import ConfigError

    with dask_config.set({"jobqueue.slurm.coers": 4}):
        with pytest.raises(ConfigError, match="dask config jobqueue.slurm.*'jobqueue.slurm.coers'"):
            js.job_script("slurm", cores=1, memory="1GB")


def test_without_dask_there_is_no_dask_layer(monkeypatch):
    from hpcdask.config import _dask

    monkeypatch.setattr(_dask, "available", lambda: False)
    with dask_config.set({"jobqueue.slurm.queue": "theirs"}):
        assert "theirs" not in js.job_script("slurm", cores=1, memory="1GB")
    with pytest.raises(ValueError, match="dask is not installed"):
        js.job_script("slurm", config_name="mine")


def test_import_hpcdask_does_not_import_dask():
    code = "import hpcdask, hpcdask.jobqueue, sys; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------ renamed and per-system options

RENAMED = [
    ("env_extra", ["export A=1"], "job_script_prologue", "export A=1"),
    ("extra", ["--resources", "GPU=1"], "worker_extra_args", "--resources GPU=1"),
    ("job_extra", ["--exclusive"], "job_extra_directives", "#SBATCH --exclusive"),
]


@pytest.mark.parametrize("old, value, new, expected", RENAMED)
def test_renamed_options_warn_and_still_work(old, value, new, expected):
    with pytest.warns(FutureWarning, match=f"{old} has been renamed to {new}"):
        text = js.job_script("slurm", cores=1, memory="1GB", **{old: value})
    assert expected in text
    with pytest.warns(FutureWarning):  # the new name wins when both are given
        text = js.job_script("slurm", cores=1, memory="1GB", **{old: value, new: ["echo new"]})
    assert expected not in text


def test_header_skip_and_renamed_keys_in_dask_config():
    with pytest.warns(FutureWarning, match="header_skip has been renamed to job_directives_skip"):
        text = js.job_script("slurm", cores=1, memory="1GB", header_skip=["--mem"])
    assert "#SBATCH --mem" not in text
    with dask_config.set({"jobqueue.slurm.env-extra": ["module load x"]}):
        with pytest.warns(FutureWarning, match="env_extra"):
            assert "module load x" in js.job_script("slurm", cores=1, memory="1GB")


def test_project_and_account_per_system(monkeypatch):
    with pytest.warns(FutureWarning, match="project has been renamed to account"):
        assert "#SBATCH -A p1" in lines("slurm", cores=1, memory="1GB", project="p1")
    with pytest.warns(FutureWarning, match="project has been renamed to account"):
        assert "#PBS -A p2" in lines("pbs", cores=1, memory="1GB", project="p2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "#$ -P p3" in lines("sge", cores=1, memory="1GB", project="p3")  # SGE's own -P
        assert "#SBATCH -A a1" in lines("slurm", cores=1, memory="1GB", account="a1")
        monkeypatch.setenv("PBS_ACCOUNT", "fromenv")
        assert "#PBS -A fromenv" in lines("pbs", cores=1, memory="1GB")
        assert "#PBS -A given" in lines("pbs", cores=1, memory="1GB", account="given")
    text = js.job_script("pbs", site="gadi", account="vp91")
    assert "#PBS -P vp91" in text and "#PBS -A" not in text  # Gadi charges with -P


def test_worker_command_and_its_flags():
    text = js.job_script("slurm", cores=2, memory="2GB", processes=2, worker_command="mypkg.worker")
    line = worker_line(text)
    assert " -m mypkg.worker tcp://" in line  # dask-jobqueue's spelling: python -m COMMAND
    assert "--nworkers" not in line and "--nanny" not in line and "--nthreads 1" in line
    default = worker_line(js.job_script("slurm", cores=1, memory="1GB",
                                        worker_command="distributed.cli.dask_worker"))  # fmt: skip
    assert " -m hpcdask worker " in default and default.endswith("--nanny")


def test_name_with_shell_variables_is_passed_for_the_shell():
    text = js.job_script("slurm", cores=1, memory="1GB", name="dask-worker-$SLURM_JOB_ID")
    assert "--name dask-worker-$SLURM_JOB_ID-$SLURM_JOB_ID" in worker_line(text)
    text = js.job_script("pbs", cores=1, memory="1GB", name="dw-${PBS_JOBID}")
    assert "#PBS -N dw-PBS_JOBID" in text  # PBS refuses $ and braces in job names
    assert "--name dw-${PBS_JOBID}-$PBS_JOBID" in worker_line(text)
    assert js.default_job_name("pbs", "1st") == "j1st"


def test_torque_gets_nodes_ppn_instead_of_select():
    text = js.job_script("pbs", cores=8, memory="16GB", qstat_flavour="torque")
    assert "#PBS -l nodes=1:ppn=8,mem=15GB" in text and "select" not in text
    with pytest.raises(ValueError, match="qstat_flavour='lsf'"):
        PBSCluster(cores=1, memory="1GB", qstat_flavour="lsf", asynchronous=True)


def test_unknown_options_are_still_errors():
    with pytest.raises(TypeError, match="unexpected option.*env_extraa"):
        SLURMCluster(cores=1, memory="1GB", env_extraa=["x"], asynchronous=True)
    with pytest.raises(ValueError, match="scheduler_options.*dashboard_address"):
        SLURMCluster(cores=1, memory="1GB", dashboard_address=":1234", asynchronous=True)
    with pytest.raises(ValueError, match="scheduler_options.*host"):
        SGECluster(cores=1, memory="1GB", host="h", asynchronous=True)


# ------------------------------------------------------------ cluster-level options


def test_log_directory_is_created(tmp_path, home):
    logs = tmp_path / "deep" / "logs"
    cluster = SLURMCluster(cores=1, memory="1GB", log_directory=str(logs), asynchronous=True)
    assert logs.is_dir() and f"#SBATCH -o {logs}/hpcdask-worker-%j.out" in cluster.job_script()
    cluster = PBSCluster(cores=1, memory="1GB", log_directory="$HOME/pbs-logs", asynchronous=True)
    assert (home / "pbs-logs").is_dir() and f"#PBS -o {home}/pbs-logs/" in cluster.job_script()
    cluster = SGECluster(cores=1, memory="1GB", log_directory="$NODE_ONLY_VAR/x", asynchronous=True)
    assert "#$ -o $NODE_ONLY_VAR/x/" in cluster.job_script()  # left to the job


def test_security_true_writes_private_credentials_for_the_workers(tmp_path):
    with pytest.warns(UserWarning, match="shared_temp_directory"):
        cluster = SLURMCluster(cores=1, memory="1GB", security=True, asynchronous=True)
    for path in cluster._tls_files:  # written to the current directory: clean up
        path.unlink()
    cluster = SLURMCluster(cores=1, memory="1GB", security=True, asynchronous=True,
                           shared_temp_directory=str(tmp_path))  # fmt: skip
    line = worker_line(cluster.job_script())
    assert "--protocol tls" in line and cluster.scheduler_options["protocol"] == "tls"
    for flag, part in (("--tls-ca-file", "ca"), ("--tls-cert", "cert"), ("--tls-key", "key")):
        path = Path(line.split(flag + " ")[1].split()[0])
        assert path.parent == tmp_path and f".worker.{part}." in path.name
        assert (path.stat().st_mode & 0o777) == 0o600 and path.read_bytes().startswith(b"-----")
    assert cluster.security.has_tls and cluster.security.secret


def test_security_with_files_passes_them_to_the_workers(tmp_path):
    from hpcdask import Security

    sec = Security(tls_ca_file="/c/ca.pem", tls_worker_cert="/c/w.pem", tls_worker_key="/c/w.key")
    cluster = PBSCluster(cores=1, memory="1GB", security=sec, asynchronous=True)
    line = worker_line(cluster.job_script())
    assert "--protocol tls --tls-ca-file /c/ca.pem --tls-cert /c/w.pem --tls-key /c/w.key" in line
    with pytest.raises(TypeError, match="security= takes hpcdask.Security or True"):
        SLURMCluster(cores=1, memory="1GB", security="yes", asynchronous=True)


def test_protocol_spelt_as_dask_jobqueue_does():
    cluster = SLURMCluster(cores=1, memory="1GB", protocol="tcp://", asynchronous=True)
    assert "--protocol tcp " in worker_line(cluster.job_script())


def test_workers_are_matched_to_jobs_by_job_id():
    cluster = SLURMCluster(cores=4, memory="4GB", processes=2, asynchronous=True,
                           name="w-$SLURM_JOB_ID")  # fmt: skip
    for job_id in ("7", "12", "123"):
        cluster._add_job(job_id)
    assert cluster._job_of("w-12-12-1").id == "12" and cluster._job_of("w-7-7-0").id == "7"
    assert cluster._job_of("w-123-123-0").id == "123" and cluster._job_of("other-5-0") is None
    cluster._adopt({"w-12-12-1": "tcp://a:1", "w-12-12-0": "tcp://a:2"})
    assert sorted(cluster.jobs["12"].names) == ["w-12-12-0", "w-12-12-1"]
    assert {"w-12-12-0", "w-12-12-1"} <= set(cluster.workers)


def test_job_script_cli_takes_the_same_names(tmp_path):
    from click.testing import CliRunner

    from hpcdask.cli.main import cli

    out = CliRunner().invoke(cli, ["job-script", "--system", "pbs", "--cores", "2", "--memory",
                                   "28GB", "-o", "qstat_flavour=torque", "-o", "config_name=pbs"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "nodes=1:ppn=2,mem=27GB" in out.output  # dask-jobqueue's 27GB for 28e9 bytes


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_every_compat_script_is_valid_bash(tmp_path):
    for system, kw in [("slurm", {"name": "x-$USER"}), ("pbs", {"qstat_flavour": "torque"}),
                       ("sge", {"worker_command": "m.w"})]:  # fmt: skip
        path = tmp_path / f"{system}.sh"
        path.write_text(js.job_script(system, cores=2, memory="2GB", **kw))
        rc = subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode
        assert rc == 0, path.read_text()
    assert os.path.exists(path)


# ------------------------------------------------------------ line by line against dask-jobqueue

#: header lines that differ on purpose (docs/jobqueue.md has the table): one merged output file,
#: SLURM memory in MiB
DIFFERENT = {"slurm": ("-e ", "-o ", "--mem="), "pbs": ("-e ", "-j oe"), "sge": ("-e ",)}
PREFIX = {"slurm": "#SBATCH ", "pbs": "#PBS ", "sge": "#$ "}
CASES = [
    ("slurm", dict(cores=8, memory="16GB", queue="q", account="acc", walltime="01:00:00",
                   job_name="jn", job_extra_directives=["--exclusive"], job_cpu=4)),
    ("slurm", dict(cores=2, memory="2GB", job_name="jn", job_mem="3G",
                   job_directives_skip=["-n 1"], walltime="00:10:00")),
    ("pbs", dict(cores=8, memory="28GB", queue="q", account="acc", walltime="01:00:00",
                 job_name="jn")),
    ("pbs", dict(cores=4, memory="2GB", job_name="jn", resource_spec="select=2:ncpus=2",
                 job_extra_directives=["-V"])),
    ("sge", dict(cores=8, memory="28GB", queue="q", project="p", resource_spec="h_vmem=1G",
                 walltime="01:00:00", job_name="jn")),
]  # fmt: skip


def _headers(system: str, text: str) -> set[str]:
    prefix = PREFIX[system]
    out = {line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)}
    return {h for h in out if not h.startswith(DIFFERENT[system])}


@pytest.mark.parametrize("system, kw", CASES)
def test_headers_match_dask_jobqueue(system, kw, tmp_path):
    jobs = pytest.importorskip("dask_jobqueue")
    job_cls = {"slurm": jobs.slurm.SLURMJob, "pbs": jobs.pbs.PBSJob, "sge": jobs.sge.SGEJob}
    kw = dict(kw, log_directory=str(tmp_path))
    theirs = job_cls[system](scheduler="tcp://10.0.0.1:8786", name="n", **kw).job_script()
    ours = js.job_script(system, scheduler_address="tcp://10.0.0.1:8786", **kw)
    assert _headers(system, ours) == _headers(system, theirs)
    if system == "slurm" and "job_mem" not in kw:  # ours: MiB, never more than theirs
        from hpcdask.utils.sizes import parse_bytes

        mem = {s: next(line.split("=")[1] for line in t.splitlines() if "--mem=" in line)
               for s, t in (("ours", ours), ("theirs", theirs))}  # fmt: skip
        assert parse_bytes(mem["ours"] + "iB") <= parse_bytes(mem["theirs"] + "iB")


def test_dask_jobqueue_blocks_copied_into_hpcdask_config(home):
    """dask-jobqueue's shipped slurm/pbs/sge blocks validate as hpcdask config as they are."""
    import dask_jobqueue
    import yaml

    shipped = yaml.safe_load(Path(dask_jobqueue.__file__).with_name("jobqueue.yaml").read_text())
    ours = {"jobqueue": {k: shipped["jobqueue"][k] for k in ("slurm", "pbs", "sge")}}
    ours["jobqueue"]["slurm"].update(cores=4, memory="8GB")
    (home / ".config" / "hpcdask").mkdir(parents=True)
    (home / ".config" / "hpcdask" / "jobqueue.yaml").write_text(yaml.safe_dump(ours))
    text = js.job_script("slurm")
    assert "#SBATCH -J dask-worker" in text and " -m hpcdask worker " in text


def test_cluster_attributes_of_dask_jobqueue():
    import logging

    cluster = SGECluster(cores=1, memory="1GB", queue="all.q", job_name="jn", asynchronous=True)
    assert cluster.job_header.splitlines()[:2] == ["#$ -N jn", "#$ -q all.q"]
    assert cluster.job_name == "jn" and cluster.cancel_command == "qdel"
    cluster.cancel_command = "qdel -u root"  # as in dask-jobqueue's own SGE test
    assert cluster.batch.cancel_command == ["qdel", "-u", "root"]
    logger = logging.getLogger("hpcdask.scheduler")
    level = logger.level
    try:
        SLURMCluster(cores=1, memory="1GB", silence_logs="error", asynchronous=True)
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(level)


def test_job_script_cli_config_name():
    from click.testing import CliRunner

    from hpcdask.cli.main import cli

    with dask_config.set({"jobqueue.gpu": {"cores": 4, "memory": "8GB", "queue": "gpuq"}}):
        out = CliRunner().invoke(cli, ["job-script", "--system", "slurm", "--config-name", "gpu"])
    assert out.exit_code == 0 and "#SBATCH -p gpuq" in out.output, out.output


def test_lifetime_in_worker_extra_args_becomes_the_clusters():
    text = js.job_script("slurm", cores=1, memory="1GB", walltime="01:00:00",
                         worker_extra_args=["--lifetime", "55m", "--lifetime-stagger=4m", "--x"])  # fmt: skip
    line = worker_line(text)
    assert "--lifetime 3300 --lifetime-stagger 240" in line and line.count("--lifetime ") == 1
    assert line.endswith("--x")
    line = worker_line(js.job_script("slurm", cores=1, memory="1GB",
                                     worker_extra_args=["--resources GPU=1", "--preload $HOME/p.py"]))  # fmt: skip
    assert line.endswith(
        "--resources GPU=1 --preload $HOME/p.py"
    )  # words, as the shell splits them
    with pytest.raises(ValueError, match="--lifetime needs a value"):
        js.job_script("slurm", cores=1, memory="1GB", worker_extra_args=["--lifetime"])
