"""The configuration layers: order, environment parsing, validation errors, the jobqueue blocks."""

from __future__ import annotations

import pytest

from hpcdask import config
from hpcdask.config import ConfigError
from hpcdask.jobqueue._testing import clean_config_fixture  # noqa: F401 - the "home" fixture

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("home")]


def user_file(home, text, name="hpcdask.yaml"):
    d = home / ".config" / "hpcdask"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    config.refresh()
    return d / name


def test_defaults_cover_keys_the_runtime_reads():
    assert config.get("comm.timeouts.connect") == 30.0
    assert config.get("comm.timeouts.auth") == 10.0
    assert config.get("comm.default-scheme") == "tcp"
    assert config.get("secrets-dir") == "~/.hpcdask/secrets"
    assert config.get("scheduler.killed-worker-limit") == 3
    assert config.get("secret") is None and config.get("secret", "x") == "x"
    assert config.get("no.such.key", 5) == 5
    assert config.get("jobqueue.slurm.walltime") == "00:30:00"  # from jobqueue.common


def test_layers_in_order(home, tmp_path, monkeypatch):
    site = tmp_path / "mysite.yaml"
    site.write_text(
        "site: {name: mysite, system: slurm, description: test}\n"
        "jobqueue: {slurm: {cores: 2, memory: 2GB, queue: sitequeue, walltime: '02:00:00'}}\n"
    )
    user_file(home, f"jobqueue:\n  site: {site}\n  slurm: {{cores: 3, memory: 3GB}}\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text("jobqueue: {slurm: {cores: 4}}\n")
    monkeypatch.setenv("HPCDASK_CONFIG", str(extra))
    monkeypatch.setenv("HPCDASK_JOBQUEUE__SLURM__CORES", "5")
    config.refresh()
    slurm = config.collect()["jobqueue"]["slurm"]
    assert (slurm["queue"], slurm["walltime"]) == ("sitequeue", "02:00:00")  # site over defaults
    assert slurm["memory"] == "3GB"  # user file over site
    assert slurm["cores"] == 5  # environment over HPCDASK_CONFIG over user file
    assert config.get("jobqueue.slurm.cores") == 5
    with config.set({"jobqueue.slurm.cores": 6}):
        assert config.get("jobqueue.slurm.cores") == 6  # config.set() over everything
    assert config.get("jobqueue.slurm.cores") == 5
    sources = [where for where, _ in config.sources()]
    assert sources[1] == str(site) and sources[-1].endswith("HPCDASK_JOBQUEUE__SLURM__CORES")


def test_environment_values_are_yaml_scalars(monkeypatch):
    monkeypatch.setenv("HPCDASK_COMM__TIMEOUTS__CONNECT", "5")
    monkeypatch.setenv("HPCDASK_JOBQUEUE__COMMON__JOB_EXTRA_DIRECTIVES", "[--exclusive, -C cpu]")
    monkeypatch.setenv("HPCDASK_JOBQUEUE__SGE__WALLTIME", "10:00:00")  # not base-60 36000
    monkeypatch.setenv("HPCDASK_SECRET", "1234e5")  # a string key keeps the raw text
    monkeypatch.setenv("HPCDASK_JOBQUEUE__PBS__NANNY", "false")
    assert config.get("comm.timeouts.connect") == 5
    assert config.get("secret") == "1234e5"
    merged = config.collect()["jobqueue"]
    assert merged["slurm"]["job-extra-directives"] == ["--exclusive", "-C cpu"]
    assert merged["sge"]["walltime"] == "10:00:00"
    assert merged["pbs"]["nanny"] is False


def test_unknown_plain_environment_names_are_not_config(monkeypatch):
    monkeypatch.setenv("HPCDASK_READY_FD", "7")
    monkeypatch.setenv("HPCDASK_SOMETHING", "x")  # one word: process plumbing, not a key
    assert config.collect()["comm"]["default-scheme"] == "tcp"
    monkeypatch.setenv("HPCDASK_COMM__TIMEOUTS__CONECT", "5")  # nested: a misspelt key
    with pytest.raises(ConfigError, match=r"HPCDASK_COMM__TIMEOUTS__CONECT.*'comm.timeouts.conect'"
                       r".*did you mean 'connect'"):  # fmt: skip
        config.collect()


def test_misspelt_key_names_key_and_file(home):
    path = user_file(home, "jobqueue:\n  slurm:\n    corse: 4\n")
    with pytest.raises(ConfigError) as e:
        config.get("comm.default-scheme")
    assert str(path) in str(e.value) and "'jobqueue.slurm.corse'" in str(e.value)
    assert "did you mean 'cores'" in str(e.value)


def test_wrong_type_names_key_and_file(home):
    path = user_file(home, "jobqueue:\n  common:\n    cores: many\n")
    with pytest.raises(ConfigError, match=rf"{path}: 'jobqueue.common.cores' must be an integer"):
        config.collect()
    path = user_file(home, "comm: {timeouts: {connect: soon}}\n")
    with pytest.raises(ConfigError, match=r"'comm.timeouts.connect' must be a number"):
        config.collect()


def test_wrong_type_from_environment(monkeypatch):
    monkeypatch.setenv("HPCDASK_JOBQUEUE__SLURM__PROCESSES", "two")
    with pytest.raises(
        ConfigError, match="environment variable HPCDASK_JOBQUEUE__SLURM__PROCESSES"
    ):
        config.collect()


def test_system_key_in_common_block_is_pointed_to_its_system(home):
    user_file(home, "jobqueue: {common: {qos: debug}}\n")
    with pytest.raises(ConfigError, match="belongs under jobqueue.slurm"):
        config.collect()


def test_common_block_and_per_system_overrides(home):
    user_file(home, "jobqueue:\n  common: {cores: 8, job_extra_directives: [a]}\n"
                            "  pbs: {cores: 48}\n")  # fmt: skip
    jq = config.collect()["jobqueue"]
    assert jq["slurm"]["cores"] == 8 and jq["sge"]["cores"] == 8 and jq["pbs"]["cores"] == 48
    assert jq["sge"]["job-extra-directives"] == ["a"]  # underscores read as dashes


def test_higher_layer_common_beats_lower_layer_system(home):
    """A user's shared setting wins over a site profile's per-system one (layers first)."""
    user_file(home, "jobqueue: {site: gadi, common: {walltime: '05:00:00'}}\n")
    jq = config.collect()["jobqueue"]
    assert jq["pbs"]["walltime"] == "05:00:00" and jq["pbs"]["queue"] == "normal"


def test_set_forms_and_context_manager():
    config.set({"comm.timeouts.connect": 1.5})
    try:
        assert config.get("comm.timeouts.connect") == 1.5
        with config.set(comm__timeouts__auth=2, jobqueue__common__cores=3):
            assert config.get("comm.timeouts.auth") == 2
            assert config.get("jobqueue.sge.cores") == 3
        assert config.get("comm.timeouts.auth") == 10.0
    finally:
        config._overrides.clear()
        config.refresh()


def test_invalid_yaml_and_bad_top_level(home):
    path = user_file(home, "jobqueue: [\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        config.collect()
    user_file(home, "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.collect()


def test_hpcdask_config_missing_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCDASK_CONFIG", str(tmp_path / "nope.yaml"))
    config.refresh()
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        config.collect()


def test_open_mapping_takes_any_keys(home):
    user_file(home, "jobqueue: {slurm: {scheduler-options: {interface: lo, port: 0}}}\n")
    assert config.collect()["jobqueue"]["slurm"]["scheduler-options"] == {
        "interface": "lo",
        "port": 0,
    }


def test_keys_of_either_type(monkeypatch):
    monkeypatch.setenv("HPCDASK_COMM__UCX__TRANSPORTS", "[tcp, rdmacm]")
    assert config.collect()["comm"]["ucx"]["transports"] == ["tcp", "rdmacm"]
    monkeypatch.setenv("HPCDASK_COMM__UCX__TRANSPORTS", "tcp,rdmacm")
    assert config.get("comm.ucx.transports") == "tcp,rdmacm"
