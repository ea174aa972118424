"""Requests and answers of SageMaker's Hugging Face containers: ``{"inputs": ..., "parameters": {...}}``.

The huggingface runtime's input_fn and output_fn call these; no framework is imported here. Bodies are read
as the inference toolkit reads them: JSON, or CSV with a header row; answers are JSON, CSV rows or NPY.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson

from modelhost.runtimes import codecs
from modelhost.runtimes.codecs import CodecError, UndecodableBody, UnsupportedAccept, UnsupportedContentType

# The toolkit encodes exactly these; an Accept of */* gets JSON.
ANSWER_TYPES = (codecs.JSON, codecs.CSV, codecs.NPY)
REQUEST_TYPES = (codecs.JSON, codecs.CSV)
# The toolkit takes a CSV body only with a header row naming one of these columns.
_CSV_COLUMNS = ("question", "context", "inputs")
_DEFAULT_EXPECTED = (
    '{"inputs": "text"} or {"inputs": ["text", ...]}, with "parameters": {...} for the pipeline'
)
# What each task's pipeline takes, for the message of a request it refused.
EXPECTED_INPUTS: dict[str, str] = {
    "question-answering": '{"inputs": {"question": "...", "context": "..."}} (or a list of such objects)',
    "table-question-answering": '{"inputs": {"query": "...", "table": {"column": ["cell", ...], ...}}}',
    "zero-shot-classification": '{"inputs": "text", "parameters": {"candidate_labels": ["label", ...]}}',
    "text-classification": (
        '{"inputs": "text"}, {"inputs": ["text", ...]} or {"inputs": {"text": "...", "text_pair": "..."}}'
    ),
    "fill-mask": '{"inputs": "text with the tokenizer\'s mask token"} or a list of such texts',
}


@dataclass(frozen=True)
class PipelineRequest:
    """One decoded request: the pipeline is called as ``pipeline(inputs, **parameters)``."""

    inputs: object
    parameters: Mapping[str, object] = field(default_factory=dict)


def expected_inputs(task: str | None) -> str:
    """The request shape ``task``'s pipeline takes, in words."""
    return EXPECTED_INPUTS.get(task or "", _DEFAULT_EXPECTED)


def as_request(payload: object) -> PipelineRequest:
    """A JSON value (or a user input_fn's result) as the toolkit's predict reads it.

    An object's ``"inputs"`` are the inputs; an object without them is itself the inputs (question
    answering's ``{"question", "context"}``), less ``"parameters"``, as the toolkit pops both from one dict.
    Any other value is the inputs.
    """
    if isinstance(payload, PipelineRequest):
        return payload
    if not isinstance(payload, Mapping):
        return PipelineRequest(payload)
    rest = dict(payload)
    parameters = rest.pop("parameters", None)
    inputs = rest.pop("inputs", rest)
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, Mapping) or not all(isinstance(key, str) for key in parameters):
        raise CodecError(
            f'"parameters" must be an object of pipeline arguments (as {{"max_length": 50}}), not a '
            f"{type(parameters).__name__}"
        )
    if inputs is None or inputs == {}:
        raise CodecError('The request has no "inputs": send {"inputs": ..., "parameters": {...}}')
    return PipelineRequest(inputs, dict(parameters))


def decode(body: bytes | str, content_type: str) -> PipelineRequest:
    """A JSON or CSV body as a request; ``CodecError`` naming what is accepted otherwise."""
    media = codecs.media_type(content_type)
    if media == codecs.JSON:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UndecodableBody(f"Could not decode the {media} body: {exc}") from exc
        return as_request(payload)
    if media == codecs.CSV:
        return _from_csv(body)
    raise UnsupportedContentType(
        f"Content type {content_type!r} is not supported; supported: {', '.join(REQUEST_TYPES)} "
        '(send {"inputs": ..., "parameters": {...}} as application/json)'
    )


def _from_csv(body: bytes | str) -> PipelineRequest:
    try:
        text = body if isinstance(body, str) else body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UndecodableBody(f"The text/csv body is not valid UTF-8: {exc}") from exc
    lines = text.splitlines()
    if not lines or not any(column in lines[0].lower() for column in _CSV_COLUMNS):
        raise CodecError(
            "A text/csv body needs a header row naming its columns: inputs (one text per row), or question "
            "and context (question answering)"
        )
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise CodecError("The text/csv body has a header row but no rows")
    if "inputs" in rows[0]:
        return PipelineRequest([row["inputs"] for row in rows])
    return PipelineRequest(rows)


def negotiate_accept(accept: str) -> str:
    """The first of JSON, CSV and NPY that ``accept`` allows; ``UnsupportedAccept`` if none."""
    for media_range in accept.split(","):
        media = codecs.media_type(media_range)
        if media in ANSWER_TYPES:
            return media
        if media in ("*/*", "application/*"):
            return codecs.JSON
        if media == "text/*":
            return codecs.CSV
    raise UnsupportedAccept(f"Accept {accept!r} is not supported; supported: {', '.join(ANSWER_TYPES)}")


def encode(prediction: object, accept: str) -> tuple[bytes, str]:
    """The pipeline's output as JSON (as it is), CSV (one row per object) or NPY (numbers only)."""
    media = negotiate_accept(accept)
    if media == codecs.CSV:
        return encode_csv(prediction), media
    if media == codecs.NPY:
        return codecs.encode_npy(_numbers(prediction)), media
    return codecs.dumps_json(prediction), media


def encode_csv(prediction: object) -> bytes:
    """One row per object under a header of their keys, as the toolkit writes classification answers."""
    rows = [prediction] if isinstance(prediction, Mapping) else prediction
    if not isinstance(rows, list | tuple) or not rows or not all(isinstance(row, Mapping) for row in rows):
        raise UnsupportedAccept(
            "text/csv answers hold a list of objects, one row each (as classification and question "
            "answering return); this prediction is not one: ask for application/json"
        )
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(str(key) for key in row))
    stream = io.StringIO()
    writer = csv.DictWriter(stream, list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue().encode("utf-8")


def _numbers(prediction: object) -> np.ndarray:
    try:
        array = np.asarray(prediction)
    except ValueError:  # ragged: texts of different token counts
        array = np.asarray(None)
    if array.dtype.kind not in "biufc":
        raise UnsupportedAccept(
            "application/x-npy answers hold one array of numbers (as feature-extraction returns for one "
            "text); this prediction is not one: ask for application/json"
        )
    return array
