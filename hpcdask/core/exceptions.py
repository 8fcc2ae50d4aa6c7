"""Exceptions the runtime raises to users; plain Python so that every layer may import them."""

from __future__ import annotations


class KilledWorker(Exception):
    """A task was running on every worker that died, too many times to try again."""

    def __init__(self, key: str, last_worker: str, attempts: int, reason: str = "") -> None:
        self.key = key
        self.last_worker = last_worker
        self.attempts = attempts
        self.reason = reason  # why the last worker died, when its nanny or the scheduler knew
        super().__init__(key, last_worker, attempts, reason)

    def __str__(self) -> str:
        if self.reason:
            return (
                f"Task {self.key!r} was running on {self.attempts} workers that all died; the "
                f"last one, {self.last_worker}, because: {self.reason}. It is not retried again."
            )
        return (
            f"Task {self.key!r} was running on {self.attempts} workers that all died "
            f"(the last one was {self.last_worker}). The task probably crashes its worker "
            "(segfault, out of memory, os._exit); it is not retried again."
        )


class Reschedule(Exception):
    """Raised by a task to give it back: the scheduler puts it back to be run again (on
    whichever worker its placement then picks, maybe the same one), not as an error, and
    its retries are left untouched."""


class InvalidTransition(RuntimeError):
    """A state machine was asked for a change its transition table does not allow: a bug.

    The message names the key and the change, and ends with the key's story (the logged
    transitions and the stimuli that caused them), which is what a bug report needs."""

    def __init__(self, key: str, start: str, finish: str, story: list) -> None:
        self.key = key
        self.start = start
        self.finish = finish
        self.story = story
        super().__init__(key, start, finish)

    def __str__(self) -> str:
        lines = [f"impossible transition {self.start} -> {self.finish} for {self.key!r}; story:"]
        lines += [f"  {entry}" for entry in self.story[-20:]] or ["  (nothing logged)"]
        return "\n".join(lines)
