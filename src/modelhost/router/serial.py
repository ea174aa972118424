"""Serial inference pipelines: one invocation runs an instance's containers in order, each container's
response becoming the next one's request. Built by the supervisor as the instance handle's invoker, so the
router sends to a pipeline exactly as to one container."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from modelhost.router.instance_client import InstanceNotConnected, InstanceTimeout, InstanceUnreachable
from modelhost.router.invoker import InstanceReply, Invoker, StepTiming


def step_headers(
    step: int, steps: int, content_type: bytes | None, accept: bytes | None
) -> tuple[bytes | None, bytes | None]:
    """The Content-Type and Accept of step ``step`` (0-based) given the previous step's response type (the
    client's Content-Type for the first step).

    The client's Accept is for the pipeline's answer, so only the last container sees it; the others get
    none and answer in their default format (``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` where set), which is
    how SageMaker's pipeline examples chain a preprocessor into an algorithm container.
    """
    return content_type, accept if step == steps - 1 else None


class SerialInvoker:
    """Chains the containers' invokers; the endpoint's invocation timeout covers the whole chain."""

    __slots__ = ("_steps",)

    def __init__(self, steps: Sequence[tuple[str, Invoker]]) -> None:
        self._steps = tuple(steps)

    async def invoke(
        self,
        content_type: bytes | None,
        accept: bytes | None,
        custom_attributes: bytes | None,
        inference_id: bytes | None,
        body: bytes,
        timeout_s: float,
    ) -> InstanceReply:
        deadline = time.monotonic() + timeout_s
        n = len(self._steps)
        timings: list[StepTiming] = []
        reply: InstanceReply | None = None
        for i, (name, invoker) in enumerate(self._steps):
            step_type, step_accept = step_headers(i, n, content_type, accept)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InstanceTimeout(f"container {name} (step {i + 1} of {n}) was not reached in time")
            started = time.perf_counter_ns()
            try:
                reply = await invoker.invoke(
                    step_type, step_accept, custom_attributes, inference_id, body, remaining
                )
            except InstanceNotConnected as exc:
                if i == 0:
                    raise  # nothing ran yet: the router may send the request to another instance
                raise InstanceUnreachable(f"container {name} (step {i + 1} of {n}): {exc}") from exc
            except InstanceUnreachable as exc:
                raise InstanceUnreachable(f"container {name} (step {i + 1} of {n}): {exc}") from exc
            timings.append(StepTiming(name, (time.perf_counter_ns() - started) // 1000, reply.status))
            if reply.status >= 300:
                return replace(reply, container=name, steps=tuple(timings))
            body = reply.body
            content_type = reply.content_type.encode("latin-1") if reply.content_type else None
        assert reply is not None  # a pipeline has at least two containers
        return replace(reply, steps=tuple(timings))

    async def close(self) -> None:
        for _, invoker in self._steps:
            await invoker.close()
