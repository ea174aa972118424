"""Triton's tensor backends: ONNX Runtime (model.onnx), LibTorch (model.pt) and TensorRT (model.plan).

Built by ``triton_repository`` for a model's version directory. Each imports its framework only when a
model needs it. The ONNX backend completes a config that leaves out inputs, outputs or ``max_batch_size``
from the model itself, as Triton's auto-complete does; the others need them written in config.pbtxt.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from modelhost.errors import ArtifactError
from modelhost.runtimes.runtime import RuntimeResources
from modelhost.runtimes.triton_config import ConfigError, DynamicBatching, ModelConfig, TensorSpec
from modelhost.runtimes.triton_kserve import InferRequest
from modelhost.runtimes.triton_model import Outcome, stacked
from modelhost.runtimes.triton_types import DATA_TYPES

# Triton's --backend-config default-max-batch-size: what auto-complete gives a model that can batch.
DEFAULT_MAX_BATCH_SIZE = 4
_ONNX_TYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
    "tensor(bfloat16)": "TYPE_BF16",
}
_INDEXED_NAME = re.compile(r"__(\d+)$")  # LibTorch's convention: INPUT__0, OUTPUT__1


def _wants_gpu(config: ModelConfig, resources: RuntimeResources) -> bool:
    kinds = {group.kind for group in config.instance_groups} or {"KIND_AUTO"}
    return bool(resources.gpu_ids) and kinds != {"KIND_CPU"}


# --- ONNX Runtime --------------------------------------------------------------------------------


def _dynamic(dim: object) -> bool:
    return not isinstance(dim, int) or dim < 0


def _onnx_spec(arg: Any, batched: bool, where: str) -> TensorSpec:
    config_type = _ONNX_TYPES.get(arg.type)
    if config_type is None:
        raise ConfigError(
            f"{where} {arg.name!r} of the ONNX model has type {arg.type}, which Triton cannot serve"
        )
    shape = list(arg.shape or [])[1 if batched else 0 :]
    return TensorSpec(arg.name, DATA_TYPES[config_type], tuple(-1 if _dynamic(d) else int(d) for d in shape))


def _check_onnx_specs(
    kind: str, specs: Sequence[TensorSpec], model_args: Sequence[Any], batched: bool
) -> None:
    by_name = {arg.name: arg for arg in model_args}
    for index, spec in enumerate(specs):
        arg = by_name.get(spec.name)
        if arg is None:
            raise ConfigError(
                f"config.pbtxt: {kind}[{index}] {spec.name!r} is not an {kind} of the ONNX model, whose "
                f"{kind}s are {', '.join(repr(name) for name in by_name)}"
            )
        model_type = _ONNX_TYPES.get(arg.type)
        if model_type != spec.data_type.config_name:
            raise ConfigError(
                f"config.pbtxt: {kind}[{index}].data_type is {spec.data_type.config_name} but the ONNX "
                f"model's {kind} {spec.name!r} is {arg.type} ({model_type})"
            )
        rank = len(arg.shape) if arg.shape is not None else None
        if spec.reshape is None and rank is not None and rank != len(spec.dims) + batched:
            batch_note = " plus the batch axis (max_batch_size > 0)" if batched else ""
            raise ConfigError(
                f"config.pbtxt: {kind}[{index}].dims {list(spec.dims)}{batch_note} do not fit the ONNX "
                f"model's {kind} {spec.name!r} of shape {arg.shape}"
            )


def complete_onnx_config(config: ModelConfig, inputs: Sequence[Any], outputs: Sequence[Any]) -> ModelConfig:
    """Fill what config.pbtxt leaves out from the model's signature, and check what it states against it."""
    batched = config.max_batch_size > 0
    if not config.max_batch_size_set:
        every = [*inputs, *outputs]
        stated = {spec.name: spec for spec in (*config.inputs, *config.outputs)}
        can_batch = all(
            arg.shape
            and _dynamic(arg.shape[0])
            and (arg.name not in stated or len(stated[arg.name].dims) < len(arg.shape))
            for arg in every
        )
        if can_batch:
            config = replace(
                config,
                max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                dynamic_batching=config.dynamic_batching or DynamicBatching(),
            )
            batched = True
    if not config.inputs:
        config = replace(config, inputs=tuple(_onnx_spec(arg, batched, "input") for arg in inputs))
    if not config.outputs:
        config = replace(config, outputs=tuple(_onnx_spec(arg, batched, "output") for arg in outputs))
    _check_onnx_specs("input", config.inputs, inputs, batched)
    _check_onnx_specs("output", config.outputs, outputs, batched)
    missing = [arg.name for arg in inputs if config.input(arg.name) is None]
    if missing:
        raise ConfigError(f"config.pbtxt: the ONNX model's inputs {missing} are missing from input [ ... ]")
    return config


class OnnxBackend:
    def __init__(self, path: Path, config: ModelConfig, resources: RuntimeResources) -> None:
        import onnxruntime as ort

        from modelhost.runtimes.onnx import execution_providers, session_options

        wanted = replace(resources, gpu_ids=resources.gpu_ids if _wants_gpu(config, resources) else ())
        providers = execution_providers(
            wanted, ort.get_available_providers(), os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options(resources), providers=providers
            )
        except Exception as exc:
            raise ArtifactError(
                f"Could not load {path} with onnxruntime {ort.__version__}: {type(exc).__name__}: {exc}"
            ) from exc
        self.config = complete_onnx_config(config, self.session.get_inputs(), self.session.get_outputs())
        self._outputs = [spec.name for spec in self.config.outputs]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        prepared = {}
        for name, array in feeds.items():
            if array.dtype.kind == "O":  # BYTES arrive as bytes; onnxruntime's strings are str
                array = np.vectorize(
                    lambda v: v.decode("utf-8") if isinstance(v, bytes) else v, otypes=[object]
                )(array)
            prepared[name] = array
        results = self.session.run(self._outputs, prepared)
        return dict(zip(self._outputs, (np.asarray(r) for r in results), strict=True))

    def execute(self, requests: Sequence[InferRequest]) -> list[Outcome]:
        return stacked(requests, self.config.batched, self._run)


# --- LibTorch ------------------------------------------------------------------------------------


def _ordered(specs: Sequence[TensorSpec], argument_names: Sequence[str]) -> list[str]:
    """The order a TorchScript module takes or gives tensors in, by Triton's naming rules."""
    names = [spec.name for spec in specs]
    indexed = [_INDEXED_NAME.search(name) for name in names]
    if all(indexed):
        return [name for _, name in sorted(zip((int(m.group(1)) for m in indexed if m), names, strict=True))]
    if argument_names and set(names) <= set(argument_names):
        return [name for name in argument_names if name in names]
    return names


class TorchBackend:
    def __init__(self, path: Path, config: ModelConfig, resources: RuntimeResources) -> None:
        import torch

        from modelhost.runtimes.pytorch import load_torchscript

        if not config.inputs or not config.outputs:
            raise ConfigError(
                "config.pbtxt: the pytorch_libtorch backend needs every input and output listed in "
                'config.pbtxt (input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ] and the same '
                "for output)"
            )
        for kind, specs in (("input", config.inputs), ("output", config.outputs)):
            for index, spec in enumerate(specs):
                if spec.data_type.numpy is None or spec.data_type.numpy.kind == "O":
                    raise ConfigError(
                        f"config.pbtxt: {kind}[{index}].data_type {spec.data_type.config_name} is not "
                        "supported by the pytorch_libtorch backend here"
                    )
        use_gpu = _wants_gpu(config, resources) and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{resources.gpu_ids[0]}" if use_gpu else "cpu")
        torch.set_num_threads(resources.threads)
        self.module = load_torchscript(path, self.device)
        self.config = config
        schema = getattr(getattr(self.module, "forward", None), "schema", None)
        arguments = [argument.name for argument in schema.arguments[1:]] if schema is not None else []
        self._inputs = _ordered(config.inputs, arguments)
        self._outputs = _ordered(config.outputs, [])

    def _run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        import torch

        from modelhost.runtimes.pytorch import as_tensor, to_numpy

        with torch.inference_mode():
            tensors = [
                as_tensor(feeds[name], from_text=False).to(self.device)
                for name in self._inputs
                if name in feeds
            ]
            result = self.module(*tensors)
        if isinstance(result, dict):
            return {name: np.asarray(to_numpy(result[name])) for name in self._outputs}
        values = list(result) if isinstance(result, tuple | list) else [result]
        if len(values) < len(self._outputs):
            raise RuntimeError(f"the model returned {len(values)} tensors for {len(self._outputs)} outputs")
        return {name: np.asarray(to_numpy(value)) for name, value in zip(self._outputs, values, strict=False)}

    def execute(self, requests: Sequence[InferRequest]) -> list[Outcome]:
        return stacked(requests, self.config.batched, self._run)


# --- TensorRT ------------------------------------------------------------------------------------


class TensorrtBackend:
    """A serialized TensorRT engine (TensorRT 10's named-tensor API), with CUDA buffers from torch."""

    def __init__(self, path: Path, config: ModelConfig, resources: RuntimeResources) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise ArtifactError(
                f"{path.name} is a TensorRT plan, but TensorRT is not installed where the worker runs. "
                "Install the tensorrt package built for the host's CUDA, on an instance with an NVIDIA GPU, "
                'or export the model as ONNX (platform: "onnxruntime_onnx")'
            ) from exc
        import torch

        if not torch.cuda.is_available() or not resources.gpu_ids:
            raise ArtifactError(
                f"{path.name} is a TensorRT plan: it needs an instance type with a GPU and CUDA"
            )
        self.device = torch.device(f"cuda:{resources.gpu_ids[0]}")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{path.name} does not deserialize with TensorRT {trt.__version__}")
        self.config = config
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        import torch

        context = self.engine.create_execution_context()  # one per call: contexts are not thread-safe
        buffers = {}
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            for name in self._inputs:
                array = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
                buffers[name] = torch.from_numpy(array).to(self.device)
                context.set_input_shape(name, tuple(array.shape))
                context.set_tensor_address(name, buffers[name].data_ptr())
            for name in self._outputs:
                shape = tuple(context.get_tensor_shape(name))
                dtype = torch.from_numpy(np.zeros(0, self._dtypes[name])).dtype
                buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
                context.set_tensor_address(name, buffers[name].data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the engine")
            stream.synchronize()
        return {name: buffers[name].cpu().numpy() for name in self._outputs}

    def execute(self, requests: Sequence[InferRequest]) -> list[Outcome]:
        return stacked(requests, self.config.batched, self._run)
