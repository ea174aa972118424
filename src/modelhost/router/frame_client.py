"""The router's client for our own workers: invocations in frames (``modelhost.frames``) on one connection.

One connection per instance carries every invocation in flight, matched to its reply by id. Requests sent in
one turn of the event loop leave in one write, and the worker reads a burst in one go, so under load the
system calls and wake-ups per request fall instead of rising. ``/ping`` stays HTTP (the supervisor's
``InstanceClient``); only invocations travel here.

Delivery is reported as the HTTP client reports it: ``InstanceNotConnected`` only when the request surely
never left (no connection could be made, or the connection died while the request still sat in our
buffer); a loss after the write is ``InstanceUnreachable`` and is never resent, since the worker may have
read the request and died of it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import select
from typing import cast

from modelhost.frames import FrameError, FrameReader, ReplyFrame, encode_request
from modelhost.router.deadlines import DeadlineTimer
from modelhost.router.instance_client import InstanceNotConnected, InstanceTimeout, InstanceUnreachable
from modelhost.router.invoker import InstanceReply

_PEER_GONE_EVENTS = select.POLLIN | getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR


class _Pending:
    __slots__ = ("deadline", "waiter")

    def __init__(self, waiter: asyncio.Future[ReplyFrame], deadline: float) -> None:
        self.waiter = waiter
        self.deadline = deadline


class _FrameConnection(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self, client: FrameClient, slot: int) -> None:
        self._client = client
        self.slot = slot
        self._reader = FrameReader()
        self._poll: select.poll | None = None
        self.pending: dict[int, _Pending] = {}
        self.out: list[bytes] = []
        self.unsent: list[int] = []  # ids whose frames are still in ``out``
        self.flush_scheduled = False
        self.lost = False
        self.broken = ""  # why we dropped it, when we did

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), _PEER_GONE_EVENTS)

    def peer_gone(self) -> bool:
        """Whether an idle connection was hung up on (see InstanceClient's connections: same reasoning)."""
        poll = self._poll
        return poll is not None and bool(poll.poll(0))

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if not out or self.lost:
            return
        self.out = []
        self.unsent.clear()
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except FrameError as exc:
            self._client.broken(self, f"sent an invalid frame: {exc}")
            return
        pending = self.pending
        for frame in frames:
            if not isinstance(frame, ReplyFrame):
                self._client.broken(self, "sent a request frame")
                return
            entry = pending.pop(frame.id, None)
            if entry is not None and not entry.waiter.done():
                entry.waiter.set_result(frame)
            # else: timed out or cancelled here already; the late reply has nobody to go to.

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost settles what is pending

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._client.lost(self)


class FrameClient:
    """One per instance of ours. Same contract as ``HttpInvoker.invoke``."""

    __slots__ = (
        "_address",
        "_closed",
        "_connecting",
        "_conns",
        "_ids",
        "_loop",
        "_path",
        "_timer",
    )

    def __init__(self, unix_path: str, connections: int = 1) -> None:
        if connections < 1:
            raise ValueError(f"connections must be at least 1, not {connections}")
        self._path = unix_path
        self._address = f"unix:{unix_path}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: list[_FrameConnection | None] = [None] * connections
        self._connecting: list[asyncio.Future[_FrameConnection] | None] = [None] * connections
        self._ids = itertools.count(1)
        self._timer = DeadlineTimer(self._sweep)
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Invocations sent and not yet answered (for tests and metrics)."""
        return sum(len(conn.pending) for conn in self._conns if conn is not None)

    async def invoke(
        self,
        content_type: bytes | None,
        accept: bytes | None,
        custom_attributes: bytes | None,
        inference_id: bytes | None,
        body: bytes,
        timeout_s: float,
    ) -> InstanceReply:
        if self._closed:
            raise InstanceNotConnected(f"the client for the instance at {self._address} is closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conns = self._conns
        slot, least = 0, math.inf
        for index, candidate in enumerate(conns):
            load = len(candidate.pending) if candidate is not None else 0
            if load < least:
                slot, least = index, load
        conn = conns[slot]
        if conn is None or conn.lost or (not conn.pending and conn.peer_gone()):
            conn = await self._connect(loop, slot, deadline, timeout_s)
        id = next(self._ids) & 0xFFFFFFFF
        waiter: asyncio.Future[ReplyFrame] = loop.create_future()
        idle = not conn.pending
        conn.pending[id] = _Pending(waiter, deadline)
        conn.out += encode_request(id, content_type, accept, custom_attributes, inference_id, body)
        conn.unsent.append(id)
        if idle and not conn.flush_scheduled:
            # Nothing in flight here, so no burst to join: write now rather than a loop turn later.
            conn.flush()
        elif not conn.flush_scheduled:
            conn.flush_scheduled = True
            loop.call_soon(conn.flush)
        self._timer.cover(loop, deadline)
        try:
            frame = await waiter
        except InstanceTimeout:
            raise InstanceTimeout(
                f"instance at {self._address} gave no answer to an invocation in {timeout_s} s"
            ) from None
        finally:
            conn.pending.pop(id, None)
        return InstanceReply(
            frame.status,
            frame.body,
            frame.content_type.decode("latin-1") if frame.content_type is not None else None,
            frame.custom_attributes.decode("latin-1") if frame.custom_attributes is not None else None,
            frame.queue_us,
            frame.batch_rows,
            frame.waiting,
        )

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, slot: int, deadline: float, timeout_s: float
    ) -> _FrameConnection:
        old = self._conns[slot]
        if old is not None and not old.lost and not old.pending:
            old.transport.abort()  # hung up on while idle: nothing of ours is on it
        connecting = self._connecting[slot]
        if connecting is None:
            connecting = self._connecting[slot] = loop.create_future()
            loop.create_task(self._open(loop, slot, connecting))
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(connecting)
        except TimeoutError:
            raise InstanceTimeout(
                f"could not connect to the instance at {self._address} in {timeout_s} s"
            ) from None

    async def _open(
        self, loop: asyncio.AbstractEventLoop, slot: int, done: asyncio.Future[_FrameConnection]
    ) -> None:
        try:
            _, conn = await loop.create_unix_connection(lambda: _FrameConnection(self, slot), self._path)
        except OSError as exc:
            if not done.done():
                done.set_exception(
                    InstanceNotConnected(f"could not connect to the instance at {self._address}: {exc}")
                )
                done.exception()  # retrieved: nobody may be waiting any more
        else:
            if self._closed:
                conn.transport.abort()
                if not done.done():
                    done.set_exception(InstanceNotConnected(f"the client for {self._address} is closed"))
                    done.exception()
            else:
                self._conns[slot] = conn
                if not done.done():
                    done.set_result(conn)
        finally:
            self._connecting[slot] = None

    def broken(self, conn: _FrameConnection, why: str) -> None:
        conn.broken = why
        conn.transport.abort()  # connection_lost fails what is pending

    def lost(self, conn: _FrameConnection) -> None:
        if self._conns[conn.slot] is conn:
            self._conns[conn.slot] = None
        unsent = set(conn.unsent)
        for id, entry in list(conn.pending.items()):
            if entry.waiter.done():
                continue
            if id in unsent:
                entry.waiter.set_exception(
                    InstanceNotConnected(f"the connection to the instance at {self._address} closed first")
                )
            else:
                why = f"the instance {conn.broken}" if conn.broken else "it closed the connection"
                entry.waiter.set_exception(
                    InstanceUnreachable(f"instance at {self._address} gave no answer: {why}")
                )
        conn.pending.clear()

    def _sweep(self, now: float) -> float:
        next_at = math.inf
        for conn in self._conns:
            if conn is None:
                continue
            for entry in conn.pending.values():
                if entry.deadline <= now:
                    if not entry.waiter.done():
                        entry.waiter.set_exception(InstanceTimeout())
                elif entry.deadline < next_at:
                    next_at = entry.deadline
        return next_at

    async def close(self) -> None:
        """Refuse new invocations; those in flight are answered, then the connection closes."""
        self._closed = True
        conns = [conn for conn in self._conns if conn is not None]
        waiters = [entry.waiter for conn in conns for entry in conn.pending.values()]
        if waiters:
            # Each settles: answered, timed out, or failed when its connection goes.
            await asyncio.wait(waiters)
        for conn in conns:
            conn.transport.close()
        self._timer.cancel()
