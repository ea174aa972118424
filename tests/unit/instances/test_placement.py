from __future__ import annotations

import pytest

from modelhost.errors import ResourceLimitExceeded, ValidationError
from modelhost.instances.catalog import GIB, ZERO, InstanceCatalog, Resources
from modelhost.instances.placement import HostCapacity, admit

LAPTOP = HostCapacity(cores=2, memory_bytes=24 * GIB, gpus=0, cpu_overcommit=16, memory_overcommit=8)


def test_a_handful_of_common_instances_fit_a_laptop() -> None:
    cat = InstanceCatalog()
    asked = cat.resources("ml.m5.xlarge").times(4) + cat.resources("ml.c5.2xlarge").times(2)
    admit(asked, ZERO, LAPTOP, "endpoint")


def test_too_much_is_refused_with_numbers() -> None:
    cat = InstanceCatalog()
    with pytest.raises(ResourceLimitExceeded) as err:
        admit(cat.resources("ml.m5.24xlarge").times(10), ZERO, LAPTOP, "Endpoint big")
    assert "Endpoint big asks for 960 vCPUs" in err.value.message and "32 vCPUs" in err.value.message


def test_what_is_placed_counts() -> None:
    admit(Resources(16, GIB), Resources(16, GIB), LAPTOP, "x")
    with pytest.raises(ResourceLimitExceeded):
        admit(Resources(16.5, GIB), Resources(16, GIB), LAPTOP, "x")


def test_gpus_are_never_overcommitted() -> None:
    with pytest.raises(ResourceLimitExceeded) as err:
        admit(InstanceCatalog().resources("ml.g5.xlarge"), ZERO, LAPTOP, "x")
    assert "1 GPUs" in err.value.message


def test_custom_types_and_unknown_types() -> None:
    cat = InstanceCatalog({"ml.tiny": Resources(0.5, GIB // 2)})
    assert cat.resources("ml.tiny").vcpus == 0.5
    assert cat.resources("ml.m5.large") == Resources(2, 8 * GIB)
    with pytest.raises(ValidationError) as err:
        cat.resources("ml.inf2.xlarge")
    assert "MODELHOST_INSTANCE_TYPES" in err.value.message
