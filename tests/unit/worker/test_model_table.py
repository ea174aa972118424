"""The multi-model worker's table: states, in-flight counting, unload waiting, and pages of GET /models."""

from __future__ import annotations

import pytest

from modelhost.worker.model_table import (
    MAX_PAGE_SIZE,
    InvalidPageRequest,
    ModelAlreadyLoaded,
    ModelLoading,
    ModelNotLoaded,
    ModelState,
    ModelTable,
    decode_page_token,
    encode_page_token,
    paginate,
    parse_page_size,
)

NOW = 1_700_000_000.0


def loaded(table: ModelTable[str], name: str, payload: str = "served") -> None:
    entry = table.begin_load(name, f"/models/{name}")
    table.finish_load(entry, payload, memory_bytes=10, load_ms=5, now=NOW)


def test_a_model_is_invocable_only_once_loaded() -> None:
    table = ModelTable[str]()
    entry = table.begin_load("a", "/m/a")
    assert entry.state is ModelState.LOADING
    with pytest.raises(ModelNotLoaded, match=r"^Model a is not loaded \(it is loading\)$"):
        table.acquire("a", NOW)
    assert table.page(None, 10).entries == ()
    table.finish_load(entry, "pipeline", memory_bytes=123, load_ms=7, now=NOW)
    acquired = table.acquire("a", NOW + 1)
    assert (acquired.payload, acquired.in_flight, acquired.last_used) == ("pipeline", 1, NOW + 1)
    assert (acquired.memory_bytes, acquired.load_ms, acquired.loaded_at) == (123, 7, NOW)
    table.release(acquired)
    assert acquired.in_flight == 0


@pytest.mark.parametrize("started", ["loading", "ready", "unloading"])
def test_a_second_load_of_a_name_is_refused_in_every_state(started: str) -> None:
    table = ModelTable[str]()
    entry = table.begin_load("a", "/m/a")
    if started != "loading":
        table.finish_load(entry, "p", 0, 0, NOW)
    if started == "unloading":
        table.begin_unload("a")
    with pytest.raises(ModelAlreadyLoaded, match=r"^Model a is "):
        table.begin_load("a", "/m/other")
    assert len(table) == 1


def test_a_failed_load_frees_the_name() -> None:
    table = ModelTable[str]()
    entry = table.begin_load("a", "/m/a")
    table.abandon_load(entry)
    assert len(table) == 0
    table.begin_load("a", "/m/a")


def test_unknown_models() -> None:
    table = ModelTable[str]()
    for call in (lambda: table.acquire("x", NOW), lambda: table.ready("x"), lambda: table.begin_unload("x")):
        with pytest.raises(ModelNotLoaded, match=r"^Model x is not loaded$"):
            call()


def test_unload_refuses_new_invocations_and_waits_for_the_last_one() -> None:
    table = ModelTable[str]()
    loaded(table, "a")
    first, second = table.acquire("a", NOW), table.acquire("a", NOW)
    entry = table.begin_unload("a")
    idle: list[str] = []
    entry.on_idle.append(lambda: idle.append("idle"))
    with pytest.raises(ModelNotLoaded, match="unloading"):
        table.acquire("a", NOW)
    with pytest.raises(ModelNotLoaded, match="already being unloaded"):
        table.begin_unload("a")
    table.release(first)
    assert idle == []
    table.release(second)
    assert idle == ["idle"]
    assert table.finish_unload(entry) == "served"
    assert entry.payload is None
    assert len(table) == 0


def test_a_loading_model_cannot_be_unloaded() -> None:
    table = ModelTable[str]()
    table.begin_load("a", "/m/a")
    with pytest.raises(ModelLoading, match="still loading"):
        table.begin_unload("a")


def test_pages_walk_every_name_once_in_order() -> None:
    names = [f"m{index:02d}" for index in range(7)]
    seen: list[str] = []
    after = None
    for _ in range(4):
        chosen, token = paginate(names[::-1], after, 3)
        seen += chosen
        if token is None:
            break
        after = decode_page_token(token)
    assert seen == names
    assert paginate(names, None, 7) == (names, None)
    assert paginate([], None, 3) == ([], None)


def test_pages_stay_right_when_models_come_and_go() -> None:
    chosen, token = paginate(["a", "b", "c", "d"], None, 2)
    assert chosen == ["a", "b"] and token is not None
    # "b" unloaded and "aa" loaded between the two requests: the next page still starts after "b".
    assert paginate(["a", "aa", "c", "d"], decode_page_token(token), 2) == (["c", "d"], None)


def test_the_table_lists_ready_models_only() -> None:
    table = ModelTable[str]()
    loaded(table, "b")
    loaded(table, "a")
    table.begin_load("c", "/m/c")
    page = table.page(None, 1)
    assert [entry.name for entry in page.entries] == ["a"]
    assert page.next_token is not None
    last = table.page(decode_page_token(page.next_token), 1)
    assert ([entry.name for entry in last.entries], last.next_token) == (["b"], None)


def test_page_tokens_round_trip_any_name() -> None:
    for name in ("a", "model-é/ü", "x" * 300, "=="):
        assert decode_page_token(encode_page_token(name)) == name


@pytest.mark.parametrize("token", ["%%", "", "not base64!", "_w"])
def test_foreign_page_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidPageRequest, match="not given out by this worker"):
        decode_page_token(token)


def test_page_size() -> None:
    assert parse_page_size(None) == 100
    assert parse_page_size("") == 100
    assert parse_page_size("1") == 1
    assert parse_page_size(str(MAX_PAGE_SIZE)) == MAX_PAGE_SIZE
    for bad in ("0", "-1", "abc", str(MAX_PAGE_SIZE + 1), "1.5"):
        with pytest.raises(InvalidPageRequest, match="page_size must be a whole number"):
            parse_page_size(bad)
