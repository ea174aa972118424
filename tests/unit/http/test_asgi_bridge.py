"""The ASGI bridge: an ASGI 3 app served by modelhost.http."""

from __future__ import annotations

import asyncio
from typing import Any

from modelhost.http import AsgiBridge, asgi_handler
from tests.fixtures.raw_http import connect, read_response, serving


def test_scope_body_and_a_whole_response(run: Any) -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(dict(scope))
        message = await receive()
        await send({"type": "http.response.start", "status": 201, "headers": [(b"x-app", b"yes")]})
        await send({"type": "http.response.body", "body": message["body"][::-1]})

    async def main() -> None:
        async with serving(asgi_handler(app)) as server:
            reader, writer = await connect(server)
            writer.write(
                b"POST /a%20b/c?x=1&y=2 HTTP/1.1\r\nHost: h\r\nX-Thing: v\r\ncontent-length: 3\r\n\r\nabc"
            )
            r = await read_response(reader)
            assert (r.status, r.body, r.headers["x-app"], r.headers["content-length"]) == (
                201,
                b"cba",
                "yes",
                "3",
            )
            writer.close()
        scope = scopes[0]
        assert scope["type"] == "http" and scope["asgi"]["version"] == "3.0"
        assert (scope["method"], scope["path"], scope["raw_path"]) == ("POST", "/a b/c", b"/a%20b/c")
        assert (scope["query_string"], scope["http_version"], scope["scheme"]) == (b"x=1&y=2", "1.1", "http")
        assert (b"x-thing", b"v") in scope["headers"] and (b"host", b"h") in scope["headers"]
        assert scope["client"][0] == "127.0.0.1" and scope["server"] == ("127.0.0.1", server.port)

    run(main())


def test_streamed_body_and_disconnect(run: Any) -> None:
    saw_disconnect = asyncio.Event()
    asked_twice = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first,", "more_body": True})
        if scope["path"] == "/forever":
            waiting = asyncio.ensure_future(receive())
            assert not (await asyncio.wait({waiting}, timeout=0.01))[0]
            waiting.cancel()  # an app may give up waiting and ask again
            asked_twice.set()
            assert await receive() == {"type": "http.disconnect"}  # waits for the client to leave
            saw_disconnect.set()
            await send({"type": "http.response.body", "body": b"lost", "more_body": True})  # ignored
            return
        await send({"type": "http.response.body", "body": b"second", "more_body": False})
        assert await receive() == {"type": "http.disconnect"}  # the response is complete

    async def main() -> None:
        async with serving(asgi_handler(app)) as server:
            reader, writer = await connect(server)
            writer.write(b"GET /twice HTTP/1.1\r\n\r\n")
            r = await read_response(reader)
            assert (r.body, r.headers["transfer-encoding"]) == (b"first,second", "chunked")
            writer.write(b"GET /forever HTTP/1.1\r\n\r\n")
            assert await reader.readuntil(b"first,\r\n")
            await asked_twice.wait()
            writer.close()
            await saw_disconnect.wait()

    run(main())


def test_app_failures(run: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/before":
            raise RuntimeError("before the response")
        if scope["path"] == "/silent":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("in the middle")

    async def main() -> None:
        async with serving(asgi_handler(app)) as server:
            reader, writer = await connect(server)
            writer.write(
                b"GET /before HTTP/1.1\r\n\r\nGET /silent HTTP/1.1\r\n\r\nGET /during HTTP/1.1\r\n\r\n"
            )
            assert (await read_response(reader)).status == 500
            assert (await read_response(reader)).status == 500
            # Started, then failed: the connection drops, so the client cannot take the part for the whole.
            data = await reader.read()
            assert data.startswith(b"HTTP/1.1 200 OK\r\n") and not data.endswith(b"0\r\n\r\n")
            writer.close()

    run(main())


def test_aclose_cancels_what_still_runs(run: Any) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> None:
        bridge = AsgiBridge(app)
        async with serving(bridge, shutdown_grace_s=0.1) as server:
            reader, writer = await connect(server)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            await started.wait()
            await bridge.aclose()
            assert cancelled.is_set()
            assert (await read_response(reader)).status == 500
            writer.close()

    run(main())
