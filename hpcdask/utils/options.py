"""One error for keyword options hpcdask does not take, so none is silently ignored.

A dask.distributed option that hpcdask does not implement is a `NotImplementedError` naming it
(with what to do instead, where there is something); given at dask.distributed's default value
it asks for nothing and is accepted, so code that spells out defaults runs unchanged. Any other
name is a `TypeError`, as Python gives for a misspelt keyword.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: "no value" defaults: an option given as one of these asks for nothing.
_UNSET = (None, False, (), [], {})


class Option:
    """A dask.distributed option hpcdask lacks: `why` says what to use instead; `defaults` are
    the values that ask for nothing (None and these; if none are given, None, False and empty
    containers)."""

    __slots__ = ("why", "defaults")

    def __init__(self, why: str = "", *defaults: Any) -> None:
        self.why = why
        self.defaults = (None, *defaults) if defaults else _UNSET

    def asks_nothing(self, value: Any) -> bool:
        return any(value is d or (type(value) is type(d) and value == d) for d in self.defaults)


def refuse(where: str, kwargs: Mapping[str, Any], why: str = "") -> None:
    """NotImplementedError naming each option in `kwargs` (nothing is silently ignored)."""
    if kwargs:
        names = ", ".join(f"{k}=" for k in sorted(kwargs))
        raise NotImplementedError(
            f"{where}({names}): dask.distributed's option{'s' if len(kwargs) > 1 else ''} "
            f"{names} {'are' if len(kwargs) > 1 else 'is'} not implemented by hpcdask"
            + (f" ({why})" if why else "; docs/compatibility.md lists what is")
        )


def check_options(where: str, kwargs: Mapping[str, Any], known: Mapping[str, Option],
                  accepts: str = "") -> None:  # fmt: skip
    """Raise for every option in `kwargs`: dask.distributed's (`known`) unless at a default,
    then anything else."""
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword arguments {unknown}"
                        + (f"; it accepts {accepts}" if accepts else ""))  # fmt: skip
    for name in sorted(kwargs):
        option = known[name]
        if not option.asks_nothing(kwargs[name]):
            refuse(where, {name: kwargs[name]}, option.why)


# dask.distributed's constructor options that hpcdask does not implement, per class. Options
# hpcdask implements under the same name are in the signatures, not here.

_LOGS = "set the level with HPCDASK_LOGGING_LEVEL or logging.getLogger('hpcdask').setLevel"
_NO_WORKER_DASHBOARD = "workers have no dashboard of their own; the scheduler's shows each worker"
_CONTACT = "servers advertise the address they listen on; choose it with host= or interface="
_TESTING = "a testing aid of dask.distributed; hpcdask's tests call the state machines' validate()"

_SERVER = {
    "services": Option("the one HTTP service is the dashboard: dashboard_address="),
    "service_kwargs": Option("the one HTTP service is the dashboard: dashboard_address="),
    "extensions": Option("dask.distributed's server internals; use a plugin (register_plugin)"),
    "validate": Option(_TESTING),
    "transition_counter_max": Option(_TESTING),
    "contact_address": Option(_CONTACT),
    "http_prefix": Option("the dashboard serves at its root; config dashboard.link for a proxy"),
}

SCHEDULER = {
    **_SERVER,
    "idle_timeout": Option("a scheduler runs until it is closed; lifetime= on the batch job"),
    "preload": Option(
        "preload= runs on workers (Worker/Nanny preload=); a SchedulerPlugin "
        "runs code in the scheduler"
    ),
    "preload_argv": Option("preload= runs on workers (Worker/Nanny preload_argv=)"),
    "plugins": Option("client.register_plugin(SchedulerPlugin()) adds one to a running scheduler"),
    "jupyter": Option("no Jupyter server in the scheduler"),
    "blocked_handlers": Option("every handler already needs the cluster's secret"),
}

WORKER = {
    **_SERVER,
    "scheduler_ip": Option("pass scheduler_address='tcp://host:port'"),
    "scheduler_port": Option("pass scheduler_address='tcp://host:port'"),
    "executor": Option("tasks run on the worker's own pool of nthreads= threads"),
    "silence_logs": Option(_LOGS),
    "preload": Option(
        "preload= is run by the Nanny that starts the worker process; or use a WorkerPlugin"
    ),
    "preload_argv": Option("preload_argv= is run by the Nanny that starts the worker process"),
    "heartbeat_interval": Option(
        "set config worker.heartbeat-interval (HPCDASK_WORKER__HEARTBEAT_INTERVAL)"
    ),
    "metrics": Option("the scheduler's /metrics has every worker's figures"),
    "startup_information": Option("use a WorkerPlugin's setup()"),
    "dashboard_address": Option(_NO_WORKER_DASHBOARD),
    "dashboard": Option(_NO_WORKER_DASHBOARD),
    "low_level_profiler": Option("client.profile() samples Python frames"),
    "profile_cycle_interval": Option("client.profile() samples Python frames"),
    "lifetime_restart": Option("lifetime= retires the worker; a batch cluster replaces it"),
    "data": Option("choose the spill store with config worker.memory.spill-store"),
    "scheduler_sni": Option("TLS here verifies the cluster's CA, not host names"),
    "WorkerStateClass": Option("dask.distributed's internals"),
    "reconnect": Option("a worker that loses its scheduler exits; its nanny restarts it", True),
}

NANNY = {
    **WORKER,
    "preload_nanny": Option("a NannyPlugin runs code in the nanny"),
    "preload_nanny_argv": Option("a NannyPlugin runs code in the nanny"),
    "quiet": Option(_LOGS),
    "worker_port": Option("pass port= (the worker's port; the nanny listens on none)"),
    "listen_address": Option("pass protocol=, host= and port="),
    "worker_class": Option("the nanny starts hpcdask's Worker"),
    "config": Option(
        "the worker gets this process's config.set() layers: set them around the "
        "Nanny, or pass env={'HPCDASK_...': ...}"
    ),
}
for _name in ("preload", "preload_argv"):
    del NANNY[_name]  # the nanny implements these

LOCAL_CLUSTER = {
    **{
        k: v
        for k, v in NANNY.items()
        if k not in ("contact_address", "dashboard_address", "silence_logs", "scheduler_port")
    },
    "loop": Option("hpcdask runs its own event loop; asynchronous=True for yours"),
    "start": Option("a LocalCluster starts when made (awaited, with asynchronous=True)", True),
    "worker_dashboard_address": Option(_NO_WORKER_DASHBOARD),
    "worker_services": Option("workers serve no HTTP; the scheduler's dashboard shows them"),
    "preload": Option("preload= runs in worker processes: processes=True"),
    "preload_argv": Option("preload_argv= runs in worker processes: processes=True"),
    "blocked_handlers": Option("every handler already needs the cluster's secret"),
    "scheduler_sync_interval": Option("the cluster follows the scheduler's events", 1),
    "worker_class": Option(
        "processes=True starts Nanny-supervised worker processes, "
        "processes=False in-process Workers"
    ),
}
