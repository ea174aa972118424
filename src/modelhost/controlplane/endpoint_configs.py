"""CreateEndpointConfig, DescribeEndpointConfig, ListEndpointConfigs, DeleteEndpointConfig."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelhost.controlplane.context import ControlPlaneContext
from modelhost.controlplane.listing import Listable, page
from modelhost.controlplane.models import get_model
from modelhost.controlplane.tags import store_tags
from modelhost.errors import ValidationError
from modelhost.store import tables
from modelhost.store.metadata import AlreadyExists, ResourceRow

# Members of CreateEndpointConfig that later features implement; refused by name until then rather than
# accepted and silently ignored.
_NOT_YET = ("AsyncInferenceConfig", "DataCaptureConfig", "ShadowProductionVariants", "ExplainerConfig")


def _check_variants(ctx: ControlPlaneContext, variants: list[Mapping[str, Any]]) -> None:
    names = [v["VariantName"] for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValidationError(f"Variant names must be unique within an endpoint config; repeated: {dupes}.")
    for v in variants:
        where = f"Variant {v['VariantName']}"
        if v.get("ServerlessConfig"):
            raise ValidationError(f"{where}: serverless variants are not supported by modelhost yet.")
        if not v.get("InstanceType"):
            raise ValidationError(f"{where}: InstanceType is required (for example ml.m5.large).")
        if v.get("InitialInstanceCount") is None:
            raise ValidationError(f"{where}: InitialInstanceCount is required (1 or more).")
        if int(v["InitialInstanceCount"]) < 1:
            raise ValidationError(f"{where}: InitialInstanceCount must be at least 1.")
        if not v.get("ModelName"):
            raise ValidationError(f"{where}: ModelName is required.")
        get_model(ctx, v["ModelName"])
        ctx.catalog.resources(v["InstanceType"])
    if sum(float(v.get("InitialVariantWeight", 1.0)) for v in variants) <= 0:
        raise ValidationError("At least one variant needs an InitialVariantWeight above 0.")


def create_endpoint_config(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    name = req["EndpointConfigName"]
    for member in _NOT_YET:
        if req.get(member):
            raise ValidationError(f"{member} is not supported by modelhost yet; remove it from the request.")
    _check_variants(ctx, list(req["ProductionVariants"]))
    arn = ctx.arn("endpoint-config", name)
    record = {k: v for k, v in req.items() if k != "Tags"}
    try:
        ctx.store.insert_resource(tables.endpoint_configs, ResourceRow(name, arn, ctx.clock.now(), record))
    except AlreadyExists:
        raise ValidationError(f'Cannot create already existing endpoint configuration "{arn}".') from None
    store_tags(ctx, arn, req.get("Tags"))
    return {"EndpointConfigArn": arn}


def get_endpoint_config(ctx: ControlPlaneContext, name: str) -> ResourceRow:
    row = ctx.store.get_resource(tables.endpoint_configs, name)
    if row is None:
        raise ValidationError(f'Could not find endpoint configuration "{name}".')
    return row


def describe_endpoint_config(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    row = get_endpoint_config(ctx, req["EndpointConfigName"])
    out = dict(row.request)
    out["ProductionVariants"] = [
        {"InitialVariantWeight": 1.0, **v} for v in row.request["ProductionVariants"]
    ]
    out.update(EndpointConfigArn=row.arn, CreationTime=row.creation_time)
    return out


def list_endpoint_configs(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    rows, token = page(
        ctx.store.list_resources(tables.endpoint_configs), lambda r: Listable(r.name, r.creation_time), req
    )
    out: dict[str, Any] = {
        "EndpointConfigs": [
            {"EndpointConfigName": r.name, "EndpointConfigArn": r.arn, "CreationTime": r.creation_time}
            for r in rows
        ]
    }
    if token:
        out["NextToken"] = token
    return out


def delete_endpoint_config(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    # Endpoints deployed from this config keep their snapshot, as on SageMaker.
    row = get_endpoint_config(ctx, req["EndpointConfigName"])
    ctx.store.delete_resource(tables.endpoint_configs, row.name)
    ctx.store.delete_tags(row.arn)
    return {}
