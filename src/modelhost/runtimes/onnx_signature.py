"""An ONNX model's inputs and outputs, and request arrays conformed to them: dtype, rank and dims.

Used by the ONNX runtime's predict_fn and batch_rows; pure numpy, so it never imports onnxruntime itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from modelhost.runtimes.codecs import CodecError, input_name_problems

Dim = int | str | None  # a fixed size, a symbolic name ("batch"), or unknown

# ONNX tensor element types the default handlers can build from JSON, CSV or NPY.
_DTYPES: dict[str, np.dtype[np.generic]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(np.object_),
}


class NodeArg(Protocol):
    """What onnxruntime's ``session.get_inputs()`` / ``get_outputs()`` return."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def shape(self) -> Sequence[Dim] | None: ...


def is_dynamic(dim: Dim) -> bool:
    """A dimension of any size: symbolic, unknown, or the -1 some exporters write."""
    return not isinstance(dim, int) or dim < 0


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model declares it."""

    name: str
    type: str  # ONNX's spelling: "tensor(float)", "seq(map(int64,tensor(float)))"
    shape: tuple[Dim, ...] | None  # None: the rank is unknown

    @classmethod
    def of(cls, arg: NodeArg) -> TensorSpec:
        shape = None if arg.shape is None else tuple(arg.shape)
        return cls(name=arg.name, type=arg.type, shape=shape)

    @property
    def dtype(self) -> np.dtype[np.generic] | None:
        """The numpy dtype to feed; None for types the default handlers cannot build (seq, map, bfloat16)."""
        return _DTYPES.get(self.type)

    @property
    def batched(self) -> bool:
        """Whether axis 0 may have any size, so rows of several requests can be stacked along it."""
        return self.shape is not None and len(self.shape) > 0 and is_dynamic(self.shape[0])

    def example_shape(self) -> tuple[int, ...] | None:
        """A valid shape for one example: the batch axis as 1; None when another dimension is not fixed."""
        if self.shape is None:
            return None
        dims = self.shape[1:] if self.batched else self.shape
        fixed = [dim for dim in dims if isinstance(dim, int) and dim >= 0]
        if len(fixed) != len(dims):
            return None
        return (1, *fixed) if self.batched else tuple(fixed)

    def shape_text(self) -> str:
        if self.shape is None:
            return "[any rank]"
        return "[" + ", ".join("?" if dim is None else str(dim) for dim in self.shape) + "]"

    def describe(self) -> str:
        """``'x': tensor(float) [batch, 4]``: how error messages name an input."""
        return f"{self.name!r}: {self.type} {self.shape_text()}"


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, inputs: Sequence[NodeArg], outputs: Sequence[NodeArg]) -> Signature:
        return cls(tuple(map(TensorSpec.of, inputs)), tuple(map(TensorSpec.of, outputs)))

    @property
    def batchable(self) -> bool:
        """One input and one output, both with a dynamic axis 0: rows in, one result per row out."""
        return (
            len(self.inputs) == 1
            and len(self.outputs) == 1
            and self.inputs[0].batched
            and self.outputs[0].batched
        )

    def describe_inputs(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs)

    def feeds(self, data: object) -> dict[str, np.ndarray]:
        """The arrays to pass to ``session.run``: ``data`` is one array, or a mapping of input name → array.

        Raises ``CodecError`` naming the model's inputs when the names, dtypes or shapes do not fit.
        """
        if isinstance(data, Mapping):
            return self._named_feeds(data)
        if len(self.inputs) != 1:
            raise CodecError(
                f"The model has {len(self.inputs)} inputs ({self.describe_inputs()}); send them by name as "
                'JSON {"inputs": {"<name>": <array>, ...}}'
            )
        only = self.inputs[0]
        return {only.name: conform(data, only)}

    def _named_feeds(self, data: Mapping[object, object]) -> dict[str, np.ndarray]:
        declared = {spec.name: spec for spec in self.inputs}
        problems = input_name_problems(data, declared)
        if problems:
            raise CodecError(f"{problems}: the model's inputs are {self.describe_inputs()}")
        feeds = {name: conform(data[name], spec) for name, spec in declared.items()}
        _check_shared_dims(feeds, self.inputs)
        return feeds


def _check_shared_dims(feeds: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> None:
    # ONNX: dimensions with the same symbolic name are the same size ("batch" of every input).
    seen: dict[str, tuple[str, int]] = {}
    for spec in inputs:
        if spec.shape is None:
            continue
        for dim, size in zip(spec.shape, feeds[spec.name].shape, strict=True):
            if not isinstance(dim, str):
                continue
            first = seen.setdefault(dim, (spec.name, size))
            if first[1] != size:
                raise CodecError(
                    f"Inputs {first[0]!r} and {spec.name!r} share dimension {dim!r} but have sizes "
                    f"{first[1]} and {size}; the model's inputs are "
                    + ", ".join(other.describe() for other in inputs)
                )


def conform(value: object, spec: TensorSpec) -> np.ndarray:
    """``value`` as an array of the input's dtype and declared shape; ``CodecError`` saying what differs.

    One example without its batch axis gets one: ``[1, 2, 3, 4]`` for an input of shape ``[batch, 4]`` is
    a batch of one row, as a flat JSON list is one row for the scikit-learn runtime.
    """
    dtype = spec.dtype
    if dtype is None:
        raise CodecError(
            f"Input {spec.name!r} has type {spec.type}, which the onnx runtime's default handlers cannot "
            "build from a request; define input_fn and predict_fn in code/inference.py"
        )
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise CodecError(f"Input {spec.name!r} is not a rectangular array: {exc}") from exc
    array = _cast(array, dtype, spec)
    shape = spec.shape
    if shape is None:
        return array
    if array.ndim == len(shape) - 1 and spec.batched and _fits(array.shape, shape[1:]):
        array = array[np.newaxis]
    if array.ndim != len(shape) or not _fits(array.shape, shape):
        raise CodecError(
            f"Input {spec.name!r} expects {spec.type} of shape {spec.shape_text()}, got shape {array.shape}"
        )
    return array


def _fits(actual: tuple[int, ...], declared: Sequence[Dim]) -> bool:
    return len(actual) == len(declared) and all(
        is_dynamic(dim) or dim == size for size, dim in zip(actual, declared, strict=True)
    )


def _cast(array: np.ndarray, dtype: np.dtype[np.generic], spec: TensorSpec) -> np.ndarray:
    if array.dtype == dtype:
        return array
    source = array.dtype.kind
    if dtype.kind == "O":
        if source in "UO":
            return array  # onnxruntime takes str arrays as they are
        raise CodecError(f"Input {spec.name!r} expects {spec.type}, got {array.dtype} values; send strings")
    if source not in "biuf":
        raise CodecError(f"Input {spec.name!r} expects {spec.type}, got {array.dtype} values; send numbers")
    with np.errstate(invalid="ignore", over="ignore"):
        cast = array.astype(dtype)
    # Floats to float32 round, as every float model expects; to integers or bools nothing may change
    # (1.5 for an int64 id, 300 for a uint8 pixel, 2 for a bool are the client's mistake, not ours to round).
    if dtype.kind in "biu" and not np.array_equal(cast, array):
        raise CodecError(
            f"Input {spec.name!r} expects {spec.type}; some values do not fit it exactly "
            f"(got {array.dtype} values such as {_first_misfit(array, cast)})"
        )
    return cast


def _first_misfit(array: np.ndarray, cast: np.ndarray) -> object:
    differs = np.flatnonzero(cast.ravel() != array.ravel())
    value: object = array.ravel()[differs[0]].item() if differs.size else array.ravel()[0].item()
    return value
