"""The multi-model container contract from the server's side: load, describe, unload and invoke one model of
an instance over HTTP (``POST /models``, ``GET``/``DELETE /models/{name}``, ``POST /models/{name}/invoke``).

Our worker started with ``--multi-model`` answers it, and so does any bring-your-own multi-model server
(docs/multi-model.md). The instance's model manager (model_manager.py) is the only caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from modelhost.router.instance_client import InstanceClient, InstanceResponse
from modelhost.router.invoker import InstanceReply, contract_headers, reply_from

TARGET_MODEL_HEADER = b"x-amzn-sagemaker-target-model"
_JSON = (b"content-type", b"application/json")
_MESSAGE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class LoadReply:
    """The answer to ``POST /models``: 200 loaded, 409 already loaded, 507 no room, else a load failure.

    ``memory_bytes`` is what the model took once loaded, as the instance measured it; ``unowned_bytes`` the
    instance's memory growth that none of its models accounts for (our worker's, process_memory.py). Either
    is None from servers that do not say (the contract does not require them)."""

    status: int
    memory_bytes: int | None
    message: str
    unowned_bytes: int | None = None
    gpu_memory_bytes: int | None = None  # on the instance's GPUs, when it measures them
    gpu_total_bytes: int | None = None  # the memory of the GPUs the instance sees, likewise


@dataclass(frozen=True, slots=True)
class UnloadReply:
    """The answer to ``DELETE /models/{name}``: 200 unloaded, 404 it was not loaded."""

    status: int
    message: str
    unowned_bytes: int | None = None


class ModelServerClient:
    def __init__(self, client: InstanceClient) -> None:
        self._client = client

    async def load(self, name: str, directory: Path, timeout_s: float) -> LoadReply:
        body = orjson.dumps({"model_name": name, "url": str(directory)})
        resp = await self._client.request("POST", "/models", [_JSON], body, timeout_s)
        doc = _document(resp)
        return LoadReply(
            resp.status,
            _bytes(doc, "memory_bytes"),
            message_of(resp),
            _bytes(doc, "unowned_bytes"),
            _bytes(doc, "gpu_memory_bytes"),
            _bytes(doc, "gpu_total_bytes"),
        )

    async def memory_bytes(self, name: str, timeout_s: float) -> int | None:
        """What a loaded model takes, when the instance says (``GET /models/{name}``)."""
        resp = await self._client.request("GET", f"/models/{name}", timeout_s=timeout_s)
        return _bytes(_document(resp), "memory_bytes") if resp.status == 200 else None

    async def is_loaded(self, name: str, timeout_s: float) -> bool:
        resp = await self._client.request("GET", f"/models/{name}", timeout_s=timeout_s)
        return resp.status == 200

    async def unload(self, name: str, timeout_s: float) -> UnloadReply:
        resp = await self._client.request("DELETE", f"/models/{name}", timeout_s=timeout_s)
        return UnloadReply(resp.status, message_of(resp), _bytes(_document(resp), "unowned_bytes"))

    async def invoke(
        self,
        name: str,
        target_model: bytes,
        content_type: bytes | None,
        accept: bytes | None,
        custom_attributes: bytes | None,
        inference_id: bytes | None,
        body: bytes,
        timeout_s: float,
    ) -> InstanceReply:
        headers = contract_headers(
            content_type, accept, custom_attributes, inference_id, (TARGET_MODEL_HEADER, target_model)
        )
        resp = await self._client.request("POST", f"/models/{name}/invoke", headers, body, timeout_s)
        return reply_from(resp)

    async def close(self) -> None:
        await self._client.close()


def _document(resp: InstanceResponse) -> object:
    try:
        return orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return None


def _bytes(doc: object, field: str) -> int | None:
    value = doc.get(field) if isinstance(doc, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def message_of(resp: InstanceResponse | InstanceReply) -> str:
    """The words of an error answer: its JSON ``message`` when it has one, else its text."""
    text = resp.body.decode("utf-8", "replace")
    try:
        doc = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        for field in ("message", "Message", "error"):
            if isinstance(doc.get(field), str):
                text = doc[field]
                break
    return text[:_MESSAGE_CHARS]
