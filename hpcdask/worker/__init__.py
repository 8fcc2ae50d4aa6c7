from .nanny import Nanny
from .worker import Worker, get_worker

__all__ = ["Nanny", "Worker", "get_worker"]
