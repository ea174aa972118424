"""The router's client for streamed answers: one request, its response body handed over chunk by chunk.

Used for InvokeEndpointWithResponseStream, against the container contract's ``POST /invocations`` (our
worker's unix socket, or a bring-your-own server's port). Each stream has a connection of its own, closed
when it ends: a stream holds its connection for as long as the model generates, so pooling would save one
connect (tens of microseconds) per many milliseconds, and streaming is not the path that needs them.

Delivery is reported as ``InstanceClient`` reports it: ``InstanceNotConnected`` only when no connection
could be made, ``InstanceUnreachable`` for a loss after the request was written, ``InstanceTimeout`` when
the deadline passes first. The deadline covers the whole exchange, head and body.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import cast

import httptools

from modelhost.router.instance_client import (
    ContractAddress,
    InstanceNotConnected,
    InstanceTimeout,
    InstanceUnreachable,
    connect,
)

# Body bytes held for a slow reader before we stop reading the socket, so that the model's server feels
# the backpressure (its writes block) instead of our memory growing.
_HIGH_WATER_BYTES = 256 * 1024


class InstanceStream(asyncio.Protocol):
    """One streamed response. ``status`` and ``headers`` are set once ``StreamClient.open`` returns;
    ``read`` then yields the body as the instance sent it (one item per HTTP chunk), and ``trailers`` holds
    the chunked trailer fields once ``read`` has returned ``b""``. Header names are lower-cased, repeated
    ones joined by ", "."""

    transport: asyncio.Transport

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop) -> None:
        self._address = address
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self._head: asyncio.Future[None] = loop.create_future()
        self._head_done = False
        self._in_chunk = False
        self._current: list[bytes] = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self.received = False

    # -- the reader's side -----------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The next piece of the body, ``b""`` once it is complete. Raises InstanceUnreachable or
        InstanceTimeout if the stream broke first (after handing over what arrived before)."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= _HIGH_WATER_BYTES // 2:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    async def read_all(self) -> bytes:
        """The rest of the body, joined (for error answers, which are short)."""
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    @property
    def complete(self) -> bool:
        return self._complete

    def close(self) -> None:
        """Release the connection: closed when the response is complete, dropped when it is not."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._chunks.clear()
        self._buffered = 0
        if self._complete:
            self.transport.close()
        else:
            self._fail(InstanceUnreachable(f"the stream from the instance at {self._address} was abandoned"))
            self.transport.abort()

    # -- driven by the client --------------------------------------------------------------------------

    def start(self, data: bytes, deadline: float, timeout_s: float) -> None:
        self._timer = self._loop.call_at(deadline, self._expire, timeout_s)
        self.transport.write(data)

    async def head(self) -> None:
        await self._head

    def _expire(self, timeout_s: float) -> None:
        self._timer = None
        what = "a complete response" if self._head_done else "a response"
        self._fail(InstanceTimeout(f"instance at {self._address} gave no {what} in {timeout_s:g} s"))
        self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self._complete or self._error is not None:
            return
        self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved here: nobody may await a head that failed during open
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _push(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if not self._reading_paused and self._buffered > _HIGH_WATER_BYTES:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except Exception as exc:
            self._fail(InstanceUnreachable(f"instance at {self._address} sent an invalid response: {exc!r}"))
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost settles the stream

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._complete or self._error is not None:
            return
        headers = self.headers
        if self._head_done and "content-length" not in headers and "transfer-encoding" not in headers:
            # No framing header: the body runs until the server closes the connection (RFC 9112 6.3).
            self._finish()
            return
        where = "in the middle of the response" if self.received else "before any response byte"
        self._fail(InstanceUnreachable(f"instance at {self._address} closed the connection {where}"))

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self.trailers if self._head_done else self.headers
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = fields.get(key)
        fields[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            self.headers = {}  # an interim response (100 Continue): the final one follows
            return
        self.status = status
        self._head_done = True
        if not self._head.done():
            self._head.set_result(None)

    def on_chunk_header(self) -> None:
        self._in_chunk = True

    def on_body(self, body: bytes) -> None:
        if self._in_chunk:
            self._current.append(body)  # a chunk may arrive in pieces; it is handed over whole
        else:
            self._push(body)

    def on_chunk_complete(self) -> None:
        self._in_chunk = False
        if self._current:
            current, self._current = self._current, []
            self._push(current[0] if len(current) == 1 else b"".join(current))

    def on_message_complete(self) -> None:
        if self._head_done:
            self._finish()

    def _finish(self) -> None:
        self._complete = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()


class StreamClient:
    """Streams from one instance's contract address (a unix socket, or host and port)."""

    def __init__(
        self, *, unix_path: str | None = None, host: str | None = None, port: int | None = None
    ) -> None:
        self._target = ContractAddress.of(unix_path, host, port)
        self._address = self._target.name
        self._host_line = self._target.host_line
        self._closed = False

    async def open(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        timeout_s: float = 60.0,
    ) -> InstanceStream:
        """Send one request and return once the response head has arrived; the caller must ``close`` the
        stream it gets. ``path`` and ``headers`` as for ``InstanceClient.request``."""
        if self._closed:
            raise InstanceNotConnected(f"the stream client for the instance at {self._address} is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        parts = [
            f"{method} {path} HTTP/1.1\r\n".encode("latin-1"),
            self._host_line,
            b"content-length: %d\r\nconnection: close\r\n" % len(body),
        ]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts += (b"\r\n", body)
        stream = await self._connect(loop, deadline, timeout_s)
        stream.start(b"".join(parts), deadline, timeout_s)
        try:
            await stream.head()
        except BaseException:
            stream.close()
            raise
        return stream

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, deadline: float, timeout_s: float
    ) -> InstanceStream:
        address = self._address
        return await connect(loop, self._target, lambda: InstanceStream(address, loop), deadline, timeout_s)

    async def close(self) -> None:
        """Open no more streams; the ones in flight run to their end."""
        self._closed = True
