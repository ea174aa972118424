"""The binary framing between the server and its built-in workers: invocations without HTTP in between.

HTTP stays the container contract (``/ping``, ``/invocations``) every instance speaks, bring-your-own servers
included. Between the router and a worker we wrote ourselves it is overhead twice over: each side builds a
head the other parses, header by header, and each connection carries one request at a time. A frame is a
fixed struct plus the few strings an invocation has, and one connection carries any number of invocations
at once, answered in any order by id, so the writes of requests that arrive together share system calls and
the worker reads a burst of them in one go.

A frame is ``u32 length`` (of what follows) then ``u8 kind``:

- request (kind 1): ``u32 id``, ``u16`` lengths of content type, accept, custom attributes and inference id
  (0xFFFF: absent), then those strings (latin-1, as HTTP headers are) and the body.
- reply (kind 2): ``u32 id``, ``u16 status``, ``u32`` queue µs, model µs, batch rows, waiting, ``u16`` lengths
  of content type and custom attributes (0xFFFF: absent), the strings, then the body.

Little-endian. Pure: no I/O; ``FrameReader`` turns a byte stream into frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

REQUEST = 1
REPLY = 2
ABSENT = 0xFFFF
MAX_FRAME_BYTES = 1024**3 + 64 * 1024  # a 1 GiB body (the worker's backstop) and its strings

_LENGTH = struct.Struct("<I")
_REQUEST_HEAD = struct.Struct("<IBIHHHH")  # length, kind, id, four string lengths
_REPLY_HEAD = struct.Struct("<IBIHIIIIHH")  # length, kind, id, status, four counters, two string lengths
# Up to this size a body is copied behind the head so that one write carries the frame.
JOIN_BODY_MAX_BYTES = 64 * 1024


class FrameError(Exception):
    """The byte stream is not a valid frame sequence; the connection cannot be trusted any further."""


@dataclass(frozen=True, slots=True)
class RequestFrame:
    id: int
    content_type: bytes | None
    accept: bytes | None
    custom_attributes: bytes | None
    inference_id: bytes | None
    body: bytes


@dataclass(frozen=True, slots=True)
class ReplyFrame:
    id: int
    status: int
    queue_us: int
    model_us: int
    batch_rows: int
    waiting: int  # requests the worker had waiting for a handler as it answered
    content_type: bytes | None
    custom_attributes: bytes | None
    body: bytes


def _len(text: bytes | None) -> int:
    if text is None:
        return ABSENT
    if len(text) >= ABSENT:
        raise FrameError(f"a header value of {len(text)} bytes is too long for a frame")
    return len(text)


def encode_request(
    id: int,
    content_type: bytes | None,
    accept: bytes | None,
    custom_attributes: bytes | None,
    inference_id: bytes | None,
    body: bytes,
) -> list[bytes]:
    """The frame as one or two buffers: head and strings (with the body when it is small), then the body."""
    strings = b"".join(s for s in (content_type, accept, custom_attributes, inference_id) if s)
    size = _REQUEST_HEAD.size - 4 + len(strings) + len(body)
    head = _REQUEST_HEAD.pack(
        size,
        REQUEST,
        id,
        _len(content_type),
        _len(accept),
        _len(custom_attributes),
        _len(inference_id),
    )
    if len(body) <= JOIN_BODY_MAX_BYTES:
        return [head + strings + body]
    return [head + strings, body]


def encode_reply(
    id: int,
    status: int,
    queue_us: int,
    model_us: int,
    batch_rows: int,
    waiting: int,
    content_type: bytes | None,
    custom_attributes: bytes | None,
    body: bytes,
) -> list[bytes]:
    strings = (content_type or b"") + (custom_attributes or b"")
    size = _REPLY_HEAD.size - 4 + len(strings) + len(body)
    head = _REPLY_HEAD.pack(
        size,
        REPLY,
        id,
        status,
        _clamp(queue_us),
        _clamp(model_us),
        _clamp(batch_rows),
        _clamp(waiting),
        _len(content_type),
        _len(custom_attributes),
    )
    if len(body) <= JOIN_BODY_MAX_BYTES:
        return [head + strings + body]
    return [head + strings, body]


def _clamp(value: int) -> int:
    return 0 if value < 0 else min(value, 0xFFFFFFFF)


def _take(frame: memoryview, at: int, length: int) -> tuple[bytes | None, int]:
    if length == ABSENT:
        return None, at
    end = at + length
    if end > len(frame):
        raise FrameError("a frame's strings run past its end")
    return bytes(frame[at:end]), end


def _decode(frame: memoryview) -> RequestFrame | ReplyFrame:
    # ``frame`` includes its length prefix.
    kind = frame[4]
    if kind == REQUEST and len(frame) >= _REQUEST_HEAD.size:
        _, _, id, n_type, n_accept, n_attrs, n_inference = _REQUEST_HEAD.unpack_from(frame)
        at = _REQUEST_HEAD.size
        content_type, at = _take(frame, at, n_type)
        accept, at = _take(frame, at, n_accept)
        attrs, at = _take(frame, at, n_attrs)
        inference_id, at = _take(frame, at, n_inference)
        return RequestFrame(id, content_type, accept, attrs, inference_id, bytes(frame[at:]))
    if kind == REPLY and len(frame) >= _REPLY_HEAD.size:
        _, _, id, status, queue_us, model_us, rows, waiting, n_type, n_attrs = _REPLY_HEAD.unpack_from(frame)
        at = _REPLY_HEAD.size
        content_type, at = _take(frame, at, n_type)
        attrs, at = _take(frame, at, n_attrs)
        body = bytes(frame[at:])
        return ReplyFrame(id, status, queue_us, model_us, rows, waiting, content_type, attrs, body)
    raise FrameError(f"unknown or truncated frame of kind {kind} and {len(frame)} bytes")


class FrameReader:
    """Collects stream bytes and yields the complete frames in them, in order."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[RequestFrame | ReplyFrame]:
        """The frames completed by ``data``; raises FrameError on a stream that is not frames."""
        buffer = self._buffer
        if not buffer:
            frames, used = _split(memoryview(data))
            if used < len(data):
                buffer += data[used:]
            return frames
        buffer += data
        view = memoryview(buffer)
        try:
            frames, used = _split(view)
        finally:
            view.release()
        del buffer[:used]
        return frames

    @property
    def pending_bytes(self) -> int:
        """Bytes of a frame not yet complete (0 between frames)."""
        return len(self._buffer)


def _split(view: memoryview) -> tuple[list[RequestFrame | ReplyFrame], int]:
    frames: list[RequestFrame | ReplyFrame] = []
    at = 0
    total = len(view)
    while total - at >= 5:
        (size,) = _LENGTH.unpack_from(view, at)
        if size > MAX_FRAME_BYTES or size < 1:
            raise FrameError(f"a frame claims {size} bytes")
        end = at + 4 + size
        if end > total:
            break
        frames.append(_decode(view[at:end]))
        at = end
    return frames, at
