"""What every control-plane operation needs, built once by the server's composition root."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from modelhost.clock import Clock
from modelhost.instances.catalog import InstanceCatalog
from modelhost.instances.placement import HostCapacity
from modelhost.settings import Settings
from modelhost.store.metadata import MetadataStore
from modelhost.store.objects import ObjectStore


class LiveView(Protocol):
    """The controller's in-memory view of running instances (read by Describe*, never written)."""

    def healthy_counts(self, endpoint: str, deployment_id: str) -> Mapping[str, int]:
        """Healthy instances per variant of one deployment of an endpoint."""
        ...


@dataclass(frozen=True)
class ControlPlaneContext:
    store: MetadataStore
    objects: ObjectStore
    settings: Settings
    clock: Clock
    catalog: InstanceCatalog
    host: HostCapacity
    live: LiveView
    wake_controller: Callable[[], None]

    def arn(self, kind: str, name: str) -> str:
        from modelhost.ids import arn

        return arn(self.settings.region, self.settings.account_id, kind, name)
