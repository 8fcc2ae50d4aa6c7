"""Recent log lines kept in memory, so that `cluster.get_logs()` can show them."""

from __future__ import annotations

import logging
from collections import deque

_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class LogBuffer(logging.Handler):
    _instances: dict[str, LogBuffer] = {}

    def __init__(self, maxlen: int = 10_000) -> None:
        super().__init__(level=logging.INFO)
        self.records: deque[str] = deque(maxlen=maxlen)
        self.setFormatter(logging.Formatter(_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append(self.format(record))
        except Exception:  # pragma: no cover - a log line must never break the runtime
            pass

    def lines(self, n: int | None = None) -> list[str]:
        lines = list(self.records)
        return lines[-n:] if n else lines

    @classmethod
    def attach(cls, logger_name: str) -> LogBuffer:
        """One buffer per logger per process, attached once."""
        buf = cls._instances.get(logger_name)
        if buf is None:
            buf = cls._instances[logger_name] = cls()
            log = logging.getLogger(logger_name)
            log.addHandler(buf)
            if log.level == logging.NOTSET or log.level > logging.INFO:
                log.setLevel(logging.INFO)
        return buf
