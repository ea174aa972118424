"""The one table from domain errors to SageMaker's wire errors (code and HTTP status), for the awsJson
control plane and the rest-json runtime. Every entry has a row in tests/unit/api/test_errors.py."""

from __future__ import annotations

from dataclasses import dataclass

from modelhost import errors as e


@dataclass(frozen=True, slots=True)
class WireError:
    code: str
    status: int


# Ordered: the first matching class wins, so subclasses come before their bases.
CONTROL_PLANE: tuple[tuple[type[e.ModelhostError], WireError], ...] = (
    (e.ValidationError, WireError("ValidationException", 400)),
    (e.ArtifactError, WireError("ValidationException", 400)),
    (e.ResourceNotFound, WireError("ResourceNotFound", 400)),
    (e.ResourceInUse, WireError("ResourceInUse", 400)),
    (e.ResourceLimitExceeded, WireError("ResourceLimitExceeded", 400)),
    (e.UnsupportedOperation, WireError("NotImplemented", 501)),
    (e.ModelhostError, WireError("InternalFailure", 500)),
)

RUNTIME: tuple[tuple[type[e.ModelhostError], WireError], ...] = (
    (e.ValidationError, WireError("ValidationError", 400)),
    (e.ModelInvocationError, WireError("ModelError", 424)),
    # A multi-model endpoint's model too large for its instance's budget: no retry helps, so a client error
    # under the one such code the runtime API models.
    (e.ResourceLimitExceeded, WireError("ValidationError", 400)),
    (e.ModelNotReady, WireError("ModelNotReadyException", 429)),
    (e.ServiceUnavailable, WireError("ServiceUnavailable", 503)),
    (e.UnsupportedOperation, WireError("NotImplemented", 501)),
    (e.ModelhostError, WireError("InternalFailure", 500)),
)

# Errors after an InvokeEndpointWithResponseStream answer has begun travel as exception events in the stream,
# under these shape names; the HTTP status (200) is already sent, so the status here is never written.
STREAM: tuple[tuple[type[e.ModelhostError], WireError], ...] = (
    (e.ModelStreamFailure, WireError("ModelStreamError", 200)),
    (e.ModelhostError, WireError("InternalStreamFailure", 200)),
)

INTERNAL = WireError("InternalFailure", 500)


def lookup(table: tuple[tuple[type[e.ModelhostError], WireError], ...], exc: BaseException) -> WireError:
    for cls, wire in table:
        if isinstance(exc, cls):
            return wire
    return INTERNAL
