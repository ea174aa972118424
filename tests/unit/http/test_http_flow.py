"""modelhost.http over time: backpressure, streaming, clients that leave, shutdown."""

from __future__ import annotations

import asyncio
import http.client
import socket
from typing import Any

import pytest

from modelhost.http import Request, Responder
from tests.fixtures.raw_http import TEXT, Held, connect, echo, read_response, serving


def test_a_client_that_does_not_read_is_not_buffered_for(run: Any, sock_path: str) -> None:
    big = b"x" * (1 << 20)
    answered = 0
    first = asyncio.Event()

    def handler(request: Request, responder: Responder) -> None:
        nonlocal answered
        answered += 1
        first.set()
        responder.send(200, TEXT, big)

    async def main() -> None:
        async with serving(handler, unix_path=sock_path, max_pipelined=64):
            # 200 pipelined requests in one write, for 200 MiB of answers, and no reading yet.
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(sock_path)
            client.sendall(b"GET / HTTP/1.1\r\n\r\n" * 200)
            await first.wait()
            # Proving that something does not happen takes a pause: the server had time to run away here.
            await asyncio.sleep(0.3)
            assert answered < 16, f"{answered} MiB of answers were produced for a client that reads nothing"
            client.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=client)
            for _ in range(200):
                r = await read_response(reader)
                assert r.status == 200 and len(r.body) == len(big)
            assert answered == 200
            writer.close()

    run(main())


def test_disconnect_while_a_handler_is_pending(run: Any) -> None:
    held = Held()
    closed = asyncio.Event()

    async def main() -> None:
        async with serving(held) as server:
            _, writer = await connect(server)
            writer.write(b"GET /wait HTTP/1.1\r\n\r\n")
            await held.at_least(1)
            held[0].on_close(closed.set)
            writer.close()
            await closed.wait()
            responder = held[0]
            assert responder.closed
            responder.send(200, TEXT, b"nobody hears this")  # a no-op, not an error
            responder.on_close(closed.clear)  # registered after the close: runs at once
            assert not closed.is_set()

    run(main())


def test_streaming_response_is_chunked_with_backpressure(run: Any) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def stream(responder: Responder) -> None:
        responder.start(200, TEXT)
        for i in range(200):
            responder.write(b"%05d," % i * 1000)
            await responder.drain()
        responder.end()

    def handler(request: Request, responder: Responder) -> None:
        task = asyncio.get_running_loop().create_task(stream(responder))
        tasks.add(task)

    async def main() -> None:
        async with serving(handler) as server:

            def client(version: int) -> tuple[str | None, str | None, bytes]:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                conn._http_vsn, conn._http_vsn_str = version, f"HTTP/{version // 10}.{version % 10}"  # type: ignore[attr-defined]
                conn.request("GET", "/stream")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                return resp.getheader("transfer-encoding"), resp.getheader("connection"), body

            expected = b"".join(b"%05d," % i * 1000 for i in range(200))
            assert await asyncio.to_thread(client, 11) == ("chunked", None, expected)
            # HTTP/1.0 has no chunked encoding: the end of the body is the end of the connection.
            assert await asyncio.to_thread(client, 10) == (None, "close", expected)
            await asyncio.gather(*tasks)

    run(main())


def test_streamed_response_with_a_length_is_not_chunked(run: Any) -> None:
    def handler(request: Request, responder: Responder) -> None:
        responder.start(200, [(b"Content-Length", b"6")])
        responder.write(b"abc")
        responder.write(b"def")
        responder.end()

    async def main() -> None:
        async with serving(handler) as server:
            reader, writer = await connect(server)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            r = await read_response(reader)
            assert r.body == b"abcdef" and "transfer-encoding" not in r.headers
            writer.close()

    run(main())


def test_graceful_shutdown_lets_the_request_in_flight_finish(run: Any) -> None:
    held = Held()

    async def main() -> None:
        async with serving(held) as server:
            idle_reader, idle_writer = await connect(server)
            reader, writer = await connect(server)
            writer.write(b"POST /work HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
            await held.at_least(1)
            server.close()
            closing = asyncio.ensure_future(server.wait_closed())
            assert await idle_reader.read() == b""  # an idle connection is closed at once
            with pytest.raises(OSError):
                await connect(server)  # and no new one is accepted
            assert not closing.done()
            held[0].send(200, TEXT, b"finished")
            r = await read_response(reader)
            assert (r.status, r.body) == (200, b"finished")
            assert await reader.read() == b""
            await closing
            idle_writer.close()
            writer.close()

    run(main())


def test_shutdown_grace_is_bounded(run: Any) -> None:
    held = Held()  # and never answered

    async def main() -> None:
        async with serving(held, shutdown_grace_s=0.2) as server:
            reader, writer = await connect(server)
            writer.write(b"GET /never HTTP/1.1\r\n\r\n")
            await held.at_least(1)
            await server.wait_closed()  # returns after the grace, the connection dropped
            assert await reader.read() == b""
            writer.close()

    run(main())


def test_pipelined_requests_past_the_limit_wait_for_the_handler(run: Any) -> None:
    held = Held()

    async def main() -> None:
        async with serving(held, max_pipelined=2) as server:
            reader, writer = await connect(server)
            writer.write(b"GET / HTTP/1.1\r\n\r\n" * 5)
            await held.at_least(2)
            await asyncio.sleep(0.05)  # a pause to show that nothing more arrives
            assert len(held) == 2  # the others wait, parsed, until answers go out
            for i in range(5):
                await held.at_least(min(5, i + 2))
                assert len(held) == min(5, i + 2)
                held[i].send(200, TEXT, b"%d" % i)
                assert (await read_response(reader)).body == b"%d" % i
            writer.close()

    run(main())


def test_echo_large_body_both_ways(run: Any) -> None:
    async def main() -> None:
        async with serving(echo) as server:
            reader, writer = await connect(server)
            body = bytes(range(256)) * 40_000
            writer.write(b"POST / HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            assert (await read_response(reader)).body == body
            writer.close()

    run(main())
