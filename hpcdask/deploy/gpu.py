"""One worker per GPU: LocalCUDACluster and the helpers that count GPUs.

GPUs are counted without loading any CUDA library into this process (the scheduler's): from
`CUDA_VISIBLE_DEVICES` if set, else `nvidia-smi`, else NVML through pynvml if installed. Worker
i sees every device with its own first (`CUDA_VISIBLE_DEVICES` rotated by i), so that each
worker's default device differs while peer access to the others stays possible.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from typing import Any

import psutil

from ..scheduler import Scheduler
from ..security import Security
from ..worker import Nanny
from .spec import SpecCluster


def visible_gpus() -> list[str]:
    """The GPUs this machine lets us use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        if out.returncode == 0:
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if importlib.util.find_spec("pynvml") is not None:  # NVML: the driver, not CUDA
        import pynvml

        try:
            pynvml.nvmlInit()
            try:
                return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
            finally:
                pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return []


def rotated(devices: list[str], i: int) -> str:
    """CUDA_VISIBLE_DEVICES for worker i: its own GPU first, then the others."""
    return ",".join(devices[i:] + devices[:i])


def default_protocol() -> str:
    """ucx:// when ucxx is installed (GPU to GPU transfers), else tcp://."""
    return "ucx" if importlib.util.find_spec("ucxx") is not None else "tcp"


class LocalCUDACluster(SpecCluster):
    """`LocalCUDACluster()`: one Nanny worker per visible GPU, each with `resources={"GPU": 1}`
    and `CUDA_VISIBLE_DEVICES` rotated; `CUDA_VISIBLE_DEVICES="0,1"` or `n_workers` picks
    fewer. The protocol is ucx when ucxx is installed."""

    def __init__(
        self,
        n_workers: int | None = None,
        CUDA_VISIBLE_DEVICES: str | list | None = None,  # noqa: N803 - dask-cuda's name
        threads_per_worker: int = 1,
        memory_limit: str | int | float | None = "auto",
        protocol: str | None = None,
        host: str | None = "127.0.0.1",
        interface: str | None = None,
        scheduler_port: int = 0,
        security: Security | None = None,
        resources: dict | None = None,
        local_directory: str | None = None,
        worker_options: dict | None = None,
        scheduler_options: dict | None = None,
        asynchronous: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(f"LocalCUDACluster() got unexpected keyword arguments {sorted(kwargs)}")
        if CUDA_VISIBLE_DEVICES is None:
            devices = visible_gpus()
        elif isinstance(CUDA_VISIBLE_DEVICES, str):
            devices = [d.strip() for d in CUDA_VISIBLE_DEVICES.split(",") if d.strip()]
        else:
            devices = [str(d) for d in CUDA_VISIBLE_DEVICES]
        if not devices:
            raise RuntimeError(
                "LocalCUDACluster found no GPU: CUDA_VISIBLE_DEVICES is unset, nvidia-smi is not "
                "on PATH (or failed) and pynvml is not installed; pass CUDA_VISIBLE_DEVICES= to "
                "name the devices"
            )
        if n_workers is not None:
            if not 1 <= n_workers <= len(devices):
                raise ValueError(f"n_workers={n_workers} but {len(devices)} GPUs are visible "
                                 f"({','.join(devices)})")  # fmt: skip
            devices = devices[:n_workers]
        protocol = protocol or default_protocol()
        if host is not None and interface is not None:
            host = None  # interface= chooses the address
        if memory_limit == "auto":
            memory_limit = int(psutil.virtual_memory().total / len(devices))
        self.devices = devices
        workers = {}
        for i, device in enumerate(devices):
            options = {"nthreads": threads_per_worker, "memory_limit": memory_limit,
                       "protocol": protocol, "host": host, "interface": interface,
                       "local_directory": local_directory,
                       "resources": {"GPU": 1, **(resources or {})}, **(worker_options or {})}  # fmt: skip
            options = {k: v for k, v in options.items() if v is not None}
            options["env"] = {"CUDA_VISIBLE_DEVICES": rotated(devices, i),
                              **(options.get("env") or {})}  # fmt: skip
            workers[f"gpu-{device}"] = {"cls": Nanny, "options": options}
        sched = {"protocol": protocol, "host": host, "interface": interface,
                 "port": scheduler_port, **(scheduler_options or {})}  # fmt: skip
        super().__init__(workers=workers, scheduler={"cls": Scheduler, "options": sched},
                         asynchronous=asynchronous, security=security,
                         name=name or "LocalCUDACluster")  # fmt: skip
