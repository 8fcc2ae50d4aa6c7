"""The scheduler in a batch job of its own (`SLURMCluster(..., scheduler_job=True)`), and
clusters that outlive the Python process that made them (`shutdown_on_close=False`).

The scheduler job is small (1 core) with a long walltime, submitted with the cluster's own
queue, account and directives. It writes a scheduler file (address and secret, 0600) into the
cluster's directory under `~/.hpcdask/clusters/<name>/` (0700, on the shared home), where the
workers' jobs, this process and later ones (`Client("<name>")`, `hpcdask cluster list/down`)
find it. Only the owner can read that directory, so only the owner can find or join.

Here the cluster reaches its scheduler by address: `BatchScheduler` stands in for the
in-process Scheduler, offering the few attributes the cluster reads, refreshed from the
scheduler's `identity` as it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2

from ..core import retirement
from ..deploy.remote import RemoteScheduler
from . import script
from .batch import ENDED, JobSubmissionError, tail

SCHEDULER_BODY = """\
{% if secret_file %}
# The cluster secret travels in a 0600 file on the shared home, never on a command line.
HPCDASK_SECRET="$(cat {{ secret_file | arg }})" || exit 1
export HPCDASK_SECRET
{% endif %}
{% for line in job_script_prologue %}
{{ line }}
{% endfor %}
{{ python | arg }} -m hpcdask scheduler --port 0 --scheduler-file {{ scheduler_file | arg }}
{%- if interface %} --interface {{ interface | arg }}{% endif %}
{%- if protocol %} --protocol {{ protocol | arg }}{% endif %}
{%- for a in scheduler_extra_args %} {{ a | arg }}{% endfor %}

"""
#: what the scheduler's job asks for unless scheduler_job={...} says otherwise
SCHEDULER_JOB_DEFAULTS = {"cores": 1, "memory": "2GB", "walltime": "7-00:00:00", "processes": 1}
START_TIMEOUT = 300.0


def clusters_dir() -> Path:
    """Where clusters keep their scheduler file, secret and record (0700)."""
    from .. import config

    path = Path(os.path.expanduser(
        os.environ.get("HPCDASK_CLUSTERS_DIR") or config.get("clusters-dir", None)
        or "~/.hpcdask/clusters"))  # fmt: skip
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def cluster_dir(name: str, create: bool = False) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a cluster name is a plain word, not {name!r}")
    path = clusters_dir() / name
    if create:
        path.mkdir(mode=0o700, exist_ok=True)
    return path


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def scheduler_options(cluster: Any, spec: Any) -> dict:
    """The options of the scheduler's job: the workers' (queue, account...) with its size."""
    if spec is True:
        spec = {}
    if not isinstance(spec, dict):
        raise TypeError(f"scheduler_job must be True or a dict of job options, not {spec!r}")
    opts = dict(cluster._opts)
    for key in ("job_cpu", "job_mem", "lifetime", "worker_extra_args"):
        opts.pop(key, None)
    opts.update(SCHEDULER_JOB_DEFAULTS)
    extra = dict(spec)
    opts["scheduler_extra_args"] = list(extra.pop("scheduler_extra_args", []))
    unknown = set(extra) - set(opts)
    if unknown:
        raise TypeError(f"scheduler_job got unknown option(s) {sorted(unknown)}; it takes the "
                        "job options (cores, memory, walltime, queue, account, "
                        "job_extra_directives...) and scheduler_extra_args")  # fmt: skip
    opts.update({k: v for k, v in extra.items() if v is not None})
    opts["job_name"] = f"{opts.get('job_name') or opts['name']}-scheduler"
    return opts


def render_scheduler_script(system: str, opts: dict, scheduler_file: str,
                            secret_file: str) -> str:  # fmt: skip
    """The system's own job header with the scheduler as its body."""
    ctx = script.context(system, opts, secret_file=secret_file)
    ctx.update(scheduler_file=scheduler_file, scheduler_extra_args=opts["scheduler_extra_args"])
    env = script.environment(ctx.get("template_dir"))
    env.loader = jinja2.ChoiceLoader([jinja2.DictLoader({"_worker.sh.j2": SCHEDULER_BODY}),
                                      env.loader])  # fmt: skip
    text = env.get_template(f"{system}.sh.j2").render(ctx)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


def tls_args(security: Any, directory: Path) -> list[str]:
    """`--tls-*` flags for the scheduler's job; in-memory credentials become 0600 files in the
    cluster's (0700) directory, removed with it."""
    memory = security._tls_memory
    if memory:
        paths = {}
        for part in ("ca", "cert", "key"):
            paths[part] = directory / f"tls-{part}.pem"
            write_private(paths[part], memory[part].decode())
        ca, cert, key = paths["ca"], paths["cert"], paths["key"]
    else:
        ca = security.tls_ca_file
        cert = security.tls_scheduler_cert or security.tls_client_cert
        key = security.tls_scheduler_key or security.tls_client_key
    args = ["--tls-ca-file", str(ca), "--tls-cert", str(cert)]
    return args + (["--tls-key", str(key)] if key else [])


class BatchScheduler(RemoteScheduler):
    """A scheduler running in a batch job, seen from the cluster that submitted it (through
    the cluster's connection pool)."""

    def __init__(self, cluster: Any, job_id: str, directory: Path, address: str) -> None:
        super().__init__(address, cluster.security)
        self.cluster = cluster
        self.job_id = job_id
        self.directory = directory
        self.worker_info: dict[str, dict] = {}
        self.state = SimpleNamespace(workers={}, retirement_order=self._retirement_order)
        self._pool = cluster._pool
        self.status = "running"

    def __repr__(self) -> str:
        return f"<BatchScheduler job {self.job_id} at {self.address}>"

    def _retirement_order(self, groups: Any = None) -> list:
        return retirement.order(self.state.workers, groups)

    @property
    def dashboard_link(self) -> str | None:
        from ..dashboard import link_from_identity

        return link_from_identity(self.address, self.info, self.cluster.security.secret)

    async def refresh(self) -> dict:
        info = await super().refresh()
        self.worker_info = {a: w for a, w in info["workers"].items()}
        self.state.workers = {
            a: SimpleNamespace(processing=range(w.get("processing", 0)), nbytes=w.get("nbytes", 0))
            for a, w in info["workers"].items()
        }  # fmt: skip
        return info

    def start_refreshing(self) -> None:
        self._refresher = asyncio.ensure_future(self._keep_fresh())

    async def retire_workers(self, workers: list[str], close: bool = True, **kw: Any) -> list:
        return await self._pool.call(self.address, "retire-workers", workers=workers, close=close)

    async def close(self) -> None:
        """Stop the scheduler and its job, and forget the cluster's directory."""
        if self.status == "closed":
            return
        self.status = "closed"
        if self._refresher is not None:
            self._refresher.cancel()
        try:
            await asyncio.wait_for(self._pool.call(self.address, "terminate"), 5)
        except Exception:
            pass
        try:
            await self.cluster.batch.cancel([self.job_id])
        except JobSubmissionError:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)

    async def detach(self) -> None:
        """Leave the scheduler running (a detached cluster)."""
        self.status = "closed"
        if self._refresher is not None:
            self._refresher.cancel()


async def start(cluster: Any, spec: Any) -> BatchScheduler:
    """Submit the scheduler's job and wait until it serves; the error says why it did not."""
    name = cluster.cluster_name or f"{cluster._opts['name']}-{uuid.uuid4().hex[:8]}"
    directory = cluster_dir(name, create=True)
    if (directory / "scheduler.json").exists():
        raise ValueError(f"a cluster named {name!r} exists already ({directory}); "
                         f"`hpcdask cluster down {name}` stops it")  # fmt: skip
    secret_file = directory / "secret"
    write_private(secret_file, cluster.security.secret.hex() + "\n")
    scheduler_file = directory / "scheduler.json"
    opts = scheduler_options(cluster, spec)
    if cluster.security.has_tls:  # the scheduler's certificate, as 0600 files in its directory
        opts["scheduler_extra_args"] = [*tls_args(cluster.security, directory),
                                        *opts["scheduler_extra_args"]]  # fmt: skip
    text = render_scheduler_script(cluster.system, opts, str(scheduler_file), str(secret_file))
    job_id = await cluster.batch.submit(text, cwd=cluster._submit_dir)
    record = {"name": name, "system": cluster.system, "scheduler_job": job_id, "jobs": [],
              "created": time.time(), "cancel_command": list(cluster.batch.cancel_command),
              "detached": not cluster.shutdown_on_close, "log_directory": opts.get("log_directory"),
              "job_name": opts["job_name"], "submit_dir": cluster._submit_dir}  # fmt: skip
    write_private(directory / "cluster.json", json.dumps(record))
    deadline = time.monotonic() + float(opts.get("scheduler_job_timeout") or START_TIMEOUT)
    while not scheduler_file.exists():
        st = (await cluster.batch.status([job_id])).get(job_id)
        if st is not None and st.state in ENDED:
            output = ""
            for path in cluster.batch.output_files(job_id, opts["job_name"],
                                                   opts.get("log_directory"), cluster._submit_dir):  # fmt: skip
                output = output or tail(path)
            shutil.rmtree(directory, ignore_errors=True)
            raise JobSubmissionError(f"the scheduler's job {job_id} ended ({st.state}"
                                     f"{': ' + st.reason if st.reason else ''}) before it served"
                                     + (f"; its output:\n{output}" if output else ""))  # fmt: skip
        if time.monotonic() > deadline:
            await cluster.batch.cancel([job_id])
            shutil.rmtree(directory, ignore_errors=True)
            why = f": {st.reason}" if st is not None and st.reason else ""
            raise TimeoutError(f"the scheduler's job {job_id} did not start within "
                               f"{deadline - time.monotonic() + START_TIMEOUT:.0f}s "
                               f"({st.state if st else 'unknown'}{why})")  # fmt: skip
        await asyncio.sleep(0.2)
    if cluster.shutdown_on_close:  # a script that forgot close() must not leave it queued
        import weakref

        weakref.finalize(cluster, _cancel_at_exit, list(cluster.batch.cancel_command), job_id,
                         str(directory))  # fmt: skip
    from ..utils.schedfile import read_scheduler_file

    address, _ = read_scheduler_file(str(scheduler_file))
    scheduler = BatchScheduler(cluster, job_id, directory, address)
    await scheduler.refresh()
    scheduler.start_refreshing()
    return scheduler


def remember_jobs(cluster: Any) -> None:
    """Record the cluster's worker jobs, for `hpcdask cluster list/down` from other processes."""
    directory = getattr(cluster.scheduler, "directory", None)
    if directory is None or not (directory / "cluster.json").exists():
        return
    record = json.loads((directory / "cluster.json").read_text())
    record["jobs"] = sorted(set(record["jobs"]) | set(cluster.jobs))
    record["secret_files"] = [str(p) for p in [cluster._secret_path, *cluster._tls_files] if p]
    write_private(directory / "cluster.json", json.dumps(record))


def _cancel_at_exit(cancel_command: list[str], job_id: str, directory: str) -> None:
    import subprocess

    shutil.rmtree(directory, ignore_errors=True)
    try:
        subprocess.run([*cancel_command, job_id], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass
