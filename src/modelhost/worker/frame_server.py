"""The frame listener: accepts the router's connections on the event loop and gives each to a runner thread.

Invocations in frames (``modelhost.frames``) are served by ``frame_runner.py``; this module only owns the
listening socket and the order of shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from modelhost.worker.batching import BatchPolicy
from modelhost.worker.frame_runner import RunnerPool, Serving
from modelhost.worker.health import BusyClock
from modelhost.worker.pipeline import Pipeline


class FrameService:
    """Set ready by the lifecycle once the model is loaded; until then every request gets 503."""

    def __init__(self, loop: asyncio.AbstractEventLoop, busy: BusyClock) -> None:
        self._loop = loop
        self._pool = RunnerPool(busy)
        self._listener: socket.socket | None = None

    def start(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._accept)

    def set_ready(self, pipeline: Pipeline, batching: BatchPolicy | None) -> None:
        self._pool.serving = Serving(pipeline, batching)

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors, or closing: the router retries its connect
            self._pool.start(sock)

    async def close(self, grace_s: float) -> None:
        """Stop accepting, let the answers owed go out for up to ``grace_s``, then close every connection."""
        listener = self._listener
        if listener is not None:
            self._loop.remove_reader(listener.fileno())
            with contextlib.suppress(OSError):
                listener.close()
            self._listener = None
        await asyncio.to_thread(self._pool.drain, grace_s)
