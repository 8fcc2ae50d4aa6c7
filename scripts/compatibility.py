"""Write docs/compatibility.md: dask.distributed's public names next to hpcdask's.

    python scripts/compatibility.py          # rewrites docs/compatibility.md
    python scripts/compatibility.py --check  # exits 1 if the file is not what it would write

For the top level (distributed.__all__) and the public names of Client, Future, LocalCluster,
Worker, Scheduler and Nanny, a name is present when hpcdask's object has it (servers: also as
an attribute of a freshly made, unstarted instance). tests/test_compatibility.py regenerates
the table and fails when it differs, so a name the file claims cannot silently disappear.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "compatibility.md"

# Why a name is missing, or how it differs; names without a note and absent are "not (yet)".
NOTES = {
    "hpcdask": {
        "Actor": "what `submit(Cls, actor=True).result()` returns",
        "ActorFuture": "what an actor's method returns",
        "Reschedule": "raised in a task: run again, not an error (worker state `rescheduled`)",
        "TimeoutError": "the builtin TimeoutError, as in dask.distributed",
        "local_client": "dask's older name of `worker_client`",
        "Lock": "scheduler-held (client/primitives.py); likewise the other primitives",
        "Adaptive": "what `cluster.adapt()` returns (deploy/adaptive.py)",
        "CancelledError": "`concurrent.futures.CancelledError`; FutureCancelledError subclasses it",
        "CompatibleExecutor": "raises, as dask's: use `client.get_executor()`",
        "CondaInstall": "`conda install` on every worker; no conda there: an error saying so",
        "Environ": "a NannyPlugin: nannies restart their workers with the variables",
        "InstallPlugin": "on the workers (PipInstall, CondaInstall), not the scheduler",
        "NannyPlugin": "`register_plugin` sends it to every nanny, before its worker starts",
        "Status": "hpcdask's statuses (created, starting, running, paused, closing, closed, "
        "failed); equal to the strings `.status` holds",
        "SubprocessCluster": "the scheduler in a process of its own, workers under nannies "
        "(deploy/remote.py)",
        "UploadFile": "also reaches workers that join later",
        "print": "in a task also printed in every client (event topic `print`)",
        "warn": "in a task also warned in every client (event topic `warn`)",
        "widgets": "absent: dask's Jupyter HTML templates; Client and clusters have "
        "`_repr_html_` of their own",
        "dask": "dask's own module, as dask.distributed re-exports it",
        "connect": "hpcdask.comm.connect (authenticated comms)",
        "get_task_metadata": "`state` of the block's tasks; `metadata` empty (none kept)",
        "span": "recorded in the event log (topic `spans`); dask's annotation set in the block",
        "sync": "runs a coroutine on a loop in another thread (utils/loop.py)",
    },
    "Client": {
        "amm": "one policy, ReduceReplicas (core/amm.py); off until `client.amm.start()`",
        "benchmark_hardware": "sizes up to 16 MiB, about a second; disk figures include the "
        "page cache, as dask's",
        "cancel": "as dask's: `force=True` for every client holding the future, else only "
        "for this one; `msg=` joins the reason",
        "compute": "`traverse=True`: a container among the collections is computed as one value",
        "forward_logging": "records travel through the scheduler's event log",
        "get_versions": "`check=True`: ValueError when python, hpcdask, cloudpickle, msgpack "
        "or dask differ, a warning for optional packages",
        "map": "`actor=True`: one actor per item; `batch_size=` tasks per message (default "
        "1,000); `fifo_timeout=` accepted, no effect (equal priorities run in submission order)",
        "replicate": "`branching_factor=` accepted, no effect (each copy comes from a holder)",
        "nbytes": "`summary=True` (the default) sums per key prefix",
        "normalize_collection": "Delayed and `.dask`-settable collections get the smaller "
        "graph; an expression collection is rebuilt only when all its keys are held",
        "register_worker_callbacks": "a WorkerPlugin running `setup()` on every worker",
        "restart_workers": "workers without a nanny are closed (`removed`)",
        "scheduler_info": "`n_workers=` limits the workers listed",
        "start": "for asynchronous clients; a synchronous one starts in its constructor",
        "write_scheduler_file": "owner-only file with the cluster's secret",
    },
    "Future": {
        "bind_client": "moves the hold to another client of the same scheduler",
        "substitute": "TaskRef's semantics; the Future is a duck-typed dask future "
        "(`__dask_future__`), not a TaskRef subclass",
    },
    "LocalCluster": {
        "start_worker": "raises, as dask's: use `scale`",
        "from_name": "a handle on a detached cluster (`hpcdask cluster up --name`)",
        "observed": "names of the workers connected to the scheduler",
    },
    "Worker": {"*": "dask.distributed's server internals; hpcdask's servers differ"},
    "Scheduler": {"*": "dask.distributed's server internals; hpcdask's servers differ"},
    "Nanny": {"*": "dask.distributed's server internals; hpcdask's servers differ"},
}


def _public(obj: Any) -> list[str]:
    return sorted(n for n in dir(obj) if not n.startswith("_"))


def _instances() -> dict[str, Any]:
    """Unstarted servers (attributes set in __init__ count as present)."""
    import hpcdask

    s = hpcdask.Scheduler(host="127.0.0.1", dashboard_address=None)
    return {
        "Scheduler": s,
        "Worker": hpcdask.Worker("tcp://127.0.0.1:1", security=s.security),
        "Nanny": hpcdask.Nanny("tcp://127.0.0.1:1", security=s.security),
    }


def rows() -> dict[str, list[tuple[str, bool, str]]]:
    """{surface: [(name, present in hpcdask, note)]}."""
    import distributed

    import hpcdask

    instances = _instances()
    out: dict[str, list[tuple[str, bool, str]]] = {}
    top = sorted(set(distributed.__all__))
    out["hpcdask"] = [(n, hasattr(hpcdask, n), NOTES["hpcdask"].get(n, "")) for n in top]
    for surface in ("Client", "Future", "LocalCluster", "Worker", "Scheduler", "Nanny"):
        theirs, ours = getattr(distributed, surface), getattr(hpcdask, surface)
        inst = instances.get(surface)
        notes = NOTES.get(surface, {})
        table = []
        for name in _public(theirs):
            present = hasattr(ours, name) or (inst is not None and hasattr(inst, name))
            note = notes.get(name, "" if present else notes.get("*", ""))
            table.append((name, present, note))
        out[surface] = table
    return out


#: Constructor options hpcdask takes under dask.distributed's name other than as a parameter.
_TAKEN = {
    "LocalCluster": {"ip": "the scheduler's host (dask's older name)",
                     "scheduler_kwargs": "merged into `scheduler_options`"},
}  # fmt: skip
UNHANDLED = "UNHANDLED: neither implemented nor refused"


def option_rows() -> dict[str, list[tuple[str, bool, str]]]:
    """{"Cls()": [(option, implemented, note)]} for the constructors' keyword options: an
    option is implemented (a parameter, or passed on to the worker), or refused by name
    (hpcdask/utils/options.py, client.py's list); anything else would be silently ignored."""
    import inspect

    import distributed

    import hpcdask
    from hpcdask.client.client import _NOT_IMPLEMENTED
    from hpcdask.utils import options

    tables = {"Client": {k: options.Option() for k in _NOT_IMPLEMENTED},
              "Scheduler": options.SCHEDULER, "Worker": options.WORKER,
              "Nanny": options.NANNY, "LocalCluster": options.LOCAL_CLUSTER}  # fmt: skip
    passed_on = {"Nanny": hpcdask.Nanny.WORKER_OPTIONS,
                 "LocalCluster": hpcdask.Nanny.WORKER_OPTIONS}  # fmt: skip
    out: dict[str, list[tuple[str, bool, str]]] = {}
    for surface, refused in tables.items():
        theirs = inspect.signature(getattr(distributed, surface)).parameters
        ours = inspect.signature(getattr(hpcdask, surface)).parameters
        rows_ = []
        for name, p in theirs.items():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if name in ours or name in passed_on.get(surface, ()):
                note = "passed on to every worker" if name not in ours else ""
                rows_.append((name, True, note))
            elif name in _TAKEN.get(surface, {}):
                rows_.append((name, True, _TAKEN[surface][name]))
            elif name in refused:
                why = refused[name].why
                rows_.append((name, False, "NotImplementedError" + (f": {why}" if why else "")))
            else:
                rows_.append((name, False, UNHANDLED))
        out[f"{surface}()"] = rows_
    return out


def render(table: dict[str, list[tuple[str, bool, str]]]) -> str:
    import distributed

    lines = [
        "# Compatibility with dask.distributed",
        "",
        f"Generated by `python scripts/compatibility.py` against distributed "
        f"{distributed.__version__}; `tests/test_compatibility.py` fails when this file "
        "differs from what the script writes (a name claimed here went missing, or a new one "
        "came). Present means the name exists in hpcdask; behaviour is documented where it "
        "is implemented. An option of dask.distributed that hpcdask does not implement is a "
        "`NotImplementedError` naming it. The last tables list the constructors' keyword "
        "options: implemented, or refused with what to use instead (given at the value that "
        "asks for nothing, such as `validate=False`, they are accepted); the test fails on an "
        "option that is neither.",
        "",
    ]
    for surface, entries in table.items():
        have = sum(p for _, p, _ in entries)
        title = "Top level (`distributed.__all__`)" if surface == "hpcdask" else f"`{surface}`"
        if surface.endswith("()"):
            title = f"`{surface}` keyword options"
        lines += [f"## {title}: {have} of {len(entries)}", "", "| name | hpcdask | notes |",
                  "|---|---|---|"]  # fmt: skip
        for name, present, note in entries:
            lines.append(f"| `{name}` | {'yes' if present else 'no'} | {note} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render({**rows(), **option_rows()})
    if "--check" in argv:
        return 0 if DOC.exists() and DOC.read_text() == text else 1
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
