"""CreateModel, DescribeModel, ListModels, DeleteModel."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from modelhost.controlplane.context import ControlPlaneContext
from modelhost.controlplane.resources import create_resource, list_resources
from modelhost.domain.specs import (
    MAX_CONTAINERS,
    ContainerSpec,
    ModelSpec,
    ServerProgram,
    model_spec,
    server_workers,
)
from modelhost.errors import ArtifactError, ValidationError
from modelhost.instances.artifacts import ARCHIVE_SUFFIXES
from modelhost.instances.byo import check_program, resolve_image
from modelhost.router.model_cache import PINNED_ENV, PRELOAD_ENV, model_list
from modelhost.store import tables
from modelhost.store.metadata import ResourceRow
from modelhost.store.objects import parse_object_url


def _check_container(ctx: ControlPlaneContext, c: ContainerSpec) -> None:
    if c.mode not in ("SingleModel", "MultiModel"):
        raise ValidationError(f"Container {c.image}: Mode {c.mode!r} is not one of SingleModel, MultiModel.")
    if isinstance(c.runtime, ServerProgram):
        check_program(c.image, c.runtime)
    server_workers(c)  # a value that is no worker count is refused now, not when the endpoint starts
    if c.multi_model:
        _check_multi_model(c)
        return
    if isinstance(c.runtime, ServerProgram) and not c.model_data_url:
        return  # a bring-your-own server may carry everything it needs, as a SageMaker image may
    if not c.model_data_url:
        raise ValidationError(
            f"Container {c.image} has no ModelDataUrl: the {c.runtime} runtime loads its model from an "
            f"artifact. Set ModelDataUrl to an s3:// or file:// URL of a model.tar.gz or of a prefix."
        )
    if not _artifact_exists(ctx, c.model_data_url, c.compression):
        raise ValidationError(
            f"Could not find model data at {c.model_data_url}. Upload the artifact there first "
            f"(without MODELHOST_S3_ENDPOINT_URL, s3://bucket/key lives at "
            f"<data-dir>/buckets/bucket/key)."
        )


def _check_multi_model(c: ContainerSpec) -> None:
    """A multi-model container's ModelDataUrl is the prefix its TargetModel keys live under.

    Nothing need be there yet: models are found under it on first use, and may be added at any time.
    """
    url = c.model_data_url
    if not url:
        raise ValidationError(
            f"Container {c.image} is MultiModel but has no ModelDataUrl: set it to the S3 prefix that holds "
            f"the model archives, for example s3://bucket/models/."
        )
    loc = parse_object_url(url)
    if loc.key.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValidationError(
            f"Container {c.image} is MultiModel, so its ModelDataUrl must be the S3 prefix that holds the "
            f"model archives (for example s3://{loc.bucket or 'bucket'}/models/), not the archive {url}. "
            f"InvokeEndpoint then names an archive under it with TargetModel."
        )
    if c.compression == "None":
        raise ValidationError(
            f"Container {c.image} is MultiModel: each model under {url} is a .tar.gz archive, so "
            f"CompressionType None does not apply."
        )
    for variable in (PRELOAD_ENV, PINNED_ENV):
        model_list(c.environment, variable)


def check_containers(spec: ModelSpec, has_primary: bool) -> None:
    """The rules for Containers: at most 15; a Mode that is Serial or Direct; Direct names every container
    with a ContainerHostname of its own; no multi-model container among several."""
    mode = spec.execution_mode
    if mode is not None and mode not in ("Serial", "Direct"):
        raise ValidationError(f"InferenceExecutionConfig.Mode {mode!r} is not one of Serial, Direct.")
    if mode is not None and has_primary:
        raise ValidationError(
            "InferenceExecutionConfig applies to models with Containers (a serial inference pipeline or a "
            "multi-container endpoint), not to a PrimaryContainer."
        )
    n = len(spec.containers)
    if n > MAX_CONTAINERS:
        raise ValidationError(
            f"Model {spec.name} has {n} containers; a serial inference pipeline or a multi-container "
            f"endpoint holds at most {MAX_CONTAINERS}."
        )
    given = [c.hostname for c in spec.containers if c.hostname]
    duplicates = sorted({h for h in given if given.count(h) > 1})
    if duplicates:
        raise ValidationError(
            f"ContainerHostname {', '.join(duplicates)} is given to more than one container."
        )
    if spec.mode == "Direct" and len(given) < n:
        raise ValidationError(
            "InferenceExecutionConfig.Mode is Direct, so every container needs a ContainerHostname: "
            "InvokeEndpoint names the container to run with TargetContainerHostname."
        )
    if spec.multi_container and any(c.multi_model for c in spec.containers):
        raise ValidationError(
            "A container of a serial inference pipeline or a multi-container endpoint cannot be MultiModel; "
            "deploy the multi-model container as a model of its own."
        )


def _artifact_exists(ctx: ControlPlaneContext, url: str, compression: str | None) -> bool:
    try:
        if compression == "None" or not url.endswith((".tar.gz", ".tgz", ".tar")):
            # A prefix: something must live under it (the slash keeps "m1" from matching "m10/...").
            return bool(ctx.objects.list(url.rstrip("/") + "/"))
        return ctx.objects.exists(url)
    except ArtifactError:
        return False


def create_model(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    name = req["ModelName"]
    if bool(req.get("PrimaryContainer")) == bool(req.get("Containers")):
        raise ValidationError("Give exactly one of PrimaryContainer and Containers.")
    spec = model_spec(req, partial(resolve_image, commands=ctx.settings.container_commands))
    check_containers(spec, has_primary=bool(req.get("PrimaryContainer")))
    for c in spec.containers:
        _check_container(ctx, c)
    return {"ModelArn": create_resource(ctx, tables.models, "model", "model", name, req)}


def get_model(ctx: ControlPlaneContext, name: str) -> ResourceRow:
    row = ctx.store.get_resource(tables.models, name)
    if row is None:
        raise ValidationError(f'Could not find model "{ctx.arn("model", name)}".')
    return row


def describe_model(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    row = get_model(ctx, req["ModelName"])
    out = dict(row.request)
    out.update(ModelArn=row.arn, CreationTime=row.creation_time)
    out.setdefault("EnableNetworkIsolation", False)
    out["DeploymentRecommendation"] = {"RecommendationStatus": "NOT_APPLICABLE"}
    return out


def list_models(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    return list_resources(ctx, tables.models, req, "Models", "Model")


def delete_model(ctx: ControlPlaneContext, req: Mapping[str, Any]) -> dict[str, Any]:
    # Running endpoints keep their own snapshot of the model, as on SageMaker.
    row = get_model(ctx, req["ModelName"])
    ctx.store.delete_resource(tables.models, row.name)
    ctx.store.delete_tags(row.arn)
    return {}
