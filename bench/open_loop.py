"""An open-loop HTTP/1.1 load client: requests leave on a fixed schedule whether or not earlier ones answered.

Used by the overload check, where wrk (closed loop, and without -R in Debian's 4.x) would slow down with the
server and never overload it. Latency is measured from each request's scheduled start, so time a request
spent waiting for a free connection counts too. Keep-alive connections are reused; up to ``max_connections``
are open at once, and a request falling due while all are busy is counted as ``not_sent``, never queued.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools


@dataclass(frozen=True)
class Outcome:
    scheduled_s: float  # since the start of the run
    latency_s: float
    status: int  # 0: no response (connection error or timeout)
    retry_after: bool


@dataclass
class OpenLoopRun:
    target_rps: float
    duration_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    not_sent: int = 0
    connections_opened: int = 0

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def statuses(self) -> dict[int, int]:
        return dict(Counter(o.status for o in self.outcomes))


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; httptools parses the responses."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bool]] | None = None
        self._retry_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self._retry_after = True

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._parser.get_status_code(), self._retry_after))
        if not self._parser.should_keep_alive():
            self.close()

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bool]]:
        assert self.transport is not None
        self._retry_after = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def request_bytes(path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def run_open_loop(
    port: int,
    raw_request: bytes,
    rate_rps: float,
    duration_s: float,
    max_connections: int,
    timeout_s: float = 10.0,
    on_tick: Callable[[float], None] | None = None,
    tick_every_s: float = 5.0,
) -> OpenLoopRun:
    """Send ``raw_request`` to 127.0.0.1:``port`` ``rate_rps`` times a second for ``duration_s``.

    ``on_tick(elapsed_s)`` is called every ``tick_every_s`` (the overload check samples memory there). Every
    request is done or abandoned after ``timeout_s``, so the run ends by ``duration_s + timeout_s``.
    """
    loop = asyncio.get_running_loop()
    run = OpenLoopRun(rate_rps, duration_s)
    idle: list[_Connection] = []
    in_use = 0
    tasks: set[asyncio.Task[None]] = set()
    started = loop.time()

    async def one(conn: _Connection | None, scheduled: float) -> None:
        nonlocal in_use
        status, retry_after = 0, False
        try:
            if conn is None:
                _, conn = await loop.create_connection(_Connection, "127.0.0.1", port)
                run.connections_opened += 1
            status, retry_after = await asyncio.wait_for(conn.request(raw_request), timeout_s)
        except (OSError, ConnectionError, TimeoutError, httptools.HttpParserError):
            if conn is not None:
                conn.close()
        finally:
            run.outcomes.append(Outcome(scheduled - started, loop.time() - scheduled, status, retry_after))
            if conn is not None and not conn.closed:
                idle.append(conn)
            in_use -= 1

    total = int(rate_rps * duration_s)
    next_tick = tick_every_s
    i = 0
    while i < total:
        # Everything due by now leaves now; one sleep per tick of the event loop, not one per request.
        due = min(total, int((loop.time() - started) * rate_rps) + 1)
        while i < due:
            scheduled = started + i / rate_rps
            i += 1
            conn = idle.pop() if idle else None
            if conn is not None and conn.closed:  # the server closed it while it sat idle
                conn = None
            if conn is None and in_use + len(idle) >= max_connections:
                run.not_sent += 1
                continue
            in_use += 1
            task = loop.create_task(one(conn, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elapsed = loop.time() - started
        if on_tick is not None and elapsed >= next_tick:
            on_tick(elapsed)
            next_tick += tick_every_s
        await asyncio.sleep(max(0.0, started + i / rate_rps - loop.time()))
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s + 1)
    for task in list(tasks):  # past every request's own timeout: only a stuck connect is left
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for conn in idle:
        conn.close()
    return run


def percentile_ms(latencies_s: list[float], q: int) -> float | None:
    """The q-th percentile in ms (None for no samples)."""
    if not latencies_s:
        return None
    if len(latencies_s) == 1:
        return latencies_s[0] * 1000
    return statistics.quantiles(latencies_s, n=100, method="inclusive")[q - 1] * 1000
