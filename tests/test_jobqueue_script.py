"""Job scripts for SLURM, PBS and SGE rendered without any batch system (PBS is only tested so)."""

from __future__ import annotations

import subprocess

import pytest

from hpcdask.jobqueue import script as js
from hpcdask.jobqueue._testing import clean_config_fixture  # noqa: F401 - the "home" fixture

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("home")]

GADI_EXAMPLE = dict(
    walltime="00:20:00", cores=48, memory="192GB", shebang="#!/usr/bin/env bash",
    job_extra_directives=["-q normal", "-P vp91", "-l ncpus=48", "-l mem=192GB"],
    local_directory="$TMPDIR", job_directives_skip=["select"], interface="ib0",
    job_script_prologue=["module load python3/3.11.0", "source /scratch/abc/venv/bin/activate"],
    python="/scratch/abc/venv/bin/python3",
)  # fmt: skip


def test_gadi_example_from_the_issue_line_by_line():
    text = js.job_script("pbs", scheduler_address="tcp://10.6.0.1:8786", **GADI_EXAMPLE)
    assert text.splitlines() == [
        "#!/usr/bin/env bash",
        "",
        "#PBS -N hpcdask-worker",
        "#PBS -l walltime=00:20:00",
        "#PBS -j oe",
        "#PBS -q normal",
        "#PBS -P vp91",
        "#PBS -l ncpus=48",
        "#PBS -l mem=192GB",
        "",
        "module load python3/3.11.0",
        "source /scratch/abc/venv/bin/activate",
        "/scratch/abc/venv/bin/python3 -m hpcdask worker tcp://10.6.0.1:8786"
        " --name hpcdask-worker-$PBS_JOBID --nworkers 8 --nthreads 6 --memory-limit 24GB"
        " --local-directory $TMPDIR --interface ib0 --death-timeout 60"
        " --lifetime 1080 --lifetime-stagger 30 --nanny",
    ]
    assert "select" not in text


def test_gadi_profile_gives_the_same_shape():
    text = js.job_script("pbs", site="gadi", account="vp91", cores=48, memory="192GB")
    lines = text.splitlines()
    # dask-jobqueue's rounding: 192e9 bytes are 178.8 GiB, and PBS's GB is a GiB
    for expected in ["#PBS -q normal", "#PBS -P vp91", "#PBS -l ncpus=48", "#PBS -l mem=179GB",
                     "#PBS -l jobfs=100GB", "#PBS -l storage=scratch/vp91+gdata/vp91"]:  # fmt: skip
        assert expected in lines
    assert (
        "select" not in text and "--interface ib0" in text and "--local-directory $TMPDIR" in text
    )


def test_pbs_default_uses_select_and_resource_spec_replaces_it():
    text = js.job_script("pbs", cores=8, memory="16GiB", account="acc", queue="workq")
    assert "#PBS -l select=1:ncpus=8:mem=16GB" in text.splitlines()  # PBS gb are GiB
    assert "#PBS -A acc" in text and "#PBS -q workq" in text
    text = js.job_script("pbs", cores=8, memory="16GB", resource_spec="nodes=1:ppn={{ cores }}")
    assert "#PBS -l nodes=1:ppn=8" in text and "select" not in text


def test_slurm_header_and_worker_line():
    text = js.job_script("slurm", cores=8, memory="16GB", processes=2, queue="debug", account="a1",
                         walltime="1-00:00:00", job_name="jn", log_directory="/logs",
                         qos="high", constraint="cpu", scheduler_address="tcp://1.2.3.4:5")  # fmt: skip
    lines = text.splitlines()
    for expected in [
        "#SBATCH -J jn",
        "#SBATCH -o /logs/jn-%j.out",
        "#SBATCH -p debug",
        "#SBATCH -A a1",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=cpu",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=15259M",
        "#SBATCH -t 24:00:00",
    ]:
        assert expected in lines
    worker = lines[-1]
    assert worker.endswith("--nanny") and "--nworkers 2 --nthreads 4 --memory-limit 8GB" in worker
    assert "tcp://1.2.3.4:5 --name hpcdask-worker-$SLURM_JOB_ID" in worker
    with pytest.raises(ValueError, match="SLURM has no resource_spec"):
        js.job_script("slurm", cores=1, memory="1GB", resource_spec="x")


def test_sge_header():
    text = js.job_script("sge", cores=4, memory="8GB", queue="all.q", project="p", pe="smp",
                         resource_spec="h_vmem={{ (memory_bytes // job_cpu) | megabytes }}",
                         walltime="02:00:00", shell="/bin/bash")  # fmt: skip
    lines = text.splitlines()
    for expected in [
        "#$ -q all.q",
        "#$ -P p",
        "#$ -pe smp 4",
        "#$ -l h_vmem=1907M",
        "#$ -l h_rt=02:00:00",
        "#$ -S /bin/bash",
        "#$ -cwd",
        "#$ -j y",
    ]:
        assert expected in lines


@pytest.mark.parametrize("system", ["slurm", "pbs", "sge"])
def test_every_option_reaches_the_script_and_it_is_valid_bash(system, tmp_path):
    text = js.job_script(
        system, cores=4, memory="4GB", processes=2, job_script_epilogue=["echo done"],
        job_script_prologue=["export A=1"], worker_extra_args=["--protocol", "tcp"],
        worker_resources="GPU=1", nanny=False, death_timeout=30, local_directory="/tmp/my dir",
        job_extra_directives=["--extra-{{ cores }}"], secret_file="/home/u/.hpcdask/secrets/c1",
    )  # fmt: skip
    assert "--resources GPU=1" in text and "--no-nanny" in text and "--protocol tcp" in text
    assert "--local-directory '/tmp/my dir'" in text and "--death-timeout 30" in text
    assert text.index("export A=1") < text.index("-m hpcdask worker") < text.index("echo done")
    assert "--extra-4" in text
    assert "export HPCDASK_SECRET_FILE=/home/u/.hpcdask/secrets/c1" in text
    assert "HPCDASK_SECRET=" not in text.split("-m hpcdask worker")[1]  # never on the command
    path = tmp_path / "job.sh"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_skip_removes_generated_lines_only():
    text = js.job_script("slurm", cores=2, memory="2GB", job_directives_skip=["--mem", "-t "],
                         job_extra_directives=["--mem-per-cpu=1G"])  # fmt: skip
    assert "#SBATCH --mem=" not in text and "#SBATCH -t" not in text
    assert "#SBATCH --mem-per-cpu=1G" in text


def test_lifetime_derived_from_walltime_and_overridable():
    assert js.lifetime_for(1800, {}) == (1620, 45, 180)  # 10 % margin, stagger a quarter of it
    assert js.lifetime_for(60, {}) == (50, 2, 10)  # at least 10 s margin
    assert js.lifetime_for(86400, {}) == (86100, 75, 300)  # at most 5 min
    assert js.lifetime_for(3600, {"lifetime_margin": 600}) == (3000, 150, 600)
    assert js.lifetime_for(3600, {"lifetime": 100, "lifetime_stagger": 5}) == (100, 5, 300)
    assert js.lifetime_for(3600, {"lifetime": 0}) == (None, 0, 300)  # switched off
    text = js.job_script("slurm", cores=1, memory="1GB", lifetime=0)
    assert "--lifetime" not in text


def test_walltime_parsing():
    assert js.parse_walltime("00:30:00") == 1800
    assert js.parse_walltime("1-02:00:00") == 93600
    assert js.parse_walltime("45:00") == 2700
    assert js.parse_walltime("90") == 5400 and js.parse_walltime(90) == 5400  # minutes
    with pytest.raises(ValueError, match="not \\[D-\\]HH:MM:SS"):
        js.parse_walltime("soon")


def test_processes_memory_and_errors():
    assert [js.default_processes(n) for n in (1, 4, 6, 32, 48, 128)] == [1, 4, 3, 8, 8, 16]
    assert js.format_size(24 * 10**9) == "24GB" and js.format_size(2**31) == "2GiB"
    assert js.job_mem("slurm", "16GiB", 16 * 2**30) == "16G"
    assert js.job_mem("pbs", "192 GB", 192 * 10**9) == "179GB"  # as dask-jobqueue
    assert js.job_mem("pbs", "28GB", 28 * 10**9) == "27GB"
    assert js.job_mem("pbs", "2GB", 2 * 10**9) == "1908MB"
    assert js.job_mem("pbs", "1MB", 10**6) == "977kB" and js.job_mem("pbs", "", 5) == "5B"
    assert js.job_mem("slurm", "16GB", 16 * 10**9) == "15259M"  # whole MiB, rounded up
    with pytest.raises(ValueError, match="cores= is required"):
        js.job_script("slurm", memory="1GB")
    with pytest.raises(ValueError, match="memory= is required"):
        js.job_script("slurm", cores=1)
    with pytest.raises(ValueError, match="processes=4 is more than cores=2"):
        js.job_script("slurm", cores=2, memory="1GB", processes=4)
    with pytest.raises(TypeError, match="unexpected option.*corse"):
        js.job_script("slurm", corse=2)


def test_own_template_directory_overrides_shipped(tmp_path):
    (tmp_path / "_worker.sh.j2").write_text("echo custom body {{ cores }}\n")
    text = js.job_script("sge", cores=3, memory="1GB", template_dir=str(tmp_path))
    assert text.rstrip().endswith("echo custom body 3") and "#$ -N hpcdask-worker" in text
    (tmp_path / "slurm.sh.j2").write_text("#!/bin/sh\n#SBATCH --whole-mine\n")
    assert js.job_script("slurm", cores=1, memory="1GB", template_dir=str(tmp_path)) == (
        "#!/bin/sh\n#SBATCH --whole-mine\n"
    )


def test_template_dir_from_config(home, monkeypatch, tmp_path):
    (tmp_path / "pbs.sh.j2").write_text("mine {{ job_cpu }}\n")
    monkeypatch.setenv("HPCDASK_JOBQUEUE__TEMPLATE_DIR", str(tmp_path))
    assert js.job_script("pbs", cores=2, memory="1GB") == "mine 2\n"


def test_protocol_reaches_workers_and_scheduler():
    from hpcdask.jobqueue import SLURMCluster

    cluster = SLURMCluster(cores=2, memory="1GB", protocol="tls", asynchronous=True)
    assert "--protocol tls" in cluster.job_script()
    assert cluster.scheduler_options["protocol"] == "tls"
