from .server import Scheduler

__all__ = ["Scheduler"]
