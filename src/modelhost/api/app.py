"""The handler behind the server's port: control plane, runtime, /ping, /metrics and logs.

Called by the HTTP server (``modelhost.http``) for every request. Routing is a few byte-string checks, not a
framework: the invocation route is matched first and answered natively because it is the hot path; the
control plane and the logs stream run as ASGI callables through the bridge.
"""

from __future__ import annotations

from urllib.parse import unquote

from modelhost.api.asgi import Receive, Scope, Send, respond
from modelhost.api.logs import LogsApi
from modelhost.api.metrics import InvocationMetrics
from modelhost.api.runtime import RuntimeApi
from modelhost.api.sagemaker_json import MAX_REQUEST_BYTES, ControlPlaneApi
from modelhost.http import AsgiBridge, Request, Responder

_PLAIN = [(b"content-type", b"text/plain; charset=utf-8")]
_JSON = [(b"content-type", b"application/json")]
_PROMETHEUS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
_ASYNC_ONLY = {
    b"async-invocations": b"InvokeEndpointAsync (asynchronous inference)",
}
_ENDPOINTS = b"/endpoints/"
_INVOCATIONS = (b"invocations", b"invocations-response-stream")
_LOGS_PREFIX = "/modelhost/v1/endpoints/"


def _name(raw: bytes) -> str:
    text = raw.decode("latin-1")
    return unquote(text) if "%" in text else text


class App:
    def __init__(
        self, control_plane: ControlPlaneApi, runtime: RuntimeApi, logs: LogsApi, metrics: InvocationMetrics
    ) -> None:
        self._control_plane = control_plane
        self._runtime = runtime
        self._logs = logs
        self._metrics = metrics
        self._bridge = AsgiBridge(self._asgi)

    @property
    def max_body_bytes(self) -> int:
        """The largest body any route accepts: the HTTP server buffers no more (see ``body_too_large``)."""
        return max(self._runtime.max_payload_bytes, MAX_REQUEST_BYTES)

    def __call__(self, request: Request, responder: Responder) -> None:
        method = request.method
        path = request.path
        if path.startswith(_ENDPOINTS):
            if method == b"POST":
                name, _, action = path[len(_ENDPOINTS) :].partition(b"/")
                if action == b"invocations":
                    self._runtime.invoke(_name(name), request.headers, request.body, responder.send)
                    return
                if action == b"invocations-response-stream":
                    self._runtime.invoke_stream(_name(name), request.headers, request.body, responder)
                    return
                feature = _ASYNC_ONLY.get(action)
                if feature is not None:
                    body = b'{"message": "%s is not supported by modelhost yet."}' % feature
                    responder.send(501, [*_JSON, (b"x-amzn-errortype", b"NotImplemented")], body)
                    return
        elif path == b"/":
            if method == b"POST":
                self._bridge(request, responder)
                return
        elif path == b"/ping":
            if method == b"GET":
                responder.send(200, _PLAIN, b"")
                return
        elif path == b"/metrics":
            if method == b"GET":
                responder.send(200, _PROMETHEUS, self._metrics.exposition())
                return
        elif path.startswith(b"/modelhost/v1/endpoints/") and path.endswith(b"/logs") and method == b"GET":
            self._bridge(request, responder)
            return
        text = f"No route for {method.decode('latin-1')} {_name(path)}\n"
        responder.send(404, _PLAIN, text.encode("utf-8", "replace"))

    def body_too_large(self, request: Request, responder: Responder) -> None:
        """Answers a request whose body is over ``max_body_bytes`` with the error its route would give."""
        path = request.path
        name, _, action = path[len(_ENDPOINTS) :].partition(b"/")
        if request.method == b"POST" and path.startswith(_ENDPOINTS) and action in _INVOCATIONS:
            self._runtime.reject_too_large(_name(name), responder.send)
        elif path == b"/":
            self._control_plane.reject_too_large(responder.send)
        else:
            responder.send(413, _PLAIN, b"Request body too large\n")

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path == "/":
            await self._control_plane(scope, receive, send)
        elif path.startswith(_LOGS_PREFIX) and path.endswith("/logs"):
            await self._logs(scope, receive, send, path[len(_LOGS_PREFIX) : -len("/logs")])
        else:
            await respond(send, 404, f"No route for {scope['method']} {path}\n".encode(), _PLAIN)

    def stop_streams(self) -> None:
        """Shutdown, first step: end followed log streams so that they do not hold the server open."""
        self._logs.stop_following()

    async def close(self) -> None:
        """Shutdown, last step (the server has stopped waiting): cancel what still runs."""
        await self._bridge.aclose()
        await self._runtime.close()
