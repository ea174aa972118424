"""The streaming runtime edge: ``POST /endpoints/{name}/invocations-response-stream`` as sagemaker-runtime's
InvokeEndpointWithResponseStream.

Called by ``api/app.py`` (through ``RuntimeApi.invoke_stream``). Failures before the answer begins are the
JSON errors of InvokeEndpoint; once it has begun, the model's output goes out as ``PayloadPart`` events as it
arrives and a failure becomes the stream's last event (docs/streaming.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from modelhost.api import event_stream
from modelhost.api.errors import STREAM, lookup
from modelhost.api.metrics import InvocationMetrics
from modelhost.errors import InternalFailure, ModelhostError, ModelStreamFailure, ValidationError
from modelhost.http import Respond, Responder
from modelhost.router.invoke import InvokeRequest, Router
from modelhost.router.streaming import ModelStream

log = logging.getLogger("modelhost.api")

# Answers a failure before the stream begins, as InvokeEndpoint does: (respond, error, endpoint, variant).
Fail = Callable[[Respond, ModelhostError, str, str | None], None]

_WANTED = {
    b"content-type",
    b"x-amzn-sagemaker-accept",
    b"x-amzn-sagemaker-custom-attributes",
    b"x-amzn-sagemaker-target-variant",
    b"x-amzn-sagemaker-inference-id",
    b"x-amzn-sagemaker-target-container-hostname",
    b"x-amzn-sagemaker-inference-component",
    b"x-amzn-sagemaker-session-id",
}
# Members of the operation that belong to features modelhost does not have yet: refused by name.
_NOT_YET = {
    b"x-amzn-sagemaker-inference-component": "InferenceComponentName (inference components)",
    b"x-amzn-sagemaker-session-id": "SessionId (stateful sessions)",
}


def header_text(value: bytes) -> str:
    """A header value as text: UTF-8 as boto3 sends it, else byte for byte."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class ResponseStreamApi:
    """InvokeEndpointWithResponseStream. Each stream runs in a Task of its own, owned here until it ends."""

    def __init__(
        self, router: Router, metrics: InvocationMetrics, max_payload_bytes: int, fail: Fail
    ) -> None:
        self._router = router
        self._metrics = metrics
        self._max_payload = max_payload_bytes
        self._fail = fail
        self._running: set[asyncio.Task[None]] = set()

    def invoke(
        self, endpoint: str, headers: Iterable[tuple[bytes, bytes]], body: bytes, responder: Responder
    ) -> None:
        """Start one streamed invocation; it answers at once if the request is invalid."""
        started = time.perf_counter_ns()
        h = {k: v for k, v in headers if k in _WANTED}
        try:
            for name, feature in _NOT_YET.items():
                if name in h:
                    raise ValidationError(f"{feature} is not supported by modelhost yet.")
            if len(body) > self._max_payload:
                raise ValidationError(
                    f"Request body is larger than the {self._max_payload} bytes that "
                    "InvokeEndpointWithResponseStream accepts. Send large payloads through asynchronous "
                    "inference or batch transform."
                )
            tv = h.get(b"x-amzn-sagemaker-target-variant")
            tc = h.get(b"x-amzn-sagemaker-target-container-hostname")
            req = InvokeRequest(
                endpoint=endpoint,
                body=body,
                content_type=h.get(b"content-type"),
                accept=h.get(b"x-amzn-sagemaker-accept"),
                custom_attributes=h.get(b"x-amzn-sagemaker-custom-attributes"),
                target_variant=tv.decode("latin-1") if tv is not None else None,
                inference_id=h.get(b"x-amzn-sagemaker-inference-id"),
                target_container=header_text(tc) if tc is not None else None,
            )
        except ModelhostError as exc:
            self._fail(responder.send, exc, endpoint, None)
            return
        task = asyncio.get_running_loop().create_task(self._run(req, responder, started))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def close(self) -> None:
        """Cancel the streams still running (after the server stopped waiting for them)."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, req: InvokeRequest, responder: Responder, started: int) -> None:
        try:
            stream = await self._router.open_stream(req)
        except ModelhostError as exc:
            self._fail(responder.send, exc, req.endpoint, req.target_variant)
            return
        except Exception:
            log.exception("InvokeEndpointWithResponseStream on %s failed", req.endpoint)
            failure = InternalFailure("Internal failure; see the server log.")
            self._fail(responder.send, failure, req.endpoint, req.target_variant)
            return
        # A client that goes away stops the model: the instance's connection is dropped at once.
        responder.on_close(stream.close)
        try:
            error = await self._relay(req.endpoint, stream, responder)
        finally:
            stream.close()
        if responder.closed:
            error = None  # the client left: nothing to tell it, and not the model's failure
        elif error is not None:
            wire = lookup(STREAM, error)
            members = {"Message": error.message}
            if isinstance(error, ModelStreamFailure):
                members["ErrorCode"] = error.error_code
            responder.write(event_stream.exception_event(wire.code, members))
        if not responder.closed:
            responder.end()
        m = self._metrics.variant(req.endpoint, stream.variant)
        m.invocations.inc()
        model_us = stream.elapsed_us()
        m.model_latency.observe(model_us)
        m.overhead_latency.observe(max(0, (time.perf_counter_ns() - started) // 1000 - model_us))
        if isinstance(error, ModelStreamFailure):
            m.model_errors.inc()

    async def _relay(self, endpoint: str, stream: ModelStream, responder: Responder) -> ModelhostError | None:
        """Forward the model's output as PayloadPart events; returns the error that ended it, if any."""
        headers = [
            (b"content-type", event_stream.CONTENT_TYPE),
            (b"x-amzn-invoked-production-variant", stream.variant.encode("latin-1")),
        ]
        if stream.content_type is not None:
            headers.append((b"x-amzn-sagemaker-content-type", stream.content_type.encode("latin-1")))
        if stream.custom_attributes is not None:
            headers.append(
                (b"x-amzn-sagemaker-custom-attributes", stream.custom_attributes.encode("latin-1"))
            )
        responder.start(200, headers)
        try:
            while chunk := await stream.read():
                for event in event_stream.payload_parts(chunk):
                    responder.write(event)
                # Backpressure: the model's connection is not read while the client is behind.
                await responder.drain()
                if responder.closed:
                    return None
        except ModelStreamFailure as exc:
            return exc
        except Exception:
            log.exception("InvokeEndpointWithResponseStream on %s failed mid-stream", endpoint)
            return InternalFailure("Internal failure in the middle of the stream; see the server log.")
        return None
