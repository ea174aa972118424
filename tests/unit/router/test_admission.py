"""Admission on the invocation path: per-endpoint and per-instance limits refuse at once, retryably."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelhost.errors import ServiceUnavailable
from modelhost.router.instance_client import InstanceClient
from modelhost.router.invoke import InvokeRequest, Router
from modelhost.router.invoker import HttpInvoker
from modelhost.router.table import EndpointRoute, InstanceHandle, RouteTable, VariantRoute


def _request() -> InvokeRequest:
    return InvokeRequest("ep", b"[1]", b"application/json", None, None, None, None)


def _run(tmp_path: Path, per_instance: int, per_endpoint: int) -> None:
    sock = str(tmp_path / "held.sock")

    async def main() -> None:
        release = asyncio.Event()
        both_arrived = asyncio.Event()
        arrived = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal arrived
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                arrived += 1
                if arrived == 2:
                    both_arrived.set()
                await release.wait()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\n\r\n[0]"
                )
                await writer.drain()

        server = await asyncio.start_unix_server(handle, sock)
        handle_ = InstanceHandle("i-1", "v", HttpInvoker(InstanceClient(unix_path=sock)), "arn:log")
        table = RouteTable()
        table.publish(EndpointRoute("ep", (VariantRoute("v", 1.0, (handle_,)),), 5.0))
        router = Router(table, "000000000000", per_instance, per_endpoint)
        first = [asyncio.ensure_future(router.invoke(_request())) for _ in range(2)]
        await both_arrived.wait()
        with pytest.raises(ServiceUnavailable) as err:
            await router.invoke(_request())
        assert "retry" in err.value.message
        release.set()
        results = await asyncio.gather(*first)
        assert [r.body for r in results] == [b"[0]", b"[0]"]
        assert router.in_flight["ep"] == 0 and handle_.outstanding == 0
        assert (await router.invoke(_request())).body == b"[0]"
        await handle_.client.close()
        server.close()

    asyncio.run(main())


def test_endpoint_limit_refuses_at_once(tmp_path: Path) -> None:
    _run(tmp_path, per_instance=64, per_endpoint=2)


def test_instance_limit_refuses_at_once(tmp_path: Path) -> None:
    _run(tmp_path, per_instance=2, per_endpoint=64)
