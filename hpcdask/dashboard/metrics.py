"""`/metrics` in Prometheus text format (needs the `metrics` extra: prometheus_client).

Gauges are read from the scheduler when scraped (nothing is counted per task); byte counters
come from the workers' own totals, collected while a scrape happened in the last 30 s.
"""

from __future__ import annotations

from typing import Any

from ..diagnostics.collector import STATES

MISSING = (
    b"# /metrics needs prometheus_client: pip install 'hpcdask[metrics]'\n",
    "text/plain; version=0.0.4; charset=utf-8",
)


def render(scheduler: Any, collector: Any) -> tuple[bytes, str]:
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from prometheus_client.registry import CollectorRegistry
    except ImportError:
        return MISSING
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SchedulerMetrics(scheduler, collector))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _SchedulerMetrics:
    def __init__(self, scheduler: Any, collector: Any) -> None:
        self.s = scheduler
        self.c = collector

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s, c = self.s, self.c
        info = s.worker_info
        yield GaugeMetricFamily("hpcdask_scheduler_workers", "Workers connected", len(info))
        yield GaugeMetricFamily("hpcdask_scheduler_clients", "Clients connected",
                                len(s.client_streams))  # fmt: skip
        yield GaugeMetricFamily("hpcdask_scheduler_threads", "Worker threads in total",
                                sum(i["nthreads"] for i in info.values()))  # fmt: skip
        yield GaugeMetricFamily("hpcdask_scheduler_event_loop_lag_seconds",
                                "How late the scheduler's event loop ran a timer, last second",
                                c.loop_lag)  # fmt: skip
        counts = c.counts()
        by_state = GaugeMetricFamily("hpcdask_scheduler_tasks", "Tasks by state",
                                     labels=["state"])  # fmt: skip
        totals = dict.fromkeys(STATES, 0)
        for states in counts.values():
            for st, n in states.items():
                totals[st] = totals.get(st, 0) + n
        for st, n in totals.items():
            by_state.add_metric([st], n)
        yield by_state
        prefix = GaugeMetricFamily("hpcdask_scheduler_prefix_tasks", "Tasks by prefix and state",
                                   labels=["prefix", "state"])  # fmt: skip
        for p, states in sorted(counts.items()):
            for st, n in states.items():
                prefix.add_metric([p, st], n)
        yield prefix
        names = {a: str(i["name"]) for a, i in info.items()}
        per = {
            "threads": GaugeMetricFamily("hpcdask_worker_threads", "Threads of each worker",
                                         labels=["worker", "name"]),
            "managed": GaugeMetricFamily("hpcdask_worker_memory_managed_bytes",
                                         "Bytes of task results held by each worker",
                                         labels=["worker", "name"]),
            "rss": GaugeMetricFamily("hpcdask_worker_memory_rss_bytes",
                                     "Resident memory of each worker process",
                                     labels=["worker", "name"]),
            "spilled": GaugeMetricFamily("hpcdask_worker_memory_spilled_bytes",
                                         "Bytes each worker spilled to disk",
                                         labels=["worker", "name"]),
            "limit": GaugeMetricFamily("hpcdask_worker_memory_limit_bytes",
                                       "Memory limit of each worker", labels=["worker", "name"]),
            "cpu": GaugeMetricFamily("hpcdask_worker_cpu_percent", "CPU use of each worker",
                                     labels=["worker", "name"]),
            "processing": GaugeMetricFamily("hpcdask_worker_tasks_processing",
                                            "Tasks assigned to each worker",
                                            labels=["worker", "name"]),
            "memory": GaugeMetricFamily("hpcdask_worker_tasks_in_memory",
                                        "Task results held by each worker",
                                        labels=["worker", "name"]),
        }  # fmt: skip
        received = CounterMetricFamily("hpcdask_worker_transfer_incoming_bytes",
                                       "Bytes each worker fetched from its peers",
                                       labels=["worker", "name"])  # fmt: skip
        managed_total = 0
        for addr, i in info.items():
            ws = s.state.workers.get(addr)
            m = i["metrics"]
            lbl = [addr, names[addr]]
            managed = m.get("managed_bytes", ws.nbytes if ws is not None else 0)
            managed_total += managed
            per["threads"].add_metric(lbl, i["nthreads"])
            per["managed"].add_metric(lbl, managed)
            per["rss"].add_metric(lbl, m.get("memory", 0))
            per["spilled"].add_metric(lbl, m.get("spilled_bytes", 0))
            per["limit"].add_metric(lbl, i["memory_limit"])
            per["cpu"].add_metric(lbl, m.get("cpu", 0.0))
            per["processing"].add_metric(lbl, len(ws.processing) if ws is not None else 0)
            per["memory"].add_metric(lbl, len(ws.has_what) if ws is not None else 0)
            received.add_metric(lbl, c.bytes_received.get(addr, 0))
        yield from per.values()
        yield received
        yield GaugeMetricFamily("hpcdask_scheduler_memory_managed_bytes",
                                "Bytes of task results held by all workers", managed_total)  # fmt: skip
        yield CounterMetricFamily("hpcdask_scheduler_transfer_incoming_bytes",
                                  "Bytes workers fetched from their peers, all workers",
                                  sum(c.bytes_received.values()))  # fmt: skip
