"""The SageMaker container contract as a raw ASGI app: ``GET /ping`` and ``POST /invocations``.

Served by uvicorn on the worker's unix socket; the lifecycle flips it to ready once the model is loaded.
This is the worker's HTTP edge: it parses, hands the invocation to a ``Dispatcher`` (``dispatch.py``, which
maps pipeline errors to statuses) and writes the reply. No per-request logging.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import partial
from typing import Any

from modelhost.worker.dispatch import NOT_LOADED, TEXT, Dispatcher, WorkReply, WorkRequest
from modelhost.worker.health import BusyClock, Phase, is_healthy, is_hung

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

log = logging.getLogger("modelhost.worker")

MODEL_US_HEADER = b"x-modelhost-model-us"
QUEUE_US_HEADER = b"x-modelhost-queue-us"
BATCH_ROWS_HEADER = b"x-modelhost-batch-rows"
WAITING_HEADER = b"x-modelhost-waiting"


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
    send: Send, status: int, body: bytes, content_type: bytes = TEXT, extra_headers: Headers = ()
) -> None:
    # Content-Length is always set: without it uvicorn would fall back to chunked encoding.
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ContractApp:
    """ASGI app of one worker. Invocations go to the dispatcher; the event loop only moves bytes."""

    def __init__(
        self,
        *,
        busy: BusyClock,
        hang_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._busy = busy
        self._hang_after_s = hang_after_s
        self._clock = clock
        self._phase = Phase.LOADING
        self._dispatcher: Dispatcher | None = None
        self._reported_hung = False

    @property
    def phase(self) -> Phase:
        return self._phase

    def set_ready(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
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
        dispatcher = self._dispatcher
        if dispatcher is None:
            await _send_reply(send, NOT_LOADED)
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
        answered: asyncio.Future[WorkReply] = asyncio.get_running_loop().create_future()
        dispatcher.submit(WorkRequest(body, content_type, accept, headers), partial(_resolve, answered))
        reply = await answered
        await _send_reply(send, reply, dispatcher.waiting())


def _resolve(answered: asyncio.Future[WorkReply], reply: WorkReply) -> None:
    # The request task may have been cancelled (server shutdown) while the handler ran.
    if not answered.done():
        answered.set_result(reply)


async def _send_reply(send: Send, reply: WorkReply, waiting: int = 0) -> None:
    # What the server turns into model latency, queue delay and batch size metrics.
    timings = (
        (MODEL_US_HEADER, str(reply.model_us).encode()),
        (QUEUE_US_HEADER, str(reply.queue_us).encode()),
        (BATCH_ROWS_HEADER, str(reply.batch_rows).encode()),
        (WAITING_HEADER, str(waiting).encode()),
    )
    extra = (*reply.headers, *timings) if reply.headers else timings
    await _respond(send, reply.status, reply.body, reply.content_type, extra)
