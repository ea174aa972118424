"""``triton_python_backend_utils`` for model.py files written for Triton's Python backend.

The Python backend (``triton_python``) registers this module under that name before it imports a model.py,
so ``import triton_python_backend_utils as pb_utils`` works unchanged. It covers what such files commonly use:
``Tensor``, ``InferenceRequest``, ``InferenceResponse``, ``TritonError``, ``TritonModelException``, the
``get_*_by_name`` helpers, the type converters, ``ModelConfig`` for ``auto_complete_config`` and ``Logger``.
Business Logic Scripting (``InferenceRequest.exec``) and decoupled response senders are not supported.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelhost.runtimes.triton_kserve import deserialize_bytes, serialize_bytes
from modelhost.runtimes.triton_types import DATA_TYPES, wire_type_of

log = logging.getLogger("modelhost.worker")

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
# TRITONSERVER_DataType numbers, as triton_to_numpy_type and numpy_to_triton_type speak them.
_TYPE_CODES = {
    "BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7, "INT32": 8,
    "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14,
}  # fmt: skip


class TritonModelException(Exception):
    """Raised by model code; the request fails with its message."""


class TritonError:
    """An error a response carries: ``InferenceResponse(output_tensors=[], error=TritonError("..."))``."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = UNKNOWN) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r})"


class Tensor:
    """A named tensor held as a numpy array on the CPU."""

    def __init__(self, name: str, array: Any) -> None:
        if not isinstance(array, np.ndarray):
            raise TritonModelException(f"Tensor {name!r} needs a numpy array, got {type(array).__name__}")
        if array.dtype.kind in "SU":
            array = array.astype(object)  # Triton hands BYTES to models as object arrays
        self._name = name
        self._array: np.ndarray = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        return _TYPE_CODES[wire_type_of(self._array).wire_name]

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> object:
        array = self._array if self._array.flags.writeable else self._array.copy()
        capsule: Any = array.__dlpack__()
        return capsule

    @staticmethod
    def from_dlpack(name: str, value: Any) -> Tensor:
        if hasattr(value, "__dlpack__"):
            if hasattr(value, "cpu"):
                value = value.cpu()  # a torch tensor on a GPU: this backend keeps tensors on the CPU
            return Tensor(name, np.from_dlpack(value))
        import torch.utils.dlpack  # a bare capsule: only torch can take one

        return Tensor(name, torch.utils.dlpack.from_dlpack(value).cpu().numpy())

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


class InferenceRequest:
    """A request handed to ``execute``. Built by model code, it would be a BLS call, which is unsupported."""

    def __init__(
        self,
        model_name: str = "",
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        request_id: str = "",
        parameters: str | dict[str, object] = "{}",
        correlation_id: int | str = 0,
        flags: int = 0,
        model_version: int = -1,
        **_: object,
    ) -> None:
        self._model_name = model_name
        self._inputs = list(inputs)
        self._outputs = list(requested_output_names)
        self._request_id = request_id
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters)
        self._correlation_id = correlation_id
        self._flags = flags
        self._model_version = model_version

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._outputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def parameters(self) -> str:
        return self._parameters

    def model_name(self) -> str:
        return self._model_name

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self) -> Any:
        raise TritonModelException("decoupled models (response senders) are not supported by this worker")

    def exec(self, *_: object, **__: object) -> InferenceResponse:
        raise TritonModelException(
            "Business Logic Scripting (InferenceRequest.exec) is not supported by this worker: one model "
            "per endpoint"
        )

    async_exec = exec


class InferenceResponse:
    def __init__(self, output_tensors: Sequence[Tensor] = (), error: TritonError | None = None, **_: object):
        self._outputs = list(output_tensors)
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class ModelConfig:
    """What ``auto_complete_config(auto_complete_model_config)`` receives and returns."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, spec: dict[str, Any]) -> None:
        self._add("input", spec)

    def add_output(self, spec: dict[str, Any]) -> None:
        self._add("output", spec)

    def set_model_transaction_policy(self, policy: dict[str, Any]) -> None:
        self._config["model_transaction_policy"] = policy

    def _add(self, kind: str, spec: dict[str, Any]) -> None:
        entries: list[dict[str, Any]] = self._config.setdefault(kind, [])
        if any(entry.get("name") == spec.get("name") for entry in entries):
            return  # config.pbtxt already declares it; Triton keeps the written one
        entries.append(dict(spec))


class Logger:
    @staticmethod
    def log_info(message: str) -> None:
        log.info("%s", message)

    @staticmethod
    def log_warn(message: str) -> None:
        log.warning("%s", message)

    @staticmethod
    def log_error(message: str) -> None:
        log.error("%s", message)

    @staticmethod
    def log_verbose(message: str) -> None:
        log.debug("%s", message)

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        log.info("%s", message)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((tensor for tensor in request.inputs() if tensor.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((tensor for tensor in response.output_tensors() if tensor.name() == name), None)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((entry for entry in model_config.get("input", []) if entry.get("name") == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((entry for entry in model_config.get("output", []) if entry.get("name") == name), None)


def triton_string_to_numpy(triton_type: str) -> Any:
    """``"TYPE_FP32"`` → ``numpy.float32``; BYTES (TYPE_STRING) → ``numpy.object_``."""
    data_type = DATA_TYPES.get(triton_type)
    return None if data_type is None or data_type.numpy is None else data_type.numpy.type


def triton_to_numpy_type(code: int) -> Any:
    names = {number: name for name, number in _TYPE_CODES.items()}
    data_type = next((t for t in DATA_TYPES.values() if t.wire_name == names.get(code)), None)
    return None if data_type is None or data_type.numpy is None else data_type.numpy.type


def numpy_to_triton_type(numpy_type: Any) -> int | None:
    try:
        return _TYPE_CODES[wire_type_of(np.empty(0, dtype=numpy_type)).wire_name]
    except (TypeError, ValueError):
        return None


def serialize_byte_tensor(array: np.ndarray) -> np.ndarray:
    """BYTES elements length-prefixed, as one bytes object in a 1-element array (Triton's layout)."""
    result = np.empty(1, dtype=object)
    result[0] = serialize_bytes(array)
    return result


def deserialize_bytes_tensor(encoded: bytes) -> np.ndarray:
    return deserialize_bytes(encoded)
