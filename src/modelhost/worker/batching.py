"""Dynamic batching: the policy, and the pure decision of which queued requests go to predict_fn together.

Called by the batching dispatcher (``batcher.py``) on the event loop whenever a request is queued, a batch
finishes or a wait runs out. Time is an argument: nothing here reads the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How one model's requests are joined. Rows, not requests: a request carrying 40 rows counts 40."""

    max_batch_size: int  # most rows in one predict_fn call; a single request above it goes alone
    max_batch_delay_us: int = 0  # longest a queued request waits for a fuller batch while a slot is free
    preferred_batch_sizes: tuple[int, ...] = ()  # row counts sent the moment they can be formed, ascending

    def __post_init__(self) -> None:
        # options.py explains bad environment values to the user; this only guards the invariants.
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_batch_delay_us < 0:
            raise ValueError(f"max_batch_delay_us must not be negative, got {self.max_batch_delay_us}")
        if any(not 1 <= size <= self.max_batch_size for size in self.preferred_batch_sizes):
            raise ValueError(
                f"preferred_batch_sizes {self.preferred_batch_sizes} must lie in 1..{self.max_batch_size}"
            )


@dataclass(frozen=True, slots=True)
class QueueState:
    """What the batcher knows at one instant, oldest queued request first."""

    queued_rows: Sequence[int]  # rows of each decoded request waiting for predict_fn
    joins_previous: Sequence[
        bool
    ]  # whether each request's rows may share a predict_fn call with the one before
    oldest_wait_us: int  # how long the first queued request has waited
    free_slots: int  # predict slots with no batch running
    busy_slots: int  # predict slots running a batch
    incoming: int  # requests received but not decoded yet: rows on their way to the queue


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send the first ``requests`` queued requests to predict_fn as one batch, now."""

    requests: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Hold the queue: decide again after ``us`` microseconds, or sooner if something changes."""

    us: int


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing to do until a request is queued or a slot frees."""


IDLE = Idle()
Decision = Dispatch | Wait | Idle


def decide(state: QueueState, policy: BatchPolicy) -> Decision:
    """The next step for the queue in ``state`` under ``policy``.

    Invariants: requests leave in arrival order (FIFO); a batch never holds more than ``max_batch_size`` rows
    unless its only request alone has more; a batch never crosses a request that does not join its previous
    one (its rows cannot be concatenated with theirs).

    A batch goes at once when a slot is free and (a preferred size can be formed, or nothing more fits, or
    the oldest request has waited ``max_batch_delay_us``, which with the default 0 is always). Waiting for a
    fuller batch is only worth it while something else is going on: with every slot free and nothing being
    decoded, the instance is idle and no row is on its way, so the batch goes now. While every slot is busy,
    requests accumulate: that is where batches form under load without any delay.
    """
    queued = state.queued_rows
    if not queued or state.free_slots <= 0:
        return IDLE
    preferred = policy.preferred_batch_sizes
    limit = policy.max_batch_size
    count = 1
    rows = queued[0]
    preferred_count = 1 if rows in preferred else 0
    full = rows >= limit
    while not full and count < len(queued):
        following = queued[count]
        if not state.joins_previous[count] or rows + following > limit:
            full = (
                True  # FIFO: nothing behind the next request can jump ahead of it, so waiting gains nothing
            )
            break
        count += 1
        rows += following
        if rows in preferred:
            preferred_count = count
        full = rows >= limit
    if preferred_count:
        return Dispatch(preferred_count)
    if full or state.oldest_wait_us >= policy.max_batch_delay_us:
        return Dispatch(count)
    if state.busy_slots == 0 and state.incoming == 0:
        return Dispatch(count)
    return Wait(policy.max_batch_delay_us - state.oldest_wait_us)
