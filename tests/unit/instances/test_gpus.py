"""Handing out the host's GPUs to instances."""

from __future__ import annotations

import pytest

from modelhost.errors import ResourceLimitExceeded
from modelhost.instances.gpus import GpuPool, visible_devices


def test_instances_get_distinct_gpus_and_freed_ones_come_back_lowest_first() -> None:
    pool = GpuPool(4)
    assert pool.take(0) == ()
    first, second = pool.take(1), pool.take(2)
    assert (first, second) == ((0,), (1, 2))
    pool.give_back(first)
    pool.give_back(first)  # twice is harmless
    assert pool.free == 2
    assert pool.take(2) == (0, 3)


def test_asking_for_more_than_is_free_says_how_many_are() -> None:
    pool = GpuPool(1)
    pool.take(1)
    with pytest.raises(ResourceLimitExceeded, match="needs 1 GPUs but 0 of this host's GPUs are free"):
        pool.take(1)


def test_a_cpu_instance_sees_no_gpu_and_a_gpu_instance_only_its_own() -> None:
    order = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # the host's indexes are nvidia-smi's, in PCI bus order
    assert visible_devices(()) == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void", **order}
    assert visible_devices((1, 3)) == {
        "CUDA_VISIBLE_DEVICES": "1,3",
        "NVIDIA_VISIBLE_DEVICES": "1,3",
        **order,
    }
