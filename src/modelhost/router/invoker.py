"""How the router hands one invocation to one instance, whatever the transport.

``FrameClient`` (frame_client.py) speaks frames to our own workers; ``HttpInvoker`` here speaks the container
contract's ``POST /invocations`` to any server that implements it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from modelhost.router.instance_client import InstanceClient, InstanceResponse

CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"


@dataclass(frozen=True, slots=True)
class StepTiming:
    """One container's part in a serial pipeline's answer."""

    container: str
    latency_us: int
    status: int


@dataclass(frozen=True, slots=True)
class InstanceReply:
    """An instance's answer. The counters are what our workers report; None from servers that do not."""

    status: int
    body: bytes
    content_type: str | None
    custom_attributes: str | None
    queue_us: int | None = None
    batch_rows: int | None = None
    waiting: int | None = None
    # A multi-container instance: the container that answered (a pipeline's failing step, else None), and a
    # pipeline's steps as they ran.
    container: str | None = None
    steps: tuple[StepTiming, ...] = ()


class Invoker(Protocol):
    async def invoke(
        self,
        content_type: bytes | None,
        accept: bytes | None,
        custom_attributes: bytes | None,
        inference_id: bytes | None,
        body: bytes,
        timeout_s: float,
    ) -> InstanceReply:
        """Send one invocation; raises the instance client's InstanceUnreachable (InstanceNotConnected when
        it surely never arrived) or InstanceTimeout. Error statuses are replies, not exceptions."""
        ...

    async def close(self) -> None:
        """Stop sending; invocations in flight finish."""
        ...


class HttpInvoker:
    """Invocations as ``POST /invocations`` over a pooled HTTP/1.1 client."""

    __slots__ = ("client",)

    def __init__(self, client: InstanceClient) -> None:
        self.client = client

    async def invoke(
        self,
        content_type: bytes | None,
        accept: bytes | None,
        custom_attributes: bytes | None,
        inference_id: bytes | None,
        body: bytes,
        timeout_s: float,
    ) -> InstanceReply:
        headers = contract_headers(content_type, accept, custom_attributes, inference_id)
        return reply_from(await self.client.request("POST", "/invocations", headers, body, timeout_s))

    async def close(self) -> None:
        await self.client.close()


def contract_headers(
    content_type: bytes | None,
    accept: bytes | None,
    custom_attributes: bytes | None,
    inference_id: bytes | None,
    *first: tuple[bytes, bytes],
) -> list[tuple[bytes, bytes]]:
    """An invocation's headers as the container contract carries them, after ``first``; absent: omitted."""
    headers = list(first)
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if accept is not None:
        headers.append((b"accept", accept))
    if custom_attributes is not None:
        headers.append((b"x-amzn-sagemaker-custom-attributes", custom_attributes))
    if inference_id is not None:
        headers.append((b"x-amzn-sagemaker-inference-id", inference_id))
    return headers


def reply_from(resp: InstanceResponse) -> InstanceReply:
    """An invocation's answer over HTTP (``/invocations``, or a multi-model ``/models/{name}/invoke``)."""
    h = resp.headers
    return InstanceReply(
        resp.status,
        resp.body,
        h.get("content-type"),
        h.get(CUSTOM_ATTRIBUTES),
        _int_header(h, "x-modelhost-queue-us"),
        _int_header(h, "x-modelhost-batch-rows"),
        _int_header(h, "x-modelhost-waiting"),
    )


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # a bring-your-own server's header of the same name is not ours to trust
