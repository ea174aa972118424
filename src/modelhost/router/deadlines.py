"""One timer for many request deadlines, as the instance clients keep them.

A timer per request costs microseconds to create and cancel (uvloop allocates a libuv timer for each); with
the usual uniform timeout one shared timer fires about once per timeout and its owner finds the deadlines
due by a scan. The owner's ``sweep(now)`` expires what is due and returns the next deadline to wait for.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

# uvloop's clock ticks in milliseconds and may fire a timer up to a tick early.
_CLOCK_SLACK_S = 0.001


class DeadlineTimer:
    __slots__ = ("_handle", "_sweep", "at")

    def __init__(self, sweep: Callable[[float], float]) -> None:
        self._sweep = sweep  # expire what is due at ``now``; return the earliest deadline left, or inf
        self._handle: asyncio.TimerHandle | None = None
        self.at = math.inf  # when it fires; inf when not armed

    def cover(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Make sure the timer fires no later than ``deadline``."""
        if deadline < self.at:
            self._arm(loop, deadline)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self.at = None, math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_at(when, self._fire, loop)
        self.at = when

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle, self.at = None, math.inf
        next_at = self._sweep(loop.time() + _CLOCK_SLACK_S)
        if next_at < math.inf:
            self._arm(loop, next_at)
