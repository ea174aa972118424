"""The SageMaker container contract as a raw ASGI app: ``GET /ping`` and ``POST /invocations``.

Served by uvicorn on the worker's unix socket; the lifecycle flips it to ready once the model is loaded.
This is the worker's HTTP edge: the one place that maps pipeline errors to statuses. No per-request logging.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import Executor
from typing import Any

from modelhost.errors import ModelhostError
from modelhost.runtimes.codecs import UndecodableBody, UnsupportedAccept, UnsupportedContentType
from modelhost.worker.health import BusyClock, Phase, is_healthy, is_hung
from modelhost.worker.pipeline import HandlerFailed, Pipeline, Reply

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

log = logging.getLogger("modelhost.worker")

_TEXT = b"text/plain; charset=utf-8"
# The one error → status table of the worker's contract.
ERROR_STATUS: dict[type[ModelhostError], int] = {
    UndecodableBody: 400,
    UnsupportedAccept: 406,
    UnsupportedContentType: 415,
    HandlerFailed: 500,
}


class _ClientGone(Exception):
    """The client disconnected before sending the whole body."""


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the common case: the whole body in one message, no copy
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes = _TEXT, extra_headers: Headers = ()
) -> None:
    # Content-Length is always set: without it uvicorn would fall back to chunked encoding.
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ContractApp:
    """ASGI app of one worker. Handler code runs on ``executor``; the event loop only moves bytes."""

    def __init__(
        self,
        *,
        executor: Executor,
        busy: BusyClock,
        hang_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._executor = executor
        self._busy = busy
        self._hang_after_s = hang_after_s
        self._clock = clock
        self._phase = Phase.LOADING
        self._pipeline: Pipeline | None = None
        self._reported_hung = False

    @property
    def phase(self) -> Phase:
        return self._phase

    def set_ready(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._phase = Phase.READY

    def set_stopping(self) -> None:
        # In-flight and already-connected requests still complete; /ping tells the server we are going.
        self._phase = Phase.STOPPING

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off and websockets are disabled: nothing else reaches here
        path = scope["path"]
        if path == "/invocations":
            await self._invocations(scope, receive, send)
        elif path == "/ping":
            await self._ping(scope, send)
        else:
            await _respond(send, 404, f"No route for {path}: try /ping or /invocations".encode())

    async def _ping(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"Use GET /ping")
            return
        oldest = self._busy.oldest_start()
        now = self._clock()
        hung = is_hung(oldest, now, self._hang_after_s)
        if hung != self._reported_hung:
            self._reported_hung = hung
            if hung and oldest is not None:
                log.error(
                    "hung: a prediction has run %.1f s (limit %.1f s); failing /ping so the server replaces "
                    "this instance",
                    now - oldest,
                    self._hang_after_s,
                )
            else:
                log.info("no longer hung: the long prediction finished")
        if is_healthy(self._phase, oldest, now, self._hang_after_s):
            await _respond(send, 200, b"", b"text/plain")
        else:
            await _respond(send, 503, f"{self._phase.value}{' (hung)' if hung else ''}".encode())

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _respond(send, 405, b"Use POST /invocations")
            return
        pipeline = self._pipeline
        if pipeline is None:
            await _respond(send, 503, b"The model is not loaded yet; retry once /ping answers 200")
            return
        headers: Headers = scope["headers"]
        content_type: str | None = None
        accept: str | None = None
        for name, value in headers:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"accept":
                accept = value.decode("latin-1")
        try:
            body = await _read_body(receive)
        except _ClientGone:
            return
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(
                self._executor, self._run, pipeline, body, content_type, accept, headers
            )
        except ModelhostError as exc:
            status = ERROR_STATUS.get(type(exc))
            if status is None:
                raise
            await _respond(send, status, exc.message.encode("utf-8", "replace"))
            return
        await _respond(send, 200, reply.body, reply.content_type, reply.headers)

    def _run(
        self, pipeline: Pipeline, body: bytes, content_type: str | None, accept: str | None, headers: Headers
    ) -> Reply:
        # On a handler thread. Timed here, not when queued, so /ping can tell a stuck handler from a backlog.
        token = self._busy.start()
        try:
            return pipeline.invoke(body, content_type, accept, headers)
        finally:
            self._busy.finish(token)
