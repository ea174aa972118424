"""AddTags, ListTags, DeleteTags, and the tags given to Create* requests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelhost.controlplane.context import ControlPlaneContext
from modelhost.controlplane.listing import decode_token, encode_token
from modelhost.errors import ResourceLimitExceeded, ValidationError

MAX_TAGS = 50


def store_tags(ctx: ControlPlaneContext, arn: str, tags: Sequence[Mapping[str, str]] | None) -> None:
    if not tags:
        return
    pairs = [(t["Key"], t.get("Value", "")) for t in tags]
    existing = {k for k, _ in ctx.store.list_tags(arn)}
    if len(existing | {k for k, _ in pairs}) > MAX_TAGS:
        raise ResourceLimitExceeded(
            f"A resource can have at most {MAX_TAGS} tags; {arn} would have "
            f"{len(existing | {k for k, _ in pairs})}. Delete some with DeleteTags first."
        )
    ctx.store.add_tags(arn, pairs)


def _check_resource(ctx: ControlPlaneContext, arn: str) -> None:
    if not ctx.store.arn_exists(arn):
        raise ValidationError(
            f"Resource {arn} does not exist. Pass the ARN a Create* or Describe* call returned."
        )


def add_tags(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    _check_resource(ctx, req["ResourceArn"])
    store_tags(ctx, req["ResourceArn"], req["Tags"])
    return {"Tags": req["Tags"]}


def list_tags(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    _check_resource(ctx, req["ResourceArn"])
    tags = ctx.store.list_tags(req["ResourceArn"])
    offset = decode_token(req.get("NextToken"))
    limit = int(req.get("MaxResults") or MAX_TAGS)
    out: dict[str, Any] = {"Tags": [{"Key": k, "Value": v} for k, v in tags[offset : offset + limit]]}
    if offset + limit < len(tags):
        out["NextToken"] = encode_token(offset + limit)
    return out


def delete_tags(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    _check_resource(ctx, req["ResourceArn"])
    ctx.store.delete_tags(req["ResourceArn"], req["TagKeys"])
    return {}
