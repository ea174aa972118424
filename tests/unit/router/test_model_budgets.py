"""A multi-model instance's budgets as bookkeeping: what loads reserve, what measured models count, the
memory no model owns, the GPU budget an instance reports, and which models make room."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.errors import ResourceLimitExceeded, ServiceUnavailable
from modelhost.router.model_budgets import OVERSIZE_LOADS, Budget, ModelBudgets, ModelBytes, union
from modelhost.router.model_cache import ModelCachePlan, Resident


def budgets(memory: int = 1000, disk: int = 5000, gpu: int | None = None) -> ModelBudgets:
    plan = ModelCachePlan(
        "s3://b/p/", Path("/none"), memory, disk, "ml.g5.xlarge", gpu_memory_budget_bytes=gpu
    )
    return ModelBudgets(plan)


def resident(key: str, size: int, last_used: int, idle: bool = True) -> Resident:
    return Resident(key, size, last_used, idle, loaded=True)


def test_a_first_load_reserves_its_unpacked_size_then_its_measure() -> None:
    b = budgets()
    assert b.need("a", disk_bytes=300) == ModelBytes(300, 0)
    assert b.need("big", disk_bytes=5000) == ModelBytes(1000, 0)  # never more than the whole budget
    took = b.loaded("a", ModelBytes(300, 0), memory_bytes=420, gpu_bytes=None)
    assert took == ModelBytes(420, 0)
    assert b.need("a", disk_bytes=300) == ModelBytes(420, 0)
    b.loaded("a", ModelBytes(420, 0), memory_bytes=400, gpu_bytes=None)
    assert b.need("a", disk_bytes=300).memory_bytes == 400  # the least any load measured
    # An instance that does not measure: the reservation stands in.
    assert b.loaded("c", ModelBytes(250, 0), None, None) == ModelBytes(250, 0)


def test_a_model_over_the_whole_budget_is_refused_after_two_loads() -> None:
    b = budgets()
    for _ in range(OVERSIZE_LOADS):
        need = b.need("huge", disk_bytes=10)
        took = b.loaded("huge", need, memory_bytes=1500, gpu_bytes=None)
        with pytest.raises(ResourceLimitExceeded, match="1500 bytes of memory"):
            b.check_fits("huge", took)
    with pytest.raises(ResourceLimitExceeded, match="'huge'"):
        b.need("huge", disk_bytes=10)  # refused without loading it again
    b.check_fits("other", ModelBytes(999, 0))  # fits: no error


def test_memory_no_model_owns_comes_off_the_models_share() -> None:
    b = budgets()
    b.unowned_reported(100)
    b.unowned_reported(None)  # an instance that does not say changes nothing
    b.unowned_reported(40)
    assert b.unowned_bytes == 100  # the most of the recent reports
    residents = [resident("old", 450, 1), resident("new", 400, 2)]
    # 850 held + 100 unowned: a need of 100 no longer fits in 1000; the least recently used goes.
    assert b.room("x", residents, 100, Budget.MEMORY, strict=True) == ("old",)
    evict, fits = b.over(residents, Budget.MEMORY)
    assert (evict, fits) == ((), True)
    b.unowned_reported(200)
    assert b.over(residents, Budget.MEMORY) == (("old",), True)


def test_a_need_the_models_in_use_block_is_refused_or_waits() -> None:
    b = budgets()
    busy = [resident("a", 600, 1, idle=False), resident("b", 300, 2)]
    with pytest.raises(ServiceUnavailable, match="1000-byte memory budget is held by models"):
        b.room("x", busy, 500, Budget.MEMORY, strict=True)
    assert b.room("x", busy, 500, Budget.MEMORY, strict=False) == ()
    assert b.over([*busy, resident("c", 300, 3, idle=False)], Budget.MEMORY) == (("b",), True)
    assert b.over([*busy, resident("c", 500, 3, idle=False)], Budget.MEMORY) == ((), False)
    with pytest.raises(ResourceLimitExceeded, match="on disk"):
        b.room("x", [], 6000, Budget.DISK, strict=True)


def test_the_gpu_budget_comes_from_what_the_instance_reports() -> None:
    b = budgets()
    assert b.gpu_budget_bytes is None
    assert b.room("x", [resident("a", 10**12, 1)], 10**9, Budget.GPU, strict=True) == ()  # no GPU budget
    b.gpus_reported(10_000)
    assert b.gpu_budget_bytes == 9_000  # MODELHOST_MULTI_MODEL_GPU_MEMORY_FRACTION of it
    gpu_residents = [resident("a", 4_000, 1), resident("b", 4_000, 2)]
    assert b.room("c", gpu_residents, 4_000, Budget.GPU, strict=True) == ("a",)
    with pytest.raises(ResourceLimitExceeded, match="GPU memory"):
        b.room("huge", [], 12_000, Budget.GPU, strict=True)
    took = b.loaded("huge", ModelBytes(10, 0), memory_bytes=10, gpu_bytes=12_000)
    with pytest.raises(ResourceLimitExceeded, match="12000 bytes of GPU memory"):
        b.check_fits("huge", took)
    # A budget set in the plan is kept whatever the instance reports.
    fixed = budgets(gpu=5_000)
    fixed.gpus_reported(80_000)
    assert fixed.gpu_budget_bytes == 5_000


def test_evictions_for_two_budgets_are_joined_in_order() -> None:
    assert union(("a", "b"), ("b", "c")) == ("a", "b", "c")
