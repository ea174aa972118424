"""The clock, passed explicitly so that decisions stay pure and tests never patch time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch, to the millisecond (timestamps shown to users)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (timeouts, intervals)."""
        ...


class SystemClock:
    def now(self) -> float:
        # SageMaker's timestamps, and botocore's serializer, stop at milliseconds: a CreationTime a client
        # sends back as a filter bound must compare equal to the stored one.
        return round(time.time(), 3)

    def monotonic(self) -> float:
        return time.monotonic()
