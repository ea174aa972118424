from __future__ import annotations

import json

import numpy as np
import pytest

from modelhost.runtimes.codecs import CodecError, UndecodableBody, UnsupportedContentType
from modelhost.runtimes.triton_kserve import (
    InferRequest,
    OutputTensor,
    RequestedOutput,
    decode_request,
    deserialize_bytes,
    encode_response,
    serialize_bytes,
)
from tests.fixtures.triton_models import content_type, header_size_of, parse_response, request_body

ARRAYS = {
    "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 3,
    "i64": np.array([[1, -2], [3, 2**40]], dtype=np.int64),
    "f16": np.array([0.5, -1.25], dtype=np.float16),
    "flag": np.array([[True], [False]]),
    "u8": np.array([0, 255], dtype=np.uint8),
    "text": np.array([b"hello", "caf\u00e9".encode(), b""], dtype=object),
}


def _decode(inputs: dict[str, np.ndarray], binary: bool, **kw: object) -> InferRequest:
    body, size = request_body(inputs, binary=binary, **kw)  # type: ignore[arg-type]
    return decode_request(body, content_type(size))


def _error(body: bytes, media: str = "application/json") -> str:
    with pytest.raises(CodecError) as caught:
        decode_request(body, media)
    return caught.value.message


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_requests_decode_every_type_exactly(binary: bool) -> None:
    request = _decode(ARRAYS, binary, request_id="r-1")
    assert list(request.inputs) == list(ARRAYS)
    for name, want in ARRAYS.items():
        got = request.inputs[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want)
    assert request.id == "r-1"
    assert request.outputs == () and request.binary_outputs is False


def test_json_data_may_be_nested_and_octet_stream_is_json() -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]}
    )
    for media in ("application/json", "application/octet-stream", "application/json; charset=utf-8"):
        request = decode_request(body.encode(), media)
        np.testing.assert_array_equal(request.inputs["x"], np.array([[1, 2], [3, 4]], dtype=np.int32))


def test_requested_outputs_and_parameters() -> None:
    body = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [
                {"name": "a", "parameters": {"binary_data": True}},
                {"name": "b", "parameters": {"classification": 2}},
                {"name": "c"},
            ],
            "parameters": {"binary_data_output": True, "custom": "v"},
        }
    ).encode()
    request = decode_request(body, "application/json")
    assert request.outputs == (
        RequestedOutput("a", True),
        RequestedOutput("b", False, 2),
        RequestedOutput("c", False),
    )
    assert request.binary_outputs is True
    assert request.parameters == {"binary_data_output": True, "custom": "v"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("[]", 'expected a JSON object with "inputs"'),
        (
            '{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}',
            'each of "inputs" must be an object',
        ),
        (
            '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}',
            "input 'x' needs a \"datatype\"",
        ),
        (
            '{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]}',
            "input 'x' has shape [2] (2",
        ),
        (
            '{"inputs": [{"name": "x", "shape": "2", "datatype": "FP32", "data": [1]}]}',
            'needs "shape": a list',
        ),
        ('{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', 'neither "data" nor'),
        (
            '{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}',
            "does not hold INT8",
        ),
        (
            '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}',
            "data must be numbers",
        ),
        (
            '{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}]}',
            "data must be strings",
        ),
        (
            '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}, '
            '{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
            "input 'x' is given twice",
        ),
        ('{"inputs": [], "outputs": {"name": "y"}}', '"outputs" must be a list'),
        ("{not json", "the JSON header does not parse"),
    ],
)
def test_malformed_json_requests_say_what_is_wrong(header: str, expected: str) -> None:
    message = _error(header.encode())
    assert message.startswith("Invalid KServe v2 inference request: ")
    assert expected in message


def test_binary_framing_errors() -> None:
    body, size = request_body({"x": np.ones((2, 2), np.float32)}, binary=True)
    assert size is not None
    binary = "application/vnd.sagemaker-triton.binary+json"
    with pytest.raises(UndecodableBody) as caught:
        decode_request(body, binary)
    assert caught.value.message == f"Content type {binary} needs ;json-header-size=<bytes of the JSON header>"
    with pytest.raises(UndecodableBody) as caught:
        decode_request(body, f"{binary};json-header-size={len(body) + 1}")
    assert "json-header-size must be a whole number of bytes between 0 and the body's" in caught.value.message
    assert "bytes follow the JSON header but the inputs' binary_data_size add up to 16" in _error(
        body + b"\0", content_type(size)
    )
    assert "only 15 bytes of binary data are left" in _error(body[:-1], content_type(size))
    header = body[:size].replace(b'"binary_data_size": 16', b'"binary_data_size": 12')
    assert "4 FP32 elements take 16 bytes, but binary_data_size is 12" in _error(
        header + body[size : size + 12], content_type(len(header))
    )
    with pytest.raises(UnsupportedContentType) as unsupported:
        decode_request(body, "text/csv")
    assert "application/vnd.sagemaker-triton.binary+json;json-header-size=<bytes" in unsupported.value.message


def test_bytes_elements_round_trip_and_check_their_framing() -> None:
    elements = np.array([b"a", b"", "\u00fc".encode(), b"\x00\xff"], dtype=object)
    raw = serialize_bytes(elements)
    assert raw[:5] == b"\x01\x00\x00\x00a"
    np.testing.assert_array_equal(deserialize_bytes(raw, 4), elements)
    with pytest.raises(ValueError, match="runs past the end"):
        deserialize_bytes(raw[:-1])
    with pytest.raises(ValueError, match="found 4 BYTES elements, the shape holds 3"):
        deserialize_bytes(raw, 3)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_responses_read_back_with_a_protocol_client(binary: bool) -> None:
    outputs = [OutputTensor(name, array, binary) for name, array in ARRAYS.items() if name != "f16"]
    body, media = encode_response("m", "3", "r-9", outputs)
    size = header_size_of(media)
    assert media == "application/json" if not binary else size is not None and size < len(body)
    header, arrays = parse_response(body, size)
    assert (header["model_name"], header["model_version"], header["id"]) == ("m", "3", "r-9")
    assert [o["datatype"] for o in header["outputs"]] == ["FP32", "INT64", "BOOL", "UINT8", "BYTES"]
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, ARRAYS[name])
        assert array.dtype == ARRAYS[name].dtype


def test_mixed_binary_and_json_outputs_and_bytes_that_are_not_text() -> None:
    body, media = encode_response(
        "m",
        "1",
        "",
        [
            OutputTensor("a", np.array([1.5], np.float64), False),
            OutputTensor("b", np.array([[7]], np.int32), True),
        ],
    )
    header, arrays = parse_response(body, header_size_of(media))
    assert "id" not in header
    assert header["outputs"][0] == {"name": "a", "datatype": "FP64", "shape": [1], "data": [1.5]}
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 4}
    np.testing.assert_array_equal(arrays["b"], [[7]])
    raw = np.array([b"\xff"], dtype=object)
    with pytest.raises(CodecError, match="holds bytes that are not UTF-8"):
        encode_response("m", "1", "", [OutputTensor("s", raw, False)])
    body, media = encode_response("m", "1", "", [OutputTensor("s", raw, True)])
    np.testing.assert_array_equal(parse_response(body, header_size_of(media))[1]["s"], raw)
