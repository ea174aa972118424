"""An ASGI 3 bridge: runs an ASGI app as a handler of this package's server, one Task per request.

For routes off the hot path; the composition root owns the bridge and closes it (cancelling what still runs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any
from urllib.parse import unquote

from modelhost.http.request import Request
from modelhost.http.responder import Responder

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_DISCONNECT: Message = {"type": "http.disconnect"}


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Exchange:
    """receive and send of one request."""

    __slots__ = ("_body", "_disconnected", "_headers", "_responder", "_status", "_streaming")

    def __init__(self, request: Request, responder: Responder) -> None:
        self._body: bytes | None = request.body
        self._responder = responder
        self._status: int | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._streaming = False
        self._disconnected: asyncio.Future[None] | None = None

    async def receive(self) -> Message:
        body = self._body
        if body is not None:
            self._body = None
            return {"type": "http.request", "body": body, "more_body": False}
        responder = self._responder
        if not (responder.closed or responder.done):
            # The body has been read: the next thing to tell the app is that the client went away.
            if self._disconnected is None:
                future = self._disconnected = asyncio.get_running_loop().create_future()
                responder.on_close(partial(_settle, future))
            # Shielded: an app may wrap receive() in a task and cancel it, and ask again later.
            await asyncio.shield(self._disconnected)
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        responder = self._responder
        kind = message["type"]
        if kind == "http.response.start":
            if self._status is not None:
                raise RuntimeError("http.response.start sent twice")
            self._status = int(message["status"])
            self._headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if self._status is None:
            raise RuntimeError("http.response.body before http.response.start")
        if responder.closed:
            return
        if responder.done:
            raise RuntimeError("http.response.body after the response was complete")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not self._streaming:
            if not more and not any(k.lower() == b"content-length" for k, _ in self._headers):
                responder.send(self._status, self._headers, body)
                return
            responder.start(self._status, self._headers)
            self._streaming = True
        responder.write(body)
        if not more:
            responder.end()
        else:
            await responder.drain()

    def finish(self) -> None:
        responder = self._responder
        if responder.closed or responder.done:
            return
        if not responder.started:
            # Failed or returned before a byte went out: a 500 can still be told.
            responder.send(500, _TEXT, b"Internal server error\n")
        else:
            responder.abort()  # a started response the app did not finish: the client must not wait


class AsgiBridge:
    """A handler that runs ``app`` for each request. Scope: type, asgi, http_version, method, scheme, path
    (percent-decoded), raw_path, query_string, root_path, headers, client, server."""

    def __init__(self, app: AsgiApp) -> None:
        self._app = app
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, request: Request, responder: Responder) -> None:
        task = asyncio.get_running_loop().create_task(self._run(request, responder))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request: Request, responder: Responder) -> None:
        raw_path = request.path
        path = raw_path.decode("latin-1")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
            "query_string": request.query,
            "root_path": "",
            "headers": request.headers,
            "client": request.client,
            "server": request.server,
        }
        exchange = _Exchange(request, responder)
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except Exception:
            log.exception("ASGI app failed on %r", request)
        finally:
            exchange.finish()

    async def aclose(self) -> None:
        """Cancel the requests still running and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def asgi_handler(app: AsgiApp) -> AsgiBridge:
    return AsgiBridge(app)
