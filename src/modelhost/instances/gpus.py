"""Which of the host's GPUs each instance gets.

Placement (placement.py) only counts GPUs; this pool hands out the actual device indexes when an instance
starts and takes them back when its process is gone, so two instances never share a GPU. The supervisor owns
one pool; it is used on the event loop only.
"""

from __future__ import annotations

from modelhost.errors import ResourceLimitExceeded


class GpuPool:
    def __init__(self, count: int) -> None:
        self._free = list(range(count))

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self, count: int) -> tuple[int, ...]:
        """The ``count`` lowest free GPU indexes; ResourceLimitExceeded if fewer are free."""
        if count == 0:
            return ()
        if count > len(self._free):
            raise ResourceLimitExceeded(
                f"The instance needs {count} GPUs but {len(self._free)} of this host's GPUs are free; stop "
                "an endpoint that uses GPUs, or set MODELHOST_HOST_GPUS to the GPUs this host really has."
            )
        self._free.sort()
        taken, self._free = tuple(self._free[:count]), self._free[count:]
        return taken

    def give_back(self, ids: tuple[int, ...]) -> None:
        self._free.extend(i for i in ids if i not in self._free)


def visible_devices(ids: tuple[int, ...]) -> dict[str, str]:
    """The variables that show a process exactly these GPUs (none at all for a CPU instance), renumbered
    from 0 inside it, as a container on a SageMaker GPU instance sees its own GPUs."""
    value = ",".join(map(str, ids))
    # The indexes are the host's, in nvidia-smi's (PCI bus) order; CUDA numbers devices fastest first
    # unless told otherwise, which on a host of mixed GPUs would show the instance another device.
    return {
        "CUDA_VISIBLE_DEVICES": value,
        "NVIDIA_VISIBLE_DEVICES": value or "void",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
