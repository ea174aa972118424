"""A lean HTTP/1.1 server on asyncio Protocols and httptools: a handler per request, no framework.

Used by ``modelhost serve`` for its port; generic, it imports nothing of modelhost's domain.
"""

from modelhost.http.asgi import AsgiApp, AsgiBridge, asgi_handler
from modelhost.http.options import ServerOptions
from modelhost.http.request import Handler, Headers, Request
from modelhost.http.responder import Respond, Responder, ResponseHeaders
from modelhost.http.server import Server, start_server

__all__ = [
    "AsgiApp",
    "AsgiBridge",
    "Handler",
    "Headers",
    "Request",
    "Respond",
    "Responder",
    "ResponseHeaders",
    "Server",
    "ServerOptions",
    "asgi_handler",
    "start_server",
]
