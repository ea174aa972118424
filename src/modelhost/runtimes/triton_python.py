"""Triton's Python backend: ``<model>/<version>/model.py`` with a ``TritonPythonModel`` class.

Built by ``triton_repository``. Imports model.py with ``triton_python_backend_utils`` importable, lets
``auto_complete_config`` complete the config, creates one instance per ``instance_group`` count and calls
``initialize(args)`` on each, as Triton does. ``execute`` gets every request of a batch in one list; an
instance runs one ``execute`` at a time (the worker's handler threads share the pool). ``finalize`` runs
when a later load step fails; the worker process ends without it.
"""

from __future__ import annotations

import importlib.util
import json
import queue
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from modelhost.errors import ArtifactError
from modelhost.runtimes import triton_pb_utils as pb_utils
from modelhost.runtimes.runtime import RuntimeResources
from modelhost.runtimes.triton_config import InstanceGroup, ModelConfig, config_from_json
from modelhost.runtimes.triton_kserve import InferRequest
from modelhost.runtimes.triton_model import ModelReportedError, Outcome

UTILS_MODULE = "triton_python_backend_utils"
CLASS_NAME = "TritonPythonModel"


def _import(path: Path, model_name: str) -> ModuleType:
    # Triton imports model.py with its version directory on sys.path, so helper modules beside it import.
    sys.modules.setdefault(UTILS_MODULE, pb_utils)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module_name = "triton_model_" + re.sub(r"\W", "_", model_name)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ArtifactError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ArtifactError(
            f"Importing {path.parent.name}/{path.name} raised {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _model_class(module: ModuleType, path: Path) -> type[Any]:
    model_class = getattr(module, CLASS_NAME, None)
    if not isinstance(model_class, type):
        defined = sorted(name for name, value in vars(module).items() if isinstance(value, type))
        raise ArtifactError(
            f"{path.parent.name}/{path.name} defines no class {CLASS_NAME} (it defines: "
            f"{', '.join(defined) or 'no classes'}); the Python backend calls its initialize, execute and "
            "finalize methods"
        )
    if not callable(getattr(model_class, "execute", None)):
        raise ArtifactError(f"{CLASS_NAME} in {path.name} has no execute(self, requests) method")
    return model_class


def _auto_complete(model_class: type[Any], config: ModelConfig) -> ModelConfig:
    complete = getattr(model_class, "auto_complete_config", None)
    if complete is None:
        return config
    try:
        completed = complete(pb_utils.ModelConfig(config.to_json()))
    except Exception as exc:
        raise ArtifactError(f"{CLASS_NAME}.auto_complete_config raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(completed, pb_utils.ModelConfig):
        raise ArtifactError(f"{CLASS_NAME}.auto_complete_config must return the config it was given")
    return config_from_json(completed.as_dict(), config.name, f"{CLASS_NAME}.auto_complete_config")


class PythonBackend:
    def __init__(
        self, path: Path, config: ModelConfig, version: int, directory: Path, resources: RuntimeResources
    ) -> None:
        model_class = _model_class(_import(path, config.name), path)
        self.config = _auto_complete(model_class, config)
        self._instances: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._all: list[Any] = []
        model_config = json.dumps(self.config.to_json())
        groups = self.config.instance_groups or (InstanceGroup(),)
        try:
            for group_index, group in enumerate(groups):
                kind = "GPU" if group.kind == "KIND_GPU" and resources.gpu_ids else "CPU"
                for index in range(group.count):
                    instance = model_class()
                    args = {
                        "model_config": model_config,
                        "model_instance_kind": kind,
                        "model_instance_name": f"{group.name or f'{config.name}_{group_index}'}_{index}",
                        "model_instance_device_id": str(resources.gpu_ids[0] if kind == "GPU" else 0),
                        "model_repository": str(directory),
                        "model_version": str(version),
                        "model_name": config.name,
                    }
                    initialize = getattr(instance, "initialize", None)
                    if initialize is not None:
                        initialize(args)
                    self._all.append(instance)
                    self._instances.put(instance)
        except Exception as exc:
            self.finalize()
            raise ArtifactError(f"{CLASS_NAME}.initialize raised {type(exc).__name__}: {exc}") from exc

    def _request(self, request: InferRequest) -> pb_utils.InferenceRequest:
        wanted = [output.name for output in request.outputs] or [spec.name for spec in self.config.outputs]
        return pb_utils.InferenceRequest(
            model_name=self.config.name,
            # Binary inputs are views of the request body; model code may write to what as_numpy gives it.
            inputs=[
                pb_utils.Tensor(name, array if array.flags.writeable else array.copy())
                for name, array in request.inputs.items()
            ],
            requested_output_names=wanted,
            request_id=request.id,
            parameters=json.dumps(dict(request.parameters), default=str),
        )

    def execute(self, requests: Sequence[InferRequest]) -> list[Outcome]:
        instance = self._instances.get()
        try:
            responses = instance.execute([self._request(request) for request in requests])
        except pb_utils.TritonModelException as exc:
            raise ModelReportedError(str(exc)) from exc
        finally:
            self._instances.put(instance)
        if not isinstance(responses, list | tuple) or len(responses) != len(requests):
            count = len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            raise RuntimeError(
                f"{CLASS_NAME}.execute returned {count} responses for {len(requests)} requests"
            )
        outcomes: list[Outcome] = []
        for response in responses:
            if not isinstance(response, pb_utils.InferenceResponse):
                raise RuntimeError(
                    f"{CLASS_NAME}.execute returned a {type(response).__name__}, not responses"
                )
            error = response.error()
            if error is not None:
                outcomes.append(ModelReportedError(error.message()))
            else:
                outcomes.append({tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()})
        return outcomes

    def finalize(self) -> None:
        """Call every instance's ``finalize``, as Triton does when it unloads a model."""
        for instance in self._all:
            finalize = getattr(instance, "finalize", None)
            if finalize is not None:
                finalize()
