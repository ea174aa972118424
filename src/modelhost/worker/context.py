"""The context object handed to handler functions that declare a trailing ``context`` parameter.

Built per request by the pipeline (only when some handler wants one), and once for load-time functions.
It offers our names (``custom_attributes``, ``set_custom_attributes``) and the inference toolkit's
(``get_request_header(idx, key)``, ``set_response_header(idx, key, value)``, ``system_properties``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
# The worker writes these itself; a handler setting them would corrupt the response framing or contradict it.
_RESERVED = frozenset({"content-length", "transfer-encoding", "connection", "content-type"})


class HandlerContext:
    """Request headers in, response headers out. Index arguments exist for toolkit code; only 0 is valid."""

    __slots__ = ("_headers", "_raw_headers", "_response_headers", "system_properties")

    def __init__(
        self, raw_headers: Sequence[tuple[bytes, bytes]], system_properties: Mapping[str, object]
    ) -> None:
        self._raw_headers = raw_headers
        self._headers: dict[str, str] | None = None
        self._response_headers: dict[str, tuple[bytes, bytes]] | None = None
        self.system_properties = system_properties

    @property
    def request_headers(self) -> Mapping[str, str]:
        """Request headers by lower-cased name; repeated headers are joined with ``", "``."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for raw_name, raw_value in self._raw_headers:
                name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            self._headers = headers
        return self._headers

    @property
    def custom_attributes(self) -> str | None:
        """The request's ``X-Amzn-SageMaker-Custom-Attributes`` (the CustomAttributes of InvokeEndpoint)."""
        return self.request_headers.get("x-amzn-sagemaker-custom-attributes")

    def set_custom_attributes(self, value: str) -> None:
        """Send ``value`` back as the response's custom attributes (CustomAttributes in boto3's answer)."""
        self.set_response_header(0, CUSTOM_ATTRIBUTES_HEADER, value)

    def get_request_header(self, idx: int, key: str) -> str | None:
        _check_index(idx)
        return self.request_headers.get(key.lower())

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        _check_index(idx)
        if not _TOKEN.match(key):
            raise ValueError(f"invalid response header name {key!r}")
        if key.lower() in _RESERVED:
            raise ValueError(
                f"the worker sets {key} itself; return (body, content_type) from output_fn to choose the type"
            )
        text = str(value)
        if _BAD_VALUE.search(text):
            raise ValueError(f"response header {key} contains a line break or NUL")
        if self._response_headers is None:
            self._response_headers = {}
        self._response_headers[key.lower()] = (key.encode("latin-1"), text.encode("latin-1"))

    @property
    def response_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """Headers the handler set, ready for the ASGI response."""
        if self._response_headers is None:
            return ()
        return tuple(self._response_headers.values())


def _check_index(idx: int) -> None:
    if idx != 0:
        raise IndexError(f"request index {idx} out of range: a handler gets one request at a time")
