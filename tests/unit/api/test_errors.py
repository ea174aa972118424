"""A row for every entry of the error table."""

from __future__ import annotations

import pytest

from modelhost import errors as e
from modelhost.api.errors import CONTROL_PLANE, RUNTIME, STREAM, lookup

CONTROL = [
    (e.ValidationError("x"), "ValidationException", 400),
    (e.NotFound("endpoint", "x"), "ValidationException", 400),
    (e.ArtifactError("x"), "ValidationException", 400),
    (e.ResourceNotFound("x"), "ResourceNotFound", 400),
    (e.ResourceInUse("x"), "ResourceInUse", 400),
    (e.ResourceLimitExceeded("x"), "ResourceLimitExceeded", 400),
    (e.UnsupportedOperation("x"), "NotImplemented", 501),
    (e.InternalFailure("x"), "InternalFailure", 500),
]
RUN = [
    (e.ValidationError("x"), "ValidationError", 400),
    (e.ModelInvocationError("x", 500, "y", None), "ModelError", 424),
    (e.ResourceLimitExceeded("x"), "ValidationError", 400),
    (e.ModelNotReady("x"), "ModelNotReadyException", 429),
    (e.ServiceUnavailable("x"), "ServiceUnavailable", 503),
    (e.UnsupportedOperation("x"), "NotImplemented", 501),
    (e.InternalFailure("x"), "InternalFailure", 500),
]

STREAMED = [
    (e.ModelStreamFailure("x", "StreamBroken"), "ModelStreamError"),
    (e.ModelStreamFailure("x", "ModelInvocationTimeExceeded"), "ModelStreamError"),
    (e.InternalFailure("x"), "InternalStreamFailure"),
]


@pytest.mark.parametrize(("exc", "code", "status"), CONTROL)
def test_control_plane(exc: e.ModelhostError, code: str, status: int) -> None:
    wire = lookup(CONTROL_PLANE, exc)
    assert (wire.code, wire.status) == (code, status)


@pytest.mark.parametrize(("exc", "code", "status"), RUN)
def test_runtime(exc: e.ModelhostError, code: str, status: int) -> None:
    wire = lookup(RUNTIME, exc)
    assert (wire.code, wire.status) == (code, status)


@pytest.mark.parametrize(("exc", "code"), STREAMED)
def test_stream_events(exc: e.ModelhostError, code: str) -> None:
    assert lookup(STREAM, exc).code == code


def test_every_table_entry_has_a_row() -> None:
    assert {type(x) for x, _, _ in CONTROL} >= {cls for cls, _ in CONTROL_PLANE} - {e.ModelhostError}
    assert {type(x) for x, _, _ in RUN} >= {cls for cls, _ in RUNTIME} - {e.ModelhostError}
    assert {type(x) for x, _ in STREAMED} >= {cls for cls, _ in STREAM} - {e.ModelhostError}


def test_unknown_exceptions_are_internal() -> None:
    assert lookup(RUNTIME, RuntimeError("x")).code == "InternalFailure"
