from __future__ import annotations

import io

import numpy as np
import orjson
import pytest

from modelhost.runtimes import codecs
from modelhost.runtimes.codecs import UndecodableBody, UnsupportedAccept, UnsupportedContentType

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("text/csv", "text/csv"),
        ("text/csv; charset=utf-8", "text/csv"),
        ("  Application/JSON ;q=1", "application/json"),
    ],
)
def test_media_type_drops_parameters_and_case(header: str, expected: str) -> None:
    assert codecs.media_type(header) == expected


# --- decoding -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]",
        b'{"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}',
        b'{"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}',
        "[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]",
    ],
)
def test_json_decodes_lists_and_instance_objects(body: bytes | str) -> None:
    np.testing.assert_array_equal(codecs.decode(body, "application/json"), ROWS)


def test_json_flat_list_stays_one_dimensional() -> None:
    # Whether a flat list is a row or a column is the runtime's call (it knows the model).
    assert codecs.decode(b"[1, 2, 3]", "application/json").shape == (3,)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2", "unexpected end of data"),
        (b'{"rows": [1]}', '"instances" or "inputs"'),
        (b"42", "expected a list"),
        (b"[[1, 2], [3]]", "inhomogeneous"),
    ],
)
def test_json_errors_carry_the_parsers_message(body: bytes, message: str) -> None:
    with pytest.raises(UndecodableBody, match="application/json") as caught:
        codecs.decode(body, "application/json")
    assert message in caught.value.message


def test_csv_rows_become_a_two_dimensional_float_array() -> None:
    decoded = codecs.decode(b"5.1,3.5,1.4,0.2\r\n6.7,3.0,5.2,2.3\n\n", "text/csv; charset=utf-8")
    assert decoded.dtype == np.float64
    np.testing.assert_array_equal(decoded, ROWS)


def test_csv_single_line_is_one_row() -> None:
    assert codecs.decode(b"1,2,3", "text/csv").shape == (1, 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"a,b\n1,2", "could not convert string 'a'"),
        (b"1,2,3\n1,2", "number of columns changed"),
        (b"\n \n", "no CSV rows"),
        (b"\xff\xfe", "utf-8"),
    ],
)
def test_csv_errors_carry_the_parsers_message(body: bytes, message: str) -> None:
    with pytest.raises(UndecodableBody, match="text/csv") as caught:
        codecs.decode(body, "text/csv")
    assert message in caught.value.message


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_npy_decodes_an_array() -> None:
    np.testing.assert_array_equal(codecs.decode(_npy(ROWS), "application/x-npy"), ROWS)


@pytest.mark.parametrize(
    "body", [_npy(np.array([{"a": 1}], dtype=object)), b"not npy", b"", "text is not npy"]
)
def test_npy_refuses_pickles_and_garbage(body: bytes | str) -> None:
    with pytest.raises(UndecodableBody, match="application/x-npy"):
        codecs.decode(body, "application/x-npy")


@pytest.mark.parametrize("content_type", ["application/jsonlines", "application/x-jsonlines"])
def test_jsonlines_rows_are_arrays_or_features_objects(content_type: str) -> None:
    body = b'[5.1, 3.5, 1.4, 0.2]\n\n{"features": [6.7, 3.0, 5.2, 2.3]}\n'
    np.testing.assert_array_equal(codecs.decode(body, content_type), ROWS)


@pytest.mark.parametrize(
    ("body", "message"),
    [(b'[1, 2]\n{"x": 1}', "line 2"), (b"[1, 2]\n[1,", "unexpected"), (b"\n", "no JSON Lines rows")],
)
def test_jsonlines_errors_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(UndecodableBody) as caught:
        codecs.decode(body, "application/jsonlines")
    assert message in caught.value.message


def test_unsupported_content_type_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedContentType) as caught:
        codecs.decode(b"x", "image/png")
    assert "'image/png'" in caught.value.message
    for supported in ("application/json", "text/csv", "application/x-npy", "application/jsonlines"):
        assert supported in caught.value.message


# --- encoding -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.array([0, 2, 1]), [0, 2, 1]),
        (ROWS, ROWS.tolist()),
        (ROWS.T, ROWS.T.tolist()),  # a strided view orjson cannot take directly
        (np.array(["setosa", "virginica"]), ["setosa", "virginica"]),
        (np.float32(1.5), 1.5),
        ([np.int64(1), {"p": np.float64(0.25)}], [1, {"p": 0.25}]),
    ],
)
def test_json_encodes_numpy_values_as_plain_json(value: object, expected: object) -> None:
    body, content_type = codecs.encode(value, "application/json")
    assert content_type == "application/json"
    assert orjson.loads(body) == expected


def test_json_refuses_unknown_objects() -> None:
    with pytest.raises(TypeError):
        codecs.encode(object(), "application/json")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.array([0, 2]), b"0\n2\n"),
        (np.array([[0.5, 1.0], [2.0, 3.25]]), b"0.5,1.0\n2.0,3.25\n"),
        (np.float64(0.5), b"0.5\n"),
        (np.array(["a,b", 'say "hi"', "plain"]), b'"a,b"\n"say ""hi"""\nplain\n'),
    ],
)
def test_csv_writes_one_row_per_line(value: object, expected: bytes) -> None:
    assert codecs.encode(value, "text/csv") == (expected, "text/csv")


def test_csv_refuses_three_dimensions() -> None:
    with pytest.raises(ValueError, match="3-dimensional"):
        codecs.encode(np.zeros((2, 2, 2)), "text/csv")


def test_jsonlines_writes_one_row_per_line() -> None:
    body, content_type = codecs.encode(np.array([[1, 2], [3, 4]]), "application/jsonlines")
    assert content_type == "application/jsonlines"
    assert body == b"[1,2]\n[3,4]\n"
    assert codecs.encode([0, 1], "application/jsonlines")[0] == b"0\n1\n"
    assert codecs.encode(np.int64(7), "application/jsonlines")[0] == b"7\n"
    assert codecs.encode({"a": 1}, "application/jsonlines")[0] == b'{"a":1}\n'


@pytest.mark.parametrize(
    "media", ["application/json", "text/csv", "application/x-npy", "application/jsonlines"]
)
def test_encode_then_decode_round_trips_rows(media: str) -> None:
    body, content_type = codecs.encode(ROWS, media)
    np.testing.assert_array_equal(codecs.decode(body, content_type), ROWS)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("text/csv", "text/csv"),
        ("text/csv; charset=utf-8", "text/csv"),
        ("image/png, application/jsonlines", "application/jsonlines"),
        ("*/*", "application/json"),
        ("text/*", "text/csv"),
        ("application/x-npy;q=0.9", "application/x-npy"),
    ],
)
def test_accept_negotiation(accept: str, expected: str) -> None:
    assert codecs.negotiate_accept(accept) == expected


def test_unsupported_accept_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedAccept) as caught:
        codecs.encode(ROWS, "image/png")
    assert "'image/png'" in caught.value.message
    assert "text/csv" in caught.value.message
