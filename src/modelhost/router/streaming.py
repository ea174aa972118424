"""A streamed invocation once the router has placed it: the model's answer, read piece by piece.

Built by ``Router.open_stream`` (invoke.py) when an instance has begun a successful answer; read by the
runtime edge (``api/response_stream.py``) until it ends. Turns every way the stream can break into a
``ModelStreamFailure`` and holds the instance's and the endpoint's in-flight counts until it is closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from modelhost.errors import ModelStreamFailure
from modelhost.router.instance_client import InstanceTimeout, InstanceUnreachable
from modelhost.router.stream_client import InstanceStream
from modelhost.router.table import InstanceHandle

# Asks our worker for a streamed answer (docs/streaming.md). Servers that do not know it answer as they
# always do; their body is forwarded as it arrives either way.
STREAM_REQUEST_HEADER = (b"x-modelhost-response-stream", b"true")
# Our worker's chunked trailer when the handler raised after the answer began: the error message.
ERROR_TRAILER = "x-modelhost-stream-error"


class ModelStream:
    """The body of one streamed answer. ``close`` must be called once reading stops, whatever the reason."""

    __slots__ = (
        "_closed",
        "_handle",
        "_release",
        "_stream",
        "_timeout_s",
        "content_type",
        "custom_attributes",
        "started_ns",
        "variant",
    )

    def __init__(
        self,
        stream: InstanceStream,
        handle: InstanceHandle,
        timeout_s: float,
        release: Callable[[], None],
        started_ns: int,
    ) -> None:
        self._stream = stream
        self._handle = handle
        self._timeout_s = timeout_s
        self._release = release
        self._closed = False
        self.variant = handle.variant
        self.content_type = stream.headers.get("content-type")
        self.custom_attributes = stream.headers.get("x-amzn-sagemaker-custom-attributes")
        self.started_ns = started_ns  # when the request was sent to the instance

    async def read(self) -> bytes:
        """The next piece of the answer as the model produced it; ``b""`` at its end. Raises
        ModelStreamFailure when the stream breaks."""
        handle = self._handle
        try:
            chunk = await self._stream.read()
        except InstanceTimeout:
            raise ModelStreamFailure(
                f"The model did not finish its response within {self._timeout_s:g} s, the endpoint's "
                "invocation timeout. Make it faster, or raise SAGEMAKER_MODEL_SERVER_TIMEOUT in the model's "
                "Environment.",
                "ModelInvocationTimeExceeded",
            ) from None
        except InstanceUnreachable as exc:
            raise ModelStreamFailure(
                f"The stream from instance {handle.id} broke ({exc}); its process may have exited. See "
                f"{handle.log_stream_arn} for more information.",
                "StreamBroken",
            ) from None
        if not chunk:
            error = self._stream.trailers.get(ERROR_TRAILER)
            if error is not None:
                raise ModelStreamFailure(
                    f'The model failed in the middle of the response with message "{error}". See '
                    f"{handle.log_stream_arn} for more information.",
                    "StreamBroken",
                )
        return chunk

    def close(self) -> None:
        """Stop reading (dropping the instance's connection if the answer is not complete) and release the
        in-flight counts. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stream.close()
        self._handle.release()
        self._release()

    def elapsed_us(self) -> int:
        return (time.perf_counter_ns() - self.started_ns) // 1000
