from .client import Client, default_client
from .collections import futures_of
from .future import Future
from .waiting import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    as_completed,
    fire_and_forget,
    wait,
)

__all__ = [
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "Client", "Future",
    "as_completed", "default_client", "fire_and_forget", "futures_of", "wait",
]  # fmt: skip
