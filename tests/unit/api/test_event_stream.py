"""The event stream encoder, read back by botocore's own parser and by the EventStream boto3 hands users."""

from __future__ import annotations

import binascii
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from botocore.eventstream import EventStream, EventStreamBuffer, EventStreamMessage
from botocore.exceptions import EventStreamError
from botocore.parsers import RestJSONParser

from modelhost.api.event_stream import MAX_PAYLOAD_BYTES, encode_message, exception_event, payload_parts


def _decode(data: bytes) -> list[EventStreamMessage]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


class _Raw:
    """What botocore's EventStream reads from: an HTTP body that arrives in pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    def stream(self) -> Iterator[bytes]:
        yield from self._pieces

    def close(self) -> None:
        pass


def _events(data: bytes, piece_bytes: int) -> EventStream:
    """``data`` as boto3's invoke_endpoint_with_response_stream would read it, in pieces of the given size."""
    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    operation = model.operation_model("InvokeEndpointWithResponseStream")
    shape = operation.output_shape.members["Body"]
    pieces = [data[i : i + piece_bytes] for i in range(0, len(data), piece_bytes)]
    # The parser a rest-json client (sagemaker-runtime's protocol) reads its event streams with.
    parser = RestJSONParser.EVENT_STREAM_PARSER_CLS()
    return EventStream(_Raw(pieces), shape, parser, operation.name)


def test_payload_part_decodes_with_its_headers_and_checksums() -> None:
    (message,) = _decode(b"".join(payload_parts(b"hello, world")))
    assert message.headers == {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
    assert message.payload == b"hello, world"
    # botocore checked both CRCs while decoding; the prelude's lengths are the message's own.
    assert message.prelude.total_length == len(b"".join(payload_parts(b"hello, world")))
    assert message.crc == binascii.crc32(b"".join(payload_parts(b"hello, world"))[:-4])


def test_headers_keep_order_and_utf8() -> None:
    data = encode_message([("b", "é"), ("a", ""), (":x", "1" * 300)], b"\x00\xff")
    (message,) = _decode(data)
    assert list(message.headers.items()) == [("b", "é"), ("a", ""), (":x", "1" * 300)]
    assert message.payload == b"\x00\xff"


def test_payload_over_the_limit_is_split_into_parts() -> None:
    data = bytes(range(256)) * (MAX_PAYLOAD_BYTES // 256) + b"tail"
    messages = _decode(b"".join(payload_parts(data)))
    assert [len(m.payload) for m in messages] == [MAX_PAYLOAD_BYTES, 4]
    assert b"".join(m.payload for m in messages) == data


def test_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="payload"):
        encode_message([], b"x" * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(ValueError, match="too long"):
        encode_message([("n" * 256, "v")], b"")


@pytest.mark.parametrize("piece_bytes", [1, 7, 1024])
def test_boto3_event_stream_reads_parts_then_raises_the_model_stream_error(piece_bytes: int) -> None:
    data = b"".join(
        [
            *payload_parts(b"Once"),
            *payload_parts(b" upon"),
            exception_event("ModelStreamError", {"Message": "the model broke", "ErrorCode": "StreamBroken"}),
        ]
    )
    received: list[dict[str, Any]] = []
    with pytest.raises(EventStreamError) as err:
        for event in _events(data, piece_bytes):
            received.append(event)
    assert received == [{"PayloadPart": {"Bytes": b"Once"}}, {"PayloadPart": {"Bytes": b" upon"}}]
    assert err.value.response["Error"] == {"Code": "ModelStreamError", "Message": "the model broke"}


def test_boto3_event_stream_raises_internal_stream_failure() -> None:
    data = exception_event("InternalStreamFailure", {"Message": "broken inside"})
    with pytest.raises(EventStreamError) as err:
        list(_events(data, 1024))
    assert err.value.response["Error"] == {"Code": "InternalStreamFailure", "Message": "broken inside"}
