"""SageMaker's multi-model container contract on the worker: ``/models`` and ``/models/{name}[/invoke]``.

The contract app (``server.py``) hands these paths here in multi-model mode. This is an HTTP edge: it
parses, calls the model service (``models.py``), and writes the answer; the one table below maps the
service's errors to the contract's statuses. Errors are plain text, as on ``/invocations``. Invocations
carry every request header to the handler's context, ``X-Amzn-SageMaker-Target-Model`` (the caller's
TargetModel) included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from functools import partial
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from modelhost.errors import ModelhostError, ValidationError
from modelhost.http import Request, Responder
from modelhost.worker.dispatch import Dispatcher, WorkReply, WorkRequest
from modelhost.worker.failure import LoadFailure, describe_exception
from modelhost.worker.model_table import (
    InvalidPageRequest,
    ModelAlreadyLoaded,
    ModelLoading,
    ModelNotLoaded,
    decode_page_token,
    parse_page_size,
)
from modelhost.worker.models import ModelRecord, ModelService, OutOfModelMemory, WorkerStopping
from modelhost.worker.server import send_reply

log = logging.getLogger("modelhost.worker")

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
_PREFIX = b"/models/"
_INVOKE_SUFFIX = b"/invoke"

# The one error -> status table of the multi-model contract, most specific first.
MODEL_ERROR_STATUS: dict[type[ModelhostError], int] = {
    ModelNotLoaded: 404,
    ModelAlreadyLoaded: 409,
    ModelLoading: 409,
    OutOfModelMemory: 507,
    InvalidPageRequest: 400,
    ValidationError: 400,
    LoadFailure: 400,  # the artifact or its handler code is broken (the message says how)
    WorkerStopping: 503,
}


def status_for(exc: BaseException) -> int:
    for kind in type(exc).__mro__:
        status = MODEL_ERROR_STATUS.get(kind)
        if status is not None:
            return status
    return 500


def _send(responder: Responder, status: int, body: bytes, content_type: bytes = _TEXT) -> None:
    if not responder.closed:
        responder.send(status, [(b"content-type", content_type)], body)


def _send_json(responder: Responder, payload: object) -> None:
    _send(responder, 200, orjson.dumps(payload), _JSON)


def _send_error(responder: Responder, exc: BaseException) -> None:
    message = exc.message if isinstance(exc, ModelhostError) else describe_exception(exc)
    _send(responder, status_for(exc), message.encode("utf-8", "replace"))


def load_request(body: bytes) -> tuple[str, str]:
    """``model_name`` and ``url`` of a ``POST /models`` body."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f'POST /models takes JSON {{"model_name": ..., "url": ...}}: {exc}') from None
    fields = document if isinstance(document, dict) else {}
    name, url = fields.get("model_name"), fields.get("url")
    if not isinstance(name, str) or not name or not isinstance(url, str) or not url:
        raise ValidationError(
            'POST /models takes JSON {"model_name": "<name>", "url": "<directory of the unpacked model>"}, '
            f"both non-empty strings; got {body[:200].decode('utf-8', 'replace')}"
        )
    return name, url


def describe(entry: ModelRecord) -> dict[str, object]:
    """``GET /models/{name}``: the contract's two fields, then ours."""
    return {
        "modelName": entry.name,
        "modelUrl": entry.url,
        "memory_bytes": entry.memory_bytes,
        "gpu_memory_bytes": entry.gpu_memory_bytes,
        "load_ms": entry.load_ms,
        "loaded_at": entry.loaded_at,
        "last_used": entry.last_used,
        "in_flight": entry.in_flight,
    }


class ModelsRoute:
    """The ``/models`` handler. Loads and unloads run as tasks it owns (``close`` ends them)."""

    def __init__(self, service: ModelService, loop: asyncio.AbstractEventLoop) -> None:
        self._service = service
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, request: Request, responder: Responder) -> None:
        path, method = request.path, request.method
        if path == b"/models":
            if method == b"GET":
                self._list(request, responder)
            elif method == b"POST":
                self._spawn(self._load(request.body, responder))
            else:
                _send(responder, 405, b"Use GET /models or POST /models")
            return
        rest = path[len(_PREFIX) :]
        invoke = rest.endswith(_INVOKE_SUFFIX)
        name = unquote((rest[: -len(_INVOKE_SUFFIX)] if invoke else rest).decode("latin-1"))
        if not name:
            _send(responder, 404, b"No model name in the path: use /models/{name}")
        elif invoke and method == b"POST":
            self._invoke(name, request, responder)
        elif invoke:
            _send(responder, 405, b"Use POST /models/{name}/invoke")
        elif method == b"GET":
            self._describe(name, responder)
        elif method == b"DELETE":
            self._spawn(self._unload(name, responder))
        else:
            _send(responder, 405, b"Use GET or DELETE /models/{name}")

    def set_stopping(self) -> None:
        self._service.set_stopping()

    async def close(self) -> None:
        """Stop waiting for loads and unloads (the worker is going; their threads end with the process)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, body: bytes, responder: Responder) -> None:
        try:
            name, url = load_request(body)
            entry = await self._service.load(name, url)
        except Exception as exc:
            _send_error(responder, exc)
            return
        answer: dict[str, object] = {
            "status": "loaded",
            "model_name": entry.name,
            "memory_bytes": entry.memory_bytes,
            "load_ms": entry.load_ms,
            "unowned_bytes": self._service.unowned_bytes,
        }
        if entry.gpu_memory_bytes is not None:
            answer["gpu_memory_bytes"] = entry.gpu_memory_bytes
            answer["gpu_total_bytes"] = self._service.gpu_total_bytes
        _send_json(responder, answer)

    async def _unload(self, name: str, responder: Responder) -> None:
        try:
            result = await self._service.unload(name)
        except Exception as exc:
            _send_error(responder, exc)
            return
        _send_json(
            responder,
            {
                "status": "unloaded",
                "model_name": name,
                "freed_bytes": result.freed_bytes,
                "unowned_bytes": result.unowned_bytes,
            },
        )

    def _list(self, request: Request, responder: Responder) -> None:
        query = parse_qs(request.query.decode("latin-1"))
        try:
            token = query.get("next_page_token", [""])[-1]
            size = parse_page_size(query.get("page_size", [""])[-1])
            page = self._service.page(decode_page_token(token) if token else None, size)
        except ModelhostError as exc:
            _send_error(responder, exc)
            return
        answer: dict[str, object] = {
            "models": [{"modelName": entry.name, "modelUrl": entry.url} for entry in page.entries]
        }
        if page.next_token is not None:
            answer["nextPageToken"] = page.next_token
        _send_json(responder, answer)

    def _describe(self, name: str, responder: Responder) -> None:
        try:
            entry = self._service.describe(name)
        except ModelhostError as exc:
            _send_error(responder, exc)
            return
        _send_json(responder, describe(entry))

    def _invoke(self, name: str, request: Request, responder: Responder) -> None:
        try:
            entry = self._service.acquire(name)
        except ModelhostError as exc:
            _send_error(responder, exc)
            return
        assert entry.payload is not None
        dispatcher = entry.payload.dispatcher
        content_type: str | None = None
        accept: str | None = None
        for header, value in request.headers:
            if header == b"content-type":
                content_type = value.decode("latin-1")
            elif header == b"accept":
                accept = value.decode("latin-1")
        work = WorkRequest(request.body, content_type, accept, request.headers)
        dispatcher.submit(work, partial(self._answer, entry, dispatcher, responder))

    def _answer(
        self, entry: ModelRecord, dispatcher: Dispatcher, responder: Responder, reply: WorkReply
    ) -> None:
        # On the loop, from the dispatcher: the model may be unloaded once this invocation is released.
        self._service.release(entry)
        if not responder.closed:
            send_reply(responder, reply, dispatcher.waiting())
