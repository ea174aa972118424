"""The one error hierarchy. Domain errors carry domain words and say what to do next.

Only ``api/errors.py`` knows how each maps to SageMaker's error codes and HTTP statuses.
"""

from __future__ import annotations


class ModelhostError(Exception):
    """Base of every error the platform raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(ModelhostError):
    """The request is malformed or breaks a constraint; the caller must change it."""


class NotFound(ValidationError):
    """A named resource does not exist. SageMaker reports most of these as validation errors."""

    def __init__(self, kind: str, name: str, message: str | None = None) -> None:
        super().__init__(message or f'Could not find {kind} "{name}".')
        self.kind = kind
        self.name = name


class ResourceNotFound(ModelhostError):
    """A resource named by an operation that SageMaker models with ResourceNotFound does not exist."""


class ResourceInUse(ModelhostError):
    """The resource exists already, or another resource still depends on it."""


class ResourceLimitExceeded(ModelhostError):
    """The request needs more than the host or a quota allows."""


class UnsupportedOperation(ModelhostError):
    """The operation is part of the SageMaker API but modelhost does not implement it (yet)."""


class ArtifactError(ModelhostError):
    """A model artifact cannot be fetched or unpacked: missing, corrupt, unsafe or too large."""


class ModelInvocationError(ModelhostError):
    """The model's container answered an invocation with an error (SageMaker's ModelError)."""

    def __init__(
        self,
        message: str,
        original_status: int,
        original_message: str,
        log_stream_arn: str | None,
        variant: str | None = None,
        container: str | None = None,  # the container that failed, on a multi-container endpoint
    ) -> None:
        super().__init__(message)
        self.variant = variant
        self.container = container
        self.original_status = original_status
        self.original_message = original_message
        self.log_stream_arn = log_stream_arn


class ModelStreamFailure(ModelhostError):
    """A response stream broke after it began (SageMaker's ModelStreamError event). ``error_code`` is
    ``StreamBroken`` (the model's connection failed, or the model raised) or
    ``ModelInvocationTimeExceeded``."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class ModelNotReady(ModelhostError):
    """The endpoint exists but has no instance ready to take the request; retry later."""


class ServiceUnavailable(ModelhostError):
    """Every instance that could take the request is saturated or unreachable; retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InternalFailure(ModelhostError):
    """A fault inside modelhost itself; the log says more."""
