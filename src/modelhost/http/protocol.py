"""One HTTP/1.1 server connection as an asyncio Protocol: parses requests with httptools, hands each to the
handler, writes the answers back in request order. Created by ``server.start_server`` per connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from modelhost.http.request import Handler, Headers, Request
from modelhost.http.responder import Responder

if TYPE_CHECKING:
    from modelhost.http.server import ServerState

log = logging.getLogger(__name__)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
# uvloop's clock ticks in milliseconds and may fire a timer up to a tick early.
_CLOCK_SLACK_S = 0.002


class _StopParsing(Exception):
    """Raised from a parser callback once the connection has been answered with an error."""


def _answer_413(request: Request, responder: Responder) -> None:
    responder.send(413, _TEXT, b"Request body too large\n")


class HttpProtocol(asyncio.Protocol):
    """Keep-alive, pipelining (answers leave in request order), 100-continue, an idle timeout, flow control
    in both directions, and a clean stop on malformed input. See ``ServerOptions`` for the limits."""

    __slots__ = (
        "_body",
        "_body_size",
        "_client",
        "_continue_pending",
        "_declared_length",
        "_discard",
        "_eof_sent",
        "_expect_continue",
        "_head_bytes",
        "_headers",
        "_held",
        "_in_body",
        "_in_head",
        "_keep_alive",
        "_last_active",
        "_linger",
        "_lost",
        "_method",
        "_parser",
        "_queue",
        "_reading_paused",
        "_releasing",
        "_server",
        "_shared",
        "_timer",
        "_url",
        "_version",
        "_writable_waiters",
        "transport",
        "write_paused",
    )

    transport: asyncio.Transport  # set by connection_made, before any request exists

    def __init__(self, shared: ServerState) -> None:
        self._shared = shared
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Responder] = deque()  # answers owed, oldest first; the first one writes directly
        # Requests parsed but not yet given to the handler: more than max_pipelined are in its hands, or the
        # client is not reading what we write. A single read can hold hundreds of pipelined requests.
        self._held: deque[tuple[Request, Responder]] = deque()
        self._releasing = False
        self._url = b""
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._declared_length = 0
        self._expect_continue = False
        self._continue_pending = False  # a 100 Continue waits for earlier answers to go out first
        self._method = b""
        self._version = "1.1"
        self._keep_alive = True
        self._in_head = False
        self._in_body = False
        self._head_bytes = 0
        self._discard = False  # no more requests are read: the connection closes after its last answer
        self._linger = False  # ...and that close is a half-close followed by draining the client's bytes
        self._eof_sent = False
        self._lost = False
        self._reading_paused = False
        self.write_paused = False
        self._writable_waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int | None] | None = None

    @property
    def date_header(self) -> bytes:
        return self._shared.date_header

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        shared = self._shared
        shared.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Answers are written whole; Nagle would only hold back the tail of a large one.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = transport.get_extra_info("peername")
            self._client = (str(peer[0]), int(peer[1])) if peer else None
            local = transport.get_extra_info("sockname")
            self._server = (str(local[0]), int(local[1])) if local else None
        else:
            local = transport.get_extra_info("sockname")
            self._server = (str(local), None) if local else None
        self._last_active = shared.loop.time()
        self._timer = shared.loop.call_at(self._last_active + shared.options.idle_timeout_s, self._on_timer)
        if shared.closing:
            self.shutdown()

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return
        self._last_active = self._shared.loop.time()
        if not self._in_body:
            self._head_bytes += len(data)
        while True:
            try:
                self._parser.feed_data(data)
                break
            except httptools.HttpParserUpgrade as exc:
                # No upgrades here (no websockets, no h2c): that request was handled as a plain one; go on.
                data = data[exc.args[0] :]
                if not data or self._discard:
                    break
            except httptools.HttpParserError as exc:
                if not self._discard:  # else already answered, or bytes after a request that closes
                    self._reject(400, b"Malformed request: %s\n" % str(exc).encode("latin-1", "replace"))
                return
        if self._in_head and self._head_bytes > self._shared.options.max_head_bytes:
            self._reject(431, b"Request line and headers too large\n")

    def eof_received(self) -> bool | None:
        # A half-close is taken as a disconnect, as most servers do: a client that stops sending while a long
        # response streams to it is gone, and would otherwise only be noticed on a failed write.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._discard = True
        self._shared.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue = self._queue
        self._held.clear()
        while queue:
            queue.popleft().gone()
        self._wake_writers()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writers()
        if self._held:
            self._release_held()
        self._update_reading()

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._declared_length = 0
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        if name == b"content-length":
            self._declared_length = int(value) if value.isdigit() else 0
        elif name == b"expect":
            self._expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        self._method = parser.get_method()
        self._version = parser.get_http_version()
        self._keep_alive = parser.should_keep_alive()
        if self._declared_length > self._shared.options.max_body_bytes:
            self._too_large()
        if self._expect_continue and self._version != "1.0":
            if self._queue:
                self._continue_pending = True
            else:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._shared.options.max_body_bytes:
            self._too_large()
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._continue_pending = False
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body = []
        url = self._url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        else:
            try:  # absolute-form (via a proxy) or "*"
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._reject(400, b"Malformed request target\n")
                raise _StopParsing from None
            path, query = parsed.path or b"/", parsed.query or b""
        keep_alive = self._keep_alive and not self._shared.closing
        request = Request(
            self._method,
            path,
            query,
            self._headers,
            body,
            keep_alive,
            self._version,
            self._client,
            self._server,
        )
        responder = self._enqueue(self._method == b"HEAD", keep_alive)
        if not keep_alive:
            self._discard = True  # whatever follows a request that closes the connection is not read
        held = self._held
        if held or self.write_paused or len(self._queue) > self._shared.options.max_pipelined:
            held.append((request, responder))
        else:
            self._dispatch(self._shared.handler, request, responder)

    # -- answers ---------------------------------------------------------------------------------------

    def _enqueue(self, head_only: bool, keep_alive: bool) -> Responder:
        queue = self._queue
        responder = Responder(self, head_only, keep_alive, self._version == "1.0", direct=not queue)
        queue.append(responder)
        if len(queue) >= self._shared.options.max_pipelined:
            self._update_reading()
        return responder

    def _dispatch(self, handler: Handler, request: Request, responder: Responder) -> None:
        try:
            handler(request, responder)
        except Exception:
            log.exception("handler failed on %r", request)
            if not responder.started:
                responder.send(500, _TEXT, b"Internal server error\n")
            elif not responder.done:
                responder.abort()

    def _release_held(self) -> None:
        if self._releasing:
            return  # a handler answered at once, from inside this loop: the loop goes on by itself
        self._releasing = True
        try:
            held, queue, handler = self._held, self._queue, self._shared.handler
            limit = self._shared.options.max_pipelined
            while held and not self.write_paused and not self._lost and len(queue) - len(held) < limit:
                request, responder = held.popleft()
                self._dispatch(handler, request, responder)
        finally:
            self._releasing = False

    def response_done(self, responder: Responder) -> None:
        """The response at the front of the queue is complete: the next one's turn."""
        queue = self._queue
        queue.popleft()
        keep_alive = responder.keep_alive
        while keep_alive and queue:
            if not queue[0].promote():
                break
            keep_alive = queue.popleft().keep_alive
        if not keep_alive:
            self._close()
            return
        if self._writable_waiters:
            self._wake_writers()
        if self._held:
            self._release_held()
        if not queue:
            self._last_active = self._shared.loop.time()
            if self._continue_pending:
                self._continue_pending = False
                self.transport.write(_CONTINUE)
            if self._shared.closing and not (self._in_head or self._in_body):
                self._close()
                return
        if self._reading_paused:
            self._update_reading()

    def _reject(self, status: int, message: bytes) -> None:
        """Answer an error after every earlier request, then close; nothing more is parsed."""
        self._in_head = self._in_body = False
        self._discard = True
        self._linger = True
        self._enqueue(False, False).send(status, _TEXT, message)

    def _too_large(self) -> None:
        self._in_body = False
        self._discard = True
        self._linger = True
        url = self._url
        path, _, query = url.partition(b"?")
        request = Request(
            self._method, path, query, self._headers, b"", False, self._version, self._client, self._server
        )
        responder = self._enqueue(self._method == b"HEAD", False)
        self._dispatch(self._shared.options.body_too_large or _answer_413, request, responder)
        raise _StopParsing

    def _close(self) -> None:
        self._discard = True
        transport = self.transport
        if self._eof_sent or transport.is_closing():
            return
        if not self._linger or not transport.can_write_eof():
            transport.close()
            return
        self._eof_sent = True
        # The client may still be sending what we refused: shut our side only and drop its bytes for a while,
        # else closing with unread input resets the connection and the client may never read the answer.
        transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        # Aborted, not closed, at the end: close() would wait for a client that does not read, forever.
        self._timer = self._shared.loop.call_later(self._shared.options.linger_s, transport.abort)

    # -- flow control, timers, shutdown ---------------------------------------------------------------

    def _update_reading(self) -> None:
        transport = self.transport
        pause = self.write_paused or len(self._queue) >= self._shared.options.max_pipelined
        if pause == self._reading_paused or transport.is_closing():
            return
        self._reading_paused = pause
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()

    async def writable(self) -> None:
        """Wait for a change that may let a writer go on: buffer drained, turn come, connection lost."""
        if self._lost:
            return
        waiter = self._shared.loop.create_future()
        self._writable_waiters.append(waiter)
        await waiter

    def _wake_writers(self) -> None:
        waiters, self._writable_waiters = self._writable_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _on_timer(self) -> None:
        # One timer per connection, re-armed only when it fires: activity just moves _last_active.
        self._timer = None
        if self._lost:
            return
        loop = self._shared.loop
        timeout = self._shared.options.idle_timeout_s
        now = loop.time()
        if self._queue:
            when = now + timeout  # a handler is at work: that is not idleness
        else:
            when = self._last_active + timeout
            if when <= now + _CLOCK_SLACK_S:
                transport = self.transport
                # Output still unsent after all this time means a client that stopped reading: do not wait.
                if transport.get_write_buffer_size():
                    transport.abort()
                else:
                    transport.close()
                return
        self._timer = loop.call_at(when, self._on_timer)

    def shutdown(self) -> None:
        """Server shutdown: close now if idle, else once the answers owed have gone out."""
        if self._lost:
            return
        if self._eof_sent:
            self.transport.close()  # lingering after an error answer: nothing more is owed
            return
        if not self._queue and not (self._in_head or self._in_body):
            self._close()
            return
        queue = self._queue
        if queue and not queue[-1].started and not (self._in_head or self._in_body):
            queue[-1].keep_alive = False
