"""The clock, passed explicitly so that decisions stay pure and tests never patch time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (timestamps shown to users)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (timeouts, intervals)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
