"""Streamed answers on the worker: a handler's iterator result written as a chunked response while it runs.

Used by the contract app (server.py) for ``POST /invocations`` requests that carry the router's stream header
(docs/streaming.md). The iterator runs on a handler thread; each piece crosses to the event loop, where one
task per stream writes it. At most ``_WINDOW_CHUNKS`` pieces are in flight between the two, so a slow
reader slows the model down instead of filling the worker's memory.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from modelhost.errors import ModelhostError
from modelhost.http import Responder
from modelhost.worker.dispatch import WorkReply, WorkRequest, error_reply, unexpected_failure
from modelhost.worker.health import BusyClock
from modelhost.worker.pipeline import Pipeline, StreamChunks

STREAM_REQUEST_HEADER = b"x-modelhost-response-stream"
# Sent as a chunked trailer when the handler raised after the answer began; its value is the error message.
ERROR_TRAILER = b"x-modelhost-stream-error"
_WINDOW_CHUNKS = 16
_MAX_TRAILER_CHARS = 4096
_NOT_LOADED = b"The model is not loaded yet; retry once /ping answers 200"


@dataclass(frozen=True, slots=True)
class _Head:
    content_type: bytes
    headers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class _End:
    error: str | None  # the handler's failure after the answer began


_Item = WorkReply | _Head | _End | bytes | None  # None: the client went away


def wants_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request asks for a streamed answer (the router's header)."""
    for name, value in headers:
        if name == STREAM_REQUEST_HEADER:
            return value.strip().lower() == b"true"
    return False


class _Stream:
    """One streamed answer: the handler thread ``put``s, the loop task ``pump``s to the responder."""

    def __init__(self, loop: asyncio.AbstractEventLoop, responder: Responder) -> None:
        self._loop = loop
        self._responder = responder
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._credits = threading.Semaphore(_WINDOW_CHUNKS)
        self.cancelled = False

    def put(self, item: _Item) -> bool:
        """On the handler thread: hand ``item`` to the loop, waiting while the window is full. Returns False
        once the client has gone (the caller stops producing)."""
        self._credits.acquire()
        if self.cancelled:
            return False
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        return True

    def cancel(self) -> None:
        """On the loop: stop the stream (the client went away, or the worker is stopping)."""
        if self.cancelled:
            return
        self.cancelled = True
        self._queue.put_nowait(None)
        self._credits.release(_WINDOW_CHUNKS)  # wake the producer so that it sees ``cancelled``

    async def pump(self) -> None:
        responder = self._responder
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    return
                if isinstance(item, WorkReply):
                    responder.send(item.status, [(b"content-type", item.content_type)], item.body)
                    return
                if isinstance(item, _End):
                    trailers = () if item.error is None else ((ERROR_TRAILER, _trailer_value(item.error)),)
                    responder.end(trailers)
                    return
                if isinstance(item, _Head):
                    headers = [
                        (b"content-type", item.content_type),
                        *item.headers,
                        (b"trailer", ERROR_TRAILER),
                    ]
                    responder.start(200, headers)
                else:
                    responder.write(item)
                    await responder.drain()
                self._credits.release()
        finally:
            self.cancel()


def _trailer_value(message: str) -> bytes:
    # A header value is one line of visible ASCII here; the router shows it as the model's error message.
    text = " ".join(message.split())[:_MAX_TRAILER_CHARS]
    return text.encode("ascii", "backslashreplace")


class StreamRunner:
    """Runs streamed invocations, each alone on a handler thread (streams never join a batch).

    Built with the worker before the model loads, like the frame service; ``set_ready`` gives it the
    pipeline. It owns the loop task of every stream until that stream ends.
    """

    def __init__(
        self,
        *,
        executor: Executor,
        busy: BusyClock,
        loop: asyncio.AbstractEventLoop,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self._executor = executor
        self._busy = busy
        self._loop = loop
        self._clock_ns = clock_ns
        self._pipeline: Pipeline | None = None
        self._running: set[asyncio.Task[None]] = set()

    def set_ready(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def submit(self, request: WorkRequest, responder: Responder) -> None:
        """Start one streamed invocation; called on the loop."""
        pipeline = self._pipeline
        if pipeline is None:
            responder.send(503, [(b"content-type", b"text/plain; charset=utf-8")], _NOT_LOADED)
            return
        stream = _Stream(self._loop, responder)
        responder.on_close(stream.cancel)
        task = self._loop.create_task(stream.pump())
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        self._executor.submit(self._produce, pipeline, request, stream, self._clock_ns())

    async def close(self) -> None:
        """Stop the streams still running (the server has stopped waiting for them)."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _produce(self, pipeline: Pipeline, request: WorkRequest, stream: _Stream, submitted_ns: int) -> None:
        # On a handler thread, for the whole stream: a generator runs where it was created, and /ping sees
        # the stream as one long prediction.
        started_ns = self._clock_ns()
        token = self._busy.start()
        chunks: StreamChunks | None = None
        try:
            try:
                reply = pipeline.invoke_stream(
                    request.body, request.content_type, request.accept, request.headers
                )
                chunks = reply.chunks
                # The first piece comes before the head: a handler that fails at once gets an ordinary
                # error answer, and response headers it sets while producing it are still sent.
                first = next(chunks, None)
            except ModelhostError as exc:
                queue_us, model_us = (
                    (started_ns - submitted_ns) // 1000,
                    (self._clock_ns() - started_ns) // 1000,
                )
                stream.put(error_reply(exc, queue_us, model_us, 0))
                return
            except Exception as exc:
                stream.put(error_reply(unexpected_failure(exc), 0, 0, 0))
                return
            if not stream.put(_Head(reply.content_type, reply.headers)):
                return
            if first is not None and not stream.put(first):
                return
            error: str | None = None
            try:
                for chunk in chunks:
                    if not stream.put(chunk):
                        return
            except ModelhostError as exc:
                error = exc.message
            except Exception as exc:
                error = unexpected_failure(exc).message
            stream.put(_End(error))
        finally:
            if chunks is not None:
                chunks.close()
            self._busy.finish(token)
