"""The floor: the least a single Python process can spend serving the benchmark model over HTTP.

A bare ASGI callable on uvicorn (httptools + uvloop), orjson, no framework, no routing, no worker hop. The
benchmarks start it as its own process (``python bench/floor_server.py --port N``) so that its CPU time and
RSS can be read from /proc like modelhost's. It speaks modelhost's invocation body: a JSON list of rows, or
``{"instances": rows}`` as the peers take it, in; a JSON list of predictions out, on any POST path; ``GET``
answers 200 for readiness. ``--handler sum`` answers the sum of a JSON or NPY array instead (the payload
sweep: a large body, a small answer).
"""

from __future__ import annotations

import argparse
import io
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
App = Callable[[Scope, Receive, Send], Awaitable[None]]

Headers = list[tuple[bytes, bytes]]

_JSON = b"application/json"
_NPY = b"application/x-npy"


def _rows(payload: Any) -> Any:
    # The peers' body shape; modelhost accepts it too, so every target can be sent the very same bytes.
    return payload["instances"] if isinstance(payload, dict) else payload


def predict_answer(model: Any) -> Callable[[bytes, Headers], bytes]:
    predict = model.predict
    return lambda body, headers: orjson.dumps(predict(np.asarray(_rows(orjson.loads(body)))).tolist())


def sum_answer(body: bytes, headers: Headers) -> bytes:
    # The same work modelhost's default decoders and the sum handler do: parse, make an array, sum it.
    content_type = next((v for k, v in headers if k == b"content-type"), _JSON)
    if content_type.startswith(_NPY):
        array = np.load(io.BytesIO(body), allow_pickle=False)
    else:
        array = np.asarray(_rows(orjson.loads(body)))
    return orjson.dumps(float(array.sum()))


def make_app(answer: Callable[[bytes, Headers], bytes]) -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; nothing else arrives
        if scope["method"] == "POST":
            message = await receive()
            body: bytes = message.get("body", b"")
            while message.get("more_body", False):
                message = await receive()
                body += message.get("body", b"")
            # Headers go to the answer unread: only the sum handler looks at Content-Type.
            status, out = 200, answer(body, scope["headers"])
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
    parser.add_argument("--handler", choices=("predict", "sum"), default="predict")
    args = parser.parse_args()
    answer = predict_answer(train()[0]) if args.handler == "predict" else sum_answer
    # Loopback only; no access log and no lifespan, so nothing but the request path costs CPU.
    uvicorn.run(
        make_app(answer),
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
