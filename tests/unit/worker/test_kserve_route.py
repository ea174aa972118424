from __future__ import annotations

import json

from modelhost.worker.dispatch import WorkReply
from modelhost.worker.kserve_route import INFER_PATH, infer_reply, infer_request

BINARY = "application/vnd.sagemaker-triton.binary+json"


def test_infer_paths() -> None:
    assert INFER_PATH.fullmatch(b"/v2/models/resnet/infer")
    assert INFER_PATH.fullmatch(b"/v2/models/resnet/versions/3/infer")
    assert not INFER_PATH.fullmatch(b"/v2/models/resnet")
    assert not INFER_PATH.fullmatch(b"/v2/models/a/b/infer")


def test_the_header_length_header_becomes_sagemakers_content_type() -> None:
    headers = [(b"content-type", b"application/octet-stream"), (b"inference-header-content-length", b"42")]
    work = infer_request(b"body", headers)
    assert (work.body, work.content_type, work.accept, work.headers) == (
        b"body",
        f"{BINARY};json-header-size=42",
        None,
        headers,
    )
    assert infer_request(b"{}", [(b"content-type", b"application/json")]).content_type == "application/json"


def test_replies_are_framed_as_kserve_answers() -> None:
    binary = WorkReply(200, b"{...}raw", f"{BINARY};json-header-size=5".encode(), ((b"x-a", b"1"),), 1, 2, 3)
    framed = infer_reply(binary)
    assert (framed.content_type, framed.headers) == (
        b"application/octet-stream",
        ((b"x-a", b"1"), (b"inference-header-content-length", b"5")),
    )
    assert (framed.body, framed.queue_us, framed.model_us, framed.batch_rows) == (b"{...}raw", 1, 2, 3)
    plain = WorkReply(200, b"{}", b"application/json", (), 0, 0, 1)
    assert infer_reply(plain) is plain
    error = infer_reply(WorkReply(400, b"Model 'm': missing input 'x'", b"text/plain", (), 0, 0, 0))
    assert (error.status, error.content_type) == (400, b"application/json")
    assert json.loads(error.body) == {"error": "Model 'm': missing input 'x'"}
