"""StreamClient against a small asyncio server on a unix socket that writes each response byte by byte (or
as told): chunks come out whole, trailers are kept, and every way a stream ends is reported."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import uvloop

from modelhost.router.instance_client import InstanceNotConnected, InstanceTimeout, InstanceUnreachable
from modelhost.router.stream_client import InstanceStream, StreamClient

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]
WAIT_S = 5.0
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run[Any]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run(coro: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(WAIT_S * 2):
                return await coro

        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(bounded())

    return run


@pytest.fixture
def sock_path() -> Iterator[str]:
    # Not tmp_path: a unix socket path must fit in 108 bytes and pytest's names for parametrized tests do not.
    directory = tempfile.mkdtemp(prefix="mh-sc-")
    try:
        yield os.path.join(directory, "instance.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    return (
        CHUNKED_HEAD + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailers + b"\r\n"
    )


# Given the request (head and body as read), writes the answer.
Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


def byte_by_byte(data: bytes, then_close: bool = True) -> Answer:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)  # let the client read this byte on its own
        if then_close:
            writer.close()
        else:
            await asyncio.Event().wait()  # stall, holding the connection open

    return answer


@asynccontextmanager
async def server(path: str, answer: Answer) -> AsyncIterator[list[bytes]]:
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        requests.append(head + await reader.readexactly(length))
        try:
            await answer(requests[-1], writer)
        except (ConnectionError, asyncio.CancelledError):
            writer.close()

    listener = await asyncio.start_unix_server(serve, path)
    async with listener:
        yield requests


async def read_all_pieces(stream: InstanceStream) -> list[bytes]:
    pieces = []
    while piece := await stream.read():
        pieces.append(piece)
    return pieces


def test_each_chunk_is_handed_over_whole_with_the_trailers(run: Run[None], sock_path: str) -> None:
    data = chunked(b"Once", b" upon a", b" time", trailers=b"x-modelhost-stream-error: none\r\n")

    async def main() -> None:
        async with server(sock_path, byte_by_byte(data)) as requests:
            client = StreamClient(unix_path=sock_path)
            stream = await client.open("POST", "/invocations", [(b"x-a", b"1")], b"body", 5)
            assert (stream.status, stream.headers["content-type"]) == (200, "text/plain")
            assert await read_all_pieces(stream) == [b"Once", b" upon a", b" time"]
            assert stream.complete
            assert stream.trailers == {"x-modelhost-stream-error": "none"}
            stream.close()
            (request,) = requests
            assert request.startswith(b"POST /invocations HTTP/1.1\r\nhost: localhost\r\n")
            assert b"content-length: 4\r\nconnection: close\r\nx-a: 1\r\n\r\nbody" in request

    run(main())


@pytest.mark.parametrize("framing", ["content-length", "until-close"])
def test_unchunked_bodies_arrive_as_they_come(run: Run[None], sock_path: str, framing: str) -> None:
    body = bytes(range(256)) * 4
    length = b"content-length: %d\r\n" % len(body) if framing == "content-length" else b""
    data = b"HTTP/1.1 200 OK\r\n" + length + b"\r\n" + body

    async def main() -> None:
        async with server(sock_path, byte_by_byte(data)):
            stream = await StreamClient(unix_path=sock_path).open("POST", "/invocations", timeout_s=5)
            assert b"".join(await read_all_pieces(stream)) == body
            stream.close()

    run(main())


def test_error_answers_are_read_whole(run: Run[None], sock_path: str) -> None:
    data = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nboom"

    async def main() -> None:
        async with server(sock_path, byte_by_byte(data)):
            stream = await StreamClient(unix_path=sock_path).open("POST", "/invocations", timeout_s=5)
            assert stream.status == 500
            assert await stream.read_all() == b"boom"
            stream.close()

    run(main())


def test_a_cut_mid_body_is_unreachable_after_what_came_before(run: Run[None], sock_path: str) -> None:
    data = CHUNKED_HEAD + b"4\r\nOnce\r\n5\r\n up"

    async def main() -> None:
        async with server(sock_path, byte_by_byte(data)):
            stream = await StreamClient(unix_path=sock_path).open("POST", "/invocations", timeout_s=5)
            assert await stream.read() == b"Once"
            with pytest.raises(InstanceUnreachable, match="in the middle of the response"):
                await stream.read()
            stream.close()

    run(main())


def test_deadline_covers_the_head_and_the_whole_body(run: Run[None], sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path, byte_by_byte(b"", then_close=False)):
            with pytest.raises(InstanceTimeout, match="no a response"):
                await StreamClient(unix_path=sock_path).open("POST", "/invocations", timeout_s=0.05)
        async with server(sock_path, byte_by_byte(CHUNKED_HEAD + b"2\r\nhi\r\n", then_close=False)):
            stream = await StreamClient(unix_path=sock_path).open("POST", "/invocations", timeout_s=0.2)
            assert await stream.read() == b"hi"
            with pytest.raises(InstanceTimeout, match="complete response"):
                await stream.read()
            stream.close()

    run(main())


def test_no_listener_is_not_connected(run: Run[None], sock_path: str) -> None:
    async def main() -> None:
        with pytest.raises(InstanceNotConnected):
            await StreamClient(unix_path=sock_path).open("POST", "/invocations")
        client = StreamClient(unix_path=sock_path)
        await client.close()
        with pytest.raises(InstanceNotConnected, match="closed"):
            await client.open("POST", "/invocations")

    run(main())


def test_closing_early_drops_the_connection(run: Run[None], sock_path: str) -> None:
    gone = asyncio.Event()

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED_HEAD + b"2\r\nhi\r\n")
        await writer.drain()
        # Writes go on until the client's close reaches this end.
        while True:
            try:
                writer.write(b"5\r\nmore!\r\n")
                await writer.drain()
            except ConnectionError:
                gone.set()
                return
            await asyncio.sleep(0.001)

    async def main() -> None:
        async with server(sock_path, answer):
            stream = await StreamClient(unix_path=sock_path).open("POST", "/invocations", timeout_s=5)
            # The next chunks may have arrived by the time it reads (a busy machine): it gets them too.
            assert (await stream.read()).startswith(b"hi")
            stream.close()
            with pytest.raises(InstanceUnreachable, match="abandoned"):
                await stream.read()
            async with asyncio.timeout(WAIT_S):
                await gone.wait()

    run(main())


def test_a_slow_reader_pauses_the_socket_and_gets_every_byte(run: Run[None], sock_path: str) -> None:
    piece = os.urandom(64 * 1024)
    count = 64  # 4 MiB, far past what the client holds before it stops reading

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED_HEAD)
        for _ in range(count):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with server(sock_path, answer):
            stream = await StreamClient(unix_path=sock_path).open("POST", "/invocations", timeout_s=WAIT_S)
            async with asyncio.timeout(WAIT_S):
                # The transport offers no event for it: polled, test-side.
                while stream.transport.is_reading():  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
            pieces = await read_all_pieces(stream)
            assert pieces == [piece] * count
            stream.close()

    run(main())
