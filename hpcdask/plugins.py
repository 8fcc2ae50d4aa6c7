"""Base classes for plugins; subclass one and pass an instance to `Client.register_plugin`
(the one registration path: it sends each kind where it runs)."""

from __future__ import annotations

import hashlib
import os
from typing import Any


class WorkerPlugin:
    """Runs inside every worker: `setup(worker)` now and on new workers, `teardown` at close,
    `transition(key, start, finish)` after each task."""

    name: str | None = None

    def setup(self, worker: Any) -> None:
        pass

    def teardown(self, worker: Any) -> None:
        pass

    def transition(self, key: str, start: str, finish: str) -> None:
        pass


class SchedulerPlugin:
    """Runs in the scheduler: `start(scheduler)`, `add_worker`/`remove_worker(scheduler=, worker=)`,
    `close()`."""

    name: str | None = None

    def start(self, scheduler: Any) -> None:
        pass

    def add_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
        pass

    def remove_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class NannyPlugin:
    """Runs in every nanny (worker/nanny_plugins.py): `setup(nanny)` now and in nannies that
    start later, before their worker process; `teardown(nanny)` at close. With
    `restart = True` each nanny restarts its worker after setup (a fresh process sees what
    setup changed, e.g. `nanny.env`)."""

    name: str | None = None
    restart: bool = False
    idempotent: bool = False  # registering one of this name again keeps the first

    def setup(self, nanny: Any) -> None:
        pass

    def teardown(self, nanny: Any) -> None:
        pass


class Environ(NannyPlugin):
    """`client.register_plugin(Environ({"OMP_NUM_THREADS": 1}))`: environment variables of
    every worker process, set by its nanny, which restarts the worker to apply them (and
    sets them in workers that start later). Workers without a nanny are not reached."""

    restart = True

    def __init__(self, environ: dict | None = None) -> None:
        if environ is not None and not isinstance(environ, dict):
            raise TypeError(f"Environ takes a dict of variables, not {environ!r}")
        self.environ = {str(k): str(v) for k, v in (environ or {}).items()}
        digest = hashlib.sha1(repr(sorted(self.environ.items())).encode()).hexdigest()
        self.name = f"environ-{digest[:12]}"

    def setup(self, nanny: Any) -> None:
        nanny.env.update(self.environ)


# ------------------------------------------------------------ the workers' environment
# These travel through the same mechanism as any WorkerPlugin (`client.register_plugin`), so
# they reach the workers there now and every worker that joins later.


def _restart_worker(worker: Any, why: str) -> None:
    """Ask the nanny for a fresh worker process (one without a nanny cannot restart)."""
    import asyncio
    import logging

    from .worker.worker import EXIT_RESTART

    if not getattr(worker, "nanny", None) and "HPCDASK_NANNY_PID" not in os.environ:
        logging.getLogger("hpcdask.plugins").warning(
            "%s: this worker has no nanny to restart it; restart it yourself", why
        )
        return
    asyncio.get_running_loop().call_soon(
        lambda: worker.spawn(worker.close(why, exit_code=EXIT_RESTART))
    )


class _HostLock:
    """One worker per host (per user) does a setup step at a time: concurrent `pip install`s
    into one environment break it. Its directory also holds the once-only restart markers."""

    def __init__(self, name: str) -> None:
        import tempfile

        base = os.path.join(tempfile.gettempdir(), f"hpcdask-{os.getuid()}-setup")
        os.makedirs(base, mode=0o700, exist_ok=True)
        self.path = os.path.join(base, name)

    def __enter__(self) -> _HostLock:
        import fcntl

        self._f = open(self.path + ".lock", "w")
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()


class InstallPlugin(WorkerPlugin):
    """`InstallPlugin(install_fn, restart_workers=False)`: `install_fn()` (idempotent) runs
    on every worker, now and on later ones, one worker per host and environment at a time;
    `restart_workers=True` then restarts each worker once (through its nanny), for packages
    already imported or installed as .pth hooks. A failure is an error of
    `register_plugin`. Unlike dask.distributed's it does not also install into the
    scheduler's environment: hpcdask's scheduler runs no task code."""

    def __init__(self, install_fn: Any, restart_workers: bool = False) -> None:
        if not callable(install_fn):
            raise TypeError(f"InstallPlugin needs a callable, not {install_fn!r}")
        self.install_fn = install_fn
        self.restart_workers = restart_workers
        if self.name is None:  # subclasses name themselves after what they install
            self.name = f"install-{hashlib.sha1(repr(install_fn).encode()).hexdigest()[:12]}"

    async def setup(self, worker: Any) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self._install)
        if self.restart_workers and _first_time(self.name, worker):  # the fresh process: no again
            _restart_worker(worker, f"restart after {self.name}")

    def _install(self) -> None:
        import importlib

        # One install at a time per environment; later workers find it all done at once.
        with _HostLock(f"install-{_env_id()}"):
            self.install_fn()
        importlib.invalidate_caches()


class PipInstall(InstallPlugin):
    """`client.register_plugin(PipInstall(packages=["pkg==1.2", "/path/to/pkg"]))`: pip
    installs into every worker's Python, once per host; `pip_options=["--no-index", ...]` work
    offline; `restart_workers=True` as for `InstallPlugin`."""

    def __init__(self, packages: list[str], pip_options: list[str] | None = None,
                 restart_workers: bool = False) -> None:  # fmt: skip
        import sys

        if isinstance(packages, str) or not packages:
            raise TypeError(f"PipInstall needs a list of packages, not {packages!r}")
        self.packages = list(packages)
        self.pip_options = list(pip_options or [])
        digest = hashlib.sha1(repr((self.packages, self.pip_options)).encode()).hexdigest()
        self.name = f"pip-install-{digest[:12]}"
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
               *self.pip_options, *self.packages]  # fmt: skip
        super().__init__(_Command("pip install", self.packages, cmd), restart_workers)


class CondaInstall(InstallPlugin):
    """`client.register_plugin(CondaInstall(packages=["scipy"], conda_options=[...]))`:
    `conda install --yes` into each worker's environment (`CONDA_EXE`, else `conda` on the
    PATH); a worker without conda makes `register_plugin` fail saying so."""

    def __init__(self, packages: list[str], conda_options: list[str] | None = None,
                 restart_workers: bool = False) -> None:  # fmt: skip
        if isinstance(packages, str) or not packages:
            raise TypeError(f"CondaInstall needs a list of packages, not {packages!r}")
        self.packages = list(packages)
        self.conda_options = list(conda_options or [])
        digest = hashlib.sha1(repr((self.packages, self.conda_options)).encode()).hexdigest()
        self.name = f"conda-install-{digest[:12]}"
        cmd = ["{conda}", "install", "--yes", *self.conda_options, *self.packages]
        super().__init__(_Command("conda install", self.packages, cmd), restart_workers)


class _Command:
    """An install step that runs a command; `{conda}` in it is the worker's conda."""

    def __init__(self, what: str, packages: list[str], cmd: list[str]) -> None:
        self.what, self.packages, self.cmd = what, packages, cmd

    def __repr__(self) -> str:
        return f"<{self.what} {' '.join(self.packages)}>"

    def __call__(self) -> None:
        import shutil
        import subprocess

        cmd = list(self.cmd)
        if cmd[0] == "{conda}":
            conda = os.environ.get("CONDA_EXE") or shutil.which("conda")
            if not conda:
                raise RuntimeError(
                    f"{self.what} {' '.join(self.packages)}: this worker has no conda (CONDA_EXE "
                    "is unset and there is no conda on its PATH); use PipInstall, or start "
                    "the workers in a conda environment"
                )
            cmd[0] = conda
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{self.what} {' '.join(self.packages)} failed on this worker (exit code "
                f"{proc.returncode}):\n{(proc.stderr or proc.stdout)[-2000:]}"
            )


def _first_time(what: str, worker: Any) -> bool:
    """True once per worker under its nanny (the name survives restarts, and one process
    may hold many nannies) for `what`: restarts happen once."""
    import psutil

    pid = int(os.environ.get("HPCDASK_NANNY_PID") or os.getpid())
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        started = 0
    name = hashlib.sha1(repr(getattr(worker, "name", None)).encode()).hexdigest()[:12]
    marker = _HostLock(f"{what}-{pid}-{started:.0f}-{name}").path + ".restarted"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _env_id() -> str:
    import sys

    return hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]


class UploadFile(WorkerPlugin):
    """What `client.upload_file(path)` registers: the file's bytes, written into each worker's
    upload directory (on its `sys.path`); a .zip/.egg/.whl itself goes on `sys.path`; a module
    of that name already imported is reloaded."""

    def __init__(self, filepath: str, load: bool = True) -> None:
        with open(filepath, "rb") as f:
            self.data = f.read()
        self.filename = os.path.basename(filepath)
        self.load = load
        self.name = f"upload-file-{self.filename}"

    def setup(self, worker: Any) -> None:
        import importlib
        import sys

        path = _write_upload(worker, self.filename, self.data)
        entry = path if self.filename.endswith((".zip", ".egg", ".whl")) else os.path.dirname(path)
        if entry not in sys.path:
            sys.path.insert(0, entry)
        importlib.invalidate_caches()
        if not self.load:
            return
        module = self.filename.rsplit(".", 1)[0].split("-")[0]
        if self.filename.endswith(".py") and module in sys.modules:
            importlib.reload(sys.modules[module])
        elif self.filename.endswith(".py"):
            importlib.import_module(module)


class UploadDirectory(WorkerPlugin):
    """A local directory, zipped here and unpacked into each worker's upload directory;
    `update_path=True` puts it on `sys.path`, `restart=True` restarts the workers after."""

    def __init__(self, path: str, restart: bool = False, update_path: bool = False,
                 skip_words: tuple = (".git", ".github", ".pytest_cache", "tests", "docs"),
                 skip: tuple = ()) -> None:  # fmt: skip
        import io
        import zipfile

        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isdir(path):
            raise NotADirectoryError(f"UploadDirectory: {path} is not a directory")
        self.dirname = os.path.basename(path.rstrip(os.sep))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if d not in skip_words and d != "__pycache__"]
                for name in files:
                    full = os.path.join(root, name)
                    rel = os.path.relpath(full, os.path.dirname(path))
                    if not any(word in rel.split(os.sep) for word in skip_words) and not any(
                        pred(full) for pred in skip
                    ):
                        z.write(full, rel)
        self.data = buf.getvalue()
        self.restart = restart
        self.update_path = update_path
        self.name = f"upload-directory-{self.dirname}"

    def setup(self, worker: Any) -> None:
        import importlib
        import io
        import sys
        import zipfile

        base = _upload_dir(worker)
        with zipfile.ZipFile(io.BytesIO(self.data)) as z:
            z.extractall(base)
        target = os.path.join(base, self.dirname)
        if self.update_path and target not in sys.path:
            sys.path.insert(0, target)
        importlib.invalidate_caches()
        if self.restart and _first_time(self.name, worker):
            _restart_worker(worker, f"restart after uploading {self.dirname}")


def _upload_dir(worker: Any) -> str:
    """This worker's own directory for uploads (the local directory is shared per host)."""
    base = getattr(worker, "local_directory", None) or os.getcwd()
    # The nanny's pid survives a restart; the name tells apart the workers of nannies that
    # share one process (a LocalCluster's), which would otherwise unpack into one directory.
    owner = os.environ.get("HPCDASK_NANNY_PID", os.getpid())
    name = str(getattr(worker, "name", "") or "").replace(os.sep, "_")
    path = os.path.join(base, f"uploads-{owner}-{name}" if name else f"uploads-{owner}")
    os.makedirs(path, exist_ok=True)
    return path


def _write_upload(worker: Any, filename: str, data: bytes) -> str:
    path = os.path.join(_upload_dir(worker), filename)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path
