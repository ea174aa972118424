"""The multi-model contract's wire edge: the load body, and one status per service error."""

from __future__ import annotations

import pytest

from modelhost.errors import ModelhostError, ValidationError
from modelhost.worker.failure import LoadFailure
from modelhost.worker.model_table import InvalidPageRequest, ModelAlreadyLoaded, ModelLoading, ModelNotLoaded
from modelhost.worker.models import OutOfModelMemory, WorkerStopping
from modelhost.worker.models_route import MODEL_ERROR_STATUS, load_request, status_for


def test_load_body() -> None:
    assert load_request(b'{"model_name": "abc", "url": "/opt/ml/models/abc/model"}') == (
        "abc",
        "/opt/ml/models/abc/model",
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[1]",
        b'{"model_name": "a"}',
        b'{"model_name": "", "url": "/m"}',
        b'{"model_name": 1, "url": "/m"}',
    ],
)
def test_bad_load_bodies_name_the_expected_shape(body: bytes) -> None:
    with pytest.raises(ValidationError, match="POST /models takes JSON"):
        load_request(body)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ModelNotLoaded("m"), 404),
        (ModelAlreadyLoaded("m is loaded"), 409),
        (ModelLoading("m is loading"), 409),
        (OutOfModelMemory("full"), 507),
        (InvalidPageRequest("bad token"), 400),
        (ValidationError("bad body"), 400),
        (LoadFailure("model_fn raised"), 400),
        (WorkerStopping("stopping"), 503),
        (ModelhostError("other"), 500),
        (RuntimeError("a bug"), 500),
    ],
)
def test_status_of_each_error(error: BaseException, status: int) -> None:
    assert status_for(error) == status


def test_every_table_row_is_tested() -> None:
    assert set(MODEL_ERROR_STATUS) == {
        ModelNotLoaded, ModelAlreadyLoaded, ModelLoading, OutOfModelMemory, InvalidPageRequest,
        ValidationError, LoadFailure, WorkerStopping,
    }  # fmt: skip
