"""modelhost.http against real sockets: framing, keep-alive, pipelining, limits and errors."""

from __future__ import annotations

import asyncio
import http.client
from typing import Any

from modelhost.http import Request, Responder
from tests.fixtures.raw_http import TEXT, connect, echo, read_response, serving


def test_keep_alive_reuses_one_connection(run: Any) -> None:
    seen: list[Any] = []

    def handler(request: Request, responder: Responder) -> None:
        seen.append(request.client)
        responder.send(200, TEXT, b"hi")

    async def main() -> None:
        async with serving(handler) as server:

            def client() -> list[bytes]:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                out = []
                for _ in range(3):
                    conn.request("GET", "/x")
                    out.append(conn.getresponse().read())
                conn.close()
                return out

            assert await asyncio.to_thread(client) == [b"hi"] * 3
            assert len(set(seen)) == 1 and seen[0][0] == "127.0.0.1"

    run(main())


def test_pipelined_answers_leave_in_request_order(run: Any) -> None:
    pending: dict[bytes, Responder] = {}
    got_all = asyncio.Event()

    def handler(request: Request, responder: Responder) -> None:
        pending[request.path] = responder
        if len(pending) == 3:
            got_all.set()

    async def main() -> None:
        async with serving(handler) as server:
            reader, writer = await connect(server)
            writer.write(b"".join(b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in (1, 2, 3)))
            await got_all.wait()
            # The second is answered first, then the third, then the first: all leave in request order.
            for path in (b"/2", b"/3", b"/1"):
                pending[path].send(200, TEXT, path)
            bodies = [(await read_response(reader)).body for _ in range(3)]
            assert bodies == [b"/1", b"/2", b"/3"]
            writer.close()

    run(main())


def test_content_length_and_chunked_request_bodies(run: Any) -> None:
    async def main() -> None:
        async with serving(echo) as server:
            reader, writer = await connect(server)
            writer.write(b"POST /a?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
            r = await read_response(reader)
            assert (r.status, r.body, r.headers["x-path"], r.headers["x-query"]) == (
                200,
                b"hello",
                "/a",
                "q=1",
            )
            assert r.headers["content-length"] == "5" and "date" in r.headers
            writer.write(
                b"POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
            )
            r = await read_response(reader)
            assert r.body == b"abcdefg"
            writer.close()

    run(main())


def test_expect_100_continue_is_answered_before_the_body(run: Any) -> None:
    async def main() -> None:
        async with serving(echo) as server:
            reader, writer = await connect(server)
            writer.write(b"PUT /e HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
            assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
            assert await reader.readline() == b"\r\n"
            writer.write(b"body")
            r = await read_response(reader)
            assert (r.status, r.body) == (200, b"body")
            writer.close()

    run(main())


def test_head_gets_headers_and_no_body(run: Any) -> None:
    async def main() -> None:
        async with serving(echo) as server:
            reader, writer = await connect(server)
            writer.write(
                b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nPOST /p HTTP/1.1\r\ncontent-length: 2\r\n\r\nok"
            )
            r = await read_response(reader, head=True)
            assert r.status == 200 and r.headers["content-length"] == "0"
            r = await read_response(reader)  # would misparse if the HEAD answer had carried a body
            assert (r.headers["x-method"], r.body) == ("POST", b"ok")
            writer.close()

    run(main())


def test_malformed_request_gets_400_and_close(run: Any) -> None:
    async def main() -> None:
        async with serving(echo) as server:
            reader, writer = await connect(server)
            writer.write(b"GET /ok HTTP/1.1\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
            assert (await read_response(reader)).status == 200  # the good request before it is answered
            r = await read_response(reader)
            assert r.status == 400 and r.headers["connection"] == "close"
            assert await reader.read() == b""
            writer.close()

    run(main())


def test_head_too_large_gets_431(run: Any) -> None:
    async def main() -> None:
        async with serving(echo, max_head_bytes=1024) as server:
            reader, writer = await connect(server)
            writer.write(b"GET / HTTP/1.1\r\nx-big: " + b"a" * 4096)
            r = await read_response(reader)
            assert r.status == 431
            assert await reader.read() == b""

    run(main())


def test_oversized_body_gets_413_or_the_handlers_answer(run: Any) -> None:
    def too_large(request: Request, responder: Responder) -> None:
        assert request.body == b""
        responder.send(400, TEXT, b"too big for " + request.path)

    async def main() -> None:
        async with serving(echo, max_body_bytes=10) as server:
            reader, writer = await connect(server)
            # Declared too large: refused before the body, which the server then reads and drops.
            writer.write(b"POST /x HTTP/1.1\r\ncontent-length: 11\r\n\r\n")
            r = await read_response(reader)
            assert r.status == 413 and r.headers["connection"] == "close"
            writer.write(b"x" * 11)
            assert await reader.read() == b""
            # Chunked: refused once past the limit.
            reader, writer = await connect(server)
            writer.write(
                b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n"
            )
            assert (await read_response(reader)).status == 413
            writer.close()
            # At the limit: accepted.
            reader, writer = await connect(server)
            writer.write(b"POST /x HTTP/1.1\r\ncontent-length: 10\r\n\r\n0123456789")
            assert (await read_response(reader)).body == b"0123456789"
            writer.close()
        async with serving(echo, max_body_bytes=10, body_too_large=too_large) as server:
            reader, writer = await connect(server)
            # A large body the client sends whole before reading: it still gets the answer, not a reset.
            writer.write(b"POST /y HTTP/1.1\r\ncontent-length: 1000000\r\n\r\n" + b"z" * 1_000_000)
            await writer.drain()
            r = await read_response(reader)
            assert (r.status, r.body) == (400, b"too big for /y")
            writer.close()

    run(main())


def test_connection_close_and_http_1_0(run: Any) -> None:
    async def main() -> None:
        async with serving(echo) as server:
            reader, writer = await connect(server)
            writer.write(b"GET /1 HTTP/1.1\r\nconnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
            r = await read_response(reader)
            assert r.headers["connection"] == "close" and r.headers["x-path"] == "/1"
            assert await reader.read() == b""  # the request after it is not answered

            reader, writer = await connect(server)
            writer.write(b"GET /old HTTP/1.0\r\n\r\n")
            r = await read_response(reader)
            assert r.status == 200 and r.headers["connection"] == "close"
            assert await reader.read() == b""

            reader, writer = await connect(server)
            for path in (b"/a", b"/b"):
                writer.write(b"GET %s HTTP/1.0\r\nconnection: keep-alive\r\n\r\n" % path)
                r = await read_response(reader)
                assert r.headers["connection"] == "keep-alive" and r.headers["x-path"] == path.decode()
            writer.close()

    run(main())


def test_unix_socket_and_absolute_form_target(run: Any, sock_path: str) -> None:
    async def main() -> None:
        async with serving(echo, unix_path=sock_path):
            reader, writer = await asyncio.open_unix_connection(sock_path)
            writer.write(b"GET http://example.com/abs?x=1 HTTP/1.1\r\nhost: example.com\r\n\r\n")
            r = await read_response(reader)
            assert (r.headers["x-path"], r.headers["x-query"]) == ("/abs", "x=1")
            writer.close()

    run(main())


def test_handler_exception_gets_500_and_the_connection_goes_on(run: Any) -> None:
    def handler(request: Request, responder: Responder) -> None:
        if request.path == b"/boom":
            raise RuntimeError("boom")
        responder.send(204, TEXT, b"")

    async def main() -> None:
        async with serving(handler) as server:
            reader, writer = await connect(server)
            writer.write(b"GET /boom HTTP/1.1\r\n\r\nGET /fine HTTP/1.1\r\n\r\n")
            assert (await read_response(reader)).status == 500
            r = await read_response(reader)
            assert r.status == 204 and "content-length" not in r.headers
            writer.close()

    run(main())


def test_idle_connection_is_closed_but_a_slow_handler_is_not_cut(run: Any) -> None:
    loop_responders: list[Responder] = []

    def handler(request: Request, responder: Responder) -> None:
        if request.path == b"/slow":
            loop_responders.append(responder)
            # Answers after three idle timeouts: a request in progress is not idleness.
            asyncio.get_running_loop().call_later(0.6, responder.send, 200, TEXT, b"late")
        else:
            responder.send(200, TEXT, b"now")

    async def main() -> None:
        async with serving(handler, idle_timeout_s=0.2) as server:
            reader, writer = await connect(server)
            writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
            assert (await read_response(reader)).body == b"late"
            started = asyncio.get_running_loop().time()
            assert await reader.read() == b""  # closed by the idle timer
            assert 0.1 < asyncio.get_running_loop().time() - started < 2
            assert server.connections == 0

    run(main())


def test_upgrade_requests_are_served_as_plain_ones(run: Any) -> None:
    async def main() -> None:
        async with serving(echo) as server:
            reader, writer = await connect(server)
            writer.write(
                b"GET /1 HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
            )
            assert [(await read_response(reader)).headers["x-path"] for _ in range(2)] == ["/1", "/2"]
            writer.close()

    run(main())
