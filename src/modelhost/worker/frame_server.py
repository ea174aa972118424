"""Invocations in frames (``modelhost.frames``) on a second unix socket, for the server's router.

The same dispatcher as the HTTP contract app serves them; only the bytes around a request differ. Replies go
out in the order they finish; those finished in one turn of the event loop leave in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import cast

from modelhost.frames import FrameError, FrameReader, RequestFrame, encode_reply
from modelhost.worker.dispatch import NOT_LOADED, Dispatcher, WorkReply, WorkRequest

log = logging.getLogger("modelhost.worker")

CUSTOM_ATTRIBUTES = b"x-amzn-sagemaker-custom-attributes"
_INFERENCE_ID = b"x-amzn-sagemaker-inference-id"


class FrameConnection(asyncio.Protocol):
    """One connection from the router. Requests are dispatched as they are read; replies are written as
    their callbacks run, gathered per loop turn."""

    transport: asyncio.Transport

    def __init__(self, service: FrameService) -> None:
        self._service = service
        self._reader = FrameReader()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.in_flight = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._service.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._service.forget(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except FrameError as exc:
            log.error("closing a frame connection from the server: %s", exc)
            self.transport.abort()
            return
        dispatcher = self._service.dispatcher
        for frame in frames:
            if not isinstance(frame, RequestFrame):
                log.error("closing a frame connection from the server: it sent a reply frame")
                self.transport.abort()
                return
            if dispatcher is None:
                self._reply(frame.id, NOT_LOADED, 0)
                continue
            self.in_flight += 1
            dispatcher.submit(_work(frame), _Answer(self, frame.id, dispatcher))

    def answer(self, id: int, reply: WorkReply, waiting: int) -> None:
        self.in_flight -= 1
        if not self.closed:
            self._reply(id, reply, waiting)
        self._service.maybe_drained()

    def _reply(self, id: int, reply: WorkReply, waiting: int) -> None:
        attrs = None
        for name, value in reply.headers:
            if name.lower() == CUSTOM_ATTRIBUTES:
                attrs = value
        self._out += encode_reply(
            id,
            reply.status,
            reply.queue_us,
            reply.model_us,
            reply.batch_rows,
            waiting,
            reply.content_type,
            attrs,
            reply.body,
        )
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._service.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self.closed:
            out.clear()
            return
        self._out = []
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)


class _Answer:
    """The dispatcher's ``done`` callback for one request: a slotted object costs less than a partial."""

    __slots__ = ("_conn", "_dispatcher", "_id")

    def __init__(self, conn: FrameConnection, id: int, dispatcher: Dispatcher) -> None:
        self._conn = conn
        self._id = id
        self._dispatcher = dispatcher

    def __call__(self, reply: WorkReply) -> None:
        self._conn.answer(self._id, reply, self._dispatcher.waiting())


def _work(frame: RequestFrame) -> WorkRequest:
    headers: list[tuple[bytes, bytes]] = []
    content_type = accept = None
    if frame.content_type is not None:
        content_type = frame.content_type.decode("latin-1")
        headers.append((b"content-type", frame.content_type))
    if frame.accept is not None:
        accept = frame.accept.decode("latin-1")
        headers.append((b"accept", frame.accept))
    if frame.custom_attributes is not None:
        headers.append((CUSTOM_ATTRIBUTES, frame.custom_attributes))
    if frame.inference_id is not None:
        headers.append((_INFERENCE_ID, frame.inference_id))
    return WorkRequest(frame.body, content_type, accept, headers)


class FrameService:
    """The frame listener and its connections; the lifecycle sets the dispatcher once the model is loaded."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dispatcher: Dispatcher | None = None
        self.connections: set[FrameConnection] = set()
        self._listener: asyncio.Server | None = None
        self._drained: asyncio.Future[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        factory: Callable[[], FrameConnection] = lambda: FrameConnection(self)  # noqa: E731
        self._listener = await self.loop.create_unix_server(factory, sock=sock)

    def forget(self, conn: FrameConnection) -> None:
        self.connections.discard(conn)
        self.maybe_drained()

    def maybe_drained(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done() and not any(c.in_flight for c in self.connections):
            drained.set_result(None)

    async def close(self, grace_s: float) -> None:
        """Stop accepting, let the answers owed go out for up to ``grace_s``, then close every connection."""
        if self._listener is not None:
            self._listener.close()
        self._drained = self.loop.create_future()
        self.maybe_drained()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drained), grace_s)
        for conn in list(self.connections):
            conn.flush()  # the last replies, then EOF: transport.close writes what it holds first
            conn.transport.close()
