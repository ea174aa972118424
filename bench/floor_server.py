"""The floor: the least a single Python process can spend serving the benchmark model over HTTP.

A bare ASGI callable on uvicorn (httptools + uvloop), orjson, no framework, no routing, no worker hop. The
benchmark starts it as its own process (``python bench/floor_server.py --port N``) so that its CPU time and
RSS can be read from /proc like modelhost's. It speaks modelhost's invocation body: a JSON list of rows in,
a JSON list of predictions out, on any POST path; ``GET`` answers 200 for readiness.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import orjson
import uvicorn
from shared_model import train

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = b"application/json"


def make_app(model: Any) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    predict = model.predict

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; nothing else arrives
        if scope["method"] == "POST":
            message = await receive()
            body: bytes = message.get("body", b"")
            while message.get("more_body", False):
                message = await receive()
                body += message.get("body", b"")
            status, out = 200, orjson.dumps(predict(np.asarray(orjson.loads(body))).tolist())
        else:
            status, out = 200, b"{}"
        # Content-Length given, as modelhost's worker does: without it uvicorn would send a chunked body,
        # and the floor would pay for framing that modelhost does not.
        headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(out))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    model, _ = train()
    # Loopback only; no access log and no lifespan, so nothing but the request path costs CPU.
    uvicorn.run(
        make_app(model),
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
