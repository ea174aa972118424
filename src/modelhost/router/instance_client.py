"""The forwarding client the router uses to send requests to one instance over HTTP/1.1.

Keep-alive connections on asyncio Protocols, responses parsed by httptools; it is on the invocation hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import select
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import httptools

from modelhost.router.deadlines import DeadlineTimer

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

# Up to this size the body is copied behind the head so that one send carries both. A bigger body is written
# on its own: one more send costs less than copying it, and writelines would copy it too on stock asyncio.
_JOIN_BODY_MAX_BYTES = 16 * 1024


# Readable (an idle connection has nothing to read: data there is an EOF or garbage), hung up, or in error.
_PEER_GONE_EVENTS = select.POLLIN | getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR


@dataclass(frozen=True, slots=True)
class InstanceResponse:
    """A complete response from an instance; header names are lower-cased, repeated ones joined by ", "."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class InstanceUnreachable(Exception):
    """Could not connect to the instance, or the connection died before a full response arrived."""


class InstanceNotConnected(InstanceUnreachable):
    """No connection could be made (or the client is closed): the request never reached the instance, so
    sending it elsewhere is safe."""


class InstanceTimeout(Exception):
    """The instance gave no full response within the deadline."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: feeds the response parser and settles the waiter of the request on it."""

    __slots__ = (
        "_address",
        "_body",
        "_headers",
        "_headers_complete",
        "_idle",
        "_lost",
        "_lost_waiter",
        "_parser",
        "_poll",
        "_status",
        "_waiter",
        "closed",
        "deadline",
        "keep_alive",
        "received",
        "transport",
    )

    transport: asyncio.Transport  # set by connection_made, before the client sees the connection

    def __init__(self, idle: list[_Connection], address: str) -> None:
        self._idle = idle
        self._address = address
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[InstanceResponse] | None = None
        self._lost = False
        self._poll: select.poll | None = None
        self._lost_waiter: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_complete = False
        self.keep_alive = False
        self.closed = False
        self.deadline = math.inf  # of the request in flight, on the loop's clock
        # Whether any byte of the current response arrived: past that point a request is never retried.
        self.received = False

    # -- driven by the client --------------------------------------------------------------------------

    def send(self, waiter: asyncio.Future[InstanceResponse], data: bytes, tail: bytes) -> None:
        # The waiter is set before writing: a failed write may report connection_lost at once.
        self._waiter = waiter
        self.received = False
        self._headers_complete = False  # else a loss before the first byte would look like an EOF-ended body
        self.transport.write(data)
        if tail:
            self.transport.write(tail)

    def time_out(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(InstanceTimeout())

    def close(self) -> None:
        """Close after a complete response (nothing left to read)."""
        self.closed = True
        self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once: its stream may hold part of a response nobody will read."""
        self.closed = True
        self._waiter = None
        self.transport.abort()

    async def wait_lost(self) -> None:
        if self._lost:
            return
        if self._lost_waiter is None:
            self._lost_waiter = asyncio.get_running_loop().create_future()
        await self._lost_waiter

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), _PEER_GONE_EVENTS)

    def peer_gone(self) -> bool:
        """Whether the peer hung up (or sent something unasked) while this connection sat idle.

        Asked with a zero-timeout poll before reusing a pooled connection: a worker that died a moment ago
        has closed its end in the kernel, but the loop may not have run connection_lost yet. Sending on such a
        connection would leave it unknown whether the request was read; skipping it keeps that certain.
        """
        poll = self._poll
        return poll is not None and bool(poll.poll(0))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes while idle: the stream is out of step with our requests and can never be trusted again.
            self.abort()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except Exception as exc:
            # A malformed response, or bytes after the response we asked for (see on_message_begin).
            self._fail(InstanceUnreachable(f"instance at {self._address} sent an invalid response: {exc!r}"))
            self.abort()

    def eof_received(self) -> bool | None:
        self.closed = True
        return None  # let the transport close; connection_lost settles the waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost = True
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        waiter = self._waiter
        if waiter is None:
            # Lost while idle (the worker restarted or timed it out): drop it so no request picks it up.
            with contextlib.suppress(ValueError):
                self._idle.remove(self)
            return
        self._waiter = None
        if waiter.done():
            return
        headers = self._headers
        if self._headers_complete and "content-length" not in headers and "transfer-encoding" not in headers:
            # No framing header: the body runs until the server closes the connection (RFC 9112 6.3).
            waiter.set_result(InstanceResponse(self._status, headers, b"".join(self._body)))
            return
        # A reset before any response byte does not prove the request went unread (a worker that read it on
        # a reused connection and died has been seen to reset too), so it is reported like any other loss:
        # resending a request that may have crashed one instance could crash the next.
        where = "in the middle of the response" if self.received else "before any response byte"
        waiter.set_exception(
            InstanceUnreachable(f"instance at {self._address} closed the connection {where}")
        )

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            # A second response after the one we asked for: raising makes feed_data fail, and we abort.
            raise _UnsolicitedResponse
        self._status = 0
        self._headers = {}
        self._body = []
        self._headers_complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._status = parser.get_status_code()
        # Asked here, while llhttp's flags still describe this message (it resets them after completion).
        self.keep_alive = parser.should_keep_alive()
        self._headers_complete = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:
            return  # an interim response (100 Continue, 103 Early Hints): the final one follows
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            chunks = self._body
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            waiter.set_result(InstanceResponse(self._status, self._headers, body))


class _UnsolicitedResponse(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ContractAddress:
    """Where an instance's HTTP contract listens: a unix socket, or a host and port."""

    name: str  # for messages: ``unix:/path`` or ``host:port``
    host_line: bytes  # the Host header every request carries
    unix_path: str | None = None
    tcp: tuple[str, int] | None = None

    @classmethod
    def of(cls, unix_path: str | None, host: str | None, port: int | None) -> ContractAddress:
        if unix_path is not None and host is None and port is None:
            return cls(f"unix:{unix_path}", b"host: localhost\r\n", unix_path=unix_path)
        if unix_path is None and host is not None and port is not None:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            return cls(authority, f"host: {authority}\r\n".encode("ascii"), tcp=(host, port))
        raise ValueError("give either unix_path, or host and port")


async def connect(
    loop: asyncio.AbstractEventLoop,
    address: ContractAddress,
    factory: Callable[[], _P],
    deadline: float,
    timeout_s: float,
) -> _P:
    """A new connection to ``address`` by ``deadline``, with ``factory``'s protocol on it.

    Raises InstanceTimeout when the deadline passes, InstanceNotConnected when the instance refuses.
    """
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            if address.tcp is None:
                _, protocol = await loop.create_unix_connection(factory, address.unix_path)
            else:
                transport, protocol = await loop.create_connection(factory, *address.tcp)
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    # Requests are written whole; Nagle would only hold back the tail of a large one.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        if timeout.expired():
            raise InstanceTimeout(
                f"could not connect to the instance at {address.name} in {timeout_s} s"
            ) from None
        raise InstanceNotConnected(f"could not connect to the instance at {address.name}: {exc}") from exc
    return protocol


class InstanceClient:
    """One per instance: a bounded pool of keep-alive HTTP/1.1 connections to one address.

    There is no cap on connections in use (the router does admission control); at most
    ``max_idle_connections`` idle ones are kept, and the most recently used is reused first, so that a burst's
    extra connections age out at the bottom of the stack and the warm ones stay warm. A client belongs to the
    event loop that runs its first request, as its connections do.

    Deadlines share one timer per client, armed for the earliest deadline that may be pending: a timer per
    request costs microseconds to create and cancel (uvloop allocates a libuv timer for each), while with the
    usual uniform timeout the shared one fires about once per timeout and finds the next deadline by a scan.
    """

    __slots__ = (
        "_address",
        "_busy",
        "_closed",
        "_host_line",
        "_idle",
        "_loop",
        "_max_idle",
        "_target",
        "_timer",
    )

    def __init__(
        self,
        *,
        unix_path: str | None = None,
        host: str | None = None,
        port: int | None = None,
        max_idle_connections: int = 64,
    ) -> None:
        if max_idle_connections < 0:
            raise ValueError(f"max_idle_connections must be >= 0, not {max_idle_connections}")
        self._target = ContractAddress.of(unix_path, host, port)
        self._address = self._target.name
        self._host_line = self._target.host_line
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[_Connection] = []
        self._max_idle = max_idle_connections
        self._busy: set[_Connection] = set()
        self._timer = DeadlineTimer(self._sweep)
        self._closed = False

    @property
    def idle_connections(self) -> int:
        """How many open connections wait in the pool (for metrics and tests)."""
        return len(self._idle)

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        timeout_s: float = 60.0,
    ) -> InstanceResponse:
        """Send one request and return the complete response.

        ``path`` must be an already-quoted request target and ``headers`` well-formed (as an HTTP parser
        yields them) without host, content-length, transfer-encoding or connection, which this client writes.
        ``timeout_s`` covers connect, send and the full response. Raises InstanceUnreachable or
        InstanceTimeout; HTTP error statuses are responses, not exceptions.
        """
        if self._closed:
            raise InstanceNotConnected(f"the client for the instance at {self._address} is closed")
        if method == "HEAD":
            # httptools cannot be told that a HEAD response has no body; the contract has no HEAD.
            raise ValueError("HEAD is not supported")
        loop = self._loop
        if loop is None:
            # Kept, not looked up per request: on Python 3.11 get_running_loop makes a getpid system call.
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        parts = [
            f"{method} {path} HTTP/1.1\r\n".encode("latin-1"),
            self._host_line,
            b"content-length: %d\r\n" % len(body),
        ]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        tail = b""
        if len(body) <= _JOIN_BODY_MAX_BYTES:
            parts.append(body)
        else:
            tail = body
        data = b"".join(parts)

        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue  # its EOF came, but connection_lost, which drops it from the pool, has not run yet
            if conn.peer_gone():
                conn.abort()
                continue
            try:
                return await self._exchange(loop, conn, data, tail, deadline, method, path, timeout_s)
            except InstanceUnreachable:
                if conn.received:
                    raise
                # The pooled connection died before a response byte: almost always the peer closed it while
                # it sat idle and the close crossed our request on the wire, so the request was never read and
                # one retry on a fresh connection is safe. (Should the worker instead have read it and died
                # before answering, it is gone: the fresh connect fails, or reaches a replacement that never
                # saw the request.) A fresh connection that fails is not retried: nothing explains it but the
                # instance being down or crashing on this very request, which a second try could run twice.
                try:
                    conn = await self._connect(loop, deadline, timeout_s)
                except InstanceNotConnected as exc:
                    # The request went out on the stale connection and may have been read: delivery is
                    # unknown, so it must not look like "never sent" to a caller that would resend it.
                    raise InstanceUnreachable(str(exc)) from exc
                return await self._exchange(loop, conn, data, tail, deadline, method, path, timeout_s)
        conn = await self._connect(loop, deadline, timeout_s)
        return await self._exchange(loop, conn, data, tail, deadline, method, path, timeout_s)

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Connection,
        data: bytes,
        tail: bytes,
        deadline: float,
        method: str,
        path: str,
        timeout_s: float,
    ) -> InstanceResponse:
        waiter: asyncio.Future[InstanceResponse] = loop.create_future()
        conn.deadline = deadline
        busy = self._busy
        busy.add(conn)
        self._timer.cover(loop, deadline)
        try:
            conn.send(waiter, data, tail)
            response = await waiter
        except InstanceTimeout:
            conn.abort()
            raise InstanceTimeout(
                f"instance at {self._address} gave no full response to {method} {path} in {timeout_s} s"
            ) from None
        except BaseException:
            # Failed or cancelled: part of a response may still come, so the stream is unusable.
            conn.abort()
            raise
        finally:
            busy.discard(conn)
        if conn.keep_alive and not conn.closed and not self._closed and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    def _sweep(self, now: float) -> float:
        next_at = math.inf
        for conn in self._busy:
            if conn.deadline <= now:
                conn.time_out()
            elif conn.deadline < next_at:
                next_at = conn.deadline
        return next_at

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, deadline: float, timeout_s: float
    ) -> _Connection:
        idle, address = self._idle, self._address
        return await connect(loop, self._target, lambda: _Connection(idle, address), deadline, timeout_s)

    async def close(self) -> None:
        """Close every pooled connection; later requests raise InstanceUnreachable.

        Requests in flight finish, and their connections are closed instead of pooled.
        """
        self._closed = True
        if not self._busy:
            self._timer.cancel()
        idle = self._idle
        conns = idle[:]
        idle.clear()
        for conn in conns:
            conn.abort()
        for conn in conns:
            await conn.wait_lost()
