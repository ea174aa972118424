"""Whether the worker is healthy: loaded, and not stuck in a prediction. Read by ``GET /ping``.

Python threads cannot be killed, so a handler stuck past the invocation timeout is reported through /ping
and the server replaces the whole process.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"


class BusyClock:
    """When each running prediction started. Written from handler threads, read from the event loop.

    Started on the handler thread, not when queued: a request waiting behind slow-but-working predictions is
    load, not a hang, and must not get a healthy instance replaced.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._tokens = itertools.count()

    def start(self) -> int:
        started = self._clock()
        with self._lock:
            token = next(self._tokens)
            self._started[token] = started
        return token

    def finish(self, token: int) -> None:
        with self._lock:
            del self._started[token]

    def oldest_start(self) -> float | None:
        with self._lock:
            return min(self._started.values(), default=None)


def is_hung(oldest_start: float | None, now: float, hang_after_s: float) -> bool:
    """A prediction has run longer than any invocation may."""
    return oldest_start is not None and now - oldest_start > hang_after_s


def is_healthy(phase: Phase, oldest_start: float | None, now: float, hang_after_s: float) -> bool:
    """What /ping answers: loaded (and warmed), not stopping, and not stuck."""
    return phase is Phase.READY and not is_hung(oldest_start, now, hang_after_s)
