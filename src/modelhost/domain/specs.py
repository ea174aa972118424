"""What a deployment is made of, parsed from the SageMaker request shapes into frozen dataclasses.

The control plane keeps the requests as sent (that is what Describe returns); the controller works on these.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelhost.errors import ValidationError


@dataclass(frozen=True, slots=True)
class ServerProgram:
    """A bring-your-own server: a program on this host, started as ``argv + ["serve"]`` the way SageMaker
    starts an image, which answers the container contract itself."""

    argv: tuple[str, ...]

    @property
    def program(self) -> str:
        return self.argv[0]

    @classmethod
    def from_command(cls, command: str) -> ServerProgram:
        """Parse a command line; ``ValueError`` unless it names an absolute path or a bare program name.

        A relative path would depend on the directory modelhost runs in, while the program runs in its own.
        """
        argv = tuple(shlex.split(command))
        if not argv:
            raise ValueError("the command line is empty")
        if "/" in argv[0] and not argv[0].startswith("/"):
            raise ValueError(f"{argv[0]!r} is a relative path; give an absolute path or a name found on PATH")
        return cls(argv)


# What serves a container: one of our runtimes by name (in our worker), or the user's own server program.
Serving = str | ServerProgram


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    image: str
    runtime: Serving
    model_data_url: str | None
    compression: str | None
    environment: Mapping[str, str]
    hostname: str | None
    mode: str = "SingleModel"
    # MultiModelConfig.ModelCacheSetting: False ("Disabled") unloads and deletes each model after its call.
    model_cache_enabled: bool = True

    @property
    def multi_model(self) -> bool:
        return self.mode == "MultiModel"

    @property
    def model_prefix(self) -> str | None:
        """A multi-model container's ModelDataUrl as the prefix TargetModel keys are appended to."""
        if not self.multi_model or not self.model_data_url:
            return None
        return self.model_data_url if self.model_data_url.endswith("/") else self.model_data_url + "/"


MAX_CONTAINERS = 15  # SageMaker's limit for both serial inference pipelines and multi-container endpoints
SERVER_WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
MAX_SERVER_WORKERS = 64


def server_workers(container: ContainerSpec) -> int:
    """SAGEMAKER_MODEL_SERVER_WORKERS: worker processes per instance, each with the model loaded; 1 when
    unset. ValidationError when it is not a whole number from 1 to MAX_SERVER_WORKERS."""
    value = container.environment.get(SERVER_WORKERS_ENV)
    if value is None:
        return 1
    if not value.strip().isdigit() or not 1 <= int(value) <= MAX_SERVER_WORKERS:
        raise ValidationError(
            f"{SERVER_WORKERS_ENV} in the Environment of container {container.image} is {value!r}: it must "
            f"be a whole number of worker processes from 1 to {MAX_SERVER_WORKERS}."
        )
    return int(value)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    containers: tuple[ContainerSpec, ...]
    execution_mode: str | None = None  # InferenceExecutionConfig.Mode as given

    @property
    def multi_container(self) -> bool:
        return len(self.containers) > 1

    @property
    def mode(self) -> str | None:
        """How several containers run: ``Direct``, or ``Serial`` (SageMaker's default without the config);
        None for a single container."""
        if not self.multi_container:
            return None
        return self.execution_mode or "Serial"

    @property
    def hostnames(self) -> tuple[str, ...]:
        """Each container's name in routing, errors and metrics: its ContainerHostname, else its position."""
        return tuple(c.hostname or f"container-{i + 1}" for i, c in enumerate(self.containers))


@dataclass(frozen=True, slots=True)
class VariantSpec:
    name: str
    model: ModelSpec
    instance_type: str
    initial_instance_count: int
    initial_weight: float
    volume_size_gb: int | None = None  # VolumeSizeInGB: a multi-model instance's disk cache


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """One endpoint config with its models, as snapshotted when an endpoint deploys it.

    SageMaker keeps serving a deployed endpoint after its model or config is deleted, so the endpoint
    carries its own copy instead of reading those rows again.
    """

    config_name: str
    variants: tuple[VariantSpec, ...]
    invocation_timeout_s: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


def container_spec(c: Mapping[str, Any], resolve_runtime: Callable[[str], Serving]) -> ContainerSpec:
    """Parse one ContainerDefinition; ``resolve_runtime(image)`` raises for unknown images."""
    source = (c.get("ModelDataSource") or {}).get("S3DataSource") or {}
    url = c.get("ModelDataUrl") or source.get("S3Uri")
    compression = source.get("CompressionType")
    return ContainerSpec(
        image=c.get("Image", ""),
        runtime=resolve_runtime(c.get("Image", "")),
        model_data_url=url,
        compression=compression,
        environment=dict(c.get("Environment") or {}),
        hostname=c.get("ContainerHostname"),
        mode=c.get("Mode", "SingleModel"),
        model_cache_enabled=(c.get("MultiModelConfig") or {}).get("ModelCacheSetting") != "Disabled",
    )


def model_spec(request: Mapping[str, Any], resolve_runtime: Callable[[str], Serving]) -> ModelSpec:
    raw = (
        [request["PrimaryContainer"]]
        if request.get("PrimaryContainer")
        else list(request.get("Containers") or [])
    )
    mode = (request.get("InferenceExecutionConfig") or {}).get("Mode")
    return ModelSpec(
        name=request["ModelName"],
        containers=tuple(container_spec(c, resolve_runtime) for c in raw),
        execution_mode=mode,
    )


def deployment_spec(snapshot: Mapping[str, Any], resolve_runtime: Callable[[str], Serving]) -> DeploymentSpec:
    """Parse an endpoint's snapshot: ``{"id", "config": <CreateEndpointConfig request>, "models": {...}}``."""
    config = snapshot["config"]
    models = {name: model_spec(req, resolve_runtime) for name, req in snapshot["models"].items()}
    variants = tuple(
        VariantSpec(
            name=v["VariantName"],
            model=models[v["ModelName"]],
            instance_type=v.get("InstanceType", ""),
            initial_instance_count=int(v.get("InitialInstanceCount", 1)),
            initial_weight=float(v.get("InitialVariantWeight", 1.0)),
            volume_size_gb=int(v["VolumeSizeInGB"]) if v.get("VolumeSizeInGB") else None,
        )
        for v in config["ProductionVariants"]
    )
    timeouts = [
        float(c.environment["SAGEMAKER_MODEL_SERVER_TIMEOUT"])
        for v in variants
        for c in v.model.containers
        if c.environment.get("SAGEMAKER_MODEL_SERVER_TIMEOUT", "").replace(".", "", 1).isdigit()
    ]
    return DeploymentSpec(
        config_name=config["EndpointConfigName"],
        variants=variants,
        invocation_timeout_s=max(timeouts) if timeouts else None,
        raw=snapshot,
    )
