"""The resource shapes of SageMaker's common ``ml.*`` instance types, plus custom ones from settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelhost.errors import ValidationError

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Resources:
    vcpus: float
    memory_bytes: int
    gpus: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.vcpus + other.vcpus, self.memory_bytes + other.memory_bytes, self.gpus + other.gpus
        )

    def times(self, n: int) -> Resources:
        return Resources(self.vcpus * n, self.memory_bytes * n, self.gpus * n)


ZERO = Resources(0.0, 0, 0)

# (vCPUs, memory GiB, GPUs) for each size of a family. Sizes shared by a family are listed once.
_GENERAL = {
    "large": (2, 8),
    "xlarge": (4, 16),
    "2xlarge": (8, 32),
    "4xlarge": (16, 64),
    "8xlarge": (32, 128),
    "12xlarge": (48, 192),
    "16xlarge": (64, 256),
    "24xlarge": (96, 384),
}
_COMPUTE = {
    "large": (2, 4),
    "xlarge": (4, 8),
    "2xlarge": (8, 16),
    "4xlarge": (16, 32),
    "8xlarge": (32, 64),
    "9xlarge": (36, 72),
    "12xlarge": (48, 96),
    "16xlarge": (64, 128),
    "18xlarge": (72, 144),
    "24xlarge": (96, 192),
}
_MEMORY = {
    "large": (2, 16),
    "xlarge": (4, 32),
    "2xlarge": (8, 64),
    "4xlarge": (16, 128),
    "8xlarge": (32, 256),
    "12xlarge": (48, 384),
    "16xlarge": (64, 512),
    "24xlarge": (96, 768),
}


def _family(prefix: str, sizes: Mapping[str, tuple[int, int]]) -> dict[str, Resources]:
    return {f"ml.{prefix}.{size}": Resources(v, m * GIB) for size, (v, m) in sizes.items()}


def _builtin() -> dict[str, Resources]:
    types: dict[str, Resources] = {}
    for fam in ("m5", "m5d", "m6i", "m6id", "m7i", "m6g", "m7g"):
        types.update(_family(fam, _GENERAL))
    for fam in ("c5", "c5d", "c6i", "c6id", "c7i", "c6g", "c7g"):
        types.update(_family(fam, _COMPUTE))
    for fam in ("r5", "r5d", "r6i", "r7i", "r6g", "r7g"):
        types.update(_family(fam, _MEMORY))
    types.update(
        _family(
            "m4",
            {
                "xlarge": (4, 16),
                "2xlarge": (8, 32),
                "4xlarge": (16, 64),
                "10xlarge": (40, 160),
                "16xlarge": (64, 256),
            },
        )
    )
    types.update(
        _family(
            "c4",
            {"large": (2, 4), "xlarge": (4, 8), "2xlarge": (8, 15), "4xlarge": (16, 30), "8xlarge": (36, 60)},
        )
    )
    types.update(_family("t2", {"medium": (2, 4), "large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32)}))
    types.update(_family("t3", {"medium": (2, 4), "large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32)}))
    gpu = {
        "ml.g4dn.xlarge": (4, 16, 1),
        "ml.g4dn.2xlarge": (8, 32, 1),
        "ml.g4dn.4xlarge": (16, 64, 1),
        "ml.g4dn.8xlarge": (32, 128, 1),
        "ml.g4dn.12xlarge": (48, 192, 4),
        "ml.g4dn.16xlarge": (64, 256, 1),
        "ml.g5.xlarge": (4, 16, 1),
        "ml.g5.2xlarge": (8, 32, 1),
        "ml.g5.4xlarge": (16, 64, 1),
        "ml.g5.8xlarge": (32, 128, 1),
        "ml.g5.12xlarge": (48, 192, 4),
        "ml.g5.16xlarge": (64, 256, 1),
        "ml.g5.24xlarge": (96, 384, 4),
        "ml.g5.48xlarge": (192, 768, 8),
        "ml.g6.xlarge": (4, 16, 1),
        "ml.g6.2xlarge": (8, 32, 1),
        "ml.g6.4xlarge": (16, 64, 1),
        "ml.g6.12xlarge": (48, 192, 4),
        "ml.g6.48xlarge": (192, 768, 8),
        "ml.p3.2xlarge": (8, 61, 1),
        "ml.p3.8xlarge": (32, 244, 4),
        "ml.p3.16xlarge": (64, 488, 8),
        "ml.p4d.24xlarge": (96, 1152, 8),
        "ml.p5.48xlarge": (192, 2048, 8),
    }
    types.update({k: Resources(v, m * GIB, g) for k, (v, m, g) in gpu.items()})
    return types


class InstanceCatalog:
    """Looks up an instance type's resources; custom types from settings override built-in ones."""

    def __init__(self, custom: Mapping[str, Resources] | None = None) -> None:
        self._types = _builtin()
        self._types.update(custom or {})

    def resources(self, instance_type: str) -> Resources:
        try:
            return self._types[instance_type]
        except KeyError:
            raise ValidationError(
                f"Instance type {instance_type} is not in modelhost's catalog. Use a listed type "
                f"(for example ml.m5.large or ml.c5.xlarge) or describe it under the "
                f"MODELHOST_INSTANCE_TYPES setting with its vcpus and memory_bytes."
            ) from None

    def names(self) -> list[str]:
        return sorted(self._types)


def handler_threads(vcpus: float) -> int:
    """Handler threads of an instance with ``vcpus``: one per whole vCPU, at least one. The worker runs this
    many, and the router opens as many frame connections to it."""
    return max(1, round(vcpus))
