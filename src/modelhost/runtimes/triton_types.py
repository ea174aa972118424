"""Triton's tensor element types under their three names: config.pbtxt's, the KServe v2 protocol's, numpy's.

Shared by the config reader (``triton_config``), the request codec (``triton_kserve``) and the backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DataType:
    """One tensor element type under its three names."""

    config_name: str  # in config.pbtxt: TYPE_FP32
    wire_name: str  # in the KServe v2 protocol: FP32
    numpy: np.dtype[np.generic] | None  # None: no numpy type (BF16)


DATA_TYPES: dict[str, DataType] = {
    t.config_name: t
    for t in (
        DataType("TYPE_BOOL", "BOOL", np.dtype(np.bool_)),
        DataType("TYPE_UINT8", "UINT8", np.dtype(np.uint8)),
        DataType("TYPE_UINT16", "UINT16", np.dtype(np.uint16)),
        DataType("TYPE_UINT32", "UINT32", np.dtype(np.uint32)),
        DataType("TYPE_UINT64", "UINT64", np.dtype(np.uint64)),
        DataType("TYPE_INT8", "INT8", np.dtype(np.int8)),
        DataType("TYPE_INT16", "INT16", np.dtype(np.int16)),
        DataType("TYPE_INT32", "INT32", np.dtype(np.int32)),
        DataType("TYPE_INT64", "INT64", np.dtype(np.int64)),
        DataType("TYPE_FP16", "FP16", np.dtype(np.float16)),
        DataType("TYPE_FP32", "FP32", np.dtype(np.float32)),
        DataType("TYPE_FP64", "FP64", np.dtype(np.float64)),
        DataType("TYPE_STRING", "BYTES", np.dtype(np.object_)),  # elements are bytes
        DataType("TYPE_BF16", "BF16", None),
    )
}
WIRE_TYPES: dict[str, DataType] = {t.wire_name: t for t in DATA_TYPES.values()}


def numpy_dtype(data_type: DataType) -> np.dtype[np.generic]:
    """The numpy dtype for ``data_type``; ``ValueError`` for BF16, which numpy has none for."""
    if data_type.numpy is None:
        raise ValueError(f"{data_type.wire_name} tensors are not supported: numpy has no such type")
    return data_type.numpy


def wire_type_of(array: np.ndarray) -> DataType:
    """The type of an array a model produced; object and string arrays are BYTES."""
    if array.dtype.kind in "OSU":
        return DATA_TYPES["TYPE_STRING"]
    for data_type in DATA_TYPES.values():
        if data_type.numpy == array.dtype:
            return data_type
    raise ValueError(f"a model output of numpy dtype {array.dtype} has no Triton data type")
