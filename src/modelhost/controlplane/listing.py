"""Sorting, filtering and pagination for the List* operations. Pure functions."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from modelhost.errors import ValidationError

T = TypeVar("T")
DEFAULT_MAX_RESULTS = 10


@dataclass(frozen=True, slots=True)
class Listable:
    """The fields every listed resource can be filtered and sorted by."""

    name: str
    creation_time: float
    last_modified_time: float | None = None
    status: str | None = None


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ValidationError(  # noqa: B904 - the decoding detail would only confuse the caller
            f"Invalid pagination token {token[:64]!r}: pass a NextToken from a previous page."
        )
    if not isinstance(offset, int) or offset < 0:
        raise ValidationError(
            f"Invalid pagination token {token[:64]!r}: pass a NextToken from a previous page."
        )
    return offset


def _keep(item: Listable, req: Mapping[str, Any]) -> bool:
    checks: list[tuple[str, Callable[[Any], bool]]] = [
        ("NameContains", lambda v: v.lower() in item.name.lower()),
        ("CreationTimeBefore", lambda v: item.creation_time < float(v)),
        ("CreationTimeAfter", lambda v: item.creation_time > float(v)),
        ("LastModifiedTimeBefore", lambda v: (item.last_modified_time or 0.0) < float(v)),
        ("LastModifiedTimeAfter", lambda v: (item.last_modified_time or 0.0) > float(v)),
        ("StatusEquals", lambda v: item.status == v),
    ]
    return all(pred(req[key]) for key, pred in checks if req.get(key) is not None)


def page(
    items: Sequence[T],
    describe: Callable[[T], Listable],
    req: Mapping[str, Any],
    default_sort: str = "CreationTime",
) -> tuple[list[T], str | None]:
    """Filter, sort and cut one page from ``items`` as the request asks; returns the page and NextToken."""
    keyed = [(describe(i), i) for i in items]
    kept = [(k, i) for k, i in keyed if _keep(k, req)]
    sort_by = req.get("SortBy") or default_sort
    sort_key: Callable[[tuple[Listable, T]], Any] = {
        "Name": lambda p: p[0].name,
        "CreationTime": lambda p: (p[0].creation_time, p[0].name),
        "Status": lambda p: (p[0].status or "", p[0].name),
    }[sort_by]
    kept.sort(key=sort_key, reverse=(req.get("SortOrder") or "Descending") == "Descending")
    offset = decode_token(req.get("NextToken"))
    limit = int(req.get("MaxResults") or DEFAULT_MAX_RESULTS)
    chosen = [i for _, i in kept[offset : offset + limit]]
    more = offset + limit < len(kept)
    return chosen, (encode_token(offset + limit) if more else None)
