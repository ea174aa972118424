"""Which of an instance's workers takes the next invocation."""

from __future__ import annotations

from modelhost.router.worker_spread import least_busy


def test_the_worker_with_the_fewest_in_flight_takes_it() -> None:
    assert least_busy([3, 1, 2], start=0) == 1
    assert least_busy([0, 5, 5], start=1) == 0


def test_equally_busy_workers_take_turns_from_the_start() -> None:
    assert [least_busy([0, 0, 0], start=s) for s in range(4)] == [0, 1, 2, 0]
    assert least_busy([2, 1, 1], start=2) == 2  # of the tied ones, the first met from the start


def test_one_worker_takes_everything() -> None:
    assert least_busy([7], start=3) == 0
