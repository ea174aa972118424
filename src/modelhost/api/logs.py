"""``GET /modelhost/v1/endpoints/{name}/logs``: the log streams of an endpoint's instances, for the CLI.

Each line is prefixed with its stream (``<variant>/<instance-id>``). With ``follow=true`` the response
stays open and streams new lines as instances write them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs

from modelhost.api.asgi import Receive, Scope, Send, respond

_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
# Instances write these files from other processes; a short re-read interval is the portable way to
# follow them (inotify is Linux-only and would add a dependency for one CLI command).
_FOLLOW_INTERVAL_S = 0.5


class LogsApi:
    def __init__(self, logs_dir: Path) -> None:
        self._dir = logs_dir
        self._stopping = False

    def _streams(self, endpoint: str) -> list[Path]:
        return sorted((self._dir / endpoint).glob("*/*.log"), key=lambda p: p.stat().st_mtime)

    def stop_following(self) -> None:
        """Server shutdown: end every followed stream at its next poll instead of holding the shutdown."""
        self._stopping = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        query = parse_qs(scope.get("query_string", b"").decode())
        follow = query.get("follow", ["false"])[0].lower() in ("1", "true", "yes")
        tail = int(query.get("tail", ["200"])[0])
        if not (self._dir / endpoint).is_dir():
            msg = f"No logs for endpoint {endpoint}: it does not exist or has not started an instance yet.\n"
            await respond(send, 404, msg.encode(), _TEXT)
            return
        await receive()  # the (empty) request body: from now on receive() only says when the client left
        await send({"type": "http.response.start", "status": 200, "headers": _TEXT})
        offsets: dict[Path, int] = {}
        lines: list[str] = []
        for path in self._streams(endpoint):
            data = path.read_bytes()
            offsets[path] = len(data)
            stream = f"{path.parent.name}/{path.stem}"
            lines.extend(f"[{stream}] {line}" for line in data.decode("utf-8", "replace").splitlines())
        first = "\n".join(lines[-tail:] if tail > 0 else lines)
        await send(
            {
                "type": "http.response.body",
                "body": (first + "\n" if first else "").encode(),
                "more_body": follow,
            }
        )
        if not follow:
            return
        disconnect = asyncio.ensure_future(receive())
        try:
            while not self._stopping:
                done, _ = await asyncio.wait({disconnect}, timeout=_FOLLOW_INTERVAL_S)
                if done:
                    return
                chunk = self._read_new(endpoint, offsets)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            disconnect.cancel()

    def _read_new(self, endpoint: str, offsets: dict[Path, int]) -> bytes:
        out: list[str] = []
        for path in self._streams(endpoint):
            start = offsets.get(path, 0)
            size = path.stat().st_size
            if size <= start:
                continue
            with path.open("rb") as f:
                f.seek(start)
                data = f.read(size - start)
            offsets[path] = size
            stream = f"{path.parent.name}/{path.stem}"
            out.extend(f"[{stream}] {line}" for line in data.decode("utf-8", "replace").splitlines())
        return ("\n".join(out) + "\n").encode() if out else b""
