"""An instance's worker processes (``SAGEMAKER_MODEL_SERVER_WORKERS``) as one invoker: each invocation goes to
the worker with the fewest invocations in flight. Built by the supervisor as the instance handle's invoker
when an instance runs more than one worker, so the router sends to it exactly as to one."""

from __future__ import annotations

from collections.abc import Sequence

from modelhost.router.frame_client import FrameClient
from modelhost.router.invoker import InstanceReply


def least_busy(in_flight: Sequence[int], start: int) -> int:
    """The index of the smallest count, looking from ``start`` round: ties go to the first one met, so that
    equally idle workers take turns instead of the first always waking."""
    n = len(in_flight)
    best = start % n
    for step in range(1, n):
        i = (start + step) % n
        if in_flight[i] < in_flight[best]:
            best = i
    return best


class WorkerSpread:
    __slots__ = ("_next", "_workers")

    def __init__(self, workers: Sequence[FrameClient]) -> None:
        if not workers:
            raise ValueError("an instance has at least one worker")
        self._workers = tuple(workers)
        self._next = 0

    @property
    def in_flight(self) -> int:
        return sum(w.in_flight for w in self._workers)

    async def invoke(
        self,
        content_type: bytes | None,
        accept: bytes | None,
        custom_attributes: bytes | None,
        inference_id: bytes | None,
        body: bytes,
        timeout_s: float,
    ) -> InstanceReply:
        chosen = least_busy([w.in_flight for w in self._workers], self._next)
        self._next = (chosen + 1) % len(self._workers)
        return await self._workers[chosen].invoke(
            content_type, accept, custom_attributes, inference_id, body, timeout_s
        )

    async def close(self) -> None:
        for worker in self._workers:
            await worker.close()
