"""KServe v2's ``POST /v2/models/{name}/infer`` on the worker, for clients that speak it (tritonclient).

Used by the contract app (``server.py``): the route carries the same invocation as ``/invocations`` to the
same dispatcher, translating only the framing. KServe marks a binary body's JSON header size with the
``Inference-Header-Content-Length`` header, SageMaker's Triton endpoint with a content type parameter
(``application/vnd.sagemaker-triton.binary+json;json-header-size=N``), which is what the runtime reads; the
reply is translated back, and errors become KServe's ``{"error": "..."}``. One model per worker: the name
and version in the path are not checked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import orjson

from modelhost.worker.dispatch import WorkReply, WorkRequest

INFER_PATH = re.compile(rb"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")
READY_PATH = b"/v2/health/ready"  # answered as /ping is
HEADER_LENGTH = b"inference-header-content-length"
# The Triton runtime's binary content type (runtimes/triton_kserve.py).
BINARY_JSON = "application/vnd.sagemaker-triton.binary+json"
_HEADER_SIZE = "json-header-size="
_JSON = b"application/json"


def infer_request(body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> WorkRequest:
    """The invocation a ``/v2/models/{name}/infer`` request stands for."""
    content_type = "application/json"
    for name, value in headers:
        if name == HEADER_LENGTH:
            content_type = f"{BINARY_JSON};{_HEADER_SIZE}{value.decode('latin-1').strip()}"
    return WorkRequest(body, content_type, None, headers)


def infer_reply(reply: WorkReply) -> WorkReply:
    """``reply`` framed as KServe v2 answers: the binary header size in a header, errors as JSON."""
    if reply.status != 200:
        error = orjson.dumps({"error": reply.body.decode("utf-8", "replace")})
        return WorkReply(
            reply.status, error, _JSON, reply.headers, reply.queue_us, reply.model_us, reply.batch_rows
        )
    media, _, parameters = reply.content_type.decode("latin-1").partition(";")
    if media.strip() != BINARY_JSON:
        return reply
    size = parameters.strip().removeprefix(_HEADER_SIZE)
    headers = (*reply.headers, (HEADER_LENGTH, size.encode("latin-1")))
    return WorkReply(
        reply.status,
        reply.body,
        b"application/octet-stream",
        headers,
        reply.queue_us,
        reply.model_us,
        reply.batch_rows,
    )
