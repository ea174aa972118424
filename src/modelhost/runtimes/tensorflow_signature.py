"""A SavedModel signature's inputs and outputs, and request arrays conformed to them: dtype, rank and dims.

Used by the TensorFlow runtime's predict_fn and batch_rows; pure numpy, so it never imports tensorflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modelhost.runtimes.codecs import CodecError, input_name_problems

Dim = int | None  # a fixed size, or None: any size


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the signature declares it."""

    name: str
    dtype: np.dtype[np.generic]  # what to feed: object for DT_STRING (bytes or str values)
    dtype_name: str  # TensorFlow's spelling: "float32", "string"
    shape: tuple[Dim, ...] | None  # None: the rank is unknown

    @property
    def batched(self) -> bool:
        """Whether axis 0 may have any size, so rows of several requests can be stacked along it."""
        return self.shape is not None and len(self.shape) > 0 and self.shape[0] is None

    def example_shape(self) -> tuple[int, ...] | None:
        """A valid shape for one example: the batch axis as 1; None when another dimension is not fixed."""
        if self.shape is None:
            return None
        dims = self.shape[1:] if self.batched else self.shape
        fixed = [dim for dim in dims if dim is not None]
        if len(fixed) != len(dims):
            return None
        return (1, *fixed) if self.batched else tuple(fixed)

    def shape_text(self) -> str:
        if self.shape is None:
            return "[any rank]"
        return "[" + ", ".join("?" if dim is None else str(dim) for dim in self.shape) + "]"

    def describe(self) -> str:
        """``'x': float32 [?, 4]``: how error messages name an input."""
        return f"{self.name!r}: {self.dtype_name} {self.shape_text()}"


@dataclass(frozen=True)
class Signature:
    """One signature of a SavedModel (``serving_default``, ...): its inputs and outputs by name."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batchable(self) -> bool:
        """One input and every output with a dynamic axis 0: rows in, one result per row out."""
        return (
            len(self.inputs) == 1
            and bool(self.outputs)
            and self.inputs[0].batched
            and all(spec.batched for spec in self.outputs)
        )

    def describe_inputs(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs) or "none"

    def describe(self) -> str:
        """``signature 'serving_default' takes 'x': float32 [?, 4]``."""
        return f"signature {self.name!r} takes {self.describe_inputs()}"

    def feeds(self, data: object) -> dict[str, np.ndarray]:
        """The arrays to call the signature with: ``data`` is one array, or a mapping of input name → array.

        Raises ``CodecError`` naming the signature's inputs when the names, dtypes or shapes do not fit.
        """
        if isinstance(data, Mapping):
            return self._named_feeds(data)
        if len(self.inputs) != 1:
            raise CodecError(
                f"The {self.describe()}; send them by name, as "
                '{"instances": [{"<name>": <value>, ...}, ...]} or {"inputs": {"<name>": <array>, ...}}'
            )
        only = self.inputs[0]
        return {only.name: conform(data, only)}

    def _named_feeds(self, data: Mapping[object, object]) -> dict[str, np.ndarray]:
        declared = {spec.name: spec for spec in self.inputs}
        problems = input_name_problems(data, declared)
        if problems:
            raise CodecError(f"{problems}: the {self.describe()}")
        return {name: conform(data[name], spec) for name, spec in declared.items()}


def conform(value: object, spec: TensorSpec) -> np.ndarray:
    """``value`` as an array of the input's dtype and declared shape; ``CodecError`` saying what differs.

    Two conveniences beyond TF Serving, both only where the declared shape leaves no doubt: one example
    without its batch axis gets one (``[1, 2, 3, 4]`` for ``[?, 4]`` is a batch of one row, as a flat JSON
    list is one row for the other runtimes), and a trailing axis of size 1 the input lacks is dropped (a
    one-column CSV body for an input of shape ``[?]``).
    """
    try:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise CodecError(f"Input {spec.name!r} is not a rectangular array: {exc}") from exc
    array = _cast(array, spec)
    shape = spec.shape
    if shape is None:
        return array
    if array.ndim == len(shape) - 1 and spec.batched and _fits(array.shape, shape[1:]):
        array = array[np.newaxis]
    elif array.ndim == len(shape) + 1 and array.shape[-1] == 1 and _fits(array.shape[:-1], shape):
        array = array[..., 0]
    if array.ndim != len(shape) or not _fits(array.shape, shape):
        raise CodecError(
            f"Input {spec.name!r} expects {spec.dtype_name} of shape {spec.shape_text()}, got shape "
            f"{array.shape}"
        )
    return array


def _fits(actual: tuple[int, ...], declared: tuple[Dim, ...]) -> bool:
    return len(actual) == len(declared) and all(
        dim is None or dim == size for size, dim in zip(actual, declared, strict=True)
    )


def _cast(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    dtype = spec.dtype
    if array.dtype == dtype:
        return array
    source = array.dtype.kind
    if dtype.kind == "O":  # DT_STRING: tensorflow encodes str values as UTF-8 itself
        if source in "USO":
            return array
        raise CodecError(f"Input {spec.name!r} expects string, got {array.dtype} values; send strings")
    if source not in "biuf":
        raise CodecError(
            f"Input {spec.name!r} expects {spec.dtype_name}, got {array.dtype} values; send numbers"
        )
    with np.errstate(invalid="ignore", over="ignore"):
        cast = array.astype(dtype)
    # Floats to float32 round, as every float model expects; to integers or bools nothing may change
    # (1.5 for an int64 id, 300 for a uint8 pixel, 2 for a bool are the client's mistake, not ours to round).
    if dtype.kind in "biu" and not np.array_equal(cast, array):
        differs = np.flatnonzero(cast.ravel() != array.ravel())
        example = array.ravel()[differs[0] if differs.size else 0].item()
        raise CodecError(
            f"Input {spec.name!r} expects {spec.dtype_name}; some values do not fit it exactly "
            f"(got {array.dtype} values such as {example})"
        )
    return cast
