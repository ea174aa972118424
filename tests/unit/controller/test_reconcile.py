from __future__ import annotations

from typing import Any

from modelhost.controller.reconcile import (
    InstanceState,
    Launch,
    Phase,
    Reap,
    Stop,
    TargetKey,
    plan,
    progress,
    targets,
)
from modelhost.store.metadata import EndpointRow

A = TargetKey("ep", "d1", "A")
B = TargetKey("ep", "d1", "B")


def inst(id: str, key: TargetKey = A, phase: Phase = Phase.HEALTHY, at: float = 0.0) -> InstanceState:
    return InstanceState(id, key, phase, at)


def row(status: str = "Creating", counts: dict[str, int] | None = None, **kw: Any) -> EndpointRow:
    counts = counts or {"A": 2}
    return EndpointRow(
        name="ep",
        arn="arn",
        config_name="c1",
        status=status,
        failure_reason=None,
        creation_time=0.0,
        last_modified_time=0.0,
        variants=tuple(
            {"VariantName": v, "DesiredWeight": 1.0, "DesiredInstanceCount": n} for v, n in counts.items()
        ),
        deployment={"id": "d1"},
        **kw,
    )


def test_launches_the_missing_instances() -> None:
    assert plan({A: 3}, [inst("i1")], 0.0, {}) == [Launch(A), Launch(A)]


def test_counts_starting_instances_as_live() -> None:
    assert plan({A: 2}, [inst("i1"), inst("i2", phase=Phase.STARTING)], 0.0, {}) == []


def test_backoff_blocks_launches_until_its_time() -> None:
    assert plan({A: 1}, [], 5.0, {A: 10.0}) == []
    assert plan({A: 1}, [], 10.0, {A: 10.0}) == [Launch(A)]


def test_scale_in_stops_starting_then_newest() -> None:
    instances = [inst("old", at=1.0), inst("new", at=5.0), inst("boot", phase=Phase.STARTING, at=0.5)]
    assert plan({A: 1}, instances, 0.0, {}) == [Stop("boot", drain=True), Stop("new", drain=True)]


def test_unwanted_instances_are_drained_and_stopped() -> None:
    assert plan({A: 1}, [inst("a"), inst("b", key=B)], 0.0, {}) == [Stop("b", drain=True)]


def test_exited_are_reaped_and_replaced_unhealthy_are_killed() -> None:
    actions = plan({A: 2}, [inst("x", phase=Phase.EXITED), inst("u", phase=Phase.UNHEALTHY)], 0.0, {})
    assert actions == [Reap("x"), Stop("u", drain=False), Launch(A), Launch(A)]


def test_stopping_instances_are_left_alone() -> None:
    assert plan({}, [inst("s", phase=Phase.STOPPING)], 0.0, {}) == []


def test_targets_include_pending_fleet_and_none_when_failed_or_deleting() -> None:
    r = row(
        "Updating",
        pending_deployment={"id": "d2"},
        pending_variants=({"VariantName": "A", "DesiredWeight": 1.0, "DesiredInstanceCount": 1},),
    )
    assert targets(r) == {A: 2, TargetKey("ep", "d2", "A"): 1}
    assert targets(row("Failed")) == {}
    assert targets(row("Deleting")) == {}


def test_creating_goes_in_service_when_all_variants_are_healthy() -> None:
    r = row("Creating", {"A": 2, "B": 1})
    assert progress(r, {"d1": {"A": 2}}, {}, {}, 1.0) is None
    new = progress(r, {"d1": {"A": 2, "B": 1}}, {}, {}, 1.0)
    assert new is not None and new.status == "InService" and new.last_modified_time == 1.0


def test_creating_fails_with_the_reason() -> None:
    new = progress(row("Creating"), {}, {"d1": "No model file"}, {}, 1.0)
    assert new is not None and new.status == "Failed" and "No model file" in (new.failure_reason or "")


def test_update_promotes_the_pending_fleet_when_healthy() -> None:
    pending = ({"VariantName": "A", "DesiredWeight": 1.0, "DesiredInstanceCount": 1},)
    r = row("Updating", pending_config_name="c2", pending_deployment={"id": "d2"}, pending_variants=pending)
    assert progress(r, {"d1": {"A": 2}}, {}, {}, 1.0) is None
    new = progress(r, {"d1": {"A": 2}, "d2": {"A": 1}}, {}, {}, 1.0)
    assert new is not None
    assert (new.status, new.config_name, new.deployment, new.variants) == (
        "InService",
        "c2",
        {"id": "d2"},
        pending,
    )
    assert new.pending_deployment is None and new.pending_config_name is None


def test_failed_update_rolls_back() -> None:
    pending = ({"VariantName": "A", "DesiredWeight": 1.0, "DesiredInstanceCount": 1},)
    r = row("Updating", pending_config_name="c2", pending_deployment={"id": "d2"}, pending_variants=pending)
    new = progress(r, {"d1": {"A": 2}}, {"d2": "boom"}, {}, 1.0)
    assert new is not None and new.status == "InService" and new.config_name == "c1"
    assert new.pending_deployment is None and "boom" in (new.failure_reason or "")


def test_capacity_update_finishes_when_counts_match_exactly() -> None:
    r = row("Updating", {"A": 1})
    assert progress(r, {"d1": {"A": 1}}, {}, {"A": 2}, 1.0) is None  # one still to stop
    new = progress(r, {"d1": {"A": 1}}, {}, {"A": 1}, 1.0)
    assert new is not None and new.status == "InService"


def test_in_service_and_failed_do_not_move() -> None:
    assert progress(row("InService"), {}, {"d1": "x"}, {}, 1.0) is None
    assert progress(row("Failed"), {"d1": {"A": 2}}, {}, {}, 1.0) is None
