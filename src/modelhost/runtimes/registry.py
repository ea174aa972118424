"""Runtime names → runtime objects. The worker's composition root asks it for the runtime to run.

Runtimes are imported only when asked for, so a worker never imports a framework it does not use.
"""

from __future__ import annotations

import importlib

from modelhost.errors import ValidationError
from modelhost.runtimes.runtime import Runtime, RuntimeResources

# name → "module:factory"; later issues add pytorch, onnx, xgboost, ...
_RUNTIMES: dict[str, str] = {
    "sklearn": "modelhost.runtimes.sklearn:SklearnRuntime",
    "xgboost": "modelhost.runtimes.xgboost:XGBoostRuntime",
    "lightgbm": "modelhost.runtimes.lightgbm:LightGBMRuntime",
    "onnx": "modelhost.runtimes.onnx:OnnxRuntime",
    "pytorch": "modelhost.runtimes.pytorch:PytorchRuntime",
    "tensorflow": "modelhost.runtimes.tensorflow:TensorflowRuntime",
    "triton": "modelhost.runtimes.triton:TritonRuntime",
    "huggingface": "modelhost.runtimes.huggingface:HuggingfaceRuntime",
}


def runtime_names() -> tuple[str, ...]:
    """Every runtime name the worker accepts for ``--runtime``."""
    return tuple(_RUNTIMES)


def load_runtime(name: str, resources: RuntimeResources | None = None) -> Runtime:
    """Import and build the runtime called ``name``; ``ValidationError`` naming the known ones otherwise.

    Every factory takes the instance's ``RuntimeResources`` as its one argument.
    """
    target = _RUNTIMES.get(name)
    if target is None:
        raise ValidationError(f"Unknown runtime {name!r}: known runtimes are {', '.join(_RUNTIMES)}")
    module_name, _, factory_name = target.partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    runtime: Runtime = factory(resources or RuntimeResources())
    return runtime
