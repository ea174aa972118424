"""The logs route follows instance log files over a streamed response, served by modelhost.http."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import uvloop

from modelhost.api.logs import LogsApi
from modelhost.http import asgi_handler
from tests.fixtures.raw_http import connect, serving


def test_follow_streams_new_lines_until_the_client_leaves_or_the_server_stops(tmp_path: Path) -> None:
    log = tmp_path / "ep" / "AllTraffic" / "i-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("old line\n")
    logs = LogsApi(tmp_path)
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await logs(scope, receive, send, "ep")

    async def main() -> None:
        async with asyncio.timeout(10), serving(asgi_handler(app)) as server:
            reader, writer = await connect(server)
            writer.write(b"GET /logs?follow=true&tail=5 HTTP/1.1\r\n\r\n")
            assert b"transfer-encoding: chunked" in await reader.readuntil(b"\r\n\r\n")
            assert b"[AllTraffic/i-1] old line" in await reader.readuntil(b"old line\n")
            with log.open("a") as f:
                f.write("new line\n")
            assert await reader.readuntil(b"[AllTraffic/i-1] new line\n")
            logs.stop_following()
            assert await reader.readuntil(b"0\r\n\r\n")  # the stream ends cleanly at shutdown
            writer.close()

    uvloop.run(main())
    assert calls == 1
