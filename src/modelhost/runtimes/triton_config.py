"""Triton's model configuration (``config.pbtxt``) as frozen dataclasses, read from protobuf text format.

Called by the Triton runtime when it loads a model repository. Every error is a ``ConfigError`` naming the
field (``input[0].data_type``), its line, and what Triton accepts there. Fields Triton knows but this worker
does not act on (``optimization``, ``response_cache``, ...) are accepted and ignored; misspelled ones fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from modelhost.errors import ArtifactError
from modelhost.runtimes import protobuf_text
from modelhost.runtimes.protobuf_text import FieldError, Fields
from modelhost.runtimes.triton_types import DATA_TYPES, DataType


class ConfigError(ArtifactError):
    """config.pbtxt does not parse or says something Triton would refuse."""


InstanceKind = Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL"]
_INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL")
# Platforms name a framework and file format; backends name the shared library that serves it.
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "ensemble": "ensemble",
}
# Every field of Triton's messages that this reader maps or knowingly ignores; others are typos.
# fmt: off
_MODEL_FIELDS = frozenset((
    "name", "platform", "backend", "runtime", "version_policy", "max_batch_size", "input", "output",
    "batch_input", "batch_output", "optimization", "dynamic_batching", "sequence_batching",
    "ensemble_scheduling", "instance_group", "default_model_filename", "cc_model_filenames", "metric_tags",
    "parameters", "model_warmup", "model_operations", "model_transaction_policy", "model_repository_agents",
    "response_cache",
))
_INPUT_FIELDS = frozenset((
    "name", "data_type", "format", "dims", "reshape", "is_shape_tensor", "allow_ragged_batch", "optional",
    "is_non_linear_format_io",
))
_OUTPUT_FIELDS = frozenset((
    "name", "data_type", "dims", "reshape", "label_filename", "is_shape_tensor", "is_non_linear_format_io",
))
_BATCHING_FIELDS = frozenset((
    "preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering", "priority_levels",
    "default_priority_level", "default_queue_policy", "priority_queue_policy",
))
_GROUP_FIELDS = frozenset((
    "name", "kind", "count", "rate_limiter", "gpus", "secondary_devices", "profile", "passive", "host_policy",
))
# fmt: on
_ENUM_FIELDS = frozenset(("data_type", "kind", "format"))
_MAP_FIELDS = frozenset(("parameters", "inputs"))
_WARMUP_FIELDS = frozenset(("name", "batch_size", "inputs", "count"))
_WARMUP_INPUT_FIELDS = frozenset(("data_type", "dims", "zero_data", "random_data", "input_data_file"))
_UNSUPPORTED = {
    "sequence_batching": "stateful (sequence) models are not supported by this worker",
    "ensemble_scheduling": "ensembles are not supported by this worker; serve each model on its own",
    "batch_input": "ragged batching (batch_input) is not supported by this worker",
    "batch_output": "ragged batching (batch_output) is not supported by this worker",
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One ``input`` or ``output`` entry. ``dims`` exclude the batch axis when ``max_batch_size`` > 0."""

    name: str
    data_type: DataType
    dims: tuple[int, ...]  # -1: any size
    reshape: tuple[int, ...] | None = None  # the shape the model itself sees (inputs) or gives (outputs)
    optional: bool = False
    label_filename: str = ""  # outputs: class labels for the classification extension

    def describe(self, batched: bool) -> str:
        dims = ", ".join(str(d) for d in ((-1,) if batched else ()) + self.dims)
        return f"{self.name!r}: {self.data_type.wire_name} [{dims}]"


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    preserve_ordering: bool = False


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    kind: InstanceKind = "KIND_AUTO"
    count: int = 1
    gpus: tuple[int, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which version directories are served: the newest ``num_versions``, all of them, or those listed."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among ``available`` (ascending); may be empty."""
        ordered = sorted(available)
        if self.kind == "latest":
            return ordered[-self.num_versions :]
        if self.kind == "all":
            return ordered
        return [version for version in ordered if version in self.versions]


@dataclass(frozen=True, slots=True)
class WarmupInput:
    data_type: DataType
    dims: tuple[int, ...]
    source: Literal["zero_data", "random_data", "input_data_file"]
    input_data_file: str = ""  # relative to <model>/warmup/


@dataclass(frozen=True, slots=True)
class ModelWarmup:
    name: str
    batch_size: int
    inputs: Mapping[str, WarmupInput]
    count: int = 1


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The parts of Triton's ModelConfig this worker acts on."""

    name: str
    platform: str = ""
    backend: str = ""  # normalised: a platform's backend when only the platform is given
    max_batch_size: int = 0  # 0: the model takes no batch axis
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    instance_groups: tuple[InstanceGroup, ...] = ()
    dynamic_batching: DynamicBatching | None = None
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    model_warmup: tuple[ModelWarmup, ...] = ()
    default_model_filename: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)
    max_batch_size_set: bool = False  # written in the file (auto-complete may fill it otherwise)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)

    def to_json(self) -> dict[str, object]:
        """The config as Triton hands it to Python models (``args["model_config"]``): proto field names."""

        def tensor(spec: TensorSpec, is_input: bool) -> dict[str, object]:
            entry: dict[str, object] = {
                "name": spec.name,
                "data_type": spec.data_type.config_name,
                "dims": list(spec.dims),
                "is_shape_tensor": False,
            }
            if spec.reshape is not None:
                entry["reshape"] = {"shape": list(spec.reshape)}
            if is_input:
                entry.update(format="FORMAT_NONE", optional=spec.optional, allow_ragged_batch=False)
            else:
                entry["label_filename"] = spec.label_filename
            return entry

        config: dict[str, object] = {
            "name": self.name,
            "platform": self.platform,
            "backend": self.backend,
            "max_batch_size": self.max_batch_size,
            "input": [tensor(spec, True) for spec in self.inputs],
            "output": [tensor(spec, False) for spec in self.outputs],
            "instance_group": [
                {"name": g.name, "kind": g.kind, "count": g.count, "gpus": list(g.gpus)}
                for g in self.instance_groups
            ],
            "default_model_filename": self.default_model_filename,
            "parameters": {key: {"string_value": value} for key, value in self.parameters.items()},
        }
        if self.dynamic_batching is not None:
            config["dynamic_batching"] = {
                "preferred_batch_size": list(self.dynamic_batching.preferred_batch_sizes),
                "max_queue_delay_microseconds": self.dynamic_batching.max_queue_delay_microseconds,
                "preserve_ordering": self.dynamic_batching.preserve_ordering,
            }
        return config


def _dims(reader: Fields, name: str) -> tuple[int, ...]:
    dims = reader.integers(name)
    for dim in dims:
        if dim == 0 or dim < -1:
            raise reader.error(name, f"each dimension must be at least 1, or -1 for any size; found {dim}")
    return dims


def _tensor(reader: Fields, is_input: bool) -> TensorSpec:
    reader.check_fields(_INPUT_FIELDS if is_input else _OUTPUT_FIELDS)
    name = reader.string("name")
    if not name:
        raise reader.error("name", "missing: every input and output needs a name")
    if reader.scalar("data_type") is None:
        raise reader.error("data_type", f"missing for {name!r}: give one of {', '.join(DATA_TYPES)}")
    data_type = DATA_TYPES[reader.enum("data_type", DATA_TYPES, "")]
    if not reader.message.values("dims"):
        raise reader.error("dims", f"missing for {name!r}: give its shape without the batch axis, e.g. [ 4 ]")
    dims = _dims(reader, "dims")
    shape = reader.child("reshape")
    reshape = None
    if shape is not None:
        shape.check_fields(frozenset(("shape",)))
        reshape = _dims(shape, "shape")
        known, wanted = int(np.prod(dims)), int(np.prod(reshape))
        if -1 not in dims + reshape and known != wanted:
            raise reader.error(
                "reshape", f"{list(reshape)} holds {wanted} elements but dims {list(dims)} hold {known}"
            )
    return TensorSpec(
        name,
        data_type,
        dims,
        reshape,
        optional=reader.boolean("optional") if is_input else False,
        label_filename="" if is_input else reader.string("label_filename"),
    )


def _batching(reader: Fields, max_batch_size: int) -> DynamicBatching:
    reader.check_fields(_BATCHING_FIELDS)
    preferred = reader.integers("preferred_batch_size", minimum=1)
    too_big = [size for size in preferred if size > max_batch_size]
    if too_big and max_batch_size > 0:
        raise reader.error("preferred_batch_size", f"{too_big} exceed max_batch_size ({max_batch_size})")
    delay = reader.integer("max_queue_delay_microseconds", minimum=0)
    return DynamicBatching(tuple(sorted(set(preferred))), delay, reader.boolean("preserve_ordering"))


def _version_policy(reader: Fields) -> VersionPolicy:
    reader.check_fields(frozenset(("latest", "all", "specific")))
    chosen = reader.message.names()
    if len(chosen) != 1:
        raise reader.error(
            "", "give exactly one of latest { num_versions: N }, all { } or specific { versions: [..] }"
        )
    kind = chosen[0]
    child = reader.child(kind)
    assert child is not None
    if kind == "latest":
        child.check_fields(frozenset(("num_versions",)))
        return VersionPolicy("latest", num_versions=child.integer("num_versions", 1, minimum=1))
    if kind == "specific":
        child.check_fields(frozenset(("versions",)))
        versions = child.integers("versions", minimum=0)
        if not versions:
            raise child.error("versions", "missing: list the version directories to serve, e.g. [ 1 ]")
        return VersionPolicy("specific", versions=versions)
    child.check_fields(frozenset())
    return VersionPolicy("all")


def _instance_group(reader: Fields) -> InstanceGroup:
    reader.check_fields(_GROUP_FIELDS)
    kind = reader.enum("kind", _INSTANCE_KINDS, "KIND_AUTO")
    return InstanceGroup(
        kind,  # type: ignore[arg-type]  # checked against _INSTANCE_KINDS
        reader.integer("count", 1, minimum=1),
        reader.integers("gpus", minimum=0),
        reader.string("name"),
    )


def _warmup(reader: Fields, max_batch_size: int) -> ModelWarmup:
    reader.check_fields(_WARMUP_FIELDS)
    name = reader.string("name")
    batch_size = reader.integer("batch_size", 1, minimum=1)
    if batch_size > max(1, max_batch_size):
        raise reader.error(
            "batch_size", f"{batch_size} exceeds the model's max_batch_size ({max_batch_size})"
        )
    inputs: dict[str, WarmupInput] = {}
    for key, value in reader.string_map("inputs").items():
        value.check_fields(_WARMUP_INPUT_FIELDS)
        sources = [s for s in ("zero_data", "random_data", "input_data_file") if value.scalar(s) is not None]
        if len(sources) != 1:
            raise value.error("", "give exactly one of zero_data: true, random_data: true or input_data_file")
        source = sources[0]
        if source != "input_data_file" and not value.boolean(source):
            raise value.error(source, "must be true (or give another data source)")
        if value.scalar("data_type") is None:
            raise value.error("data_type", f"missing: give one of {', '.join(DATA_TYPES)}")
        data_type = DATA_TYPES[value.enum("data_type", DATA_TYPES, "")]
        inputs[key] = WarmupInput(
            data_type,
            _dims(value, "dims"),
            source,  # type: ignore[arg-type]  # one of the three literals, checked above
            value.string("input_data_file"),
        )
    return ModelWarmup(name, batch_size, inputs, reader.integer("count", 1, minimum=1))


def _backend(reader: Fields, platform: str, backend: str) -> str:
    from_platform = PLATFORM_BACKENDS.get(platform)
    if platform and from_platform is None:
        raise reader.error(
            "platform", f"unknown platform {platform!r}; known: {', '.join(PLATFORM_BACKENDS)}"
        )
    if backend and from_platform and backend != from_platform:
        raise reader.error(
            "backend", f"{backend!r} contradicts platform {platform!r} (backend {from_platform!r})"
        )
    return backend or from_platform or ""


def parse_config(text: str, directory_name: str, source: str = "config.pbtxt") -> ModelConfig:
    """The model configuration in ``text``; the model's name defaults to its directory's."""
    try:
        return _model_config(Fields(protobuf_text.parse(text)), directory_name)
    except protobuf_text.TextFormatError as exc:
        raise ConfigError(f"{source} does not parse: {exc}") from exc
    except FieldError as exc:
        raise ConfigError(f"{source} line {exc.line}: {exc.where}: {exc.problem}") from exc


def config_from_json(config: Mapping[str, object], directory_name: str, source: str) -> ModelConfig:
    """A config in Triton's JSON form (what a Python model's ``auto_complete_config`` returns)."""
    try:
        message = protobuf_text.from_json(config, _ENUM_FIELDS, _MAP_FIELDS)
        return _model_config(Fields(message), directory_name)
    except (ValueError, FieldError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _model_config(reader: Fields, directory_name: str) -> ModelConfig:
    root = reader.message
    reader.check_fields(_MODEL_FIELDS)
    for name, reason in _UNSUPPORTED.items():
        if root.values(name):
            raise reader.error(name, reason, root.values(name)[0].line)
    name = reader.string("name", directory_name)
    if name != directory_name:
        raise reader.error("name", f"{name!r} differs from the model's directory name {directory_name!r}")
    platform = reader.string("platform")
    backend = _backend(reader, platform, reader.string("backend"))
    max_batch_size = reader.integer("max_batch_size", 0, minimum=0)
    inputs = tuple(_tensor(child, True) for child in reader.children("input"))
    outputs = tuple(_tensor(child, False) for child in reader.children("output"))
    for kind, specs in (("input", inputs), ("output", outputs)):
        names = [spec.name for spec in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise reader.error(kind, f"{duplicates} named more than once")
    batching = reader.child("dynamic_batching")
    policy = reader.child("version_policy")
    transaction = reader.child("model_transaction_policy")
    if transaction is not None and transaction.boolean("decoupled"):
        raise transaction.error(
            "decoupled", "decoupled models (several responses per request) are not supported"
        )
    return ModelConfig(
        name=name,
        platform=platform,
        backend=backend,
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=outputs,
        instance_groups=tuple(_instance_group(child) for child in reader.children("instance_group")),
        dynamic_batching=_batching(batching, max_batch_size) if batching is not None else None,
        version_policy=_version_policy(policy) if policy is not None else VersionPolicy(),
        model_warmup=tuple(_warmup(child, max_batch_size) for child in reader.children("model_warmup")),
        default_model_filename=reader.string("default_model_filename"),
        parameters={
            key: value.string("string_value") for key, value in reader.string_map("parameters").items()
        },
        max_batch_size_set=reader.scalar("max_batch_size") is not None,
    )
