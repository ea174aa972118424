"""What models and endpoint configs share: create with tags, and list with filters and pages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from modelhost.controlplane.context import ControlPlaneContext
from modelhost.controlplane.listing import Listable, page
from modelhost.controlplane.tags import store_tags
from modelhost.errors import ValidationError
from modelhost.store.metadata import AlreadyExists, ResourceRow


def create_resource(
    ctx: ControlPlaneContext, table: sa.Table, arn_kind: str, what: str, name: str, req: Mapping[str, Any]
) -> str:
    """Store the request (tags apart) under ``name``; returns the new ARN."""
    arn = ctx.arn(arn_kind, name)
    record = {k: v for k, v in req.items() if k != "Tags"}
    try:
        ctx.store.insert_resource(table, ResourceRow(name, arn, ctx.clock.now(), record))
    except AlreadyExists:
        raise ValidationError(f'Cannot create already existing {what} "{arn}".') from None
    store_tags(ctx, arn, req.get("Tags"))
    return arn


def list_resources(
    ctx: ControlPlaneContext, table: sa.Table, req: Mapping[str, Any], items_key: str, prefix: str
) -> dict[str, Any]:
    """One page of ``{prefix}Name``, ``{prefix}Arn`` and ``CreationTime`` summaries."""
    rows, token = page(ctx.store.list_resources(table), lambda r: Listable(r.name, r.creation_time), req)
    out: dict[str, Any] = {
        items_key: [
            {f"{prefix}Name": r.name, f"{prefix}Arn": r.arn, "CreationTime": r.creation_time} for r in rows
        ]
    }
    if token:
        out["NextToken"] = token
    return out
