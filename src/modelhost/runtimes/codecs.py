"""Request decoders and response encoders for the content types every runtime speaks by default.

Shared by the runtimes' default input_fn/output_fn. Decoders turn a body into a numpy array; encoders turn an
array-like prediction into bytes. Content types may carry parameters (``text/csv; charset=utf-8``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from functools import lru_cache

import numpy as np
import orjson

from modelhost.errors import ValidationError

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
JSONLINES = "application/jsonlines"
# SageMaker batch transform and several SDK serializers spell JSON Lines this way.
X_JSONLINES = "application/x-jsonlines"

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class CodecError(ValidationError):
    """The client sent something the default codecs cannot handle; the client must change the request."""


class UnsupportedContentType(CodecError):
    """No decoder for the request's Content-Type."""


class UnsupportedAccept(CodecError):
    """No encoder for any media type the request's Accept allows."""


class UndecodableBody(CodecError):
    """The body does not parse as its Content-Type says it should."""


@lru_cache(maxsize=256)
def media_type(content_type: str) -> str:
    """``"Text/CSV; charset=utf-8"`` → ``"text/csv"``. Cached: a client sends the same few values."""
    return content_type.partition(";")[0].strip().lower()


def _json_default(value: object) -> object:
    # orjson serializes C-contiguous numeric arrays natively; strings, objects and strided views land here.
    tolist = getattr(value, "tolist", None)
    if tolist is None:
        raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")
    result: object = tolist()
    return result


def dumps_json(value: object) -> bytes:
    """JSON bytes for plain values, numpy arrays and numpy scalars."""
    return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS)


# --- decoders --------------------------------------------------------------------------------


def _as_text(body: bytes | str) -> str:
    return body if isinstance(body, str) else body.decode("utf-8")


def _rows_from_json(payload: object) -> object:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for key in ("instances", "inputs"):
            if key in payload:
                return payload[key]
    raise ValueError('expected a list, a list of lists, or an object with "instances" or "inputs"')


def decode_json(body: bytes | str) -> np.ndarray:
    """A list, a list of lists, or an object holding one of those under ``"instances"`` or ``"inputs"``."""
    return np.asarray(_rows_from_json(orjson.loads(body)))


def decode_csv(body: bytes | str) -> np.ndarray:
    """Numbers without a header, one row per line: always a 2-D float64 array (one line → one row)."""
    lines = [line for line in _as_text(body).splitlines() if line.strip()]
    if not lines:
        raise ValueError("the body has no CSV rows")
    return np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)


def decode_npy(body: bytes | str) -> np.ndarray:
    """One array in NPY format. Pickled (object) arrays are refused: they would run code from the request."""
    if isinstance(body, str):
        raise ValueError("NPY bodies are binary; send the bytes of np.save")
    array = np.load(io.BytesIO(body), allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise ValueError("expected one array saved with np.save, not an .npz archive")
    return array


def decode_jsonlines(body: bytes | str) -> np.ndarray:
    """One row per line: a JSON array, or an object whose ``"features"`` holds the row."""
    rows: list[object] = []
    for number, line in enumerate(_as_text(body).splitlines(), start=1):
        if not line.strip():
            continue
        row = orjson.loads(line)
        if isinstance(row, dict) and "features" in row:
            row = row["features"]
        elif not isinstance(row, list):
            raise ValueError(f'line {number}: expected a JSON array or an object with "features"')
        rows.append(row)
    if not rows:
        raise ValueError("the body has no JSON Lines rows")
    return np.asarray(rows)


_DECODERS: dict[str, Callable[[bytes | str], np.ndarray]] = {
    JSON: decode_json,
    CSV: decode_csv,
    NPY: decode_npy,
    JSONLINES: decode_jsonlines,
    X_JSONLINES: decode_jsonlines,
}
DECODABLE_TYPES: tuple[str, ...] = tuple(_DECODERS)


def decode(body: bytes | str, content_type: str) -> np.ndarray:
    """Decode ``body`` by its Content-Type; ``UnsupportedContentType`` or ``UndecodableBody`` otherwise."""
    media = media_type(content_type)
    decoder = _DECODERS.get(media)
    if decoder is None:
        raise UnsupportedContentType(
            f"Content type {content_type!r} is not supported; supported: {', '.join(DECODABLE_TYPES)}"
        )
    try:
        return decoder(body)
    # numpy and orjson report malformed input as ValueError (JSONDecodeError, UnicodeDecodeError are ones);
    # np.load raises EOFError on a truncated file.
    except (ValueError, EOFError) as exc:
        raise UndecodableBody(f"Could not decode the {media} body: {exc}") from exc


# --- encoders --------------------------------------------------------------------------------


def encode_json(value: object) -> bytes:
    """A bare JSON value: arrays become (nested) lists, as the SageMaker framework containers answer."""
    return dumps_json(value)


def _csv_cell(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if any(char in text for char in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def encode_csv(value: object) -> bytes:
    """One row per line; a 1-D prediction is one value per line, as ``np.savetxt`` writes it."""
    array = np.asarray(value)
    if array.ndim > 2:
        raise ValueError(f"cannot write a {array.ndim}-dimensional prediction as CSV rows")
    rows = array.reshape(-1, 1).tolist() if array.ndim < 2 else array.tolist()
    # Numbers never need quoting, so skip the per-cell scan for them (the common case).
    cell: Callable[[object], str] = str if array.dtype.kind in "biuf" else _csv_cell
    return "".join(",".join(map(cell, row)) + "\n" for row in rows).encode("utf-8")


def encode_npy(value: object) -> bytes:
    """The prediction as one NPY array; object arrays are refused as on the decode side."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


def encode_jsonlines(value: object) -> bytes:
    """One JSON value per line: each row of a 2-D prediction, each value of a 1-D one."""
    rows: object = value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        rows = [value]
    if not isinstance(rows, list | tuple | np.ndarray):
        rows = [rows]
    return b"".join(dumps_json(row) + b"\n" for row in rows)


_ENCODERS: dict[str, Callable[[object], bytes]] = {
    JSON: encode_json,
    CSV: encode_csv,
    NPY: encode_npy,
    JSONLINES: encode_jsonlines,
    X_JSONLINES: encode_jsonlines,
}
ENCODABLE_TYPES: tuple[str, ...] = tuple(_ENCODERS)


@lru_cache(maxsize=256)
def negotiate_accept(accept: str) -> str:
    """The first media type in ``accept`` an encoder exists for; wildcards pick JSON, then the first match.

    Cached: clients send the same few Accept values, and this runs before every default prediction.
    """
    for media_range in accept.split(","):
        media = media_type(media_range)
        if media in _ENCODERS:
            return media
        if media == "*/*":
            return JSON
        if media.endswith("/*"):
            prefix = media[:-1]
            for candidate in _ENCODERS:
                if candidate.startswith(prefix):
                    return candidate
    raise UnsupportedAccept(f"Accept {accept!r} is not supported; supported: {', '.join(ENCODABLE_TYPES)}")


def encode(value: object, accept: str) -> tuple[bytes, str]:
    """Encode ``value`` for ``accept``: ``(body, content_type)``; ``UnsupportedAccept`` if nothing fits."""
    media = negotiate_accept(accept)
    return _ENCODERS[media](value), media


def input_name_problems(given: Iterable[object], declared: Iterable[str]) -> str | None:
    """What is wrong with the input names a request sent against the names a model declares, or None.

    ``unknown input 'a'; missing input 'b'``: for runtimes that take named inputs (ONNX, TensorFlow).
    """
    given, declared = list(given), list(declared)
    unknown = [name for name in given if name not in declared]
    missing = [name for name in declared if name not in given]
    problems = []
    if unknown:
        problems.append("unknown input " + ", ".join(repr(name) for name in unknown))
    if missing:
        problems.append("missing input " + ", ".join(repr(name) for name in missing))
    return "; ".join(problems) or None
