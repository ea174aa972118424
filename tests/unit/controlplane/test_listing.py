from __future__ import annotations

import pytest

from modelhost.controlplane.listing import Listable, decode_token, encode_token, page
from modelhost.errors import ValidationError

ITEMS = [Listable(f"m{i}", float(i), float(10 - i), "InService" if i % 2 else "Failed") for i in range(25)]


def names(items: list[Listable]) -> list[str]:
    return [i.name for i in items]


def test_default_is_newest_first_ten_a_page() -> None:
    got, token = page(ITEMS, lambda x: x, {})
    assert names(got) == [f"m{i}" for i in range(24, 14, -1)]
    assert token is not None and decode_token(token) == 10


def test_walks_all_pages() -> None:
    seen, token = [], None
    while True:
        got, token = page(ITEMS, lambda x: x, {"MaxResults": 7, "SortOrder": "Ascending", "NextToken": token})
        seen += names(got)
        if token is None:
            break
    assert seen == [f"m{i}" for i in range(25)]


def test_filters() -> None:
    got, _ = page(
        ITEMS,
        lambda x: x,
        {"NameContains": "M2", "MaxResults": 100, "SortBy": "Name", "SortOrder": "Ascending"},
    )
    assert names(got) == ["m2", "m20", "m21", "m22", "m23", "m24"]
    got, _ = page(ITEMS, lambda x: x, {"CreationTimeAfter": 20, "CreationTimeBefore": 23, "MaxResults": 100})
    assert names(got) == ["m22", "m21"]
    got, _ = page(
        ITEMS, lambda x: x, {"StatusEquals": "Failed", "LastModifiedTimeAfter": 5, "MaxResults": 100}
    )
    assert names(got) == ["m4", "m2", "m0"]


def test_bad_tokens() -> None:
    for bad in ("!!!", encode_token(-1)[:-2], "eyJ4IjogMX0="):
        with pytest.raises(ValidationError):
            decode_token(bad)
