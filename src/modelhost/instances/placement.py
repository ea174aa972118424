"""Admission of instances against the host's capacity. A pure decision; the control plane calls it."""

from __future__ import annotations

from dataclasses import dataclass

from modelhost.errors import ResourceLimitExceeded
from modelhost.instances.catalog import GIB, Resources


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """What this host may place: real cores and memory times the overcommit factors; GPUs exactly."""

    cores: int
    memory_bytes: int
    gpus: int
    cpu_overcommit: float
    memory_overcommit: float

    @property
    def placeable(self) -> Resources:
        return Resources(
            self.cores * self.cpu_overcommit, int(self.memory_bytes * self.memory_overcommit), self.gpus
        )


def _fmt(r: Resources) -> str:
    text = f"{r.vcpus:g} vCPUs, {r.memory_bytes / GIB:.1f} GiB memory"
    return text + (f", {r.gpus} GPUs" if r.gpus else "")


def admit(asked: Resources, placed: Resources, host: HostCapacity, what: str) -> None:
    """Raise ResourceLimitExceeded unless ``asked`` fits beside what is already ``placed``."""
    cap = host.placeable
    free = Resources(cap.vcpus - placed.vcpus, cap.memory_bytes - placed.memory_bytes, cap.gpus - placed.gpus)
    if asked.vcpus <= free.vcpus and asked.memory_bytes <= free.memory_bytes and asked.gpus <= free.gpus:
        return
    raise ResourceLimitExceeded(
        f"{what} asks for {_fmt(asked)}, but this host has {_fmt(free)} free to place "
        f"({host.cores} cores x {host.cpu_overcommit:g} CPU overcommit, "
        f"{host.memory_bytes / GIB:.1f} GiB x {host.memory_overcommit:g} memory overcommit, "
        f"{host.gpus} GPUs). "
        f"Use fewer or smaller instances, delete an endpoint, or raise MODELHOST_CPU_OVERCOMMIT / "
        f"MODELHOST_MEMORY_OVERCOMMIT."
    )
