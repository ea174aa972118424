"""Pure routing decisions: which variant by traffic weight, which instance by least outstanding requests
(and, for a multi-model request, by where its model is loaded).

Each takes its randomness (or rotating start) as an argument so that tests can pin it, and none allocates per
call beyond need: they run on every invocation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from modelhost.router.table import EndpointRoute, InstanceHandle, VariantRoute


def choose_variant(route: EndpointRoute, r: float) -> VariantRoute | None:
    """Pick a variant with probability proportional to its weight, among those that have instances.

    ``r`` is uniform in [0, 1). A variant with weight 0 gets traffic only through TargetVariant.
    """
    total = 0.0
    for v in route.variants:
        if v.instances and v.weight > 0:
            total += v.weight
    if total <= 0:
        return None
    point = r * total
    last = None
    for v in route.variants:
        if v.instances and v.weight > 0:
            last = v
            point -= v.weight
            if point < 0:
                return v
    return last  # float rounding at the top of the range


def choose_instance(
    instances: Sequence[InstanceHandle], max_outstanding: int, start: int
) -> InstanceHandle | None:
    """The instance with the fewest requests in flight, below ``max_outstanding``; None if all are full.

    Ties go to the first one found from ``start`` (a rotating index), so equal instances share load
    evenly instead of the first one taking every request at concurrency 1.
    """
    n = len(instances)
    best: InstanceHandle | None = None
    for i in range(n):
        h = instances[(start + i) % n]
        if h.outstanding < max_outstanding and (best is None or h.outstanding < best.outstanding):
            best = h
            if h.outstanding == 0:
                break
    return best


def choose_model_instance(
    instances: Sequence[InstanceHandle],
    holds: Callable[[InstanceHandle], bool],
    max_outstanding: int,
    hot_outstanding: int,
    start: int,
) -> InstanceHandle | None:
    """For a multi-model request: an instance that holds the model (loaded, or on its way in) unless each
    one is busy, else the least loaded instance, which then loads the model too.

    The least busy holder below ``hot_outstanding`` requests in flight keeps the model's traffic (a load
    costs far more than a queue); past that a hot model spreads to an instance with fewer requests in
    flight. None when every instance is at ``max_outstanding``.
    """
    holder: InstanceHandle | None = None
    for h in instances:
        better = holder is None or h.outstanding < holder.outstanding
        if better and h.outstanding < max_outstanding and holds(h):
            holder = h
    if holder is not None and holder.outstanding < hot_outstanding:
        return holder
    other = choose_instance(instances, max_outstanding, start)
    if other is None or (holder is not None and other.outstanding >= holder.outstanding):
        return holder
    return other
