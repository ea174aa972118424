from __future__ import annotations

import pytest

from modelhost.worker.context import HandlerContext

HEADERS = [
    (b"content-type", b"text/csv"),
    (b"x-amzn-sagemaker-custom-attributes", b"c000b4f9-df62-4c85-a0bf-7c525f9104a4,trace=on"),
    (b"x-dup", b"a"),
    (b"x-dup", b"b"),
]


def test_request_headers_are_case_insensitive() -> None:
    context = HandlerContext(HEADERS, {"model_dir": "/m"})
    assert context.get_request_header(0, "Content-Type") == "text/csv"
    assert context.request_headers["x-dup"] == "a, b"
    assert context.get_request_header(0, "absent") is None
    assert context.system_properties == {"model_dir": "/m"}


def test_custom_attributes_in_and_out() -> None:
    context = HandlerContext(HEADERS, {})
    assert context.custom_attributes == "c000b4f9-df62-4c85-a0bf-7c525f9104a4,trace=on"
    assert not context.response_headers
    context.set_custom_attributes("answer=42")
    context.set_custom_attributes("answer=43")  # the last value wins
    assert context.response_headers == ((b"X-Amzn-SageMaker-Custom-Attributes", b"answer=43"),)


def test_custom_attributes_absent() -> None:
    assert HandlerContext([], {}).custom_attributes is None


def test_toolkit_style_response_headers() -> None:
    context = HandlerContext([], {})
    context.set_response_header(0, "X-Model-Version", "3")
    assert context.response_headers == ((b"X-Model-Version", b"3"),)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("Bad Header", "x", "invalid response header name"),
        ("X-Ok", "a\r\nX-Injected: 1", "line break"),
        ("Content-Length", "3", "sets Content-Length itself"),
        ("content-type", "text/plain", r"return \(body, content_type\)"),
    ],
)
def test_unsafe_response_headers_are_refused(key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HandlerContext([], {}).set_response_header(0, key, value)


def test_only_request_index_zero_exists() -> None:
    context = HandlerContext(HEADERS, {})
    with pytest.raises(IndexError):
        context.get_request_header(1, "content-type")
    with pytest.raises(IndexError):
        context.set_response_header(1, "X-A", "b")
