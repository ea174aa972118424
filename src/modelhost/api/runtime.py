"""The runtime edge: ``POST /endpoints/{name}/invocations`` as sagemaker-runtime's InvokeEndpoint.

Hot path: headers are read in one pass, the body is forwarded untouched, and nothing here touches the
database or formats a log line.
"""

from __future__ import annotations

import time

import orjson

from modelhost.api.asgi import BodyTooLarge, Receive, Scope, Send, read_body, respond
from modelhost.api.errors import RUNTIME, lookup
from modelhost.api.metrics import InvocationMetrics
from modelhost.errors import ModelhostError, ModelInvocationError, ServiceUnavailable, ValidationError
from modelhost.router.invoke import InvokeRequest, Router

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
    b"x-amzn-sagemaker-target-model": "TargetModel (multi-model endpoints)",
    b"x-amzn-sagemaker-target-container-hostname": "TargetContainerHostname (multi-container endpoints)",
    b"x-amzn-sagemaker-inference-component": "InferenceComponentName (inference components)",
    b"x-amzn-sagemaker-session-id": "SessionId (stateful sessions)",
    b"x-amzn-sagemaker-enable-explanations": "EnableExplanations (explainers)",
}


class RuntimeApi:
    def __init__(self, router: Router, metrics: InvocationMetrics, max_payload_bytes: int) -> None:
        self._router = router
        self._metrics = metrics
        self._max_payload = max_payload_bytes

    async def invoke(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        started = time.perf_counter_ns()
        h: dict[bytes, bytes] = {}
        for k, v in scope["headers"]:
            if k in _WANTED:
                h[k] = v
        variant: str | None = None
        try:
            for name, feature in _NOT_YET.items():
                if name in h:
                    raise ValidationError(f"{feature} is not supported by modelhost yet.")
            try:
                body = await read_body(receive, self._max_payload)
            except BodyTooLarge:
                raise ValidationError(
                    f"Request body is larger than the {self._max_payload} bytes InvokeEndpoint accepts. "
                    "Send large payloads through asynchronous inference or batch transform."
                ) from None
            tv = h.get(b"x-amzn-sagemaker-target-variant")
            req = InvokeRequest(
                endpoint=endpoint,
                body=body,
                content_type=h.get(b"content-type"),
                accept=h.get(b"accept"),
                custom_attributes=h.get(b"x-amzn-sagemaker-custom-attributes"),
                target_variant=tv.decode("latin-1") if tv is not None else None,
                inference_id=h.get(b"x-amzn-sagemaker-inference-id"),
            )
            variant = req.target_variant
            result = await self._router.invoke(req)
        except ModelhostError as exc:
            await self._fail(send, exc, endpoint, variant)
            return
        variant = result.variant
        headers = [
            (b"content-type", (result.content_type or "application/octet-stream").encode("latin-1")),
            (b"x-amzn-invoked-production-variant", result.variant.encode("latin-1")),
        ]
        if result.custom_attributes is not None:
            headers.append(
                (b"x-amzn-sagemaker-custom-attributes", result.custom_attributes.encode("latin-1"))
            )
        await respond(send, 200, result.body, headers)
        m = self._metrics.variant(endpoint, variant)
        m.invocations.inc()
        m.model_latency.observe(result.model_latency_us)
        total_us = (time.perf_counter_ns() - started) // 1000
        m.overhead_latency.observe(max(0, total_us - result.model_latency_us))

    async def _fail(self, send: Send, exc: ModelhostError, endpoint: str, variant: str | None) -> None:
        wire = lookup(RUNTIME, exc)
        body: dict[str, object] = {"ErrorCode": wire.code, "message": exc.message, "Message": exc.message}
        headers = [(b"content-type", b"application/json"), (b"x-amzn-errortype", wire.code.encode())]
        if isinstance(exc, ModelInvocationError):
            body.update(OriginalStatusCode=exc.original_status, OriginalMessage=exc.original_message)
            if exc.log_stream_arn:
                body["LogStreamArn"] = exc.log_stream_arn
        if isinstance(exc, ServiceUnavailable):
            headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
        await respond(send, wire.status, orjson.dumps(body), headers)
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
        (m.errors_4xx if wire.status < 500 else m.errors_5xx).inc()
