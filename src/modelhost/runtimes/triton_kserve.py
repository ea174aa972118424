"""The KServe v2 inference protocol on the wire: JSON requests and responses, and Triton's binary extension.

Called by the Triton runtime's input_fn and output_fn. A binary body is a JSON header followed by raw tensor
bytes; its header length comes in the content type as SageMaker's Triton container takes it
(``application/vnd.sagemaker-triton.binary+json;json-header-size=N``). Inputs carrying
``"parameters": {"binary_data_size": n}`` take the next n bytes after the header, in order; outputs asked for
with ``"binary_data": true`` (or every output, with the request's ``binary_data_output``) are answered the
same way. BYTES elements travel as a 4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from modelhost.runtimes import codecs
from modelhost.runtimes.codecs import UndecodableBody, UnsupportedContentType
from modelhost.runtimes.triton_types import WIRE_TYPES, DataType, wire_type_of

JSON = codecs.JSON
OCTET_STREAM = "application/octet-stream"  # a JSON body, as Triton's SageMaker endpoint reads it
BINARY_JSON = "application/vnd.sagemaker-triton.binary+json"
HEADER_SIZE_PARAMETER = "json-header-size"
CONTENT_TYPES = (JSON, OCTET_STREAM, f"{BINARY_JSON};{HEADER_SIZE_PARAMETER}=<bytes of the JSON header>")
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One entry of the request's ``outputs``."""

    name: str
    binary: bool  # answer it in binary after the JSON header
    classification: int = 0  # > 0: answer the top classes as "score:index[:label]" strings instead


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded inference request. Arrays are in the request's own data types and shapes."""

    inputs: Mapping[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] = ()  # empty: every output of the model
    binary_outputs: bool = False  # binary_data_output: the default for outputs not listed
    id: str = ""
    parameters: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputTensor:
    name: str
    array: np.ndarray
    binary: bool


def _fail(problem: str) -> UndecodableBody:
    return UndecodableBody(f"Invalid KServe v2 inference request: {problem}")


def header_size(content_type: str, body_size: int) -> int:
    """Bytes of JSON at the start of a body of ``content_type``; the whole body unless it says otherwise."""
    media = codecs.media_type(content_type)
    if media in (JSON, OCTET_STREAM):
        return body_size
    if media != BINARY_JSON:
        raise UnsupportedContentType(
            f"Content type {content_type!r} is not supported by Triton models; use one of: "
            f"{', '.join(CONTENT_TYPES)}"
        )
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == HEADER_SIZE_PARAMETER:
            try:
                size = int(value.strip())
            except ValueError:
                size = -1
            if not 0 <= size <= body_size:
                raise UndecodableBody(
                    f"{HEADER_SIZE_PARAMETER} must be a whole number of bytes between 0 and the body's "
                    f"{body_size}, not {value.strip()!r}"
                )
            return size
    raise UndecodableBody(
        f"Content type {BINARY_JSON} needs ;{HEADER_SIZE_PARAMETER}=<bytes of the JSON header>"
    )


def deserialize_bytes(data: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """Length-prefixed BYTES elements as a flat object array of bytes."""
    view = memoryview(data)
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise ValueError("a BYTES element's 4-byte length is cut off")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise ValueError(f"a BYTES element of {length} bytes runs past the end of its data")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(elements) != count:
        raise ValueError(f"found {len(elements)} BYTES elements, the shape holds {count}")
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor's elements in row-major order, each as a 4-byte length and its bytes."""
    parts: list[bytes] = []
    for element in array.reshape(-1):
        raw = element if isinstance(element, bytes) else str(element).encode("utf-8")
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _element_count(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _flatten(values: object) -> list[object]:
    if not isinstance(values, list):
        return [values]
    flat: list[object] = []
    for value in values:
        flat.extend(_flatten(value))
    return flat


def _from_json(name: str, data: object, data_type: DataType, shape: list[int]) -> np.ndarray:
    flat = _flatten(data)
    count = _element_count(shape)
    if len(flat) != count:
        raise _fail(f"input {name!r} has shape {shape} ({count} elements) but its data holds {len(flat)}")
    if data_type.wire_name == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [value.encode("utf-8") if isinstance(value, str) else value for value in flat]
        if not all(isinstance(value, bytes) for value in array):
            raise _fail(f"input {name!r} is BYTES: its data must be strings")
        return array.reshape(shape)
    if data_type.numpy is None:
        raise _fail(f"input {name!r}: {data_type.wire_name} data is only accepted in binary form")
    if data_type.wire_name != "BOOL" and any(isinstance(value, bool | str) for value in flat):
        raise _fail(f"input {name!r} is {data_type.wire_name}: its data must be numbers")
    try:
        return np.asarray(flat, dtype=data_type.numpy).reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _fail(f"input {name!r} does not hold {data_type.wire_name} values: {exc}") from exc


def _from_binary(name: str, data: memoryview, data_type: DataType, shape: list[int]) -> np.ndarray:
    count = _element_count(shape)
    if data_type.wire_name == "BYTES":
        try:
            return deserialize_bytes(data, count).reshape(shape)
        except ValueError as exc:
            raise _fail(f"input {name!r}: {exc}") from exc
    if data_type.numpy is None:
        raise _fail(f"input {name!r}: {data_type.wire_name} tensors are not supported")
    dtype = data_type.numpy.newbyteorder("<")
    if len(data) != count * dtype.itemsize:
        raise _fail(
            f"input {name!r} has shape {shape}: {count} {data_type.wire_name} elements take "
            f"{count * dtype.itemsize} bytes, but binary_data_size is {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).astype(data_type.numpy, copy=False).reshape(shape)


def _shape(name: str, value: object) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise _fail(f'input {name!r} needs "shape": a list of whole numbers, not {value!r}')
    if any(dim < 0 for dim in value):
        raise _fail(f"input {name!r} has a negative dimension in its shape {value}")
    return value


def _parameters(entry: Mapping[str, object], where: str) -> Mapping[str, object]:
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _fail(f'"parameters" of {where} must be an object')
    return parameters


def _input(entry: object, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _fail('each of "inputs" must be an object with a "name"')
    name: str = entry["name"]
    data_type = WIRE_TYPES.get(entry.get("datatype"))  # type: ignore[arg-type]
    if data_type is None:
        raise _fail(f'input {name!r} needs a "datatype", one of {", ".join(WIRE_TYPES)}')
    shape = _shape(name, entry.get("shape"))
    size = _parameters(entry, f"input {name!r}").get("binary_data_size")
    if size is None:
        if "data" not in entry:
            raise _fail(f'input {name!r} has neither "data" nor parameters.binary_data_size')
        return name, _from_json(name, entry["data"], data_type, shape), offset
    if not isinstance(size, int) or size < 0 or offset + size > len(binary):
        raise _fail(
            f"input {name!r} has binary_data_size {size!r} but only {len(binary) - offset} bytes of binary "
            "data are left after the JSON header"
        )
    return name, _from_binary(name, binary[offset : offset + size], data_type, shape), offset + size


def _requested(entry: object) -> RequestedOutput:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _fail('each of "outputs" must be an object with a "name"')
    parameters = _parameters(entry, f"output {entry['name']!r}")
    classification = parameters.get("classification", 0)
    if not isinstance(classification, int) or classification < 0:
        raise _fail(f"output {entry['name']!r}: classification must be a whole number of classes")
    return RequestedOutput(entry["name"], parameters.get("binary_data") is True, classification)


def decode_request(body: bytes, content_type: str) -> InferRequest:
    """A KServe v2 inference request; ``CodecError`` saying what is wrong with it otherwise."""
    size = header_size(content_type, len(body))
    try:
        header = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise _fail(f"the JSON header does not parse: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise _fail('expected a JSON object with "inputs": [{"name", "shape", "datatype", "data"}, ...]')
    binary = memoryview(body)[size:]
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in header["inputs"]:
        name, array, offset = _input(entry, binary, offset)
        if name in inputs:
            raise _fail(f"input {name!r} is given twice")
        inputs[name] = array
    if offset != len(binary):
        raise _fail(
            f"{len(binary)} bytes follow the JSON header but the inputs' binary_data_size add up to {offset}"
        )
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise _fail('"outputs" must be a list of {"name": ...} objects')
    parameters = _parameters(header, "the request")
    request_id = header.get("id", "")
    return InferRequest(
        inputs=inputs,
        outputs=tuple(_requested(entry) for entry in outputs),
        binary_outputs=parameters.get("binary_data_output") is True,
        id=request_id if isinstance(request_id, str) else str(request_id),
        parameters=parameters,
    )


def _json_data(tensor: OutputTensor, data_type: DataType) -> object:
    flat = tensor.array.reshape(-1)
    if data_type.wire_name != "BYTES":
        return np.ascontiguousarray(flat)
    try:
        return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in flat]
    except UnicodeDecodeError as exc:
        raise codecs.CodecError(
            f"Output {tensor.name!r} holds bytes that are not UTF-8, which JSON cannot carry; ask for it "
            'with "parameters": {"binary_data": true}'
        ) from exc


def _binary_data(array: np.ndarray, data_type: DataType) -> bytes:
    if data_type.wire_name == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_response(
    model_name: str, model_version: str, request_id: str, outputs: Sequence[OutputTensor]
) -> tuple[bytes, str]:
    """The response body and its content type: JSON alone, or a JSON header and binary outputs."""
    entries: list[dict[str, object]] = []
    blobs: list[bytes] = []
    for tensor in outputs:
        data_type = wire_type_of(tensor.array)
        entry: dict[str, object] = {
            "name": tensor.name,
            "datatype": data_type.wire_name,
            "shape": list(tensor.array.shape),
        }
        if tensor.binary:
            blob = _binary_data(tensor.array, data_type)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(tensor, data_type)
        entries.append(entry)
    response: dict[str, object] = {"model_name": model_name, "model_version": model_version}
    if request_id:
        response["id"] = request_id
    response["outputs"] = entries
    header = codecs.dumps_json(response)
    if not blobs:
        return header, JSON
    return header + b"".join(blobs), f"{BINARY_JSON};{HEADER_SIZE_PARAMETER}={len(header)}"
