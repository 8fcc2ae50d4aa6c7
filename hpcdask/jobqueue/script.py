"""Job scripts without a cluster: options (config + keywords) -> template variables -> text.

Kept free of any scheduler or subprocess so that every site profile and option can be rendered
and checked in tests, and so that `hpcdask job-script` prints exactly what a cluster submits.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import jinja2

from hpcdask import config
from hpcdask.utils.sizes import parse_bytes

PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "templates"  # shipped (package data)
#: Per system: environment variable holding the job id inside a job (worker names embed it).
JOB_ID_VARS = {"slurm": "$SLURM_JOB_ID", "pbs": "$PBS_JOBID", "sge": "$JOB_ID"}
PLACEHOLDER_ADDRESS = "tcp://SCHEDULER-ADDRESS:8786"

# keyword arguments the Cluster classes take that are not job-script options
_NOT_OPTIONS = {"site", "template_dir", "config_name", "n_workers", "security", "loop", "asynchronous",
                "secret_file", "scheduler_address", "worker_name"}  # fmt: skip


def parse_walltime(text: str | int | None) -> int | None:
    """Seconds in `[D-]HH:MM:SS`, `MM:SS` or a number of minutes (SLURM's reading of a bare number)."""
    if text in (None, ""):
        return None
    if isinstance(text, (int, float)):
        return int(text * 60)
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", str(text))
    if not m:
        raise ValueError(f"walltime {text!r} is not [D-]HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if b is None:  # bare minutes
        h, mi, s = 0, a, 0
    elif c is None:  # MM:SS, or D-HH:MM
        h, mi, s = (a, b, 0) if days is not None else (0, a, b)
    else:
        h, mi, s = a, b, c
    return (days or 0) * 86400 + h * 3600 + mi * 60 + s


def format_walltime(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def default_processes(cores: int) -> int:
    """Workers per job when not given: one per core up to 4, then the divisor nearest sqrt(cores)."""
    if cores <= 4:
        return cores
    return min(f for f in range(1, cores + 1) if cores % f == 0 and f >= math.sqrt(cores))


def format_size(n: int) -> str:
    """The shortest exact spelling the worker CLI understands (24GB, 512MiB, or bytes)."""
    for unit, size in (("GB", 10**9), ("GiB", 2**30), ("MB", 10**6), ("MiB", 2**20)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(int(n))


def job_mem(system: str, memory: str, nbytes: int) -> str:
    """The batch system's spelling of the job's memory, rounded up.

    Both read K/M/G as binary units. PBS gets dask-jobqueue's spelling (whole GB from 10 GiB,
    MB from 10 MiB), so a switched script asks for the same amount; SLURM gets whole MiB, which
    never asks for more than dask-jobqueue's whole GiB and is closer to *memory*.
    """
    if system == "pbs":
        for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
            if nbytes >= 10 * size:
                return f"{-(-nbytes // size)}{unit}"
        return f"{nbytes}B"
    mib = -(-nbytes // 2**20)
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def default_job_name(system: str, name: str) -> str:
    """The batch job's name when job_name= is not given: *name*, except that PBS only takes
    letters, digits and `_.+-`, starting with a letter (so `dw-$PBS_JOBID` becomes `dw-PBS_JOBID`;
    the workers' own names still get the expanded variable)."""
    if system != "pbs":
        return name
    text = re.sub(r"[^A-Za-z0-9_.+-]", "", str(name))[:236]
    return text if text[:1].isalpha() else f"j{text}"[:236]


def shell_arg(value: Any) -> str:
    """Quote for the shell unless harmless; `$VARS` stay expandable (e.g. local_directory=$TMPDIR)."""
    text = str(value)
    if re.fullmatch(r"[\w@%+=:,./${}~-]+", text):
        return text
    if "$" in text:
        return '"' + re.sub(r'(["\\`])', r"\\\1", text) + '"'
    return shlex.quote(text)


def _without(text: str, skips: list[str]) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not any(s and s in line for s in skips))


def environment(template_dir: str | None = None) -> jinja2.Environment:
    dirs = [os.path.expanduser(template_dir)] if template_dir else []
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*dirs, str(PACKAGED_TEMPLATES)]),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False,  # noqa: S701 - shell, not HTML
    )  # fmt: skip
    env.filters["without"] = _without
    env.filters["arg"] = shell_arg
    env.filters["megabytes"] = lambda n: f"{int(n) // 2**20}M"
    return env


#: dask-jobqueue's old option names and their new ones (it still accepts them, with a warning).
RENAMED = {"env_extra": "job_script_prologue", "extra": "worker_extra_args",
           "job_extra": "job_extra_directives", "header_skip": "job_directives_skip"}  # fmt: skip


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside hpcdask, so a warning points at the user's line."""
    frame, level = sys._getframe(1), 1
    package = str(Path(__file__).resolve().parent.parent)
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _renamed(old: str, new: str, why: str = "") -> None:
    warnings.warn(
        f"{old} has been renamed to {new}{why}. You are still using it (even if only set to [];"
        f" please also check config files). If you did not set {new} yet, {old} will be "
        f"respected for now, but it will be removed in a future release. If you already set "
        f"{new}, {old} is ignored and you can remove it.",
        FutureWarning,
        stacklevel=_user_stacklevel(),
    )


def options(system: str, site: str | None = None, config_name: str | None = None,
            **kwargs: Any) -> dict:  # fmt: skip
    """Config for *system* (with *site*, and dask's `jobqueue.<config_name or system>`)
    overridden by keywords (None = keep the config value), with dask-jobqueue's old names
    resolved to the new ones."""
    if site is not None:
        meta = config.load_site(config.find_site(site, config.get("jobqueue.site-dirs") or []))
        if meta["system"] != system:
            raise ValueError(
                f"site {site!r} is a {meta['system']} site, not {system}: "
                f"use {meta['system'].upper()}Cluster or --system {meta['system']}"
            )
    if system not in config.SYSTEMS:
        raise ValueError(f"unknown batch system {system!r}; known: {', '.join(config.SYSTEMS)}")
    if config_name not in (None, system) and config.dask_layer(system, config_name) is None:
        raise ValueError(
            f"config_name={config_name!r}: there is no section jobqueue.{config_name} in dask's "
            "configuration (~/.config/dask/*.yaml, DASK_* variables, dask.config.set)"
            + ("" if _dask_installed() else "; dask is not installed here")
            + ". For hpcdask's own profiles use site= (see `hpcdask sites`)"
        )
    merged = config.collect(site=site, dask=(system, config_name))["jobqueue"]
    opts = {k.replace("-", "_"): v for k, v in merged[system].items()}
    unknown = sorted(set(kwargs) - set(opts) - _NOT_OPTIONS)
    if unknown:
        raise TypeError(f"unexpected option(s) for {system}: {', '.join(unknown)} (known: "
                        f"{', '.join(sorted(set(opts) - set(RENAMED)))})")  # fmt: skip
    for k, v in kwargs.items():
        if v is not None and k in opts:
            opts[k] = list(v) if isinstance(v, tuple) else v
    for old, new in RENAMED.items():
        value = opts.pop(old, None)
        if value is not None:
            _renamed(old, new)
            if not opts.get(new):
                opts[new] = list(value) if isinstance(value, (list, tuple)) else [value]
    if system == "pbs" and not opts.get("account"):
        opts["account"] = os.environ.get("PBS_ACCOUNT") or None
    if system in ("slurm", "pbs") and opts.get("project") is not None:
        _renamed("project", "account", " as it is passed with -A")
        opts["account"] = opts.get("account") or opts["project"]
        opts["project"] = None
    opts["template_dir"] = kwargs.get("template_dir") or merged.get("template-dir")
    _worker_args(opts)
    return opts


def _worker_args(opts: dict) -> None:
    """worker_extra_args as dask-jobqueue's shell reads them: each item split into words
    (`"--resources GPU=1"` is two), and `--lifetime 55m --lifetime-stagger 4m` (its documented
    idiom) turned into the lifetime options, so the cluster's replacement jobs follow them."""
    from hpcdask.utils.durations import parse_duration

    words = [w for a in opts.get("worker_extra_args") or [] for w in shlex.split(str(a))]
    args, out = words, []
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag in ("--lifetime", "--lifetime-stagger"):
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"worker_extra_args: {flag} needs a value, e.g. 55m")
                value, i = args[i + 1], i + 1
            opts[flag[2:].replace("-", "_")] = parse_duration(value)
        else:
            out.append(args[i])
        i += 1
    if opts.get("worker_extra_args") is not None:
        opts["worker_extra_args"] = out


def _dask_installed() -> bool:
    from hpcdask.config import _dask

    return _dask.available()


def lifetime_for(walltime_s: int | None, opts: dict) -> tuple[int | None, int, int]:
    """(lifetime, stagger, margin) in seconds. Workers leave *margin* before walltime (time to
    hand their data over) and replacements are submitted *margin* before workers leave."""
    margin = opts.get("lifetime_margin")
    if margin is None:
        margin = min(300, max(10, (walltime_s or 0) // 10))
    margin = int(margin)
    if opts.get("lifetime") is not None:
        life = int(opts["lifetime"])
        return (life or None), int(opts.get("lifetime_stagger") or 0), margin
    if not walltime_s:
        return None, 0, margin
    stagger = opts.get("lifetime_stagger")
    stagger = int(stagger if stagger is not None else margin // 4)
    return max(1, walltime_s - margin), stagger, margin


def worker_command(value: Any) -> tuple[str, bool]:
    """(what follows `python -m`, whether it is hpcdask's own worker, which takes --nworkers
    and --nanny). dask-jobqueue's default, distributed's worker, means ours here."""
    from hpcdask.config._dask import DASK_WORKER_COMMANDS

    text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value or "")
    text = text.strip()
    if not text or text in DASK_WORKER_COMMANDS or text in ("hpcdask worker", "hpcdask"):
        return "hpcdask worker", True
    return text, False


def tls_args(security: Any) -> list[str]:
    """The worker's `--tls-*` flags for a Security holding certificate files (worker role,
    falling back as the TLS layer does); empty without TLS files."""
    if security is None or not getattr(security, "tls_ca_file", None):
        return []
    args = ["--tls-ca-file", security.tls_ca_file]
    for role in ("worker", "scheduler", "client"):
        cert = getattr(security, f"tls_{role}_cert", None)
        if cert:
            args += ["--tls-cert", cert]
            key = getattr(security, f"tls_{role}_key", None)
            return args + (["--tls-key", key] if key else [])
    return args


def context(system: str, opts: dict, scheduler_address: str | None = None,
            secret_file: str | None = None, security: Any = None) -> dict:  # fmt: skip
    """Template variables: the options plus what follows from them (threads, memory, lifetime)."""
    cores, memory = opts.get("cores"), opts.get("memory")
    if not cores or cores < 1:
        raise ValueError(
            f"cores= is required: how many cores each job has (or set jobqueue.{system}.cores)"
        )
    if not memory:
        raise ValueError(
            f"memory= is required: e.g. memory='16GB' per job (or set jobqueue.{system}.memory)"
        )
    nbytes = parse_bytes(memory)
    processes = opts.get("processes") or default_processes(cores)
    if processes > cores:
        raise ValueError(f"processes={processes} is more than cores={cores}")
    walltime_s = parse_walltime(opts.get("walltime"))
    lifetime, stagger, margin = lifetime_for(walltime_s, opts)
    ctx = dict(opts)
    ctx.update(
        system=system, cores=cores, memory=str(memory), memory_bytes=nbytes, processes=processes,
        nthreads=max(1, cores // processes), memory_limit=format_size(nbytes // processes),
        job_cpu=opts.get("job_cpu") or cores, walltime_seconds=walltime_s,
        walltime=format_walltime(walltime_s) if walltime_s else None,
        job_mem=opts.get("job_mem") or job_mem(system, str(memory), nbytes),
        job_name=opts.get("job_name") or default_job_name(system, opts["name"]),
        python=opts.get("python") or sys.executable,
        lifetime=lifetime, lifetime_stagger=stagger, lifetime_margin=margin,
        scheduler_address=scheduler_address or PLACEHOLDER_ADDRESS, secret_file=secret_file,
        worker_name=f"{opts['name']}-{JOB_ID_VARS.get(system, '$$')}",
        tls_args=tls_args(security),
    )  # fmt: skip
    ctx["worker_command"], ctx["hpcdask_worker"] = worker_command(opts.get("worker_command"))
    if system == "slurm" and ctx.get("resource_spec"):
        raise ValueError(
            "SLURM has no resource_spec: use job_extra_directives, e.g. ['--gres=gpu:1']"
        )
    if system == "pbs" and ctx.get("resource_spec"):
        ctx["resources"] = [ctx["resource_spec"]]
    elif system == "pbs" and opts.get("qstat_flavour") == "torque":  # Torque has no select
        ctx["resources"] = [
            "nodes=1:ppn={{ job_cpu }}{% if job_mem %},mem={{ job_mem }}{% endif %}"
            if str(r).startswith("select=") else r for r in ctx.get("resources") or []
        ]  # fmt: skip
    env = environment(opts.get("template_dir"))
    for key in ("resource_spec", "job_extra_directives", "resources"):  # may use {{ cores }} etc.
        value = ctx.get(key)
        if isinstance(value, str):
            ctx[key] = env.from_string(value).render(ctx)
        elif isinstance(value, list):
            rendered = (env.from_string(str(v)).render(ctx).strip() for v in value)
            ctx[key] = [v for v in rendered if v]
    return ctx


def render(system: str, ctx: dict) -> str:
    env = environment(ctx.get("template_dir"))
    try:
        template = env.get_template(f"{system}.sh.j2")
    except jinja2.TemplateNotFound:
        raise ValueError(f"no job script template {system}.sh.j2 in "
                         f"{ctx.get('template_dir') or ''} {PACKAGED_TEMPLATES}") from None  # fmt: skip
    text = template.render(ctx)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


def job_script(system: str, site: str | None = None, scheduler_address: str | None = None,
               secret_file: str | None = None, security: Any = None,
               **kwargs: Any) -> str:  # fmt: skip
    """The script a `<System>Cluster(site=site, **kwargs)` would submit."""
    opts = options(system, site=site, **kwargs)
    return render(system, context(system, opts, scheduler_address, secret_file, security))
