"""The routing table: endpoint → variants → instance handles. Rebuilt by the controller on change, read
lock-free by every invocation (a whole EndpointRoute is swapped in one dict assignment)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelhost.router.invoker import Invoker
from modelhost.router.stream_client import StreamClient

if TYPE_CHECKING:
    from modelhost.router.model_manager import InstanceModels


@dataclass(frozen=True, slots=True)
class InstanceFootprint:
    """What the instance metrics (api/instance_metrics.py) measure an instance with: its processes, and the
    resources its type gives it. Set by the supervisor when the instance comes up."""

    # One per container process; each was started in a session of its own, so its pid is its group's id
    # and children a bring-your-own server starts stay in the group.
    process_groups: tuple[int, ...]
    started_at_s: float  # monotonic, just before its processes started
    vcpus: float
    memory_bytes: int
    # A single-model instance's unpacked artifacts (every container's), measured once before it started,
    # and the disk they are measured against (VolumeSizeInGB, or MODELHOST_INSTANCE_DISK_BYTES). A
    # multi-model instance's disk is its model cache's instead.
    artifact_bytes: int
    disk_bytes: int


class InstanceHandle:
    """One routable instance. Outlives table rebuilds, so its outstanding count stays true across them."""

    __slots__ = (
        "_idle",
        "client",
        "container_streams",
        "containers",
        "draining",
        "footprint",
        "id",
        "log_stream_arn",
        "models",
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
        models: InstanceModels | None = None,
        containers: dict[str, Invoker] | None = None,
        footprint: InstanceFootprint | None = None,
        container_streams: dict[str, StreamClient] | None = None,
    ) -> None:
        self.id = id
        self.variant = variant
        self.client = client
        # Streamed invocations (InvokeEndpointWithResponseStream) go over HTTP to the container contract.
        self.stream_client = stream_client
        self.log_stream_arn = log_stream_arn
        # A multi-model instance's model cache (model_manager.py); None for single-model instances.
        self.models = models
        # A multi-container instance's containers by hostname, in order (``client`` chains them for a serial
        # pipeline); None for one container.
        self.containers = containers
        # A Direct multi-container instance's streaming connections by hostname; None otherwise (a serial
        # pipeline's answer is not streamed).
        self.container_streams = container_streams
        self.footprint = footprint  # None: no instance metrics (handles built by tests)
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
class ContainerRoute:
    """A variant whose model has several containers: their hostnames in order, and whether each request
    runs one of them (Direct, named by TargetContainerHostname) or all in turn (Serial)."""

    hostnames: tuple[str, ...]
    direct: bool


@dataclass(frozen=True, slots=True)
class VariantRoute:
    name: str
    weight: float
    instances: tuple[InstanceHandle, ...]
    # A multi-model variant: the ModelDataUrl prefix its TargetModel keys live under; None otherwise.
    model_prefix: str | None = None
    containers: ContainerRoute | None = None


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
