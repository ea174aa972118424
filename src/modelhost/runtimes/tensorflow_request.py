"""TF Serving's REST request and response forms, as SageMaker's TensorFlow Serving container accepts them.

Used by the TensorFlow runtime's input_fn (bodies → ``ServingRequest``) and output_fn (predictions → JSON
values); pure numpy and JSON, so it never imports tensorflow.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import orjson

from modelhost.runtimes.codecs import JSON, UndecodableBody

Inputs = np.ndarray | Mapping[str, np.ndarray]

_B64 = "b64"


@dataclass(frozen=True)
class ServingRequest:
    """One decoded request: what input_fn returns and the default predict_fn takes."""

    inputs: Inputs  # one array for a single-input signature, else arrays by input name
    columnar: bool = False  # {"inputs": ...}: answered {"outputs": ...}; rows answer {"predictions": ...}
    signature_name: str | None = None  # None: the model's default, serving_default


@dataclass(frozen=True)
class ColumnarOutputs:
    """A columnar request's prediction: the only output's array, or every output's by name."""

    value: np.ndarray | dict[str, np.ndarray]


def _fail(problem: str) -> UndecodableBody:
    return UndecodableBody(f"Could not decode the {JSON} body: {problem}")


def _loads(body: bytes | str) -> object:
    try:
        return orjson.loads(body)
    except ValueError as exc:
        # TF Serving accepts NaN and Infinity, which strict JSON (and so orjson) refuses; json does not.
        try:
            return json.loads(body)
        except ValueError:
            raise _fail(str(exc)) from exc


def _unwrap_b64(value: object) -> object:
    """``{"b64": "<base64>"}`` objects anywhere in ``value`` as the bytes they encode."""
    if isinstance(value, list):
        return [_unwrap_b64(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or _B64 not in value:
        return {name: _unwrap_b64(item) for name, item in value.items()}  # named inputs
    encoded = value[_B64]
    if not isinstance(encoded, str):
        raise _fail(f'a "b64" value must be a base64 string, not {type(encoded).__name__}')
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise _fail(f'a "b64" value is not valid base64 ({exc})') from exc


def _array(value: object, what: str, binary: bool) -> np.ndarray:
    try:
        if binary:
            # An object array keeps each byte string whole: numpy's fixed-width "S" drops trailing NULs.
            whole = np.array(value, dtype=object)
            if any(isinstance(item, bytes) for item in whole.flat):
                return whole
        return np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise _fail(f"{what} is not a rectangular array ({exc})") from exc


def _named(values: Mapping[str, object], binary: bool) -> dict[str, np.ndarray]:
    return {name: _array(value, f"input {name!r}", binary) for name, value in values.items()}


def _instances(instances: object, binary: bool) -> Inputs:
    """Row format: a list of examples, or of objects holding each named input of one example."""
    if not isinstance(instances, list):
        raise _fail(f'"instances" must be a list of examples, not {type(instances).__name__}')
    if not instances or not all(isinstance(item, dict) for item in instances):
        if any(isinstance(item, dict) for item in instances):
            raise _fail('"instances" mixes objects of named inputs with plain values')
        return _array(instances, '"instances"', binary)
    names = list(instances[0])
    for number, item in enumerate(instances[1:], start=1):
        if set(item) != set(names):
            raise _fail(
                f"instance {number} names inputs {', '.join(map(repr, item))} but instance 0 names "
                f"{', '.join(map(repr, names))}; every instance must name the same inputs"
            )
    stacked = {name: [item[name] for item in instances] for name in names}
    return _named(stacked, binary)


def decode_json(body: bytes | str) -> ServingRequest:
    """A TF Serving predict body (``instances`` or ``inputs``, optional ``signature_name``), or a plain value.

    As SageMaker's TensorFlow Serving container does, a JSON list is the ``instances`` list and any other
    value (an object without ``instances``/``inputs``, a number, a string) is one instance.
    """
    binary = (b'"b64"' in body) if isinstance(body, bytes) else ('"b64"' in body)
    payload = _unwrap_b64(_loads(body)) if binary else _loads(body)
    if not isinstance(payload, dict):
        return ServingRequest(_instances(payload if isinstance(payload, list) else [payload], binary))
    signature_name = payload.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise _fail(f'"signature_name" must be a string, not {type(signature_name).__name__}')
    if "instances" in payload and "inputs" in payload:
        raise _fail('send either "instances" (row format) or "inputs" (columnar format), not both')
    if "instances" in payload:
        return ServingRequest(_instances(payload["instances"], binary), signature_name=signature_name)
    if "inputs" in payload:
        inputs = payload["inputs"]
        columns = _named(inputs, binary) if isinstance(inputs, dict) else _array(inputs, '"inputs"', binary)
        return ServingRequest(columns, columnar=True, signature_name=signature_name)
    example = {name: value for name, value in payload.items() if name != "signature_name"}
    return ServingRequest(_instances([example], binary), signature_name=signature_name)


# --- responses ---------------------------------------------------------------------------------


def _text_or_b64(value: object) -> object:
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {_B64: base64.b64encode(value).decode("ascii")}


def _b64(value: object) -> object:
    return {_B64: base64.b64encode(value).decode("ascii")} if isinstance(value, bytes) else value


_TEXT_OR_B64 = np.frompyfunc(_text_or_b64, 1, 1)
_AS_B64 = np.frompyfunc(_b64, 1, 1)


def json_ready(name: str, array: np.ndarray) -> np.ndarray:
    """An output array JSON can hold: DT_STRING values as text, or ``{"b64": ...}`` as TF Serving writes them.

    TF Serving base64-encodes the values of outputs whose name ends in ``_bytes``; other strings are text
    (here: bytes that are not UTF-8 are base64-encoded too, rather than failing the request).
    """
    if array.dtype.kind != "O":
        return array
    convert = _AS_B64 if name.endswith("_bytes") else _TEXT_OR_B64
    converted: np.ndarray = np.asarray(convert(array), dtype=object)
    return converted
