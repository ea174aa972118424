"""The budgets of one multi-model instance, memory, GPU memory and disk, as bookkeeping: what each model
measured, what the instance holds beyond its models, and the decisions taken with them (what a load
reserves, which models make room, whether a measured model fits). No I/O: the model manager
(model_manager.py) owns one per instance, tells it what the instance reported, and does the evicting.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from modelhost.errors import ServiceUnavailable
from modelhost.router.model_cache import (
    ModelCachePlan,
    Refusal,
    Resident,
    make_room,
    too_large,
    too_large_for_gpu,
)

# A model measured over a whole budget this many times is refused without loading it again. Not once: the
# first load in a process also pays for importing its framework, which a second load does not.
OVERSIZE_LOADS = 2
# The instance's unowned memory counts against the budget as the most of its last few reports: one report
# can catch an invocation's buffers in flight.
UNOWNED_REPORTS = 8


class Budget(StrEnum):
    MEMORY = "memory"
    GPU = "GPU memory"
    DISK = "disk"


@dataclass(frozen=True, slots=True)
class ModelBytes:
    """A model's memory and GPU memory: what its load reserves before it starts, or what it took once done
    (as the instance measured it, or the reservation where it did not say)."""

    memory_bytes: int
    gpu_bytes: int


class ModelBudgets:
    def __init__(self, plan: ModelCachePlan) -> None:
        self.plan = plan
        # Per key, the least any load measured: a load also counts whatever else the instance allocated
        # meanwhile (the first one of a process, its framework's import), never less.
        self._memory: dict[str, int] = {}
        self._gpu: dict[str, int] = {}
        self._oversize: dict[str, int] = {}  # loads per key measured over a whole budget
        self._gpu_budget = plan.gpu_memory_budget_bytes  # or learned from what the instance reports
        # What the instance said it holds beyond its models (allocator fragments, what first calls cached):
        # the models' share of the memory budget is what is left of it.
        self._unowned: collections.deque[int] = collections.deque(maxlen=UNOWNED_REPORTS)

    # -- what the instance reported ------------------------------------------------------------------------

    def unowned_reported(self, unowned_bytes: int | None) -> None:
        if unowned_bytes is not None:
            self._unowned.append(unowned_bytes)

    def gpus_reported(self, total_bytes: int | None) -> None:
        """The memory of the GPUs the instance sees: its GPU budget, unless the plan sets one."""
        if total_bytes and self.plan.gpu_memory_budget_bytes is None:
            self._gpu_budget = int(total_bytes * self.plan.gpu_memory_fraction)

    @property
    def unowned_bytes(self) -> int:
        """The instance's memory beyond its models', as it reported it lately; 0 when it does not say."""
        return max(self._unowned, default=0)

    @property
    def gpu_budget_bytes(self) -> int | None:
        """None on an instance without GPUs (or whose server does not measure them)."""
        return self._gpu_budget

    # -- loads ---------------------------------------------------------------------------------------------

    def need(self, key: str, disk_bytes: int) -> ModelBytes:
        """What loading ``key`` reserves: its last measure, or before its first load its unpacked size
        (memory) and nothing (GPU memory), as a guess that the measurement then corrects. Refuses a model
        measured over a whole budget ``OVERSIZE_LOADS`` times: loading it again for every request would be
        thrashing."""
        budget, gpu_budget = self.plan.memory_budget_bytes, self._gpu_budget
        known, known_gpu = self._memory.get(key), self._gpu.get(key, 0)
        if self._oversize.get(key, 0) >= OVERSIZE_LOADS:
            if known is not None and known > budget:
                raise too_large(self.plan, key, known, disk=False)
            if gpu_budget is not None and known_gpu > gpu_budget:
                raise too_large_for_gpu(self.plan, key, known_gpu, gpu_budget)
        memory = known if known is not None and known <= budget else min(disk_bytes, budget)
        gpu = known_gpu if gpu_budget is None or known_gpu <= gpu_budget else 0
        return ModelBytes(memory, gpu)

    def loaded(
        self, key: str, need: ModelBytes, memory_bytes: int | None, gpu_bytes: int | None
    ) -> ModelBytes:
        """Record what a load measured (None: the instance did not say, and the reservation stands in)."""
        if memory_bytes is not None:
            self._memory[key] = min(memory_bytes, self._memory.get(key, memory_bytes))
        if gpu_bytes is not None:
            self._gpu[key] = min(gpu_bytes, self._gpu.get(key, gpu_bytes))
        return ModelBytes(
            memory_bytes if memory_bytes is not None else need.memory_bytes,
            gpu_bytes if gpu_bytes is not None else need.gpu_bytes,
        )

    def check_fits(self, key: str, took: ModelBytes) -> None:
        """``too_large`` (or its GPU form) when the model measured more than a whole budget, after which the
        caller unloads it: counted, so that its next loads are refused without loading (``need``)."""
        budget, gpu_budget = self.plan.memory_budget_bytes, self._gpu_budget
        over_gpu = gpu_budget is not None and took.gpu_bytes > gpu_budget
        if took.memory_bytes <= budget and not over_gpu:
            self._oversize.pop(key, None)
            return
        self._oversize[key] = self._oversize.get(key, 0) + 1
        if gpu_budget is not None and over_gpu:
            raise too_large_for_gpu(self.plan, key, took.gpu_bytes, gpu_budget)
        raise too_large(self.plan, key, took.memory_bytes, disk=False)

    # -- room ----------------------------------------------------------------------------------------------

    def room(
        self, key: str, residents: Sequence[Resident], need: int, budget: Budget, *, strict: bool
    ) -> tuple[str, ...]:
        """Which of ``residents`` (the other models holding ``budget``) to evict, least recently used first,
        so that ``need`` bytes fit. ``too_large`` when the need exceeds the whole budget; when models in use
        hold it, ServiceUnavailable if ``strict``, else as many as can go."""
        whole = self._whole(budget)
        if whole is None:
            return ()
        if need > whole:
            if budget is Budget.GPU:
                raise too_large_for_gpu(self.plan, key, need, whole)
            raise too_large(self.plan, key, need, disk=budget is Budget.DISK)
        room = make_room(residents, need, self._models_share(budget, need))
        if room.refusal is Refusal.BUSY and strict:
            raise ServiceUnavailable(
                f"The instance cannot make room for model {key!r} now: its {whole}-byte {budget} budget is "
                "held by models with requests in flight, loads under way or pinned models. Retry shortly, "
                "or add instances.",
                retry_after_s=2.0,
            )
        return room.evict

    def over(self, residents: Sequence[Resident], budget: Budget) -> tuple[tuple[str, ...], bool]:
        """The idle models to unload, least recently used first, so that what ``residents`` hold fits
        ``budget``; and whether it then fits (not while models in use hold too much)."""
        if self._whole(budget) is None:
            return (), True
        room = make_room(residents, 0, self._models_share(budget, 0))
        return room.evict, room.fits

    def _whole(self, budget: Budget) -> int | None:
        if budget is Budget.MEMORY:
            return self.plan.memory_budget_bytes
        if budget is Budget.DISK:
            return self.plan.disk_budget_bytes
        return self._gpu_budget

    def _models_share(self, budget: Budget, need: int) -> int:
        """What the models may hold of ``budget``: the memory budget less the instance's unowned memory,
        never less than a need within the budget (which then takes every idle model's place)."""
        whole = self._whole(budget)
        assert whole is not None
        if budget is not Budget.MEMORY:
            return whole
        return max(whole - self.unowned_bytes, min(need, whole))


def union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    """Both eviction lists, each key once, in order."""
    return tuple(dict.fromkeys((*first, *second)))
