"""CreateEndpoint, DescribeEndpoint, ListEndpoints, UpdateEndpoint, UpdateEndpointWeightsAndCapacities,
DeleteEndpoint. These write the desired state; the controller makes it so and moves the status on."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from modelhost.controlplane.context import ControlPlaneContext
from modelhost.controlplane.endpoint_configs import get_endpoint_config
from modelhost.controlplane.listing import Listable, page
from modelhost.controlplane.models import get_model
from modelhost.controlplane.tags import store_tags
from modelhost.domain.status import EndpointStatus
from modelhost.errors import ResourceInUse, ValidationError
from modelhost.instances.catalog import ZERO, Resources
from modelhost.instances.placement import admit
from modelhost.store.metadata import AlreadyExists, EndpointRow


def snapshot(ctx: ControlPlaneContext, config_name: str) -> dict[str, Any]:
    """The config and its models as they are now; the endpoint deploys this copy."""
    config = get_endpoint_config(ctx, config_name)
    variants = config.request["ProductionVariants"]
    models = {v["ModelName"]: dict(get_model(ctx, v["ModelName"]).request) for v in variants}
    # The id tells this deployment's instances apart from an earlier deployment of the same config.
    return {"id": secrets.token_hex(8), "config": dict(config.request), "models": models}


def initial_variants(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "VariantName": v["VariantName"],
            "DesiredWeight": float(v.get("InitialVariantWeight", 1.0)),
            "DesiredInstanceCount": int(v["InitialInstanceCount"]),
        }
        for v in deployment["config"]["ProductionVariants"]
    ]


def _demand(
    ctx: ControlPlaneContext, deployment: Mapping[str, Any], variants: Sequence[Mapping[str, Any]]
) -> Resources:
    types = {v["VariantName"]: v["InstanceType"] for v in deployment["config"]["ProductionVariants"]}
    total = ZERO
    for v in variants:
        total = total + ctx.catalog.resources(types[v["VariantName"]]).times(int(v["DesiredInstanceCount"]))
    return total


def placed(ctx: ControlPlaneContext, exclude: str | None = None) -> Resources:
    """What every endpoint's desired instances take, the pending side of updates included."""
    total = ZERO
    for e in ctx.store.list_endpoints():
        if e.name == exclude or e.status == EndpointStatus.FAILED:
            continue
        total = total + _demand(ctx, e.deployment, e.variants)
        if e.pending_deployment is not None and e.pending_variants is not None:
            total = total + _demand(ctx, e.pending_deployment, e.pending_variants)
    return total


def get_endpoint(ctx: ControlPlaneContext, name: str) -> EndpointRow:
    row = ctx.store.get_endpoint(name)
    if row is None:
        raise ValidationError(f'Could not find endpoint "{name}".')
    return row


def create_endpoint(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    name = req["EndpointName"]
    arn = ctx.arn("endpoint", name)
    if ctx.store.get_endpoint(name) is not None:
        raise ValidationError(f'Cannot create already existing endpoint "{arn}".')
    if req.get("DeploymentConfig"):
        raise ValidationError(
            "DeploymentConfig is not supported by modelhost yet; remove it from the request."
        )
    deployment = snapshot(ctx, req["EndpointConfigName"])
    variants = initial_variants(deployment)
    admit(_demand(ctx, deployment, variants), placed(ctx), ctx.host, f"Endpoint {name}")
    now = ctx.clock.now()
    row = EndpointRow(
        name=name,
        arn=arn,
        config_name=req["EndpointConfigName"],
        status=EndpointStatus.CREATING,
        failure_reason=None,
        creation_time=now,
        last_modified_time=now,
        variants=tuple(variants),
        deployment=deployment,
    )
    try:
        ctx.store.insert_endpoint(row)
    except AlreadyExists:
        raise ValidationError(f'Cannot create already existing endpoint "{arn}".') from None
    store_tags(ctx, arn, req.get("Tags"))
    ctx.wake_controller()
    return {"EndpointArn": arn}


def _variant_summaries(
    ctx: ControlPlaneContext,
    row: EndpointRow,
    deployment: Mapping[str, Any],
    variants: Sequence[Mapping[str, Any]],
    pending: bool,
) -> list[dict[str, Any]]:
    healthy = ctx.live.healthy_counts(row.name, deployment["id"])
    images = {
        v["VariantName"]: deployment["models"][v["ModelName"]]
        for v in deployment["config"]["ProductionVariants"]
    }
    types = {v["VariantName"]: v["InstanceType"] for v in deployment["config"]["ProductionVariants"]}
    out = []
    for v in variants:
        model = images[v["VariantName"]]
        containers = (
            [model["PrimaryContainer"]] if model.get("PrimaryContainer") else model.get("Containers", [])
        )
        summary: dict[str, Any] = {
            "VariantName": v["VariantName"],
            "DeployedImages": [
                {
                    "SpecifiedImage": c.get("Image", ""),
                    "ResolvedImage": c.get("Image", ""),
                    "ResolutionTime": row.last_modified_time,
                }
                for c in containers
            ],
            "DesiredWeight": v["DesiredWeight"],
            "DesiredInstanceCount": v["DesiredInstanceCount"],
        }
        current = healthy.get(v["VariantName"], 0)
        if pending:
            summary["InstanceType"] = types[v["VariantName"]]
            summary["CurrentInstanceCount"] = current
            summary["VariantStatus"] = [
                {"Status": "Creating", "StartTime": row.pending_start_time or row.last_modified_time}
            ]
        else:
            summary["CurrentInstanceCount"] = current
            summary["CurrentWeight"] = v["DesiredWeight"] if current else 0.0
            if row.status == EndpointStatus.CREATING:
                summary["VariantStatus"] = [{"Status": "Creating", "StartTime": row.creation_time}]
            elif row.status == EndpointStatus.UPDATING and current != v["DesiredInstanceCount"]:
                summary["VariantStatus"] = [{"Status": "Updating", "StartTime": row.last_modified_time}]
        out.append(summary)
    return out


def describe_endpoint(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    row = get_endpoint(ctx, req["EndpointName"])
    out: dict[str, Any] = {
        "EndpointName": row.name,
        "EndpointArn": row.arn,
        "EndpointConfigName": row.config_name,
        "ProductionVariants": _variant_summaries(ctx, row, row.deployment, row.variants, False),
        "EndpointStatus": row.status,
        "CreationTime": row.creation_time,
        "LastModifiedTime": row.last_modified_time,
    }
    if row.failure_reason:
        out["FailureReason"] = row.failure_reason
    if row.pending_deployment is not None and row.pending_variants is not None and row.pending_config_name:
        out["PendingDeploymentSummary"] = {
            "EndpointConfigName": row.pending_config_name,
            "ProductionVariants": _variant_summaries(
                ctx, row, row.pending_deployment, row.pending_variants, True
            ),
            "StartTime": row.pending_start_time,
        }
    return out


def list_endpoints(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    rows, token = page(
        ctx.store.list_endpoints(),
        lambda r: Listable(r.name, r.creation_time, r.last_modified_time, r.status),
        req,
    )
    out: dict[str, Any] = {
        "Endpoints": [
            {
                "EndpointName": r.name,
                "EndpointArn": r.arn,
                "CreationTime": r.creation_time,
                "LastModifiedTime": r.last_modified_time,
                "EndpointStatus": r.status,
            }
            for r in rows
        ]
    }
    if token:
        out["NextToken"] = token
    return out


def _save(ctx: ControlPlaneContext, row: EndpointRow) -> None:
    if not ctx.store.save_endpoint(row):
        raise ResourceInUse(f'Endpoint "{row.arn}" changed while this request ran; retry the request.')


def _require_in_service(row: EndpointRow, verb: str) -> None:
    if row.status != EndpointStatus.IN_SERVICE:
        raise ValidationError(
            f'Cannot {verb} endpoint "{row.arn}" while it is {row.status}; wait until it is InService.'
        )


def update_endpoint(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    row = get_endpoint(ctx, req["EndpointName"])
    _require_in_service(row, "update")
    if req.get("DeploymentConfig"):
        raise ValidationError(
            "DeploymentConfig is not supported by modelhost yet; remove it from the request."
        )
    deployment = snapshot(ctx, req["EndpointConfigName"])
    variants = initial_variants(deployment)
    if req.get("RetainAllVariantProperties"):
        excluded = {p["VariantPropertyType"] for p in req.get("ExcludeRetainedVariantProperties") or []}
        current = {v["VariantName"]: v for v in row.variants}
        for v in variants:
            old = current.get(v["VariantName"])
            if old is None:
                continue
            if "DesiredWeight" not in excluded:
                v["DesiredWeight"] = old["DesiredWeight"]
            if "DesiredInstanceCount" not in excluded:
                v["DesiredInstanceCount"] = old["DesiredInstanceCount"]
    # Blue/green: the new fleet runs beside the old one until it is healthy, so both must fit.
    admit(_demand(ctx, deployment, variants), placed(ctx), ctx.host, f"Update of endpoint {row.name}")
    now = ctx.clock.now()
    _save(
        ctx,
        dataclasses.replace(
            row,
            status=EndpointStatus.UPDATING,
            failure_reason=None,
            last_modified_time=now,
            pending_config_name=req["EndpointConfigName"],
            pending_deployment=deployment,
            pending_variants=tuple(variants),
            pending_start_time=now,
        ),
    )
    ctx.wake_controller()
    return {"EndpointArn": row.arn}


def update_weights_and_capacities(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    row = get_endpoint(ctx, req["EndpointName"])
    _require_in_service(row, "update")
    current = {v["VariantName"]: dict(v) for v in row.variants}
    missing = [
        d["VariantName"] for d in req["DesiredWeightsAndCapacities"] if d["VariantName"] not in current
    ]
    if missing:
        raise ValidationError(f'The variant name(s) {missing} are not present in endpoint "{row.name}".')
    for d in req["DesiredWeightsAndCapacities"]:
        v = current[d["VariantName"]]
        if d.get("ServerlessUpdateConfig"):
            raise ValidationError(
                f"Variant {v['VariantName']} is not serverless; remove ServerlessUpdateConfig."
            )
        if d.get("DesiredWeight") is not None:
            v["DesiredWeight"] = float(d["DesiredWeight"])
        if d.get("DesiredInstanceCount") is not None:
            if int(d["DesiredInstanceCount"]) < 1:
                raise ValidationError(
                    f"Variant {v['VariantName']}: DesiredInstanceCount must be at least 1 for an "
                    "instance-based variant."
                )
            v["DesiredInstanceCount"] = int(d["DesiredInstanceCount"])
    variants = [current[v["VariantName"]] for v in row.variants]
    if sum(v["DesiredWeight"] for v in variants) <= 0:
        raise ValidationError("At least one variant must keep a DesiredWeight above 0.")
    admit(
        _demand(ctx, row.deployment, variants),
        placed(ctx, exclude=row.name),
        ctx.host,
        f"Endpoint {row.name}",
    )
    _save(
        ctx,
        dataclasses.replace(
            row,
            status=EndpointStatus.UPDATING,
            variants=tuple(variants),
            last_modified_time=ctx.clock.now(),
        ),
    )
    ctx.wake_controller()
    return {"EndpointArn": row.arn}


def delete_endpoint(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    row = get_endpoint(ctx, req["EndpointName"])
    if row.status != EndpointStatus.DELETING:
        _save(
            ctx, dataclasses.replace(row, status=EndpointStatus.DELETING, last_modified_time=ctx.clock.now())
        )
    ctx.wake_controller()
    return {}
