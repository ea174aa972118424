from __future__ import annotations

import pytest

from modelhost.worker.health import BusyClock, Phase, is_healthy, is_hung


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_busy_clock_tracks_the_oldest_running_prediction() -> None:
    clock = FakeClock()
    busy = BusyClock(clock)
    assert busy.oldest_start() is None
    first = busy.start()
    clock.now = 105.0
    second = busy.start()
    assert busy.oldest_start() == 100.0
    busy.finish(first)
    assert busy.oldest_start() == 105.0
    busy.finish(second)
    assert busy.oldest_start() is None


@pytest.mark.parametrize(
    ("oldest", "now", "hung"),
    [(None, 1000.0, False), (100.0, 165.0, False), (100.0, 165.1, True)],
)
def test_hung_after_timeout_plus_grace(oldest: float | None, now: float, hung: bool) -> None:
    assert is_hung(oldest, now, hang_after_s=65.0) is hung


@pytest.mark.parametrize(
    ("phase", "oldest", "healthy"),
    [
        (Phase.LOADING, None, False),
        (Phase.READY, None, True),
        (Phase.READY, 190.0, True),
        (Phase.READY, 100.0, False),
        (Phase.STOPPING, None, False),
    ],
)
def test_healthy_only_when_ready_and_not_hung(phase: Phase, oldest: float | None, healthy: bool) -> None:
    assert is_healthy(phase, oldest, now=200.0, hang_after_s=65.0) is healthy
