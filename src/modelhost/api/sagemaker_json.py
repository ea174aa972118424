"""The awsJson 1.1 edge: ``POST /`` with ``X-Amz-Target: SageMaker.<Operation>``. Parses, validates against
botocore's service model, runs the operation on the database thread, serializes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from functools import partial
from typing import Any

import botocore.session
import orjson

from modelhost.api.asgi import BodyTooLarge, Receive, Scope, Send, header, read_body, respond
from modelhost.api.errors import CONTROL_PLANE, lookup
from modelhost.api.validation import validate_request
from modelhost.controlplane import endpoint_configs, endpoints, models, tags
from modelhost.controlplane.context import ControlPlaneContext
from modelhost.errors import ModelhostError, UnsupportedOperation, ValidationError
from modelhost.http import Respond

log = logging.getLogger("modelhost.api")
Operation = Callable[[ControlPlaneContext, Mapping[str, Any]], dict[str, Any]]

SAGEMAKER_OPERATIONS: dict[str, Operation] = {
    "CreateModel": models.create_model,
    "DescribeModel": models.describe_model,
    "ListModels": models.list_models,
    "DeleteModel": models.delete_model,
    "CreateEndpointConfig": endpoint_configs.create_endpoint_config,
    "DescribeEndpointConfig": endpoint_configs.describe_endpoint_config,
    "ListEndpointConfigs": endpoint_configs.list_endpoint_configs,
    "DeleteEndpointConfig": endpoint_configs.delete_endpoint_config,
    "CreateEndpoint": endpoints.create_endpoint,
    "DescribeEndpoint": endpoints.describe_endpoint,
    "ListEndpoints": endpoints.list_endpoints,
    "UpdateEndpoint": endpoints.update_endpoint,
    "UpdateEndpointWeightsAndCapacities": endpoints.update_weights_and_capacities,
    "DeleteEndpoint": endpoints.delete_endpoint,
    "AddTags": tags.add_tags,
    "ListTags": tags.list_tags,
    "DeleteTags": tags.delete_tags,
}

_JSON = [(b"content-type", b"application/x-amz-json-1.1")]
MAX_REQUEST_BYTES = 16 * 1024 * 1024


def _too_large() -> dict[str, str]:
    return {
        "__type": "ValidationException",
        "message": f"Request body is larger than {MAX_REQUEST_BYTES} bytes.",
    }


class JsonService:
    """One awsJson 1.1 service: its botocore model, its target prefix and its implemented operations."""

    def __init__(self, service_name: str, operations: Mapping[str, Operation]) -> None:
        self.model = botocore.session.get_session().get_service_model(service_name)
        self.target_prefix = self.model.metadata["targetPrefix"]
        self.operations = operations


class ControlPlaneApi:
    def __init__(self, ctx: ControlPlaneContext, db: Executor, services: list[JsonService]) -> None:
        self._ctx = ctx
        self._db = db
        self._services = {s.target_prefix: s for s in services}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = (header(scope, b"x-amz-target") or b"").decode("latin-1")
        try:
            body = await read_body(receive, MAX_REQUEST_BYTES)
            status, out = 200, await self._dispatch(target, body)
        except ModelhostError as exc:
            wire = lookup(CONTROL_PLANE, exc)
            if wire.status >= 500 and not isinstance(exc, UnsupportedOperation):
                log.error("%s failed: %s", target, exc.message)
            status, out = wire.status, {"__type": wire.code, "message": exc.message}
        except BodyTooLarge:
            status, out = 400, _too_large()
        except Exception:
            log.exception("%s failed", target)
            status, out = (
                500,
                {"__type": "InternalFailure", "message": "Internal failure; see the server log."},
            )
        await respond(send, status, orjson.dumps(out), _JSON)

    def reject_too_large(self, respond: Respond) -> None:
        """Answer a request whose body the HTTP server would not even buffer."""
        respond(400, _JSON, orjson.dumps(_too_large()))

    async def _dispatch(self, target: str, body: bytes) -> dict[str, Any]:
        prefix, _, op_name = target.rpartition(".")
        service = self._services.get(prefix)
        if service is None:
            raise ValidationError(
                f"Unknown X-Amz-Target {target!r}: expected SageMaker.<Operation> or "
                "AnyScaleFrontendService.<Operation>."
            )
        if op_name not in service.model.operation_names:
            raise ValidationError(f"{op_name} is not an operation of {service.model.service_name}.")
        operation = service.operations.get(op_name)
        if operation is None:
            raise UnsupportedOperation(
                f"modelhost does not implement {prefix}.{op_name} yet. Implemented: "
                f"{', '.join(sorted(service.operations))}."
            )
        try:
            params = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError as exc:
            raise ValidationError(f"Request body is not valid JSON: {exc}") from None
        validate_request(service.model.operation_model(op_name), params)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, partial(operation, self._ctx, params))
