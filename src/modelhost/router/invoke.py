"""The invocation path: endpoint → variant → instance, forward the body untouched, map the answer.

Called by the runtime API for every InvokeEndpoint. No database, no logging, no task creation here.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from modelhost.errors import (
    InternalFailure,
    ModelInvocationError,
    ModelNotReady,
    ServiceUnavailable,
    ValidationError,
)
from modelhost.router.choice import choose_instance, choose_model_instance, choose_variant
from modelhost.router.instance_client import InstanceNotConnected, InstanceTimeout, InstanceUnreachable
from modelhost.router.invoker import StepTiming, contract_headers
from modelhost.router.model_cache import LoadFailed
from modelhost.router.streaming import STREAM_REQUEST_HEADER, ModelStream
from modelhost.router.table import ContainerRoute, EndpointRoute, InstanceHandle, RouteTable, VariantRoute


@dataclass(frozen=True, slots=True)
class InvokeRequest:
    endpoint: str
    body: bytes
    content_type: bytes | None
    accept: bytes | None
    custom_attributes: bytes | None
    target_variant: str | None
    inference_id: bytes | None
    target_model: str | None = None  # a multi-model endpoint's model: a key under its ModelDataUrl
    target_container: str | None = None  # a Direct multi-container endpoint's TargetContainerHostname


@dataclass(frozen=True, slots=True)
class InvokeResult:
    variant: str
    body: bytes
    content_type: str | None
    custom_attributes: str | None
    model_latency_us: int
    # As the instance reports them (x-modelhost-* headers; None from instances that do not).
    queue_us: int | None = None
    batch_rows: int | None = None
    # A multi-container endpoint: the container a Direct request ran on; a serial pipeline's steps.
    container: str | None = None
    steps: tuple[StepTiming, ...] = ()


class Router:
    def __init__(
        self,
        table: RouteTable,
        account_id: str,
        max_outstanding_per_instance: int,
        max_outstanding_per_endpoint: int = 1024,
        hot_model_outstanding: int = 4,
    ) -> None:
        self._table = table
        self._account = account_id
        self._max_outstanding = max_outstanding_per_instance
        self._max_per_endpoint = max_outstanding_per_endpoint
        self._hot_model = hot_model_outstanding
        # Requests in flight per endpoint; kept here, not on the route, because routes are rebuilt.
        self.in_flight: dict[str, int] = {}
        self._rotor = 0
        self._random = random.random

    def variant_for_endpoint(self, endpoint: str) -> str | None:
        """A variant to count a request against when it failed before one was chosen."""
        route = self._table.routes.get(endpoint)
        return route.variants[0].name if route and route.variants else None

    def _pick(self, req: InvokeRequest, avoid: InstanceHandle | None = None) -> tuple[InstanceHandle, float]:
        route, variant = self._variant(req)
        if variant.model_prefix is not None:
            raise ValidationError(
                f"Endpoint {req.endpoint} is a multi-model endpoint: InvokeEndpoint needs TargetModel, the "
                f"key of a model archive under its ModelDataUrl {variant.model_prefix} (for example "
                "model-a.tar.gz)."
            )
        if variant.containers is not None or req.target_container is not None:
            check_target_container(req.endpoint, variant.containers, req.target_container)
        self._rotor += 1
        instances = variant.instances
        if avoid is not None:
            instances = tuple(h for h in instances if h is not avoid)
        handle = choose_instance(instances, self._max_outstanding, self._rotor)
        if handle is None:
            raise self._saturated(req, variant)
        return handle, route.timeout_s

    def _variant(self, req: InvokeRequest) -> tuple[EndpointRoute, VariantRoute]:
        route = self._table.routes.get(req.endpoint)
        if route is None:
            raise ValidationError(f"Endpoint {req.endpoint} of account {self._account} not found.")
        if req.target_variant is not None:
            variant = route.by_name.get(req.target_variant)
            if variant is None:
                raise ValidationError(
                    f"Variant {req.target_variant} not found for endpoint {req.endpoint}; it has "
                    f"{[v.name for v in route.variants]}."
                )
            if not variant.instances:
                raise ModelNotReady(
                    f"Variant {variant.name} of endpoint {req.endpoint} has no instance ready yet."
                )
        else:
            chosen = choose_variant(route, self._random())
            if chosen is None:
                raise ModelNotReady(
                    f"Endpoint {req.endpoint} has no instance ready to serve yet; retry shortly "
                    "(DescribeEndpoint shows its status)."
                )
            variant = chosen
        return route, variant

    def _saturated(self, req: InvokeRequest, variant: VariantRoute) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"Every instance of variant {variant.name} of endpoint {req.endpoint} is at its limit of "
            f"{self._max_outstanding} requests in flight; retry, or add instances."
        )

    async def invoke(self, req: InvokeRequest) -> InvokeResult:
        self._admit(req.endpoint)
        try:
            if req.target_model is not None:
                return await self._invoke_model(req, req.target_model)
            return await self._invoke(req)
        finally:
            self.in_flight[req.endpoint] -= 1

    def _admit(self, endpoint: str) -> None:
        in_flight = self.in_flight.get(endpoint, 0)
        if in_flight >= self._max_per_endpoint:
            raise ServiceUnavailable(
                f"Endpoint {endpoint} has {in_flight} requests in flight, its limit "
                f"(MODELHOST_MAX_CONCURRENCY_PER_ENDPOINT); retry shortly, or add instances."
            )
        self.in_flight[endpoint] = in_flight + 1

    async def open_stream(self, req: InvokeRequest) -> ModelStream:
        """A streamed invocation (InvokeEndpointWithResponseStream): returns once an instance has begun a
        successful answer, which the caller reads and then closes. Fails as ``invoke`` does before that.

        The request counts against the endpoint's and the instance's limits until the stream is closed.
        """
        self._admit(req.endpoint)
        try:
            handle, timeout_s = self._pick(req)
            try:
                return await self._open_stream(req, handle, timeout_s)
            except InstanceNotConnected:
                pass  # as in _invoke: it never reached that instance; try another once
            try:
                other, timeout_s = self._pick(req, avoid=handle)
                return await self._open_stream(req, other, timeout_s)
            except (ServiceUnavailable, InstanceNotConnected):
                raise ServiceUnavailable(
                    f"No instance of endpoint {req.endpoint} accepted the request (instance {handle.id} is "
                    "not accepting connections; it is being replaced). Retry shortly."
                ) from None
        except BaseException:
            self.in_flight[req.endpoint] -= 1
            raise

    async def _open_stream(self, req: InvokeRequest, handle: InstanceHandle, timeout_s: float) -> ModelStream:
        client = handle.stream_client
        if handle.containers is not None:
            if handle.container_streams is None or req.target_container is None:
                raise ValidationError(
                    f"Endpoint {req.endpoint} is a serial inference pipeline: its answer is not streamed. "
                    "Use InvokeEndpoint."
                )
            client = handle.container_streams[req.target_container]  # checked against the route in _pick
        if client is None:
            raise InternalFailure(f"Instance {handle.id} was started without a streaming connection.")
        headers = contract_headers(
            req.content_type, req.accept, req.custom_attributes, req.inference_id, STREAM_REQUEST_HEADER
        )
        handle.outstanding += 1
        started = time.perf_counter_ns()
        try:
            stream = await client.open("POST", "/invocations", headers, req.body, timeout_s)
        except InstanceTimeout:
            handle.release()
            raise self._model_error(
                handle,
                0,
                f"The model did not begin its response within {timeout_s:g} s, the endpoint's invocation "
                "timeout. Make it faster, or raise SAGEMAKER_MODEL_SERVER_TIMEOUT in the model's "
                "Environment.",
            ) from None
        except InstanceNotConnected:
            handle.release()
            raise
        except InstanceUnreachable as exc:
            handle.release()
            raise self._model_error(
                handle,
                0,
                f"Instance {handle.id} closed the connection before answering ({exc}); its "
                "process may have exited while handling the request.",
            ) from None
        except BaseException:
            handle.release()
            raise
        endpoint = req.endpoint

        def release() -> None:
            self.in_flight[endpoint] -= 1

        if stream.status < 300:
            # The counts taken for this request are released when the stream is closed.
            return ModelStream(stream, handle, timeout_s, release, started)
        try:
            body = await stream.read_all()
        except (InstanceTimeout, InstanceUnreachable):
            body = b""
        finally:
            stream.close()
            handle.release()
        raise self._model_error(handle, stream.status, body.decode("utf-8", "replace"))

    async def _invoke(self, req: InvokeRequest) -> InvokeResult:
        handle, timeout_s = self._pick(req)
        try:
            return await self._send(req, handle, timeout_s)
        except InstanceNotConnected:
            # The instance died (or is being replaced) before it got the request: the controller will take
            # it out of the table within a moment, and this request goes to another instance now.
            pass
        try:
            other, timeout_s = self._pick(req, avoid=handle)
            return await self._send(req, other, timeout_s)
        except (ServiceUnavailable, InstanceNotConnected):
            raise ServiceUnavailable(
                f"No instance of endpoint {req.endpoint} accepted the request (instance {handle.id} is not "
                "accepting connections; it is being replaced). Retry shortly."
            ) from None

    async def _send(self, req: InvokeRequest, handle: InstanceHandle, timeout_s: float) -> InvokeResult:
        client = handle.client
        if req.target_container is not None and handle.containers is not None:
            client = handle.containers[req.target_container]  # checked against the route in _pick
        handle.outstanding += 1
        started = time.perf_counter_ns()
        try:
            resp = await client.invoke(
                req.content_type, req.accept, req.custom_attributes, req.inference_id, req.body, timeout_s
            )
        except InstanceTimeout:
            raise self._model_error(
                handle,
                0,
                f"The model did not answer within {timeout_s:g} s, the endpoint's invocation timeout. Make "
                "it faster, or raise SAGEMAKER_MODEL_SERVER_TIMEOUT in the model's Environment.",
            ) from None
        except InstanceNotConnected:
            raise
        except InstanceUnreachable as exc:
            raise self._model_error(
                handle,
                0,
                f"Instance {handle.id} closed the connection before answering ({exc}); its "
                "process may have exited while handling the request.",
            ) from None
        finally:
            handle.release()
        latency_us = (time.perf_counter_ns() - started) // 1000
        handle.waiting = resp.waiting or 0
        container = resp.container or req.target_container
        if resp.status >= 300:
            message = resp.body.decode("utf-8", "replace")
            raise self._model_error(handle, resp.status, message, container, resp.steps)
        return InvokeResult(
            variant=handle.variant,
            body=resp.body,
            content_type=resp.content_type,
            custom_attributes=resp.custom_attributes,
            model_latency_us=latency_us,
            queue_us=resp.queue_us,
            batch_rows=resp.batch_rows,
            container=container,
            steps=resp.steps,
        )

    async def _invoke_model(self, req: InvokeRequest, key: str) -> InvokeResult:
        """A multi-model request: to an instance that has the model when one can take it (choice.py)."""
        route, variant = self._variant(req)
        if variant.model_prefix is None:
            # SageMaker's words for it.
            raise ValidationError(
                f"Endpoint {req.endpoint} is not a multi-model endpoint and does not support target model "
                "header."
            )
        handle = self._pick_for_model(req, variant, key, None)
        try:
            return await self._send_model(req, handle, key, route.timeout_s)
        except InstanceNotConnected:
            pass  # as in _invoke: the instance is being replaced; one other try
        try:
            other = self._pick_for_model(req, variant, key, handle)
            return await self._send_model(req, other, key, route.timeout_s)
        except (ServiceUnavailable, InstanceNotConnected):
            raise ServiceUnavailable(
                f"No instance of endpoint {req.endpoint} accepted the request (instance {handle.id} is not "
                "accepting connections; it is being replaced). Retry shortly."
            ) from None

    def _pick_for_model(
        self, req: InvokeRequest, variant: VariantRoute, key: str, avoid: InstanceHandle | None
    ) -> InstanceHandle:
        self._rotor += 1
        instances = variant.instances
        if avoid is not None:
            instances = tuple(h for h in instances if h is not avoid)

        def holds(h: InstanceHandle) -> bool:
            return h.models is not None and h.models.holds(key)

        handle = choose_model_instance(instances, holds, self._max_outstanding, self._hot_model, self._rotor)
        if handle is None:
            raise self._saturated(req, variant)
        return handle

    async def _send_model(
        self, req: InvokeRequest, handle: InstanceHandle, key: str, timeout_s: float
    ) -> InvokeResult:
        models = handle.models
        if models is None:
            raise InternalFailure(f"Instance {handle.id} of a multi-model variant has no model cache.")
        handle.outstanding += 1
        started = time.perf_counter_ns()
        try:
            args = (req.content_type, req.accept, req.custom_attributes, req.inference_id, req.body)
            done = await models.invoke(key, *args, timeout_s)
        except InstanceTimeout:
            raise self._model_error(
                handle,
                0,
                f"Model {key!r} did not answer within {timeout_s:g} s, the endpoint's invocation timeout.",
            ) from None
        except InstanceNotConnected:
            raise
        except InstanceUnreachable as exc:
            raise self._model_error(
                handle,
                0,
                f"Instance {handle.id} closed the connection before answering for model {key!r} ({exc}); "
                "its process may have exited while handling the request.",
            ) from None
        except LoadFailed as exc:
            raise self._model_error(handle, exc.status, exc.message) from None
        finally:
            handle.release()
        resp = done.reply
        # ModelLatency is the model's time; the wait for its load is ModelLoadingWaitTime.
        latency_us = (time.perf_counter_ns() - started) // 1000 - done.waited_us
        handle.waiting = resp.waiting or 0
        if resp.status >= 300:
            raise self._model_error(handle, resp.status, resp.body.decode("utf-8", "replace"))
        return InvokeResult(
            variant=handle.variant,
            body=resp.body,
            content_type=resp.content_type,
            custom_attributes=resp.custom_attributes,
            model_latency_us=max(0, latency_us),
            queue_us=resp.queue_us,
            batch_rows=resp.batch_rows,
        )

    def _model_error(
        self,
        handle: InstanceHandle,
        status: int,
        message: str,
        container: str | None = None,
        steps: tuple[StepTiming, ...] = (),
    ) -> ModelInvocationError:
        kind = "client" if 400 <= status < 500 else "server"
        source = "primary" if container is None else container
        if steps and handle.containers is not None:
            source = f"{container} (step {len(steps)} of {len(handle.containers)} of the serial pipeline)"
        text = (
            f'Received {kind} error ({status}) from {source} with message "{message}". '
            f"See {handle.log_stream_arn} in account {self._account} for more information."
        )
        return ModelInvocationError(text, status, message, handle.log_stream_arn, handle.variant, container)


def check_target_container(endpoint: str, containers: ContainerRoute | None, target: str | None) -> None:
    """TargetContainerHostname as SageMaker checks it: required on a Direct multi-container endpoint, one
    of its hostnames, and refused on every other endpoint."""
    if target is None:
        if containers is not None and containers.direct:
            raise ValidationError(
                f"Endpoint {endpoint} is a multi-container endpoint with direct invocation: InvokeEndpoint "
                f"needs TargetContainerHostname, one of {', '.join(containers.hostnames)}."
            )
        return
    if containers is None or not containers.direct:
        raise ValidationError(
            f"Endpoint {endpoint} is not a multi-container endpoint with direct invocation, so "
            "InvokeEndpoint cannot name a TargetContainerHostname; leave it out."
        )
    if target not in containers.hostnames:
        raise ValidationError(
            f"TargetContainerHostname {target} is not a container of endpoint {endpoint}; its containers "
            f"are {', '.join(containers.hostnames)}."
        )
