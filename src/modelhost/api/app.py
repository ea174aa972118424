"""The one ASGI callable behind the server's port: control plane, runtime, /ping, /metrics and logs.

Routing is a few string checks, not a framework: the invocation route is matched first because it is the
hot path.
"""

from __future__ import annotations

from modelhost.api.asgi import Receive, Scope, Send, respond
from modelhost.api.logs import LogsApi
from modelhost.api.metrics import InvocationMetrics
from modelhost.api.runtime import RuntimeApi
from modelhost.api.sagemaker_json import ControlPlaneApi

_PLAIN = [(b"content-type", b"text/plain; charset=utf-8")]
_JSON = [(b"content-type", b"application/json")]
_PROMETHEUS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
_ASYNC_ONLY = {
    "async-invocations": "InvokeEndpointAsync (asynchronous inference)",
    "invocations-response-stream": "InvokeEndpointWithResponseStream (response streaming)",
}


class App:
    def __init__(
        self, control_plane: ControlPlaneApi, runtime: RuntimeApi, logs: LogsApi, metrics: InvocationMetrics
    ) -> None:
        self._control_plane = control_plane
        self._runtime = runtime
        self._logs = logs
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is handled by the server itself
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "POST" and path.startswith("/endpoints/"):
            name, _, action = path[len("/endpoints/") :].partition("/")
            if action == "invocations":
                await self._runtime.invoke(scope, receive, send, name)
                return
            if action in _ASYNC_ONLY:
                body = b'{"message": "%s is not supported by modelhost yet."}' % _ASYNC_ONLY[action].encode()
                await respond(send, 501, body, [*_JSON, (b"x-amzn-errortype", b"NotImplemented")])
                return
        elif method == "POST" and path == "/":
            await self._control_plane(scope, receive, send)
            return
        elif method == "GET" and path == "/ping":
            await respond(send, 200, b"", _PLAIN)
            return
        elif method == "GET" and path == "/metrics":
            await respond(send, 200, self._metrics.exposition(), _PROMETHEUS)
            return
        elif method == "GET" and path.startswith("/modelhost/v1/endpoints/") and path.endswith("/logs"):
            await self._logs(scope, receive, send, path[len("/modelhost/v1/endpoints/") : -len("/logs")])
            return
        await respond(send, 404, f"No route for {method} {path}\n".encode(), _PLAIN)
