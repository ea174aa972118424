"""The routing table: endpoint → variants → instance handles. Rebuilt by the controller on change, read
lock-free by every invocation (a whole EndpointRoute is swapped in one dict assignment)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from modelhost.router.invoker import Invoker
from modelhost.router.stream_client import StreamClient


class InstanceHandle:
    """One routable instance. Outlives table rebuilds, so its outstanding count stays true across them."""

    __slots__ = (
        "_idle",
        "client",
        "draining",
        "id",
        "log_stream_arn",
        "outstanding",
        "stream_client",
        "variant",
        "waiting",
    )

    def __init__(
        self,
        id: str,
        variant: str,
        client: Invoker,
        log_stream_arn: str,
        stream_client: StreamClient | None = None,
    ) -> None:
        self.id = id
        self.variant = variant
        self.client = client
        # Streamed invocations (InvokeEndpointWithResponseStream) go over HTTP to the container contract.
        self.stream_client = stream_client
        self.log_stream_arn = log_stream_arn
        self.outstanding = 0
        # Requests the instance said were waiting for a handler when it last answered (its own gauge).
        self.waiting = 0
        self.draining = False
        self._idle: asyncio.Event | None = None

    def release(self) -> None:
        self.outstanding -= 1
        if self.draining and self.outstanding == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self) -> None:
        """Wait until no request is in flight; the caller has already taken it out of the table."""
        self.draining = True
        if self.outstanding == 0:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()


@dataclass(frozen=True, slots=True)
class VariantRoute:
    name: str
    weight: float
    instances: tuple[InstanceHandle, ...]


@dataclass(frozen=True, slots=True)
class EndpointRoute:
    name: str
    variants: tuple[VariantRoute, ...]
    timeout_s: float
    # True while the endpoint exists but cannot serve yet (Creating, or restarting after a crash).
    starting: bool = False
    by_name: dict[str, VariantRoute] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.by_name.update({v.name: v for v in self.variants})


class RouteTable:
    def __init__(self) -> None:
        self.routes: dict[str, EndpointRoute] = {}

    def publish(self, route: EndpointRoute) -> None:
        self.routes[route.name] = route

    def remove(self, endpoint: str) -> None:
        self.routes.pop(endpoint, None)
