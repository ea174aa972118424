"""GPU memory of the worker process on the GPUs it sees, through NVML (the ``nvidia-ml-py`` package, the
``gpu`` extra). Used by the multi-model service (``models.py``) to measure what a model takes on the GPU,
as ``process_memory.py`` does for host memory.

NVML counts what the process holds on each device, the CUDA context and the frameworks' caches included,
which is what a GPU budget has to count. It reads devices in PCI bus order, so the instance's
``CUDA_VISIBLE_DEVICES`` (which ``instances/gpus.py`` gives in that order too) names them directly.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("modelhost.worker")


def visible_device_ids(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The devices ``CUDA_VISIBLE_DEVICES`` names (indexes or ``GPU-…`` UUIDs), in its order; none when it
    is unset, empty or starts with an invalid entry (CUDA then shows no device, as with ``-1``)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return ()
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not (part.isdigit() or part.startswith(("GPU-", "MIG-"))):
            break  # CUDA ignores the entries from the first invalid one on
        ids.append(part)
    return tuple(ids)


class GpuMeter:
    """This process's memory and the total memory on its visible GPUs. Build with ``open``."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles
        self._pid = os.getpid()

    @classmethod
    def open(cls, environ: Mapping[str, str] = os.environ) -> GpuMeter | None:
        """None when the process sees no GPU, or NVML is not installed or finds no driver: then GPU memory
        is neither measured nor budgeted."""
        ids = visible_device_ids(environ)
        if not ids:
            return None
        try:
            import pynvml  # the gpu extra; only GPU workers import it
        except ImportError:
            log.warning(
                "this worker sees GPUs %s but nvidia-ml-py is not installed (pip install modelhost[gpu]): "
                "GPU memory is not measured, and no GPU budget applies to its models",
                ",".join(ids),
            )
            return None
        try:
            pynvml.nvmlInit()
            handles = [
                pynvml.nvmlDeviceGetHandleByIndex(int(i))
                if i.isdigit()
                else pynvml.nvmlDeviceGetHandleByUUID(i)
                for i in ids
            ]
        except pynvml.NVMLError as exc:
            log.warning("NVML cannot read GPUs %s (%s): GPU memory is not measured", ",".join(ids), exc)
            return None
        return cls(pynvml, handles)

    def total_bytes(self) -> int:
        return sum(int(self._nvml.nvmlDeviceGetMemoryInfo(h).total) for h in self._handles)

    def used_bytes(self) -> int:
        """What this process holds on its visible GPUs now (0 on a device where it holds nothing)."""
        release_gpu_caches()
        used = 0
        for handle in self._handles:
            for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                # usedGpuMemory is None where the driver cannot tell (no per-process accounting).
                if process.pid == self._pid and process.usedGpuMemory is not None:
                    used += int(process.usedGpuMemory)
        return used


def release_gpu_caches() -> None:
    """Hand back what PyTorch's caching allocator keeps of freed tensors, if PyTorch is in use: NVML would
    count it as held, and the next model could not use it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
