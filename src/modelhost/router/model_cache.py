"""The model cache of a multi-model instance: its plan and events, and its pure decisions (which models it
evicts to make room, the names and keys it works with). The instance's model manager (model_manager.py)
calls these; only it does I/O.

Eviction is least recently used first, and never touches a model that has a request in flight or a
download, load or unload under way: such a model is not ``idle``. A need larger than the whole budget is
refused rather than met by evicting everything (and then thrashing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from modelhost.errors import ResourceLimitExceeded, ValidationError
from modelhost.router.invoker import InstanceReply
from modelhost.store.objects import parse_object_url

MAX_TARGET_MODEL_CHARS = 1024  # InvokeEndpoint's TargetModel: 1 to 1024 characters
# Container Environment variables of a multi-model container (beyond SageMaker): comma-separated TargetModels.
PRELOAD_ENV = "MODELHOST_PRELOAD_MODELS"  # loaded when each instance starts, in this order
PINNED_ENV = "MODELHOST_PINNED_MODELS"  # loaded when each instance starts, and never evicted


@dataclass(frozen=True, slots=True)
class ModelCachePlan:
    """One multi-model instance's cache: where its models come from and live, and its budgets."""

    prefix: str  # the container's ModelDataUrl, ending in "/": a TargetModel is a key under it
    root: Path  # the instance's models directory (SageMaker's /opt/ml/models): <root>/<name>/model
    memory_budget_bytes: int
    disk_budget_bytes: int
    instance_type: str  # for messages
    cache_enabled: bool = True  # ModelCacheSetting Disabled: unload and delete each model after its call
    load_timeout_s: float = 600.0
    max_artifact_bytes: int = 20 * 1024**3
    # On a GPU instance: the GPU memory its models may take. None: the fraction of what the instance's
    # worker says its GPUs hold, once it says (our worker does when it sees GPUs); no GPU budget until then.
    gpu_memory_budget_bytes: int | None = None
    gpu_memory_fraction: float = 0.9
    preload: tuple[str, ...] = ()  # loaded at start, then cached like any other
    pinned: frozenset[str] = frozenset()  # loaded at start (after ``preload``) and never evicted


class ModelCacheEvents(Protocol):
    """Where the cache reports what it did, for the metrics (api/model_metrics.py). Durations in µs."""

    def invoked(self, key: str, hit: bool, waited_us: int, latency_us: int) -> None: ...
    def downloaded(self, key: str, duration_us: int) -> None: ...
    def loaded(self, key: str, duration_us: int) -> None: ...
    def unloaded(self, key: str, duration_us: int) -> None: ...


class NoEvents:
    def invoked(self, key: str, hit: bool, waited_us: int, latency_us: int) -> None:
        pass

    def downloaded(self, key: str, duration_us: int) -> None:
        pass

    def loaded(self, key: str, duration_us: int) -> None:
        pass

    def unloaded(self, key: str, duration_us: int) -> None:
        pass


class LoadFailed(Exception):
    """The instance answered a load with an error: the router reports it as the model's error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ModelReply:
    reply: InstanceReply
    waited_us: int  # how long the request waited for its model to be downloaded and loaded


@dataclass(frozen=True, slots=True)
class Resident:
    """One model as a budget sees it: the bytes it holds there and how recently it was used."""

    key: str
    size_bytes: int
    last_used: int  # a use counter: smaller is longer ago
    idle: bool  # no request in flight and nothing under way
    loaded: bool = False  # in memory; for the disk budget, models that are not go first


class Refusal(StrEnum):
    TOO_LARGE = "too_large"  # more than the whole budget: it never fits
    BUSY = "busy"  # the budget is held by models in use; it may fit later


@dataclass(frozen=True, slots=True)
class Room:
    """What to evict (least recently used first) so that the need fits; ``refusal`` when it cannot."""

    evict: tuple[str, ...] = ()
    refusal: Refusal | None = None

    @property
    def fits(self) -> bool:
        return self.refusal is None


def make_room(residents: Sequence[Resident], need_bytes: int, budget_bytes: int) -> Room:
    """Evict idle residents, models not in memory first and then least recently used, until ``need_bytes``
    fits beside what stays. Evicts nothing when even evicting every idle one would not make it fit."""
    if need_bytes > budget_bytes:
        return Room(refusal=Refusal.TOO_LARGE)
    used = sum(r.size_bytes for r in residents)
    if used + need_bytes <= budget_bytes:
        return Room()
    evict: list[str] = []
    for r in sorted((r for r in residents if r.idle), key=lambda r: (r.loaded, r.last_used)):
        evict.append(r.key)
        used -= r.size_bytes
        if used + need_bytes <= budget_bytes:
            return Room(tuple(evict))
    return Room(refusal=Refusal.BUSY)


def least_recent(residents: Sequence[Resident], at_least_bytes: int) -> tuple[str, ...]:
    """Idle residents, least recently used first, until they add up to ``at_least_bytes`` (at least one).

    For an instance that answered 507 (no room) to a load: its own measure of room is what counts then.
    """
    evict: list[str] = []
    freed = 0
    for r in sorted((r for r in residents if r.idle), key=lambda r: r.last_used):
        evict.append(r.key)
        freed += r.size_bytes
        if freed >= at_least_bytes:
            break
    return tuple(evict)


def model_name(key: str) -> str:
    """The opaque name a model has on its instance (SageMaker hashes the TargetModel too): safe in a URL
    path and a directory name, whatever the key holds."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def check_target_model(key: str) -> str:
    """``key`` if it can name an object under the endpoint's prefix; ValidationError otherwise."""
    if not 1 <= len(key) <= MAX_TARGET_MODEL_CHARS:
        raise ValidationError(
            f"TargetModel must be 1 to {MAX_TARGET_MODEL_CHARS} characters long, not {len(key)}."
        )
    parts = key.split("/")
    control = any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key)
    if key.startswith("/") or ".." in parts or control or key.endswith("/"):
        raise ValidationError(
            f"TargetModel {key!r} must be the key of a model archive relative to the endpoint's ModelDataUrl "
            "prefix (for example model-a.tar.gz or team/model-a.tar.gz), without '..', control "
            "characters, or a leading or trailing '/'."
        )
    return key


def model_list(environment: Mapping[str, str], variable: str) -> tuple[str, ...]:
    """The TargetModels a container's Environment lists in ``variable`` (comma-separated), checked."""
    keys = tuple(dict.fromkeys(k.strip() for k in environment.get(variable, "").split(",") if k.strip()))
    for key in keys:
        try:
            check_target_model(key)
        except ValidationError as exc:
            raise ValidationError(f"{variable} in the container's Environment: {exc.message}") from None
    return keys


def not_found(plan: ModelCachePlan, key: str, url: str) -> ValidationError:
    """No object at ``url`` for TargetModel ``key``: SageMaker's words first, then what to do."""
    loc = parse_object_url(url)
    return ValidationError(
        f"Failed to download model data(bucket: {loc.bucket}, key: {loc.key}): there is no object there. "
        f"TargetModel {key!r} must name a model archive under the endpoint's ModelDataUrl {plan.prefix}."
    )


def too_large(plan: ModelCachePlan, key: str, size: int, *, disk: bool) -> ResourceLimitExceeded:
    if disk:
        return ResourceLimitExceeded(
            f"Model {key!r} takes {size} bytes on disk, more than the {plan.disk_budget_bytes}-byte disk "
            "cache of an instance of this variant (VolumeSizeInGB, or "
            "MODELHOST_MULTI_MODEL_DISK_BUDGET_BYTES). Raise VolumeSizeInGB, or make the model smaller."
        )
    return ResourceLimitExceeded(
        f"Model {key!r} takes {size} bytes of memory once loaded, more than the "
        f"{plan.memory_budget_bytes}-byte model memory budget of an {plan.instance_type} instance. Use an "
        "instance type with more memory, or make the model smaller."
    )


def too_large_for_gpu(plan: ModelCachePlan, key: str, size: int, budget: int) -> ResourceLimitExceeded:
    return ResourceLimitExceeded(
        f"Model {key!r} takes {size} bytes of GPU memory once loaded, more than the {budget}-byte GPU "
        f"memory budget of an {plan.instance_type} instance (MODELHOST_MULTI_MODEL_GPU_MEMORY_FRACTION of "
        "its GPUs' memory, or MODELHOST_MULTI_MODEL_GPU_MEMORY_BUDGET_BYTES). Use an instance type with "
        "more GPU memory, or make the model smaller."
    )
