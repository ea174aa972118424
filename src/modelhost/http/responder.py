"""How a handler answers one request: a whole response (``send``) or a stream (``start``/``write``/``end``).

Created by ``protocol.HttpProtocol`` per request. A responder whose turn has not come (an earlier pipelined
request is still unanswered) holds its output until it has; one whose connection is gone drops it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelhost.http.protocol import HttpProtocol

log = logging.getLogger(__name__)

ResponseHeaders = Sequence[tuple[bytes, bytes]]
# A whole response at once (status, headers, body): the type of ``Responder.send``, for code that needs
# nothing else of a responder.
Respond = Callable[[int, ResponseHeaders, bytes], None]

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in HTTPStatus}
# Responses that never carry a body (RFC 9110 6.4.1); 304 may state a length, but need not.
_NO_BODY = frozenset({204, 304})
# Up to this size the body is copied behind the head so that one write (one send) carries both; a bigger
# body goes in a write of its own, which costs less than copying it.
_JOIN_BODY_MAX_BYTES = 16 * 1024

_NEW, _STARTED, _DONE, _GONE = 0, 1, 2, 3


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


class Responder:
    """Answers one request. Header names and values must be well-formed bytes; ``send`` and ``start`` add
    content-length or transfer-encoding, connection and date themselves.

    All methods are no-ops once the connection is gone (``closed``); ``on_close`` callbacks run then.
    """

    __slots__ = ("_buffer", "_chunked", "_conn", "_head_only", "_http10", "_on_close", "_state", "keep_alive")

    def __init__(
        self, conn: HttpProtocol, head_only: bool, keep_alive: bool, http10: bool, direct: bool
    ) -> None:
        self._conn = conn
        self._head_only = head_only  # a HEAD request: heads are written, bodies are not
        self.keep_alive = keep_alive  # whether the connection stays open after this response
        self._http10 = http10
        self._chunked = False
        self._state = _NEW
        # None while this response is at the front of the connection's queue and writes go straight out.
        self._buffer: list[bytes] | None = None if direct else []
        self._on_close: list[Callable[[], None]] | None = None

    @property
    def closed(self) -> bool:
        """The connection went away before this response was complete: nothing more will reach the client."""
        return self._state == _GONE

    @property
    def started(self) -> bool:
        return self._state != _NEW

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once if the connection closes before this response is complete."""
        if self._state == _GONE:
            callback()
        elif self._state != _DONE:
            if self._on_close is None:
                self._on_close = []
            self._on_close.append(callback)

    def send(self, status: int, headers: ResponseHeaders, body: bytes) -> None:
        """The whole response at once, with a content-length."""
        if self._state != _NEW:
            if self._state == _GONE:
                return
            raise RuntimeError("the response has already been started")
        parts = [status_line(status)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if status in _NO_BODY or status < 200:
            body = b""
        else:
            parts.append(b"content-length: %d\r\n" % len(body))
        self._tail_headers(parts)
        tail = b""
        if self._head_only or not body:
            pass
        elif len(body) <= _JOIN_BODY_MAX_BYTES:
            parts.append(body)
        else:
            tail = body
        self._state = _DONE
        self._on_close = None
        data = b"".join(parts)
        if self._buffer is None:
            transport = self._conn.transport
            transport.write(data)
            if tail:
                transport.write(tail)
            self._conn.response_done(self)
        else:
            self._buffer.append(data)
            if tail:
                self._buffer.append(tail)

    def start(self, status: int, headers: ResponseHeaders) -> None:
        """Begin a streamed response. With a content-length among ``headers`` the body is written as is;
        without, it is chunked (or, for an HTTP/1.0 client, ended by closing the connection)."""
        if self._state != _NEW:
            if self._state == _GONE:
                return
            raise RuntimeError("the response has already been started")
        parts = [status_line(status)]
        has_length = False
        for name, value in headers:
            if name.lower() == b"content-length":
                has_length = True
            parts += (name, b": ", value, b"\r\n")
        if not (has_length or self._head_only or status in _NO_BODY or status < 200):
            if self._http10:
                self.keep_alive = False  # the end of the body is the end of the connection
            else:
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        self._tail_headers(parts)
        self._state = _STARTED
        self._out(b"".join(parts))

    def write(self, chunk: bytes) -> None:
        """Part of the body of a started response. Await ``drain`` between writes of a long stream."""
        if self._state != _STARTED:
            if self._state == _GONE:
                return
            raise RuntimeError("write() needs a started, unfinished response")
        if not chunk or self._head_only:
            return
        if self._chunked:
            self._out(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self._out(chunk)

    def end(self, trailers: ResponseHeaders = ()) -> None:
        """Finish a started response. ``trailers`` follow a chunked body (RFC 9112 7.1.2); a body that is not
        chunked has no place for them, and they are dropped."""
        if self._state != _STARTED:
            if self._state == _GONE:
                return
            raise RuntimeError("end() needs a started, unfinished response")
        if self._chunked and not self._head_only:
            if trailers:
                parts = [b"0\r\n"]
                for name, value in trailers:
                    parts += (name, b": ", value, b"\r\n")
                parts.append(b"\r\n")
                self._out(b"".join(parts))
            else:
                self._out(b"0\r\n\r\n")
        self._state = _DONE
        self._on_close = None
        if self._buffer is None:
            self._conn.response_done(self)

    async def drain(self) -> None:
        """Wait until more output may be written: this response's turn has come and the connection's write
        buffer is below its low-water mark. Returns at once if the connection is gone."""
        conn = self._conn
        while self._state != _GONE and (self._buffer is not None or conn.write_paused):
            await conn.writable()

    def abort(self) -> None:
        """Drop the connection: for a handler that fails after its response has started."""
        if self._state != _GONE:
            self._conn.transport.abort()

    # -- used by the connection ------------------------------------------------------------------------

    def _tail_headers(self, parts: list[bytes]) -> None:
        parts.append(self._conn.date_header)
        if not self.keep_alive:
            parts.append(b"connection: close\r\n\r\n")
        elif self._http10:
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")

    def _out(self, data: bytes) -> None:
        if self._buffer is None:
            self._conn.transport.write(data)
        else:
            self._buffer.append(data)

    def promote(self) -> bool:
        """Its turn has come: flush what it held. Returns whether it is already complete."""
        buffered = self._buffer
        self._buffer = None
        if buffered:
            self._conn.transport.write(b"".join(buffered) if len(buffered) > 1 else buffered[0])
        return self._state == _DONE

    def gone(self) -> None:
        """The connection closed before this response was complete."""
        self._state = _GONE
        self._buffer = None
        callbacks, self._on_close = self._on_close, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                log.exception("on_close callback %r failed", callback)
