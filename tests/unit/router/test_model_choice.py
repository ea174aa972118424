"""Routing with affinity for multi-model requests: where the model is, unless it is hot there."""

from __future__ import annotations

from modelhost.router.choice import choose_model_instance
from modelhost.router.instance_client import InstanceClient
from modelhost.router.invoker import HttpInvoker
from modelhost.router.table import InstanceHandle

MAX = 10
HOT = 4


def handle(id: str, outstanding: int = 0) -> InstanceHandle:
    h = InstanceHandle(id, "v", HttpInvoker(InstanceClient(unix_path="/nonexistent")), "arn")
    h.outstanding = outstanding
    return h


def pick(instances: list[InstanceHandle], holders: set[str], start: int = 0) -> str | None:
    chosen = choose_model_instance(instances, lambda h: h.id in holders, MAX, HOT, start)
    return None if chosen is None else chosen.id


def test_an_instance_with_the_model_wins_over_idler_ones() -> None:
    hs = [handle("a", 0), handle("b", 3), handle("c", 0)]
    assert pick(hs, {"b"}) == "b"


def test_among_holders_the_least_busy() -> None:
    hs = [handle("a", 3), handle("b", 1), handle("c", 0)]
    assert pick(hs, {"a", "b"}) == "b"


def test_a_hot_model_spreads_to_a_less_busy_instance() -> None:
    hs = [handle("a", HOT), handle("b", 1)]
    assert pick(hs, {"a"}) == "b"
    # ... but not to one that is as busy: a load there would gain nothing.
    hs = [handle("a", HOT), handle("b", HOT + 1)]
    assert pick(hs, {"a"}) == "a"


def test_a_model_nobody_has_goes_to_the_least_loaded() -> None:
    hs = [handle("a", 2), handle("b", 0), handle("c", 1)]
    assert pick(hs, set()) == "b"
    # Ties rotate, as for single-model requests.
    ties = [handle("a"), handle("b")]
    assert [pick(ties, set(), start) for start in range(3)] == ["a", "b", "a"]


def test_full_instances_are_skipped_even_when_they_hold_the_model() -> None:
    hs = [handle("a", MAX), handle("b", 5)]
    assert pick(hs, {"a"}) == "b"
    assert pick([handle("a", MAX), handle("b", MAX)], {"a"}) is None
    assert pick([], {"a"}) is None
