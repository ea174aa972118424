"""The knobs of one HTTP server (``start_server``), with units in their names."""

from __future__ import annotations

from dataclasses import dataclass

from modelhost.http.request import Handler


@dataclass(frozen=True, slots=True)
class ServerOptions:
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body the server buffers. Handlers that accept less check ``len(request.body)``."""
    body_too_large: Handler | None = None
    """Answers a request whose body is over ``max_body_bytes``: it gets the request with an empty body (and
    no 100 Continue is sent), the connection closes after its answer. None answers 413."""
    max_head_bytes: int = 64 * 1024
    """Largest request line plus headers; past it the server answers 431 and closes."""
    idle_timeout_s: float = 75.0
    """A connection with no request in progress closes after this long without a byte from the client."""
    max_pipelined: int = 16
    """Requests received and not yet answered on one connection before the server stops reading from it."""
    linger_s: float = 5.0
    """After an error answer that closes the connection, how long the server keeps reading (and dropping) what
    the client still sends, so that the client can read the answer instead of a reset."""
    shutdown_grace_s: float = 30.0
    """How long ``Server.wait_closed`` lets in-flight responses finish before dropping their connections."""
