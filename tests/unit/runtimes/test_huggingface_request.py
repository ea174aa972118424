"""Bodies and answers of the Hugging Face containers' contract, decoded and encoded without a model."""

from __future__ import annotations

import io

import numpy as np
import pytest

from modelhost.runtimes.codecs import CodecError, UndecodableBody, UnsupportedAccept, UnsupportedContentType
from modelhost.runtimes.huggingface_request import (
    PipelineRequest,
    as_request,
    decode,
    encode,
    negotiate_accept,
)

JSON = "application/json"


def test_json_bodies_as_the_toolkit_reads_them() -> None:
    assert decode(b'{"inputs": "a fox", "parameters": {"top_k": 2}}', JSON) == PipelineRequest(
        "a fox", {"top_k": 2}
    )
    question = {"question": "who ?", "context": "a fox"}
    assert decode(b'{"question": "who ?", "context": "a fox", "parameters": {"top_k": 1}}', JSON) == (
        PipelineRequest(question, {"top_k": 1})
    )
    assert decode(b'["a", "b"]', JSON) == PipelineRequest(["a", "b"])
    assert as_request({"inputs": "x"}) == PipelineRequest("x")


def test_csv_bodies_need_a_header() -> None:
    assert decode(b"inputs\nthe fox\na model\n", "text/csv") == PipelineRequest(["the fox", "a model"])
    rows = decode(b"question,context\nwho ?,a fox\n", "text/csv; charset=utf-8")
    assert rows == PipelineRequest([{"question": "who ?", "context": "a fox"}])
    with pytest.raises(CodecError) as caught:
        decode(b"text\nthe fox\n", "text/csv")
    assert caught.value.message.startswith("A text/csv body needs a header row naming its columns")


def test_malformed_bodies() -> None:
    with pytest.raises(UndecodableBody):
        decode(b"{not json", JSON)
    with pytest.raises(UnsupportedContentType) as unsupported:
        decode(b"\x93NUMPY", "application/x-npy")
    assert "supported: application/json, text/csv" in unsupported.value.message
    with pytest.raises(CodecError) as caught:
        decode(b'{"inputs": "x", "parameters": [1]}', JSON)
    assert caught.value.message.startswith('"parameters" must be an object of pipeline arguments')
    with pytest.raises(CodecError) as caught:
        decode(b'{"parameters": {"top_k": 1}}', JSON)
    assert caught.value.message == 'The request has no "inputs": send {"inputs": ..., "parameters": {...}}'


def test_answers_in_each_format() -> None:
    labels = [{"label": "A", "score": np.float32(0.25)}, {"label": "B, C", "score": 0.75}]
    assert encode(labels, "*/*") == (b'[{"label":"A","score":0.25},{"label":"B, C","score":0.75}]', JSON)
    assert encode(labels, "text/csv") == (b'label,score\r\nA,0.25\r\n"B, C",0.75\r\n', "text/csv")
    body, media = encode([[[0.5, 1.0], [2.0, 3.0]]], "application/x-npy")
    assert media == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), [[[0.5, 1.0], [2.0, 3.0]]])


def test_answers_that_a_format_cannot_hold_are_refused() -> None:
    with pytest.raises(UnsupportedAccept) as caught:
        encode([[[0.5, 1.0]]], "text/csv")
    assert caught.value.message.startswith("text/csv answers hold a list of objects")
    with pytest.raises(UnsupportedAccept) as caught:
        encode([{"label": "A", "score": 0.5}], "application/x-npy")
    assert caught.value.message.startswith("application/x-npy answers hold one array of numbers")
    with pytest.raises(UnsupportedAccept):
        encode([[[0.5]], [[0.5], [1.0]]], "application/x-npy")  # ragged: texts of different lengths
    with pytest.raises(UnsupportedAccept):
        negotiate_accept("image/png")
    assert negotiate_accept("text/*") == "text/csv"
    assert negotiate_accept("image/png, application/*") == JSON
