"""CreateModel's rules for Containers: serial inference pipelines and multi-container endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from modelhost.controlplane.models import check_containers
from modelhost.domain.specs import model_spec
from modelhost.errors import ValidationError


def _spec(n: int, mode: str | None = None, hostnames: bool = True, **extra: Any) -> Any:
    containers = [
        {"Image": "sklearn", "ModelDataUrl": f"s3://b/m{i}/model.tar.gz", **extra}
        | ({"ContainerHostname": f"h{i}"} if hostnames else {})
        for i in range(n)
    ]
    request: dict[str, Any] = {"ModelName": "m", "Containers": containers}
    if mode:
        request["InferenceExecutionConfig"] = {"Mode": mode}
    return model_spec(request, lambda image: image)


def test_serial_is_the_default_for_several_containers() -> None:
    spec = _spec(3, hostnames=False)
    assert spec.mode == "Serial"
    assert spec.hostnames == ("container-1", "container-2", "container-3")
    check_containers(spec, has_primary=False)
    assert _spec(1).mode is None  # one container is an ordinary model
    assert _spec(2, "Direct").mode == "Direct"


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (_spec(16), "at most 15"),
        (_spec(2, "Parallel"), "'Parallel' is not one of Serial, Direct"),
        (_spec(2, "Direct", hostnames=False), "every container needs a ContainerHostname"),
        (_spec(2, Mode="MultiModel"), "cannot be MultiModel"),
    ],
)
def test_refused(spec: Any, error: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_containers(spec, has_primary=False)
    assert error in info.value.message


def test_hostnames_are_unique_and_the_config_needs_containers() -> None:
    spec = model_spec(
        {
            "ModelName": "m",
            "Containers": [
                {"Image": "a", "ContainerHostname": "x"},
                {"Image": "b", "ContainerHostname": "x"},
            ],
        },
        lambda image: image,
    )
    with pytest.raises(ValidationError, match="ContainerHostname x is given to more than one container"):
        check_containers(spec, has_primary=False)
    with pytest.raises(ValidationError, match="not to a PrimaryContainer"):
        check_containers(_spec(1, "Serial"), has_primary=True)
    check_containers(_spec(15, "Direct"), has_primary=False)
