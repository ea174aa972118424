"""CreateEndpointConfig, DescribeEndpointConfig, ListEndpointConfigs, DeleteEndpointConfig."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelhost.controlplane.context import ControlPlaneContext
from modelhost.controlplane.models import get_model
from modelhost.controlplane.resources import create_resource, list_resources
from modelhost.errors import ValidationError
from modelhost.store import tables
from modelhost.store.metadata import ResourceRow

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
    arn = create_resource(
        ctx, tables.endpoint_configs, "endpoint-config", "endpoint configuration", name, req
    )
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
    return list_resources(ctx, tables.endpoint_configs, req, "EndpointConfigs", "EndpointConfig")


def delete_endpoint_config(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    # Endpoints deployed from this config keep their snapshot, as on SageMaker.
    row = get_endpoint_config(ctx, req["EndpointConfigName"])
    ctx.store.delete_resource(tables.endpoint_configs, row.name)
    ctx.store.delete_tags(row.arn)
    return {}
