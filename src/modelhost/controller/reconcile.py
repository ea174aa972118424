"""Reconciliation as pure functions: ``plan`` turns desired instance counts and the instances we have into
actions; ``progress`` moves an endpoint's status on from what its deployments' instances show.

The fleet loop (fleet.py) reads the store and the clock, calls these, and carries the actions out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from modelhost.domain.status import EndpointStatus
from modelhost.store.metadata import EndpointRow


class Phase(StrEnum):
    STARTING = "starting"  # fetching the artifact, starting the process, or waiting for /ping
    HEALTHY = "healthy"  # answering /ping; routable
    UNHEALTHY = "unhealthy"  # failed too many pings (hung); to be killed and replaced
    EXITED = "exited"  # the process is gone (crash, load failure, startup timeout)
    STOPPING = "stopping"  # being drained and stopped on purpose


@dataclass(frozen=True, slots=True)
class TargetKey:
    endpoint: str
    deployment_id: str
    variant: str


@dataclass(frozen=True, slots=True)
class InstanceState:
    id: str
    key: TargetKey
    phase: Phase
    started_at: float


@dataclass(frozen=True, slots=True)
class Launch:
    key: TargetKey


@dataclass(frozen=True, slots=True)
class Stop:
    instance_id: str
    drain: bool  # False for hung instances: their requests will not finish anyway


@dataclass(frozen=True, slots=True)
class Reap:
    instance_id: str


Action = Launch | Stop | Reap


def targets(row: EndpointRow) -> dict[TargetKey, int]:
    """Desired instance counts of an endpoint: its deployed fleet, plus the new one while updating."""
    if row.status in (EndpointStatus.FAILED, EndpointStatus.DELETING):
        return {}
    out = {
        TargetKey(row.name, row.deployment["id"], v["VariantName"]): int(v["DesiredInstanceCount"])
        for v in row.variants
    }
    if row.pending_deployment is not None and row.pending_variants is not None:
        dep = row.pending_deployment["id"]
        out.update(
            {
                TargetKey(row.name, dep, v["VariantName"]): int(v["DesiredInstanceCount"])
                for v in row.pending_variants
            }
        )
    return out


def plan(
    wanted: Mapping[TargetKey, int],
    instances: Sequence[InstanceState],
    now: float,
    blocked_until: Mapping[TargetKey, float],
) -> list[Action]:
    actions: list[Action] = []
    live: dict[TargetKey, list[InstanceState]] = {}
    for inst in instances:
        if inst.phase == Phase.EXITED:
            actions.append(Reap(inst.id))
        elif inst.phase == Phase.UNHEALTHY:
            actions.append(Stop(inst.id, drain=False))
        elif inst.phase in (Phase.STARTING, Phase.HEALTHY):
            if inst.key in wanted:
                live.setdefault(inst.key, []).append(inst)
            else:
                actions.append(Stop(inst.id, drain=True))
    for key, count in wanted.items():
        have = live.get(key, [])
        if len(have) < count and now >= blocked_until.get(key, 0.0):
            actions.extend(Launch(key) for _ in range(count - len(have)))
        elif len(have) > count:
            # Scale in the least useful first: still-starting ones, then the newest.
            extra = sorted(have, key=lambda i: (i.phase == Phase.HEALTHY, -i.started_at))[: len(have) - count]
            actions.extend(Stop(i.id, drain=True) for i in extra)
    return actions


def all_healthy(variants: Sequence[Mapping[str, Any]], healthy: Mapping[str, int]) -> bool:
    return all(healthy.get(v["VariantName"], 0) >= int(v["DesiredInstanceCount"]) for v in variants)


def progress(
    row: EndpointRow,
    healthy: Mapping[str, Mapping[str, int]],
    failures: Mapping[str, str],
    live_counts: Mapping[str, int],
    now: float,
) -> EndpointRow | None:
    """The endpoint's next row, or None if nothing changes.

    ``healthy`` maps deployment id → variant → healthy instances; ``failures`` maps deployment id → why an
    instance of it could not start; ``live_counts`` maps variant → starting or healthy instances of the
    deployed fleet (to see a scale-in finish).
    """
    current = row.deployment["id"]
    if row.status == EndpointStatus.CREATING:
        if current in failures:
            return dataclasses.replace(
                row,
                status=EndpointStatus.FAILED,
                last_modified_time=now,
                failure_reason=f"An instance of variant(s) in endpoint config {row.config_name} failed to "
                f"start: {failures[current]}",
            )
        if all_healthy(row.variants, healthy.get(current, {})):
            return dataclasses.replace(row, status=EndpointStatus.IN_SERVICE, last_modified_time=now)
        return None
    if row.status != EndpointStatus.UPDATING:
        return None
    if row.pending_deployment is not None and row.pending_variants is not None:
        pending = row.pending_deployment["id"]
        if pending in failures:
            return dataclasses.replace(
                row,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=now,
                failure_reason=f"Update to endpoint config {row.pending_config_name} failed and was rolled "
                f"back; the endpoint still serves {row.config_name}. {failures[pending]}",
                pending_config_name=None,
                pending_deployment=None,
                pending_variants=None,
                pending_start_time=None,
            )
        if all_healthy(row.pending_variants, healthy.get(pending, {})):
            return dataclasses.replace(
                row,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=now,
                config_name=row.pending_config_name or row.config_name,
                deployment=row.pending_deployment,
                variants=row.pending_variants,
                pending_config_name=None,
                pending_deployment=None,
                pending_variants=None,
                pending_start_time=None,
            )
        return None
    done = all(
        healthy.get(current, {}).get(v["VariantName"], 0) == int(v["DesiredInstanceCount"])
        and live_counts.get(v["VariantName"], 0) == int(v["DesiredInstanceCount"])
        for v in row.variants
    )
    return (
        dataclasses.replace(row, status=EndpointStatus.IN_SERVICE, last_modified_time=now) if done else None
    )
