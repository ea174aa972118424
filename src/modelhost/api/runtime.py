"""The runtime edge: ``POST /endpoints/{name}/invocations`` as sagemaker-runtime's InvokeEndpoint.

Hot path, called by ``api/app.py`` straight from the HTTP server: headers are read in one pass, the body is
forwarded untouched, and nothing here touches the database or formats a log line unless something broke.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import orjson

from modelhost.api.errors import RUNTIME, lookup
from modelhost.api.metrics import InvocationMetrics
from modelhost.api.response_stream import ResponseStreamApi, header_text
from modelhost.errors import (
    InternalFailure,
    ModelhostError,
    ModelInvocationError,
    ServiceUnavailable,
    ValidationError,
)
from modelhost.http import Respond, Responder
from modelhost.router.invoke import InvokeRequest, InvokeResult, Router
from modelhost.router.model_cache import check_target_model

log = logging.getLogger("modelhost.api")

_WANTED = {
    b"content-type",
    b"accept",
    b"x-amzn-sagemaker-custom-attributes",
    b"x-amzn-sagemaker-target-variant",
    b"x-amzn-sagemaker-inference-id",
    b"x-amzn-sagemaker-target-model",
    b"x-amzn-sagemaker-target-container-hostname",
    b"x-amzn-sagemaker-inference-component",
    b"x-amzn-sagemaker-session-id",
    b"x-amzn-sagemaker-enable-explanations",
}
# Members of InvokeEndpoint that belong to features modelhost does not have yet: refused by name, never
# silently ignored.
_NOT_YET = {
    b"x-amzn-sagemaker-inference-component": "InferenceComponentName (inference components)",
    b"x-amzn-sagemaker-session-id": "SessionId (stateful sessions)",
    b"x-amzn-sagemaker-enable-explanations": "EnableExplanations (explainers)",
}


class RuntimeApi:
    """InvokeEndpoint (and, through ``invoke_stream``, InvokeEndpointWithResponseStream). Each invocation
    runs in a Task of its own, which this object owns until it ends."""

    def __init__(self, router: Router, metrics: InvocationMetrics, max_payload_bytes: int) -> None:
        self._router = router
        self._metrics = metrics
        self._max_payload = max_payload_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._streams = ResponseStreamApi(router, metrics, max_payload_bytes, self._fail)

    @property
    def max_payload_bytes(self) -> int:
        return self._max_payload

    def invoke(
        self, endpoint: str, headers: Iterable[tuple[bytes, bytes]], body: bytes, respond: Respond
    ) -> None:
        """Start one invocation; it answers through ``respond``, at once if the request is invalid."""
        started = time.perf_counter_ns()
        h: dict[bytes, bytes] = {}
        for k, v in headers:
            if k in _WANTED:
                h[k] = v
        try:
            for name, feature in _NOT_YET.items():
                if name in h:
                    raise ValidationError(f"{feature} is not supported by modelhost yet.")
            if len(body) > self._max_payload:
                raise self._too_large()
            tv = h.get(b"x-amzn-sagemaker-target-variant")
            tm = h.get(b"x-amzn-sagemaker-target-model")
            tc = h.get(b"x-amzn-sagemaker-target-container-hostname")
            req = InvokeRequest(
                endpoint=endpoint,
                body=body,
                content_type=h.get(b"content-type"),
                accept=h.get(b"accept"),
                custom_attributes=h.get(b"x-amzn-sagemaker-custom-attributes"),
                target_variant=tv.decode("latin-1") if tv is not None else None,
                inference_id=h.get(b"x-amzn-sagemaker-inference-id"),
                target_model=check_target_model(header_text(tm)) if tm is not None else None,
                target_container=header_text(tc) if tc is not None else None,
            )
        except ModelhostError as exc:
            self._fail(respond, exc, endpoint, None)
            return
        loop = self._loop
        if loop is None:
            # Kept, not looked up per request: on Python 3.11 get_running_loop makes a getpid system call.
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(self._invoke(req, respond, started))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def invoke_stream(
        self, endpoint: str, headers: Iterable[tuple[bytes, bytes]], body: bytes, responder: Responder
    ) -> None:
        """Start one InvokeEndpointWithResponseStream (api/response_stream.py)."""
        self._streams.invoke(endpoint, headers, body, responder)

    def reject_too_large(self, endpoint: str, respond: Respond) -> None:
        """Answer a request whose body the HTTP server would not even buffer."""
        self._fail(respond, self._too_large(), endpoint, None)

    async def close(self) -> None:
        """Cancel the invocations still running (after the server stopped waiting for them)."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._streams.close()

    def _too_large(self) -> ValidationError:
        return ValidationError(
            f"Request body is larger than the {self._max_payload} bytes InvokeEndpoint accepts. "
            "Send large payloads through asynchronous inference or batch transform."
        )

    async def _invoke(self, req: InvokeRequest, respond: Respond, started: int) -> None:
        try:
            result = await self._router.invoke(req)
        except ModelhostError as exc:
            self._fail(respond, exc, req.endpoint, req.target_variant)
            return
        except Exception:
            log.exception("InvokeEndpoint on %s failed", req.endpoint)
            failure = InternalFailure("Internal failure; see the server log.")
            self._fail(respond, failure, req.endpoint, req.target_variant)
            return
        headers = [
            (b"content-type", (result.content_type or "application/octet-stream").encode("latin-1")),
            (b"x-amzn-invoked-production-variant", result.variant.encode("latin-1")),
        ]
        if result.custom_attributes is not None:
            headers.append(
                (b"x-amzn-sagemaker-custom-attributes", result.custom_attributes.encode("latin-1"))
            )
        respond(200, headers, result.body)
        m = self._metrics.variant(req.endpoint, result.variant)
        m.invocations.inc()
        m.model_latency.observe(result.model_latency_us)
        total_us = (time.perf_counter_ns() - started) // 1000
        m.overhead_latency.observe(max(0, total_us - result.model_latency_us))
        if result.batch_rows:
            m.batch_rows.observe(result.batch_rows)
        if result.queue_us is not None:
            m.queue_delay.observe(result.queue_us)
        if result.container is not None or result.steps:
            self._container_metrics(req.endpoint, result)

    def _container_metrics(self, endpoint: str, result: InvokeResult) -> None:
        """A multi-container endpoint's answer: per container, the Direct target or each pipeline step."""
        if result.steps:
            for step in result.steps:
                self._metrics.container(endpoint, result.variant, step.container).succeeded(step.latency_us)
        elif result.container is not None:
            c = self._metrics.container(endpoint, result.variant, result.container)
            c.succeeded(result.model_latency_us)

    def _fail(self, respond: Respond, exc: ModelhostError, endpoint: str, variant: str | None) -> None:
        wire = lookup(RUNTIME, exc)
        body: dict[str, object] = {"ErrorCode": wire.code, "message": exc.message, "Message": exc.message}
        headers = [(b"content-type", b"application/json"), (b"x-amzn-errortype", wire.code.encode())]
        if isinstance(exc, ModelInvocationError):
            body.update(OriginalStatusCode=exc.original_status, OriginalMessage=exc.original_message)
            if exc.log_stream_arn:
                body["LogStreamArn"] = exc.log_stream_arn
        if isinstance(exc, ServiceUnavailable):
            headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
        respond(wire.status, headers, orjson.dumps(body))
        # Requests for unknown endpoints have no variant to count against.
        if isinstance(exc, ModelInvocationError):
            variant = exc.variant
        route_variant = variant or self._router.variant_for_endpoint(endpoint)
        if route_variant is None:
            return
        m = self._metrics.variant(endpoint, route_variant)
        m.invocations.inc()
        if isinstance(exc, ModelInvocationError):
            m.model_errors.inc()
            if exc.container is not None:
                self._metrics.container(endpoint, route_variant, exc.container).failed(exc.original_status)
        (m.errors_4xx if wire.status < 500 else m.errors_5xx).inc()
