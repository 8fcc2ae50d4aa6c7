"""Diagnostics in Python: `progress`, `get_task_stream`, `performance_report`.

The scheduler side (`collector.Collector`) and the workers' records (`recorder.TaskRecorder`)
are what the dashboard draws from too.
"""

from __future__ import annotations

from .progress import progress
from .report import performance_report
from .task_stream import get_task_stream

__all__ = ["get_task_stream", "performance_report", "progress"]
