"""The frame codec: round trips, streams cut anywhere, and streams that are not frames."""

from __future__ import annotations

import struct

import pytest

from modelhost.frames import (
    JOIN_BODY_MAX_BYTES,
    FrameError,
    FrameReader,
    ReplyFrame,
    RequestFrame,
    encode_reply,
    encode_request,
)


def test_request_round_trip_keeps_absent_and_empty_apart() -> None:
    data = b"".join(encode_request(7, b"text/csv", None, b"", b"id-1", b"1,2,3"))
    assert FrameReader().feed(data) == [RequestFrame(7, b"text/csv", None, b"", b"id-1", b"1,2,3")]


def test_reply_round_trip_clamps_counters() -> None:
    data = b"".join(encode_reply(2**32 - 1, 424, -5, 2**40, 3, 0, b"application/json", None, b"[1]"))
    (frame,) = FrameReader().feed(data)
    assert frame == ReplyFrame(2**32 - 1, 424, 0, 2**32 - 1, 3, 0, b"application/json", None, b"[1]")


def test_a_large_body_goes_out_as_its_own_buffer() -> None:
    body = bytes(range(256)) * (JOIN_BODY_MAX_BYTES // 256 + 1)
    buffers = encode_request(1, None, None, None, None, body)
    assert len(buffers) == 2 and buffers[1] is body
    (frame,) = FrameReader().feed(b"".join(buffers))
    assert isinstance(frame, RequestFrame) and frame.body == body


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 64, 1000])
def test_a_stream_cut_anywhere_yields_the_same_frames_in_order(chunk: int) -> None:
    sent = [RequestFrame(i, b"text/csv", b"*/*" if i % 2 else None, None, None, b"x" * i) for i in range(40)]
    stream = b"".join(
        b"".join(encode_request(f.id, f.content_type, f.accept, f.custom_attributes, f.inference_id, f.body))
        for f in sent
    )
    reader = FrameReader()
    got = []
    for at in range(0, len(stream), chunk):
        got += reader.feed(stream[at : at + chunk])
    assert got == sent
    assert reader.pending_bytes == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    data = b"".join(encode_request(1, None, None, None, None, b"abc"))
    reader = FrameReader()
    assert reader.feed(data[:-1]) == []
    assert reader.pending_bytes == len(data) - 1
    assert [f.body for f in reader.feed(data[-1:])] == [b"abc"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (struct.pack("<I", 2**31) + b"\x01", "claims"),
        (struct.pack("<I", 0) + b"\x01", "claims"),
        (struct.pack("<IB", 3, 9) + b"xy", "unknown or truncated"),
        # A request whose string lengths run past the frame's end.
        (struct.pack("<IBIHHHH", 13, 1, 1, 100, 0xFFFF, 0xFFFF, 0xFFFF), "run past"),
    ],
)
def test_streams_that_are_not_frames_fail(data: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        FrameReader().feed(data)


def test_header_values_too_long_for_a_frame_are_refused() -> None:
    with pytest.raises(FrameError, match="too long"):
        encode_request(1, b"x" * 70_000, None, None, None, b"")
