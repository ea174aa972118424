"""Router.open_stream against small servers on unix sockets: what it sends, how long a stream counts against
the limits, and how each way of failing is reported."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator

import pytest

from modelhost.errors import ModelInvocationError, ModelStreamFailure, ServiceUnavailable
from modelhost.router.instance_client import InstanceClient
from modelhost.router.invoke import InvokeRequest, Router
from modelhost.router.invoker import HttpInvoker
from modelhost.router.stream_client import StreamClient
from modelhost.router.table import EndpointRoute, InstanceHandle, RouteTable, VariantRoute

WAIT_S = 5.0
Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def sock_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="mh-os-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _request(**kw: object) -> InvokeRequest:
    fields: dict[str, object] = {
        "endpoint": "ep",
        "body": b'{"inputs": "hi"}',
        "content_type": b"application/json",
        "accept": b"text/plain",
        "custom_attributes": b"trace=1",
        "target_variant": None,
        "inference_id": b"id-1",
    }
    fields.update(kw)
    return InvokeRequest(**fields)  # type: ignore[arg-type]


def _handle(id: str, sock: str) -> InstanceHandle:
    return InstanceHandle(
        id, "v", HttpInvoker(InstanceClient(unix_path=sock)), f"arn:log/{id}", StreamClient(unix_path=sock)
    )


def _router(*handles: InstanceHandle, per_endpoint: int = 64) -> Router:
    table = RouteTable()
    table.publish(EndpointRoute("ep", (VariantRoute("v", 1.0, handles),), WAIT_S))
    return Router(table, "000000000000", 64, per_endpoint)


async def _serve(sock: str, answer: Answer, requests: list[bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        requests.append(head + await reader.readexactly(length))
        await answer(requests[-1], writer)
        writer.close()

    return await asyncio.start_unix_server(handle, sock)


def _chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-amzn-sagemaker-custom-attributes: seen\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return head + b"transfer-encoding: chunked\r\n\r\n" + body + b"0\r\n" + trailers + b"\r\n"


def _writes(data: bytes, hold: asyncio.Event | None = None) -> Answer:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        if hold is not None:
            writer.write(data[: data.index(b"\r\n\r\n") + 4])  # the head now, the body once released
            await writer.drain()
            await hold.wait()
            writer.write(data[data.index(b"\r\n\r\n") + 4 :])
        else:
            writer.write(data)
        await writer.drain()

    return answer


async def _read_all(stream: object) -> list[bytes]:
    pieces = []
    while piece := await stream.read():  # type: ignore[attr-defined]
        pieces.append(piece)
    return pieces


def test_a_stream_sends_the_contract_request_and_holds_its_counts_until_closed(sock_dir: str) -> None:
    sock = os.path.join(sock_dir, "a.sock")

    async def main() -> None:
        requests: list[bytes] = []
        release = asyncio.Event()
        server = await _serve(sock, _writes(_chunked(b"Once", b" upon"), release), requests)
        handle = _handle("i-1", sock)
        router = _router(handle, per_endpoint=2)
        first = await router.open_stream(_request())
        second = await router.open_stream(_request())
        assert (router.in_flight["ep"], handle.outstanding) == (2, 2)
        with pytest.raises(ServiceUnavailable):
            await router.open_stream(_request())
        assert (first.variant, first.content_type, first.custom_attributes) == ("v", "text/plain", "seen")
        release.set()
        assert await _read_all(first) == [b"Once", b" upon"]
        first.close()
        first.close()  # idempotent
        assert (router.in_flight["ep"], handle.outstanding) == (1, 1)
        second.close()  # unread: dropped
        assert (router.in_flight["ep"], handle.outstanding) == (0, 0)
        head = requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
        assert head[0] == b"POST /invocations HTTP/1.1"
        assert {
            b"x-modelhost-response-stream: true",
            b"content-type: application/json",
            b"accept: text/plain",
            b"x-amzn-sagemaker-custom-attributes: trace=1",
            b"x-amzn-sagemaker-inference-id: id-1",
        } <= set(head)
        assert requests[0].endswith(b'\r\n\r\n{"inputs": "hi"}')
        server.close()

    asyncio.run(main())


def test_an_error_answer_is_a_model_error_before_the_stream(sock_dir: str) -> None:
    sock = os.path.join(sock_dir, "a.sock")
    data = b"HTTP/1.1 415 Unsupported Media Type\r\ncontent-length: 15\r\n\r\nexpected a JSON"

    async def main() -> None:
        server = await _serve(sock, _writes(data), [])
        handle = _handle("i-1", sock)
        router = _router(handle)
        with pytest.raises(ModelInvocationError) as err:
            await router.open_stream(_request())
        assert (err.value.original_status, err.value.original_message) == (415, "expected a JSON")
        assert 'Received client error (415) from primary with message "expected a JSON"' in err.value.message
        assert (router.in_flight["ep"], handle.outstanding) == (0, 0)
        server.close()

    asyncio.run(main())


def test_the_workers_error_trailer_is_a_stream_broken_failure(sock_dir: str) -> None:
    sock = os.path.join(sock_dir, "a.sock")
    data = _chunked(b"Once", trailers=b"x-modelhost-stream-error: ValueError: no more tokens\r\n")

    async def main() -> None:
        server = await _serve(sock, _writes(data), [])
        router = _router(_handle("i-1", sock))
        stream = await router.open_stream(_request())
        assert await stream.read() == b"Once"
        with pytest.raises(ModelStreamFailure) as err:
            await stream.read()
        assert err.value.error_code == "StreamBroken"
        assert '"ValueError: no more tokens"' in err.value.message
        assert "arn:log/i-1" in err.value.message
        stream.close()
        server.close()

    asyncio.run(main())


def test_a_cut_connection_is_stream_broken(sock_dir: str) -> None:
    sock = os.path.join(sock_dir, "a.sock")
    data = _chunked(b"Once", b" upon")[:-12]  # " upon" is cut short, and the end never comes

    async def main() -> None:
        server = await _serve(sock, _writes(data), [])
        router = _router(_handle("i-1", sock))
        stream = await router.open_stream(_request())
        assert await stream.read() == b"Once"
        with pytest.raises(ModelStreamFailure) as err:
            await stream.read()
        assert err.value.error_code == "StreamBroken"
        assert "closed the connection in the middle of the response" in err.value.message
        stream.close()
        server.close()

    asyncio.run(main())


def test_an_instance_that_takes_no_connection_is_skipped_for_another(sock_dir: str) -> None:
    dead, alive = os.path.join(sock_dir, "dead.sock"), os.path.join(sock_dir, "alive.sock")

    async def main() -> None:
        server = await _serve(alive, _writes(_chunked(b"here")), [])
        gone, live = _handle("i-gone", dead), _handle("i-live", alive)
        router = _router(gone, live)
        for _ in range(4):  # whichever the rotor picks first
            stream = await router.open_stream(_request())
            assert await _read_all(stream) == [b"here"]
            stream.close()
        assert (router.in_flight["ep"], gone.outstanding, live.outstanding) == (0, 0, 0)
        server.close()
        router_alone = _router(_handle("i-gone", dead))
        with pytest.raises(ServiceUnavailable, match="not accepting connections"):
            await router_alone.open_stream(_request())
        assert router_alone.in_flight["ep"] == 0

    asyncio.run(main())
