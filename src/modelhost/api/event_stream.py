"""AWS event stream framing (``application/vnd.amazon.eventstream``): the body of
InvokeEndpointWithResponseStream, as botocore's ``EventStream`` reads it.

Called by ``api/response_stream.py`` for every event it writes. A message is a prelude (total length, headers
length, CRC32 of those eight bytes), headers, the payload and a CRC32 of everything before it; all integers
are big-endian. Only string headers are written: they are all SageMaker's events carry.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence

import orjson

CONTENT_TYPE = b"application/vnd.amazon.eventstream"
# botocore refuses a message whose payload is over 16 MiB; a larger model chunk goes out in several parts.
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
_STRING = 7  # header value type: a UTF-8 string with a two-byte length
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")


def _header(name: str, value: str) -> bytes:
    raw_name = name.encode("utf-8")
    raw_value = value.encode("utf-8")
    if len(raw_name) > 255 or len(raw_value) > 0xFFFF:
        raise ValueError(f"event stream header {name!r} is too long")
    return b"%c%s%c%s%s" % (len(raw_name), raw_name, _STRING, struct.pack(">H", len(raw_value)), raw_value)


def encode_message(headers: Sequence[tuple[str, str]], payload: bytes) -> bytes:
    """One event stream message with string ``headers`` (in order) and ``payload``."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"an event stream payload is at most {MAX_PAYLOAD_BYTES} bytes, not {len(payload)}")
    raw_headers = b"".join(_header(name, value) for name, value in headers)
    total = _PRELUDE.size + _CRC.size + len(raw_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(raw_headers))
    head = prelude + _CRC.pack(zlib.crc32(prelude)) + raw_headers
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


_PAYLOAD_PART = (
    (":event-type", "PayloadPart"),
    (":content-type", "application/octet-stream"),
    (":message-type", "event"),
)


def payload_parts(data: bytes) -> Iterator[bytes]:
    """``PayloadPart`` events carrying ``data``: one, unless it is over the payload limit."""
    for start in range(0, len(data), MAX_PAYLOAD_BYTES):
        yield encode_message(_PAYLOAD_PART, data[start : start + MAX_PAYLOAD_BYTES])


def exception_event(exception_type: str, members: dict[str, str]) -> bytes:
    """An exception event (``ModelStreamError``, ``InternalStreamFailure``): botocore raises it from the
    stream as an ``EventStreamError`` whose code is ``exception_type``."""
    headers = (
        (":exception-type", exception_type),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    )
    return encode_message(headers, orjson.dumps(members))
