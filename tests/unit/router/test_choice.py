from __future__ import annotations

from modelhost.router.choice import choose_instance, choose_variant
from modelhost.router.instance_client import InstanceClient
from modelhost.router.invoker import HttpInvoker
from modelhost.router.table import EndpointRoute, InstanceHandle, VariantRoute


def handle(id: str, outstanding: int = 0) -> InstanceHandle:
    h = InstanceHandle(id, "v", HttpInvoker(InstanceClient(unix_path="/nonexistent")), "arn")
    h.outstanding = outstanding
    return h


def route(*variants: tuple[str, float, int]) -> EndpointRoute:
    return EndpointRoute(
        "ep",
        tuple(VariantRoute(n, w, tuple(handle(f"{n}{i}") for i in range(k))) for n, w, k in variants),
        60.0,
    )


def test_variant_by_weight() -> None:
    r = route(("a", 3.0, 1), ("b", 1.0, 1))
    assert choose_variant(r, 0.0).name == "a"  # type: ignore[union-attr]
    assert choose_variant(r, 0.74).name == "a"  # type: ignore[union-attr]
    assert choose_variant(r, 0.76).name == "b"  # type: ignore[union-attr]
    assert choose_variant(r, 0.999999).name == "b"  # type: ignore[union-attr]


def test_variant_skips_zero_weight_and_empty_variants() -> None:
    assert choose_variant(route(("a", 0.0, 1), ("b", 1.0, 1)), 0.0).name == "b"  # type: ignore[union-attr]
    assert choose_variant(route(("a", 5.0, 0), ("b", 1.0, 1)), 0.0).name == "b"  # type: ignore[union-attr]
    assert choose_variant(route(("a", 1.0, 0)), 0.5) is None
    assert choose_variant(route(("a", 0.0, 1)), 0.5) is None


def test_least_outstanding_instance() -> None:
    hs = [handle("a", 3), handle("b", 1), handle("c", 2)]
    assert choose_instance(hs, 10, 0).id == "b"  # type: ignore[union-attr]


def test_ties_rotate_with_start() -> None:
    hs = [handle("a"), handle("b"), handle("c")]
    assert [choose_instance(hs, 10, s).id for s in range(4)] == ["a", "b", "c", "a"]  # type: ignore[union-attr]


def test_full_instances_are_refused() -> None:
    assert choose_instance([handle("a", 4), handle("b", 4)], 4, 0) is None
    assert choose_instance([], 4, 0) is None
