"""The request a handler receives, and the handler's type. Built by ``protocol.HttpProtocol``, read by every
handler (the modelhost API, the ASGI bridge)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelhost.http.responder import Responder

Headers = list[tuple[bytes, bytes]]


class Request:
    """One complete HTTP request, as received.

    ``path`` is the raw request target up to ``?`` (still percent-encoded), ``query`` what follows it.
    Header names are lower-cased, values untouched, in arrival order (repeats kept). ``body`` is the whole
    body, de-chunked. ``client`` and ``server`` are (host, port) for TCP, None and (path, None) for unix
    sockets.
    """

    __slots__ = (
        "body",
        "client",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "query",
        "server",
    )

    def __init__(
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: Headers,
        body: bytes,
        keep_alive: bool,
        http_version: str,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http_version = http_version
        self.client = client
        self.server = server

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method.decode('latin-1')} {self.path.decode('latin-1')}>"


# Called on the event loop for each complete request; it answers through the responder now or later.
Handler = Callable[[Request, "Responder"], None]
