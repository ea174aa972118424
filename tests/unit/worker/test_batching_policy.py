"""The pure batch decision: scenarios by name, then every small queue against the invariants."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from modelhost.worker.batching import IDLE, BatchPolicy, Dispatch, Idle, QueueState, Wait, decide


def state(
    rows: Sequence[int],
    *,
    joins: Sequence[bool] | None = None,
    waited_us: int = 0,
    free: int = 1,
    busy: int = 0,
    incoming: int = 0,
) -> QueueState:
    return QueueState(
        queued_rows=rows,
        joins_previous=joins if joins is not None else [False] + [True] * (len(rows) - 1),
        oldest_wait_us=waited_us,
        free_slots=free,
        busy_slots=busy,
        incoming=incoming,
    )


MAX8 = BatchPolicy(max_batch_size=8)
MAX8_DELAY = BatchPolicy(max_batch_size=8, max_batch_delay_us=1000)


# --- scenarios ----------------------------------------------------------------------------------------------


def test_empty_queue_is_idle() -> None:
    assert decide(state([]), MAX8) is IDLE
    assert decide(state([], incoming=5, busy=1), MAX8_DELAY) == Idle()


def test_no_free_slot_lets_requests_accumulate() -> None:
    # Under load every slot is busy: that is where batches form, whatever the delay.
    assert decide(state([1, 1, 1], free=0, busy=2, waited_us=10**9), MAX8) is IDLE
    assert decide(state([8], free=0, busy=1), MAX8) is IDLE


def test_delay_zero_sends_whatever_is_queued_at_once() -> None:
    assert decide(state([1]), MAX8) == Dispatch(1)
    assert decide(state([1, 2, 1], busy=1, incoming=10), MAX8) == Dispatch(3)


def test_idle_instance_never_waits_even_with_a_delay() -> None:
    # Every slot free and nothing being decoded: no row is on its way, so waiting could only add latency.
    assert decide(state([1], free=2, busy=0, incoming=0), MAX8_DELAY) == Dispatch(1)


def test_delay_waits_for_rows_on_their_way_or_while_the_instance_works() -> None:
    assert decide(state([1], incoming=3), MAX8_DELAY) == Wait(1000)
    assert decide(state([1, 1], waited_us=400, busy=1), MAX8_DELAY) == Wait(600)


def test_delay_elapsed_sends_the_partial_batch() -> None:
    assert decide(state([1, 1], waited_us=1000, incoming=3), MAX8_DELAY) == Dispatch(2)
    assert decide(state([1, 1], waited_us=5000, busy=1), MAX8_DELAY) == Dispatch(2)


def test_reaching_max_sends_at_once_despite_the_delay() -> None:
    assert decide(state([4, 4], incoming=3), MAX8_DELAY) == Dispatch(2)
    assert decide(state([8], incoming=3), MAX8_DELAY) == Dispatch(1)


def test_next_request_that_would_overflow_closes_the_batch() -> None:
    # 5 + 4 > 8: the 4-row request cannot join, and FIFO forbids anything behind it from jumping ahead.
    assert decide(state([5, 4, 1], incoming=3), MAX8_DELAY) == Dispatch(1)
    assert decide(state([3, 2, 4], incoming=3), MAX8_DELAY) == Dispatch(2)


def test_a_request_larger_than_max_goes_alone() -> None:
    assert decide(state([40, 1]), MAX8) == Dispatch(1)
    assert decide(state([40], incoming=3), MAX8_DELAY) == Dispatch(1)
    assert decide(state([1, 40]), MAX8) == Dispatch(1)


def test_batches_never_cross_a_request_that_does_not_join() -> None:
    rows = [1, 1, 1, 1]
    assert decide(state(rows, joins=[False, True, False, True]), MAX8) == Dispatch(2)
    assert decide(state(rows, joins=[False, False, True, True], incoming=5), MAX8_DELAY) == Dispatch(1)


def test_the_first_requests_join_flag_is_ignored() -> None:
    assert decide(state([1, 1], joins=[True, True]), MAX8) == decide(state([1, 1]), MAX8)


def test_preferred_size_goes_at_once_and_wins_over_a_larger_one() -> None:
    policy = BatchPolicy(max_batch_size=16, max_batch_delay_us=1000, preferred_batch_sizes=(4, 8))
    assert decide(state([1, 1, 1], incoming=5), policy) == Wait(1000)
    assert decide(state([1, 1, 1, 1], incoming=5), policy) == Dispatch(4)
    # The largest preferred size that can be formed, even if more rows are queued.
    assert decide(state([2, 2, 2, 2, 1], incoming=5), policy) == Dispatch(4)
    assert decide(state([3, 3, 3], incoming=5), policy) == Wait(1000)
    assert decide(state([1] * 12), policy) == Dispatch(8)


def test_preferred_size_with_no_delay_does_not_hold_back_a_smaller_batch() -> None:
    policy = BatchPolicy(max_batch_size=16, preferred_batch_sizes=(8,))
    assert decide(state([1, 1, 1], incoming=10), policy) == Dispatch(3)


@pytest.mark.parametrize(
    "arguments",
    [
        {"max_batch_size": 0},
        {"max_batch_size": 4, "max_batch_delay_us": -1},
        {"max_batch_size": 4, "preferred_batch_sizes": (8,)},
        {"max_batch_size": 4, "preferred_batch_sizes": (0,)},
    ],
)
def test_policy_refuses_values_that_break_its_invariants(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(**arguments)  # type: ignore[arg-type]


# --- every small queue --------------------------------------------------------------------------------------


POLICIES = [
    BatchPolicy(max_batch_size=1),
    BatchPolicy(max_batch_size=3),
    BatchPolicy(max_batch_size=4, max_batch_delay_us=100),
    BatchPolicy(max_batch_size=4, max_batch_delay_us=100, preferred_batch_sizes=(2,)),
    BatchPolicy(max_batch_size=5, preferred_batch_sizes=(2, 5)),
]


def _queues() -> list[tuple[tuple[int, ...], tuple[bool, ...]]]:
    queues = []
    for length in range(0, 5):
        for rows in itertools.product((1, 2, 3, 6), repeat=length):
            for joins in itertools.product((True, False), repeat=max(0, length - 1)):
                queues.append((rows, (False, *joins)[:length]))
    return queues


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_invariants_hold_for_every_small_queue(policy: BatchPolicy) -> None:
    checked = 0
    for rows, joins in _queues():
        for free, busy, incoming, waited_us in itertools.product((0, 1, 2), (0, 1), (0, 2), (0, 50, 100)):
            current = state(rows, joins=joins, free=free, busy=busy, incoming=incoming, waited_us=waited_us)
            decision = decide(current, policy)
            checked += 1
            if not rows or free == 0:
                assert decision is IDLE
                continue
            if isinstance(decision, Wait):
                # Only with a delay left, only while something else goes on, and never past the delay.
                assert 0 < decision.us <= policy.max_batch_delay_us - waited_us
                assert busy or incoming
                continue
            assert isinstance(decision, Dispatch), (current, decision)
            count = decision.requests
            assert 1 <= count <= len(rows)
            taken = sum(rows[:count])
            # Never above max, unless a single request alone is.
            assert taken <= policy.max_batch_size or count == 1
            # Never across a request that does not join its previous one.
            assert all(joins[1:count])
            rest_fits = count < len(rows) and joins[count] and taken + rows[count] <= policy.max_batch_size
            if rest_fits:
                # Leaving a fitting request behind is only right for a preferred size.
                assert taken in policy.preferred_batch_sizes
    assert checked > 1000
