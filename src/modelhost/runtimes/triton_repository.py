"""A Triton model repository in an unpacked artifact: which model, which version, which backend.

Called by the Triton runtime's model_fn. The layout is SageMaker's Triton container's:
``<model>/config.pbtxt`` and ``<model>/<version>/model.*`` at the top of the archive. One model directory is
served; with several, ``SAGEMAKER_TRITON_DEFAULT_MODEL_NAME`` picks it, as in SageMaker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from modelhost.errors import ArtifactError
from modelhost.runtimes.runtime import RuntimeResources
from modelhost.runtimes.triton_config import ModelConfig, parse_config
from modelhost.runtimes.triton_model import Backend, TritonModel

log = logging.getLogger("modelhost.worker")

DEFAULT_MODEL_ENV = "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"
CONFIG_FILE = "config.pbtxt"
DEFAULT_FILENAMES = {
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "python": "model.py",
    "tensorrt": "model.plan",
}
_LAYOUT = f"<model>/{CONFIG_FILE} and <model>/<version>/model.* (for example mymodel/1/model.onnx)"
_LISTED_MAX = 20


def _listing(directory: Path) -> str:
    entries = sorted(directory.iterdir()) if directory.is_dir() else []
    names = [entry.name + ("/" if entry.is_dir() else "") for entry in entries[:_LISTED_MAX]]
    more = f", ... ({len(entries)} entries)" if len(entries) > _LISTED_MAX else ""
    return ", ".join(names) + more if names else "nothing"


def _versions(directory: Path) -> list[int]:
    return sorted(int(entry.name) for entry in directory.iterdir() if entry.is_dir() and entry.name.isdigit())


def _is_model_directory(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file() or bool(_versions(directory))


def find_model_directory(repository: Path, default_model: str | None) -> Path:
    """The model directory to serve; ``ArtifactError`` naming the layout and what the archive holds."""
    if (repository / CONFIG_FILE).is_file():
        raise ArtifactError(
            f"{CONFIG_FILE} is at the top of the archive; Triton wants each model in its own directory: "
            f"{_LAYOUT}"
        )
    models = sorted(entry for entry in repository.iterdir() if entry.is_dir() and _is_model_directory(entry))
    names = ", ".join(model.name for model in models)
    if default_model:
        chosen = repository / default_model
        if chosen not in models:
            raise ArtifactError(
                f"{DEFAULT_MODEL_ENV} is {default_model!r} but the archive has no such model directory "
                f"(models found: {names or 'none'})"
            )
        return chosen
    if not models:
        raise ArtifactError(
            f"No Triton model found in the archive: expected {_LAYOUT}; found {_listing(repository)}"
        )
    if len(models) > 1:
        raise ArtifactError(
            f"The archive holds {len(models)} model directories ({names}); set {DEFAULT_MODEL_ENV} in the "
            "model's container Environment to the one to serve"
        )
    return models[0]


def _detect_backend(directory: Path, backends: tuple[str, ...]) -> str:
    """The backend whose default model file the newest version directory holds, as Triton detects it."""
    for version in reversed(_versions(directory)):
        for backend in backends:
            if (directory / str(version) / DEFAULT_FILENAMES[backend]).exists():
                return backend
    return ""


def read_config(directory: Path) -> ModelConfig:
    """config.pbtxt, or for an ONNX or TensorRT model without one, a config auto-complete will fill."""
    path = directory / CONFIG_FILE
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        config = parse_config(text, directory.name, f"{directory.name}/{CONFIG_FILE}")
        if not config.backend:
            config = replace(config, backend=_detect_backend(directory, tuple(DEFAULT_FILENAMES)))
        return config
    backend = _detect_backend(directory, ("onnxruntime", "tensorrt"))
    if backend:
        return ModelConfig(name=directory.name, backend=backend)
    raise ArtifactError(
        f"{directory.name}/{CONFIG_FILE} is missing; only ONNX (model.onnx) and TensorRT (model.plan) models "
        f"can go without one. Found in {directory.name}/: {_listing(directory)}"
    )


def select_version(directory: Path, config: ModelConfig) -> int:
    """The newest version directory the config's version_policy serves."""
    available = _versions(directory)
    if not available:
        raise ArtifactError(
            f"{directory.name}/ has no version directory: put the model file in {directory.name}/1/ "
            f"(found: {_listing(directory)})"
        )
    policy = config.version_policy
    missing = [version for version in policy.versions if version not in available]
    if policy.kind == "specific" and missing:
        raise ArtifactError(
            f"version_policy lists versions {missing} that have no directory in {directory.name}/ (found "
            f"{', '.join(map(str, available))})"
        )
    selected = policy.select(available)
    if len(selected) > 1:
        log.info(
            "version_policy serves versions %s; this worker serves the newest, %d", selected, selected[-1]
        )
    return selected[-1]


def _model_file(version_dir: Path, config: ModelConfig) -> Path:
    name = config.default_model_filename or DEFAULT_FILENAMES[config.backend]
    path = version_dir / name
    if config.backend == "onnxruntime" and path.is_dir():
        path = path / "model.onnx"  # a directory holding the model and its external weights
    if not path.exists():
        raise ArtifactError(
            f"The {config.backend} backend expects {version_dir.parent.name}/{version_dir.name}/{name}; "
            f"found {_listing(version_dir)}"
        )
    return path


def _backend(
    config: ModelConfig, version: int, directory: Path, resources: RuntimeResources
) -> tuple[Backend, ModelConfig]:
    version_dir = directory / str(version)
    if config.backend not in DEFAULT_FILENAMES:
        detail = f"backend {config.backend!r}" if config.backend else "no platform or backend"
        raise ArtifactError(
            f"{directory.name}/{CONFIG_FILE} names {detail}; this worker serves platform onnxruntime_onnx, "
            'pytorch_libtorch and tensorrt_plan, and backend "python"'
        )
    path = _model_file(version_dir, config)
    if config.backend == "onnxruntime":
        from modelhost.runtimes.triton_backends import OnnxBackend

        onnx = OnnxBackend(path, config, resources)
        return onnx, onnx.config
    if config.backend == "pytorch":
        from modelhost.runtimes.triton_backends import TorchBackend

        return TorchBackend(path, config, resources), config
    if config.backend == "tensorrt":
        from modelhost.runtimes.triton_backends import TensorrtBackend

        return TensorrtBackend(path, config, resources), config
    from modelhost.runtimes.triton_python import PythonBackend

    if "EXECUTION_ENV_PATH" in config.parameters:
        log.warning("EXECUTION_ENV_PATH is ignored: model.py runs in the worker's Python environment")
    python = PythonBackend(path, config, version, directory, resources)
    return python, python.config


def load_model(repository: Path, environ: Mapping[str, str], resources: RuntimeResources) -> TritonModel:
    """The model the repository at ``repository`` serves, loaded; ``ArtifactError`` for what is wrong."""
    directory = find_model_directory(repository, environ.get(DEFAULT_MODEL_ENV) or None)
    config = read_config(directory)
    version = select_version(directory, config)
    try:
        backend, config = _backend(config, version, directory, resources)
    except ImportError as exc:
        raise ArtifactError(
            f"The {config.backend} backend cannot start: {exc}. Install modelhost[triton] (and "
            "modelhost[pytorch] for pytorch_libtorch models) where the worker runs"
        ) from exc
    return TritonModel(config, version, directory, backend)
