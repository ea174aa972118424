"""InstanceClient against real servers on unix sockets (and TCP): a small asyncio server written here that can
misbehave on cue, a child process that dies mid-response, and uvicorn with a raw ASGI app."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
import uvloop

from modelhost.router.instance_client import (
    InstanceClient,
    InstanceResponse,
    InstanceTimeout,
    InstanceUnreachable,
)

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]

# Bounds every wait on the test server, so that a bug fails a test instead of hanging it.
WAIT_S = 5.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run[Any]:
    """Runs a coroutine on a fresh loop of each kind: the server runs on uvloop, tests may not."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    return run


@pytest.fixture
def sock_path() -> Iterator[str]:
    # Not tmp_path: a unix socket path must fit in 108 bytes and pytest's names for parametrized tests do not.
    directory = tempfile.mkdtemp(prefix="mh-ic-")
    try:
        yield os.path.join(directory, "instance.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- a small HTTP/1.1 server that can misbehave on cue -------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes
    index_on_connection: int  # 1 for the first request on a connection


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


# A handler answers one request; it returns False to end the connection (closing it without a word if it
# wrote nothing).
Handler = Callable[[Request, Conn], Awaitable[bool]]


def response(
    status: int = 200, body: bytes = b"", headers: tuple[tuple[str, str], ...] = (), reason: str = "OK"
) -> bytes:
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("latin-1") + b"\r\n" + body


async def echo(req: Request, conn: Conn) -> bool:
    conn.writer.write(
        response(
            body=req.body,
            headers=(
                ("X-Echo-Method", req.method),
                ("X-Echo-Path", req.path),
                ("X-Dup", "a"),
                ("X-Dup", "b"),
            ),
        )
    )
    return True


@dataclass
class Server:
    handler: Handler
    accepted: int = 0
    disconnected: int = 0
    requests: list[Request] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        index = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                index += 1
                line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
                method, path, _ = line.split(" ")
                headers = [(n.lower(), v.strip()) for n, v in (h.split(":", 1) for h in header_lines)]
                length = int(dict(headers).get("content-length", "0"))
                body = await reader.readexactly(length)
                req = Request(method, path, headers, body, index)
                self.requests.append(req)
                await self._notify()
                if not await self.handler(req, Conn(reader, writer)):
                    return
                await writer.drain()
        finally:
            writer.close()
            self.disconnected += 1
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(predicate)


@asynccontextmanager
async def unix_server(path: str, handler: Handler = echo) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_unix_server(server.serve, path)
    async with listener:
        yield server


@asynccontextmanager
async def tcp_server(handler: Handler = echo) -> AsyncIterator[tuple[Server, int]]:
    server = Server(handler)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    async with listener:
        yield server, listener.sockets[0].getsockname()[1]


@asynccontextmanager
async def client_for(path: str, **kwargs: Any) -> AsyncIterator[InstanceClient]:
    client = InstanceClient(unix_path=path, **kwargs)
    try:
        yield client
    finally:
        await client.close()


# -- round trips ---------------------------------------------------------------------------------------------


def test_get_and_post_round_trip_forward_headers_and_body_untouched(run: Run[None], sock_path: str) -> None:
    body = os.urandom(1024 * 1024)

    async def main() -> None:
        async with unix_server(sock_path) as server, client_for(sock_path) as client:
            got = await client.request("GET", "/ping")
            assert got == InstanceResponse(
                200,
                {
                    "content-length": "0",
                    "x-echo-method": "GET",
                    "x-echo-path": "/ping",
                    "x-dup": "a, b",
                },
                b"",
            )
            headers = [
                (b"Content-Type", b"application/x-npy"),
                (b"X-Amzn-SageMaker-Custom-Attributes", b"k=v"),
            ]
            posted = await client.request("POST", "/invocations", headers, body)
            assert posted.status == 200
            assert posted.body == body
            assert posted.headers["x-echo-method"] == "POST"
            assert server.requests[1].headers == [
                ("host", "localhost"),
                ("content-length", str(len(body))),
                ("content-type", "application/x-npy"),
                ("x-amzn-sagemaker-custom-attributes", "k=v"),
            ]

    run(main())


def test_small_body_and_error_status_are_responses(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        conn.writer.write(response(424, b'{"error": "' + req.body + b'"}', reason="Failed Dependency"))
        return True

    async def main() -> None:
        async with unix_server(sock_path, handler), client_for(sock_path) as client:
            got = await client.request("POST", "/invocations", body=b"boom")
            assert (got.status, got.body) == (424, b'{"error": "boom"}')

    run(main())


def test_keep_alive_reuses_one_connection(run: Run[None], sock_path: str) -> None:
    async def main() -> None:
        async with unix_server(sock_path) as server, client_for(sock_path) as client:
            for i in range(20):
                got = await client.request("POST", "/invocations", body=b"%d" % i)
                assert got.body == b"%d" % i
            assert server.accepted == 1
            assert client.idle_connections == 1

    run(main())


def test_chunked_response_in_pieces_then_reuse(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        if req.index_on_connection == 1:
            wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/csv\r\n\r\n"
            wire += b"5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\nworld!\r\n0\r\nx-trailer: t\r\n\r\n"
            # Byte by byte, so that the parser sees the head and every chunk split at every position.
            for i in range(len(wire)):
                conn.writer.write(wire[i : i + 1])
                await conn.writer.drain()
                await asyncio.sleep(0)
        else:
            conn.writer.write(response(body=b"second"))
        return True

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            got = await client.request("GET", "/stream")
            assert (got.status, got.body) == (200, b"hello,world!")
            assert got.headers["content-type"] == "text/csv"
            assert (await client.request("GET", "/again")).body == b"second"
            assert server.accepted == 1

    run(main())


def test_body_delimited_by_close_and_connection_close_are_not_reused(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        if req.path == "/eof":
            conn.writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        elif req.path == "/http10":
            conn.writer.write(b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\nold!")
        else:
            conn.writer.write(response(body=b"bye", headers=(("Connection", "close"),)))
        return False

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            assert (await client.request("GET", "/eof")).body == b"until the end"
            assert (await client.request("GET", "/http10")).body == b"old!"
            assert (await client.request("GET", "/close")).body == b"bye"
            assert server.accepted == 3
            assert client.idle_connections == 0

    run(main())


def test_interim_response_is_skipped(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(201, b"made"))
        return True

    async def main() -> None:
        async with unix_server(sock_path, handler), client_for(sock_path) as client:
            got = await client.request("POST", "/models", body=b"{}")
            assert (got.status, got.body) == (201, b"made")

    run(main())


def test_concurrent_requests_each_get_their_own_response(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        # Answer out of order across connections.
        for _ in range(int(req.body) % 7):
            await asyncio.sleep(0)
        return await echo(req, conn)

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            bodies = [b"%d" % i for i in range(50)]
            got = await asyncio.gather(*(client.request("POST", "/invocations", body=b) for b in bodies))
            assert [r.body for r in got] == bodies
            assert 1 <= server.accepted <= 50
            assert client.idle_connections == server.accepted

    run(main())


def test_idle_pool_keeps_at_most_max_idle_connections(run: Run[None], sock_path: str) -> None:
    barrier = asyncio.Barrier(5)

    async def handler(req: Request, conn: Conn) -> bool:
        await barrier.wait()  # holds every answer until five requests are in flight
        return await echo(req, conn)

    async def main() -> None:
        async with (
            unix_server(sock_path, handler) as server,
            client_for(sock_path, max_idle_connections=2) as client,
        ):
            await asyncio.gather(*(client.request("GET", "/ping") for _ in range(5)))
            assert server.accepted == 5
            assert client.idle_connections == 2
            await server.wait_for(lambda: server.disconnected == 3)
            await asyncio.gather(*(client.request("GET", "/ping") for _ in range(5)))
            assert server.accepted == 8  # two reused, three new

    run(main())


def test_unsolicited_bytes_drop_the_connection(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        # A second response nobody asked for, in the same write as the first.
        conn.writer.write(response(body=b"one") + response(body=b"extra"))
        return True

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            assert (await client.request("GET", "/a")).body == b"one"
            assert (await client.request("GET", "/b")).body == b"one"
            assert server.accepted == 2

    run(main())


def test_bytes_on_an_idle_connection_drop_it(run: Run[None], sock_path: str) -> None:
    chatter = asyncio.Event()

    async def handler(req: Request, conn: Conn) -> bool:
        await echo(req, conn)
        if req.index_on_connection == 1:
            await conn.writer.drain()
            await chatter.wait()
            conn.writer.write(b"HTTP/1.1 200 OK\r\n")
        return True

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            await client.request("GET", "/a")
            assert client.idle_connections == 1
            chatter.set()
            await server.wait_for(lambda: server.disconnected == 1)
            assert client.idle_connections == 0
            assert (await client.request("GET", "/b")).status == 200
            assert server.accepted == 2

    run(main())


# -- stale connections and the one retry ---------------------------------------------------------------------


def test_idle_connection_closed_by_server_is_replaced(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        await echo(req, conn)
        return False  # keep-alive response, then the server closes the connection anyway

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            for i in range(3):
                assert (await client.request("POST", "/invocations", body=b"%d" % i)).body == b"%d" % i
            assert server.accepted == 3

    run(main())


def test_reused_connection_dropped_before_any_response_byte_is_retried_once(
    run: Run[None], sock_path: str
) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        if req.index_on_connection == 2:
            return False  # the close races the request: nothing written
        return await echo(req, conn)

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            assert (await client.request("POST", "/invocations", body=b"1")).body == b"1"
            assert (await client.request("POST", "/invocations", body=b"2")).body == b"2"
            assert server.accepted == 2
            assert [r.body for r in server.requests] == [b"1", b"2", b"2"]

    run(main())


def test_loss_after_a_bodiless_response_is_not_mistaken_for_the_next_response(
    run: Run[None], sock_path: str
) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        if req.path == "/empty":
            conn.writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # no framing header, and keep-alive
            return True
        if req.index_on_connection == 2:
            return False
        return await echo(req, conn)

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            assert (await client.request("DELETE", "/empty")).status == 204
            got = await client.request("POST", "/invocations", body=b"x")
            assert (got.status, got.body) == (200, b"x")
            assert server.accepted == 2

    run(main())


def test_fresh_connection_dropped_before_response_is_not_retried(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        return False

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            with pytest.raises(InstanceUnreachable, match="before any response byte"):
                await client.request("POST", "/invocations", body=b"x")
            assert server.accepted == 1
            assert len(server.requests) == 1

    run(main())


def test_reused_connection_dropped_mid_response_is_not_retried(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        if req.index_on_connection == 2:
            conn.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            return False
        return await echo(req, conn)

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            await client.request("GET", "/ping")
            with pytest.raises(InstanceUnreachable, match="in the middle of the response"):
                await client.request("POST", "/invocations", body=b"x")
            assert server.accepted == 1
            assert len(server.requests) == 2

    run(main())


def test_instance_process_exiting_mid_response_is_unreachable(run: Run[None], sock_path: str) -> None:
    # A real process that exits mid-response: the kernel closes its socket, as when a worker crashes.
    child = (
        "import os, socket, sys\n"
        "listener = socket.socket(fileno=int(sys.argv[1]))\n"
        "conn, _ = listener.accept()\n"
        "data = b''\n"
        "while b'\\r\\n\\r\\n' not in data:\n"
        "    data += conn.recv(65536)\n"
        "conn.sendall(b'HTTP/1.1 200 OK\\r\\ncontent-length: 1000\\r\\n\\r\\npartial')\n"
        "os._exit(3)\n"
    )
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen()
    # The socket listens before the child starts, so the client needs no wait for it.
    proc = subprocess.Popen(
        [sys.executable, "-c", child, str(listener.fileno())], pass_fds=[listener.fileno()]
    )
    listener.close()

    async def main() -> None:
        async with client_for(sock_path) as client:
            with pytest.raises(InstanceUnreachable):
                await client.request("POST", "/invocations", body=b"x", timeout_s=WAIT_S)

    try:
        run(main())
    finally:
        assert proc.wait(timeout=WAIT_S) == 3


# -- deadlines and cancellation ------------------------------------------------------------------------------


async def hang_on_slow(req: Request, conn: Conn) -> bool:
    if req.path == "/slow":
        await conn.reader.read()  # until the client closes the connection
        return False
    return await echo(req, conn)


def test_slow_response_times_out_and_its_connection_is_closed_not_retried(
    run: Run[None], sock_path: str
) -> None:
    async def main() -> None:
        async with unix_server(sock_path, hang_on_slow) as server, client_for(sock_path) as client:
            # Warm first: a 50 ms deadline could also run out while connecting on a loaded machine.
            await client.request("GET", "/fast")
            started = time.monotonic()
            with pytest.raises(InstanceTimeout, match="/slow"):
                await client.request("POST", "/slow", body=b"x", timeout_s=0.05)
            # uvloop's clock ticks in whole milliseconds, so the timer may fire up to 1 ms early.
            assert 0.045 <= time.monotonic() - started < WAIT_S
            await server.wait_for(lambda: server.disconnected == 1)
            assert len(server.requests) == 2  # not retried
            assert client.idle_connections == 0
            assert (await client.request("GET", "/fast")).status == 200
            assert server.accepted == 2

    run(main())


def test_deadlines_of_overlapping_requests_are_kept_apart(run: Run[None], sock_path: str) -> None:
    # One timer serves all requests: a shorter deadline must pull it in, a longer one must be found again.
    released = asyncio.Event()

    async def handler(req: Request, conn: Conn) -> bool:
        if req.path == "/held":
            await released.wait()
        return await hang_on_slow(req, conn)

    async def timed_out_after(client: InstanceClient, timeout_s: float) -> float:
        started = time.monotonic()
        with pytest.raises(InstanceTimeout):
            await client.request("GET", "/slow", timeout_s=timeout_s)
        return time.monotonic() - started

    async def main() -> None:
        async with unix_server(sock_path, handler) as server, client_for(sock_path) as client:
            held = asyncio.create_task(client.request("GET", "/held", timeout_s=WAIT_S))
            await server.wait_for(lambda: len(server.requests) == 1)
            assert 0.045 <= await timed_out_after(client, 0.05) < 1.0  # earlier than the held request's
            assert 0.045 <= await timed_out_after(client, 0.1) < 1.0
            released.set()
            assert (await held).status == 200
            # A deadline armed for a request that already finished gives way to the later one still pending.
            await client.request("GET", "/fast", timeout_s=0.05)
            assert 0.145 <= await timed_out_after(client, 0.15) < 1.0

    run(main())


def test_cancelled_request_closes_its_connection(run: Run[None], sock_path: str) -> None:
    async def main() -> None:
        async with unix_server(sock_path, hang_on_slow) as server, client_for(sock_path) as client:
            task = asyncio.create_task(client.request("POST", "/slow", body=b"x"))
            await server.wait_for(lambda: len(server.requests) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await server.wait_for(lambda: server.disconnected == 1)
            assert client.idle_connections == 0
            assert (await client.request("GET", "/fast")).status == 200
            assert server.accepted == 2

    run(main())


# -- connecting and closing ----------------------------------------------------------------------------------


def test_nothing_listening_is_unreachable(run: Run[None], sock_path: str) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        async with client_for(sock_path) as client:
            with pytest.raises(InstanceUnreachable, match="could not connect"):
                await client.request("GET", "/ping")
        tcp = InstanceClient(host="127.0.0.1", port=port)
        with pytest.raises(InstanceUnreachable, match="could not connect"):
            await tcp.request("GET", "/ping")
        await tcp.close()

    run(main())


def test_close_closes_idle_connections_and_refuses_new_requests(run: Run[None], sock_path: str) -> None:
    released = asyncio.Event()

    async def handler(req: Request, conn: Conn) -> bool:
        if req.path == "/held":
            await released.wait()
        return await echo(req, conn)

    async def main() -> None:
        async with unix_server(sock_path, handler) as server:
            client = InstanceClient(unix_path=sock_path)
            held = asyncio.create_task(client.request("GET", "/held"))
            await server.wait_for(lambda: len(server.requests) == 1)
            await client.request("GET", "/ping")  # on a second connection, which goes idle
            assert client.idle_connections == 1
            await client.close()
            await server.wait_for(lambda: server.disconnected == 1)
            with pytest.raises(InstanceUnreachable, match="closed"):
                await client.request("GET", "/ping")
            released.set()
            assert (await held).status == 200  # in flight at close: it finishes, then its connection closes
            await server.wait_for(lambda: server.disconnected == 2)
            assert client.idle_connections == 0
            await client.close()  # idempotent

    run(main())


def test_tcp_round_trip_and_reuse(run: Run[None]) -> None:
    async def main() -> None:
        async with tcp_server() as (server, port):
            client = InstanceClient(host="127.0.0.1", port=port)
            try:
                for i in range(3):
                    got = await client.request("POST", "/invocations", body=b"%d" % i)
                    assert got.body == b"%d" % i
            finally:
                await client.close()
            assert server.accepted == 1
            assert ("host", f"127.0.0.1:{port}") in server.requests[0].headers

    run(main())


def test_invalid_response_is_unreachable(run: Run[None], sock_path: str) -> None:
    async def handler(req: Request, conn: Conn) -> bool:
        conn.writer.write(b"SMTP ready\r\n\r\n")
        return True

    async def main() -> None:
        async with unix_server(sock_path, handler), client_for(sock_path) as client:
            with pytest.raises(InstanceUnreachable, match="invalid response"):
                await client.request("GET", "/ping")
            assert client.idle_connections == 0

    run(main())


def test_bad_arguments_are_rejected() -> None:
    for kwargs in ({}, {"unix_path": "/x", "host": "h", "port": 1}, {"host": "h"}, {"port": 1}):
        with pytest.raises(ValueError, match="unix_path"):
            InstanceClient(**kwargs)
    with pytest.raises(ValueError, match="max_idle_connections"):
        InstanceClient(unix_path="/x", max_idle_connections=-1)

    async def head() -> None:
        await InstanceClient(unix_path="/x").request("HEAD", "/")

    with pytest.raises(ValueError, match="HEAD"):
        asyncio.run(head())


# -- against uvicorn, the server the built-in worker runs ----------------------------------------------------


async def asgi_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    # No content-length and two body messages: uvicorn answers with chunked encoding.
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"x-path", scope["path"].encode())]}
    )
    half = len(body) // 2
    await send({"type": "http.response.body", "body": body[:half], "more_body": True})
    await send({"type": "http.response.body", "body": body[half:]})


def test_uvicorn_round_trips_with_chunked_responses(run: Run[None], sock_path: str) -> None:
    body = os.urandom(1024 * 1024)

    async def main() -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
        listener.listen()
        config = uvicorn.Config(asgi_echo, http="httptools", lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        # Already listening: requests queue in the backlog until uvicorn accepts them, so no wait for startup.
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            async with client_for(sock_path) as client:
                for i in range(5):
                    got = await client.request("POST", f"/models/m{i}/invoke", body=b"%d-abc" % i)
                    assert (got.status, got.body) == (200, b"%d-abc" % i)
                    assert got.headers["transfer-encoding"] == "chunked"
                    assert got.headers["x-path"] == f"/models/m{i}/invoke"
                assert (await client.request("POST", "/invocations", body=body)).body == body
                assert client.idle_connections == 1
        finally:
            server.should_exit = True
            await serving

    run(main())


def test_failed_retry_after_a_stale_connection_is_not_reported_as_never_sent(tmp_path: Path) -> None:
    """The worker read the request on a pooled connection and died: the retry's connect fails, and the
    error must not say the request never left (the router would send it to another instance)."""
    from modelhost.router.instance_client import InstanceNotConnected

    sock = str(tmp_path / "dies.sock")

    async def main() -> None:
        requests = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal requests
            while await reader.readuntil(b"\r\n\r\n"):
                requests += 1
                if requests == 2:
                    server.close()
                    writer.transport.abort()  # read the request, then die without a byte of answer
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()

        server = await asyncio.start_unix_server(handle, sock)
        client = InstanceClient(unix_path=sock)
        assert (await client.request("POST", "/invocations")).body == b"ok"
        os.unlink(sock)
        with pytest.raises(InstanceUnreachable) as err:
            await client.request("POST", "/invocations")
        assert not isinstance(err.value, InstanceNotConnected)
        await client.close()

    asyncio.run(main())
