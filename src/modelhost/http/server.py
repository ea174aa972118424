"""Starting and stopping an HTTP/1.1 server on TCP or a unix socket, and the state its connections share.
Called by composition roots (``modelhost serve``); signals stay with the caller (``close``, ``wait_closed``).
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from email.utils import formatdate
from types import TracebackType

from modelhost.http.options import ServerOptions
from modelhost.http.protocol import HttpProtocol
from modelhost.http.request import Handler


class ServerState:
    """What the connections of one server share: the handler, the options, the current Date header and the
    set of open connections (for shutdown)."""

    __slots__ = ("closing", "connections", "date_header", "drained", "handler", "loop", "options")

    def __init__(self, handler: Handler, options: ServerOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.handler = handler
        self.options = options
        self.loop = loop
        self.date_header = b""  # the server's clock keeps it current: b"date: ...\r\n"
        self.connections: set[HttpProtocol] = set()
        self.closing = False
        self.drained: asyncio.Future[None] | None = None  # set once closing and the last connection is gone

    def forget(self, conn: HttpProtocol) -> None:
        self.connections.discard(conn)
        drained = self.drained
        if not self.connections and drained is not None and not drained.done():
            drained.set_result(None)


class Server:
    """A listening server. ``close`` stops accepting and closes idle connections; ``wait_closed`` lets the
    answers owed go out, for up to ``shutdown_grace_s``, then drops whatever connection is left."""

    def __init__(self, shared: ServerState, listener: asyncio.Server) -> None:
        self._shared = shared
        self._listener = listener
        self._ticker: asyncio.TimerHandle | None = None
        # Kept: once closed, the listener no longer knows its sockets.
        address = listener.sockets[0].getsockname() if listener.sockets else None
        self._port = int(address[1]) if isinstance(address, tuple) else 0
        self._tick()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._listener.sockets)

    @property
    def port(self) -> int:
        """The TCP port bound (useful with port 0); 0 on a unix socket."""
        return self._port

    @property
    def connections(self) -> int:
        return len(self._shared.connections)

    def _tick(self) -> None:
        # The Date header changes once a second: compute it then, not per response.
        now = time.time()
        self._shared.date_header = b"date: %s\r\n" % formatdate(now, usegmt=True).encode("ascii")
        self._ticker = self._shared.loop.call_later(1.0 - math.modf(now)[0], self._tick)

    def close(self) -> None:
        shared = self._shared
        if shared.closing:
            return
        shared.closing = True
        self._listener.close()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for conn in list(shared.connections):
            conn.shutdown()

    async def wait_closed(self) -> None:
        self.close()
        shared = self._shared
        if shared.connections:
            shared.drained = shared.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(shared.drained), shared.options.shutdown_grace_s)
            except TimeoutError:
                for conn in list(shared.connections):
                    conn.transport.abort()
        await self._listener.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.wait_closed()


async def start_server(
    handler: Handler,
    *,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    unix_path: str | None = None,
    options: ServerOptions | None = None,
    backlog: int = 1024,
) -> Server:
    """Listen on ``host``/``port``, an already bound ``sock`` (TCP or unix), or ``unix_path``, and call
    ``handler(request, responder)`` on the running loop for every complete request."""
    if sum((port is not None or host is not None, sock is not None, unix_path is not None)) != 1:
        raise ValueError("give exactly one of host and port, sock, or unix_path")
    loop = asyncio.get_running_loop()
    shared = ServerState(handler, options or ServerOptions(), loop)

    def factory() -> HttpProtocol:
        return HttpProtocol(shared)

    listener: asyncio.Server
    if unix_path is not None:
        listener = await loop.create_unix_server(factory, unix_path, backlog=backlog)
    elif sock is not None:
        if sock.family == socket.AF_UNIX:
            listener = await loop.create_unix_server(factory, sock=sock, backlog=backlog)
        else:
            listener = await loop.create_server(factory, sock=sock, backlog=backlog)
    else:
        listener = await loop.create_server(factory, host, port or 0, backlog=backlog, reuse_address=True)
    return Server(shared, listener)
