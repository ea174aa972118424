"""The model cache's pure decisions: LRU order, in-flight protection, too-large refusal, both budgets."""

from __future__ import annotations

import pytest

from modelhost.errors import ValidationError
from modelhost.router.model_cache import (
    Refusal,
    Resident,
    Room,
    check_target_model,
    least_recent,
    make_room,
    model_list,
    model_name,
)


def r(key: str, size: int, last_used: int, idle: bool = True, loaded: bool = False) -> Resident:
    return Resident(key, size, last_used, idle, loaded)


def test_nothing_is_evicted_while_the_need_fits() -> None:
    assert make_room([r("a", 30, 1), r("b", 30, 2)], 40, 100) == Room()
    assert make_room([], 100, 100) == Room()


def test_least_recently_used_go_first_and_only_as_many_as_needed() -> None:
    residents = [r("new", 20, 9), r("old", 20, 1), r("mid", 20, 5), r("older", 20, 3)]
    # 80 used; 50 more needs 30 freed: the two least recently used (1 and 3), not the third.
    assert make_room(residents, 50, 100) == Room(("old", "older"))
    assert make_room(residents, 61, 100).evict == ("old", "older", "mid")


def test_models_with_requests_in_flight_are_never_evicted() -> None:
    residents = [r("busy-oldest", 40, 1, idle=False), r("idle", 40, 7)]
    assert make_room(residents, 30, 100) == Room(("idle",))
    # Even evicting every idle model would not make room: evict nothing and say the budget is busy.
    room = make_room(residents, 70, 100)
    assert room == Room(refusal=Refusal.BUSY)
    assert not room.fits


def test_a_need_larger_than_the_whole_budget_is_refused_without_evicting() -> None:
    room = make_room([r("a", 10, 1), r("b", 10, 2)], 101, 100)
    assert room == Room(refusal=Refusal.TOO_LARGE)
    # Exactly the budget fits, once everything else is gone.
    assert make_room([r("a", 10, 1), r("b", 10, 2)], 100, 100).evict == ("a", "b")


def test_for_the_disk_budget_models_not_in_memory_go_before_loaded_ones() -> None:
    residents = [
        r("loaded-old", 40, 1, loaded=True),
        r("disk-only-new", 40, 9),
        r("loaded-new", 10, 8, loaded=True),
    ]
    assert make_room(residents, 30, 100).evict == ("disk-only-new",)
    assert make_room(residents, 60, 100).evict == ("disk-only-new", "loaded-old")


def test_memory_and_disk_budgets_are_decided_apart() -> None:
    # The same models, measured in each budget's own bytes: memory holds them, the disk does not.
    memory = [r("a", 10, 1, loaded=True), r("b", 10, 2, loaded=True)]
    disk = [r("a", 60, 1, loaded=True), r("b", 30, 2, loaded=True)]
    assert make_room(memory, 20, 100) == Room()
    assert make_room(disk, 20, 100) == Room(("a",))


def test_least_recent_frees_at_least_what_is_asked_and_at_least_one() -> None:
    residents = [r("c", 10, 3), r("a", 10, 1), r("busy", 10, 0, idle=False), r("b", 10, 2)]
    assert least_recent(residents, 15) == ("a", "b")
    assert least_recent(residents, 1) == ("a",)
    assert least_recent(residents, 0) == ("a",)
    assert least_recent([r("busy", 10, 0, idle=False)], 5) == ()


def test_model_names_are_opaque_stable_and_path_safe() -> None:
    name = model_name("team/model a.tar.gz")
    assert name == model_name("team/model a.tar.gz") != model_name("team/model b.tar.gz")
    assert len(name) == 40 and all(c in "0123456789abcdef" for c in name)


@pytest.mark.parametrize("key", ["model.tar.gz", "a/b/model-1.tar.gz", "ünïcode.tar.gz", "x" * 1024])
def test_target_models_that_name_a_key_under_the_prefix(key: str) -> None:
    assert check_target_model(key) == key


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("", "1 to 1024"),
        ("x" * 1025, "1 to 1024"),
        ("../other/model.tar.gz", "'..'"),
        ("a/../../b.tar.gz", "'..'"),
        ("/abs/model.tar.gz", "leading"),
        ("dir/", "trailing"),
        ("a\nb.tar.gz", "control"),
    ],
)
def test_target_models_that_could_leave_the_prefix_are_refused(key: str, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        check_target_model(key)


def test_preload_and_pinned_lists_are_read_from_the_environment() -> None:
    env = {"MODELHOST_PINNED_MODELS": " a.tar.gz, team/b.tar.gz,,a.tar.gz "}
    assert model_list(env, "MODELHOST_PINNED_MODELS") == ("a.tar.gz", "team/b.tar.gz")
    assert model_list(env, "MODELHOST_PRELOAD_MODELS") == ()
    with pytest.raises(ValidationError, match="MODELHOST_PRELOAD_MODELS in the container's Environment"):
        model_list({"MODELHOST_PRELOAD_MODELS": "ok.tar.gz,/abs.tar.gz"}, "MODELHOST_PRELOAD_MODELS")
