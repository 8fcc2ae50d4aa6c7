"""The workers' environment: PipInstall of a package built here (offline), upload_file and
UploadDirectory reaching current and future worker processes."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import uuid
import zipfile

import pytest

from hpcdask import Client, LocalCluster
from hpcdask.plugins import PipInstall, UploadDirectory
from hpcdask.testing.polling import wait_for


def _import_value(module):
    import importlib

    return importlib.import_module(module).VALUE


def _call(module, func):
    import importlib

    return getattr(importlib.import_module(module), func)()


@pytest.fixture
def two_workers():
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GB") as cluster, \
            Client(cluster) as client:  # fmt: skip
        yield cluster, client


@pytest.fixture
def probe_package(tmp_path):
    """A wheel of a tiny package with a unique name, written here by hand (so no build tools
    or network are needed); uninstalled afterwards."""
    name = f"hpcdask_probe_{uuid.uuid4().hex[:8]}"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{name}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hpcdask-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{name}-0.1.dist-info/RECORD"] = (
        "\n".join(record) + f"\n{name}-0.1.dist-info/RECORD,,\n"
    ).encode()
    wheel = tmp_path / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    yield name, str(wheel)
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", name],
                   capture_output=True)  # fmt: skip


@pytest.mark.slow
def test_pip_install_offline_then_restart(two_workers, probe_package):
    cluster, client = two_workers
    name, path = probe_package
    pids = set(client.run(os.getpid).values())
    client.register_plugin(PipInstall(packages=[path], restart_workers=True,
                                      pip_options=["--no-index", "--no-deps"]))  # fmt: skip

    def restarted():
        now = set(client.run(os.getpid).values())
        return len(now) == 2 and not (now & pids)

    wait_for(restarted, timeout=60)
    assert set(client.run(_import_value, name).values()) == {42}
    cluster.scale(3)  # a new worker installs it too (and restarts once, not forever)
    client.wait_for_workers(3, timeout=60)
    wait_for(lambda: set(client.run(_import_value, name, on_error="return").values()) == {42},
             timeout=60)  # fmt: skip


def test_pip_install_failure_is_reported(two_workers):
    _, client = two_workers
    with pytest.raises(Exception, match="pip install /nonexistent/pkg failed") as info:
        client.register_plugin(PipInstall(packages=["/nonexistent/pkg"],
                                          pip_options=["--no-index"]))  # fmt: skip
    assert "setting up plugin" in "".join(getattr(info.value, "__notes__", []))
    with pytest.raises(TypeError, match="list of packages"):
        PipInstall(packages="numpy")


def test_upload_file_reaches_current_and_future_workers(two_workers, tmp_path):
    cluster, client = two_workers
    module = f"uploaded_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{module}.py"
    path.write_text("def version():\n    return 'v1'\n")
    client.upload_file(str(path))
    assert set(client.run(_call, module, "version").values()) == {"v1"}
    path.write_text("def version():\n    return 'v2'\n")
    client.upload_file(str(path))  # already imported there: reloaded
    assert set(client.run(_call, module, "version").values()) == {"v2"}
    cluster.scale(3)
    client.wait_for_workers(3, timeout=30)
    assert client.submit(_call, module, "version", pure=False).result() == "v2"
    assert len(set(client.run(_call, module, "version").values()) | {"v2"}) == 1
    with pytest.raises(ValueError, match=r"\.py, \.zip"):
        client.upload_file(str(tmp_path))


def test_upload_directory(two_workers, tmp_path):
    _, client = two_workers
    pkg = f"updir_{uuid.uuid4().hex[:8]}"
    (tmp_path / "project" / pkg).mkdir(parents=True)
    (tmp_path / "project" / pkg / "__init__.py").write_text("VALUE = 'from a directory'\n")
    (tmp_path / "project" / ".git").mkdir()
    (tmp_path / "project" / ".git" / "big").write_text("skipped")
    plugin = UploadDirectory(str(tmp_path / "project"), update_path=True)
    client.register_plugin(plugin)
    assert set(client.run(_import_value, pkg).values()) == {"from a directory"}
    with pytest.raises(NotADirectoryError):
        UploadDirectory(str(tmp_path / "nope"))
