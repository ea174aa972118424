"""One typed settings tree. Environment variables (``MODELHOST_*``) and CLI flags both come from here."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelhost.domain.specs import ServerProgram


class InstanceTypeSpec(BaseModel):
    """Resources of a named instance type, used for placement and worker thread pools."""

    vcpus: float = Field(gt=0, description="virtual CPUs the instance may use")
    memory_bytes: int = Field(gt=0, description="memory the instance is entitled to")
    gpus: int = Field(default=0, ge=0, description="GPUs the instance needs; never overcommitted")


class Settings(BaseSettings):
    """Every knob of a modelhost server. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix="MODELHOST_", env_nested_delimiter="__", extra="ignore")

    host: str = Field(default="127.0.0.1", description="address to bind; loopback unless told otherwise")
    port: int = Field(default=8080, ge=0, le=65535, description="the one port for every API")
    data_dir: Path = Field(
        default=Path("modelhost-data"),
        validate_default=True,
        description="metadata, objects, logs, instances",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file in the data dir"
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="send s3:// URLs to this S3 API instead of <data-dir>/buckets"
    )
    region: str = Field(default="us-east-1", description="region shown in ARNs")
    account_id: str = Field(default="000000000000", description="account shown in ARNs")

    invocation_timeout_s: float = Field(
        default=60.0, gt=0, description="how long a model may take to answer /invocations"
    )
    max_payload_bytes: int = Field(default=6_291_456, gt=0, description="largest InvokeEndpoint body")
    max_concurrency_per_instance: int = Field(
        default=64, gt=0, description="requests in flight to one instance before it counts as saturated"
    )
    max_concurrency_per_endpoint: int = Field(
        default=1024, gt=0, description="requests in flight to one endpoint; past it, 503 with Retry-After"
    )
    max_batch_size: int = Field(
        default=1, ge=1, description="default MODELHOST_MAX_BATCH_SIZE (rows) for models that do not set it"
    )
    max_batch_delay_us: int = Field(
        default=0, ge=0, description="default MODELHOST_MAX_BATCH_DELAY_US for models that do not set it"
    )

    cpu_overcommit: float = Field(default=16.0, gt=0, description="vCPUs placeable per host core")
    memory_overcommit: float = Field(default=8.0, gt=0, description="instance memory placeable per host byte")
    host_gpus: int | None = Field(
        default=None, ge=0, description="GPUs this host may place; default counts them with nvidia-smi"
    )
    instance_types: dict[str, InstanceTypeSpec] = Field(
        default_factory=dict, description="extra or overridden instance types, by name"
    )
    container_commands: dict[str, str] = Field(
        default_factory=dict,
        description="bring-your-own servers: a JSON object from Image name to the command line of a program "
        "on this host, run with `serve` appended (an Image that is an absolute path needs no entry)",
    )

    startup_timeout_s: float = Field(
        default=600.0, gt=0, description="how long an instance may take to answer /ping healthy"
    )
    requirements_install_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="how long pip may take to install a model's code/requirements.txt, before the startup "
        "timeout starts (docs/requirements.md)",
    )
    health_check_interval_s: float = Field(default=2.0, gt=0, description="pause between pings")
    ping_timeout_s: float = Field(default=2.0, gt=0, description="deadline of one /ping")
    unhealthy_after_failures: int = Field(
        default=3, ge=1, description="consecutive failed pings before an instance is replaced"
    )
    stop_grace_s: float = Field(default=30.0, ge=0, description="SIGTERM to SIGKILL when stopping")
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM, how long requests in flight may finish before their connections drop",
    )
    restart_backoff_max_s: float = Field(
        default=30.0, gt=0, description="longest pause between relaunches of a crashing instance"
    )
    max_artifact_bytes: int = Field(default=20 * 1024**3, gt=0, description="largest unpacked model artifact")
    instance_disk_bytes: int = Field(
        default=30 * 1024**3,
        gt=0,
        description="disk of an instance whose variant sets no VolumeSizeInGB: what DiskUtilization measures "
        "a single-model instance's unpacked artifact against",
    )
    reconcile_interval_s: float = Field(default=1.0, gt=0, description="pause between reconciler passes")

    multi_model_memory_fraction: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="multi-model endpoints: share of the instance type's memory that loaded models may take "
        "(measured once loaded); least recently used models are unloaded past it",
    )
    multi_model_memory_budget_bytes: int | None = Field(
        default=None,
        gt=0,
        description="multi-model endpoints: memory budget per instance in bytes, instead of the fraction",
    )
    multi_model_gpu_memory_fraction: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="multi-model endpoints on GPU instances: share of the memory of the GPUs an instance "
        "sees that loaded models may take (measured once loaded); least recently used models are unloaded "
        "past it",
    )
    multi_model_gpu_memory_budget_bytes: int | None = Field(
        default=None,
        gt=0,
        description="multi-model endpoints on GPU instances: GPU memory budget per instance in bytes, "
        "instead of the fraction",
    )
    multi_model_disk_budget_bytes: int = Field(
        default=30 * 1024**3,
        gt=0,
        description="multi-model endpoints: unpacked models cached on disk per instance, when the variant "
        "sets no VolumeSizeInGB; least recently used models are deleted past it",
    )
    multi_model_load_timeout_s: float = Field(
        default=600.0, gt=0, description="multi-model endpoints: how long one model may take to load"
    )
    multi_model_hot_in_flight: int = Field(
        default=4,
        ge=1,
        description="multi-model endpoints: requests in flight on every instance holding a model past which "
        "a less busy instance loads it too",
    )

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_absolute(cls, data_dir: Path) -> Path:
        # Instances run in directories of their own: a relative path would point somewhere else for them.
        return data_dir.expanduser().absolute()

    @field_validator("container_commands")
    @classmethod
    def _commands_name_programs(cls, commands: dict[str, str]) -> dict[str, str]:
        for image, command in commands.items():
            try:
                ServerProgram.from_command(command)
            except ValueError as exc:
                raise ValueError(f"the command for image {image!r}: {exc}") from None
        return commands

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'modelhost.db').resolve()}"
