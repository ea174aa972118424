"""The life of one instance: fetch its artifact, start its process, wait for /ping, watch it, stop it.

The fleet (fleet.py) decides which instances should exist and hears what happens to them through the
callbacks given here; this module only moves one instance through its phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from modelhost.clock import Clock
from modelhost.controller.reconcile import Phase, TargetKey
from modelhost.domain.specs import ServerProgram
from modelhost.errors import ModelhostError
from modelhost.instances.artifacts import fetch_model_data, unpacked_bytes
from modelhost.instances.catalog import handler_threads
from modelhost.instances.gpus import GpuPool
from modelhost.instances.local import LaunchSpec, LocalBackend, LocalInstance
from modelhost.instances.model_envs import ModelEnvs
from modelhost.router.frame_client import FrameClient
from modelhost.router.instance_client import InstanceClient, InstanceTimeout, InstanceUnreachable
from modelhost.router.invoker import HttpInvoker, Invoker
from modelhost.router.model_cache import ModelCacheEvents, ModelCachePlan, NoEvents
from modelhost.router.model_client import ModelServerClient
from modelhost.router.model_manager import InstanceModels
from modelhost.router.serial import SerialInvoker
from modelhost.router.stream_client import StreamClient
from modelhost.router.table import InstanceFootprint, InstanceHandle
from modelhost.router.worker_spread import WorkerSpread
from modelhost.settings import Settings
from modelhost.store.objects import ObjectStore

log = logging.getLogger("modelhost.fleet")


@dataclass(eq=False)
class ManagedInstance:
    id: str
    key: TargetKey
    started_at: float
    phase: Phase = Phase.STARTING
    ever_healthy: bool = False
    failure: str | None = None
    process: LocalInstance | None = None
    handle: InstanceHandle | None = None
    pinger: InstanceClient | None = None  # /ping over HTTP; invocations go through the handle's invoker
    # A multi-container instance's other containers (``process`` is its first), each with its pinger.
    siblings: list[LocalInstance] = field(default_factory=list)
    sibling_pingers: list[InstanceClient] = field(default_factory=list)
    gpu_ids: tuple[int, ...] = ()  # the host GPUs it holds until its process is gone
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    """One container of a multi-container instance: its own process, artifact and log stream."""

    hostname: str
    launch: LaunchSpec
    model_data_url: str
    compression: str | None
    log_stream_arn: str
    workers: int = 1  # SAGEMAKER_MODEL_SERVER_WORKERS of our worker, as for a single container


@dataclass(frozen=True, slots=True)
class InstancePlan:
    """Everything needed to run one instance, resolved by the fleet from the endpoint's deployment."""

    launch: LaunchSpec
    model_data_url: str
    compression: str | None
    log_stream_arn: str
    models: ModelCachePlan | None = None  # a multi-model instance: no artifact at start, a model cache
    # A serial pipeline or multi-container endpoint: every container, in order (the fields above are the
    # first one's), and InferenceExecutionConfig.Mode (Serial or Direct).
    containers: tuple[ContainerPlan, ...] = ()
    mode: str | None = None
    # The instance type's memory, and the disk its files are measured against (VolumeSizeInGB, or the
    # default; a multi-model instance's disk budget): what its instance metrics are percentages of.
    memory_bytes: int = field(kw_only=True)
    disk_bytes: int = field(kw_only=True)
    # SAGEMAKER_MODEL_SERVER_WORKERS of a single-model instance of our worker: processes that each load the
    # model and share the instance's vCPUs and GPUs.
    workers: int = field(default=1, kw_only=True)


@dataclass(frozen=True, slots=True)
class SupervisorEvents:
    """How the supervisor tells the fleet what happened. Each runs on the loop and must not raise."""

    healthy: Callable[[ManagedInstance], None]
    unhealthy: Callable[[ManagedInstance], None]
    exited: Callable[[ManagedInstance, str | None], None]  # failure text when it never came up


class Supervisor:
    def __init__(
        self,
        *,
        settings: Settings,
        backend: LocalBackend,
        objects: ObjectStore,
        clock: Clock,
        events: SupervisorEvents,
        gpus: GpuPool | None = None,
        model_events: Callable[[str, str], ModelCacheEvents] | None = None,
    ) -> None:
        self._settings = settings
        self._gpus = gpus or GpuPool(0)
        self._backend = backend
        self._objects = objects
        self._clock = clock
        self._events = events
        self._model_events = model_events or (lambda _endpoint, _variant: NoEvents())
        self._fetch_locks: dict[Path, asyncio.Lock] = {}
        self._envs = ModelEnvs(
            settings.data_dir / "envs", install_timeout_s=settings.requirements_install_timeout_s
        )

    async def run(self, inst: ManagedInstance, plan: InstancePlan) -> None:
        """Bring ``inst`` up and watch it until it exits or stops answering; cancelled to stop it."""
        try:
            await self._bring_up(inst, plan)
            if inst.phase == Phase.HEALTHY:
                await self._watch(inst)
        except asyncio.CancelledError:
            raise
        except ModelhostError as exc:
            self._exit(inst, exc.message)
        except Exception as exc:
            log.exception("instance %s: supervisor failed", inst.id)
            self._exit(inst, f"modelhost could not start the instance: {exc!r}")

    async def stop(self, inst: ManagedInstance, drain: bool) -> None:
        """Drain (the caller has taken it out of the routing table) and stop the process."""
        if inst.handle is not None:
            if drain:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(inst.handle.drained(), self._settings.invocation_timeout_s)
            # A multi-container handle's client is made of its containers' invokers.
            for invoker in (inst.handle.containers or {inst.id: inst.handle.client}).values():
                await invoker.close()
            if inst.handle.stream_client is not None:
                await inst.handle.stream_client.close()
            for stream_client in (inst.handle.container_streams or {}).values():
                await stream_client.close()
            if inst.handle.models is not None:
                # Its models go with it: routing stops seeing them, and its disk cache is deleted.
                await inst.handle.models.close()
        for pinger in (inst.pinger, *inst.sibling_pingers):
            if pinger is not None:
                await pinger.close()
        grace_s = self._settings.stop_grace_s if drain else 0.0
        processes = [p for p in (inst.process, *inst.siblings) if p is not None]
        await asyncio.gather(*(self._backend.stop(p, grace_s) for p in processes))
        # The process is gone (or never started): its GPUs are free for the next instance.
        self._gpus.give_back(inst.gpu_ids)
        inst.gpu_ids = ()

    def _exit(self, inst: ManagedInstance, failure: str | None) -> None:
        inst.phase = Phase.EXITED
        inst.failure = failure
        self._events.exited(inst, failure)

    async def _bring_up(self, inst: ManagedInstance, plan: InstancePlan) -> None:
        if plan.containers:
            await self._bring_up_containers(inst, plan)
            return
        await self._fetch(plan.launch.model_dir, plan.model_data_url, plan.compression)
        # A multi-model instance starts with no model: its disk is its cache's, read when metrics are.
        artifact_bytes = (
            0 if plan.models is not None else await asyncio.to_thread(unpacked_bytes, plan.launch.model_dir)
        )
        launch = await self._with_requirements(plan.launch)
        inst.gpu_ids = self._gpus.take(launch.gpus)
        started_at_s = self._clock.monotonic()
        n = plan.workers
        launches = _worker_launches(replace(launch, gpu_ids=inst.gpu_ids), n)
        processes = await self._start_all(inst, launches)
        names = [""] if n == 1 else [f"Worker {k + 1} of {n}: " for k in range(n)]
        clients = await self._await_all_healthy(inst, processes, names)
        if clients is None:
            return
        # A multi-model instance is invoked per model over HTTP (/models/{name}/invoke) through its cache.
        invoker: Invoker = (
            HttpInvoker(clients[0]) if plan.models is not None else _invoker(processes, launches, clients[0])
        )
        models = None
        if plan.models is not None:
            events = self._model_events(plan.launch.endpoint, plan.launch.variant)
            model_server = ModelServerClient(_contract_client(processes[0]))
            models = InstanceModels(plan.models, model_server, self._objects, events)
            models.start_preload()
        footprint = _footprint(plan, processes, started_at_s, artifact_bytes)
        inst.handle = InstanceHandle(
            inst.id,
            plan.launch.variant,
            invoker,
            plan.log_stream_arn,
            _stream_client(processes[0]),
            models,
            footprint=footprint,
        )
        self._healthy(inst, plan)

    def _healthy(self, inst: ManagedInstance, plan: InstancePlan) -> None:
        inst.phase = Phase.HEALTHY
        inst.ever_healthy = True
        log.info("instance %s of %s/%s is healthy", inst.id, plan.launch.endpoint, plan.launch.variant)
        self._events.healthy(inst)

    async def _await_healthy(
        self, process: LocalInstance, client: InstanceClient, deadline: float
    ) -> str | None:
        """Probe /ping until it answers healthy (None) or the process exits or the deadline passes (why)."""
        exit_wait = asyncio.ensure_future(process.process.wait())
        pause = 0.02
        try:
            while True:
                if await self._ping(client):
                    return None
                if self._clock.monotonic() > deadline:
                    self._backend.kill_now(process)
                    return (
                        f"The instance did not answer /ping as healthy within "
                        f"{self._settings.startup_timeout_s:g} s. {_tail(process)}"
                    )
                # Wake on whichever comes first: the process exiting, or the next probe.
                done, _ = await asyncio.wait({exit_wait}, timeout=pause)
                if done:
                    return process.failure_reason() or (
                        f"The {process.what} exited with code {process.process.returncode} before "
                        f"it answered /ping as healthy. {_tail(process)}"
                    )
                pause = min(pause * 2, 0.5)
        finally:
            exit_wait.cancel()

    async def _start_all(self, inst: ManagedInstance, launches: Sequence[LaunchSpec]) -> list[LocalInstance]:
        """Start a process for each launch: an instance's workers, or its containers."""
        processes: list[LocalInstance] = []
        for launch in launches:
            process = await self._backend.start(launch)
            processes.append(process)
            # Recorded at once, so that stop() finds every process started even if a later start fails.
            if inst.process is None:
                inst.process = process
            else:
                inst.siblings.append(process)
        return processes

    async def _await_all_healthy(
        self, inst: ManagedInstance, processes: Sequence[LocalInstance], names: Sequence[str]
    ) -> list[InstanceClient] | None:
        """Wait until every process answers /ping; their pingers, or None once the instance has exited
        with the first failure (prefixed with that process's name)."""
        clients = [_contract_client(p) for p in processes]
        deadline = self._clock.monotonic() + self._settings.startup_timeout_s
        for name, process, client in zip(names, processes, clients, strict=True):
            failure = await self._await_healthy(process, client, deadline)
            if failure is not None:
                for other in clients:
                    await other.close()
                self._exit(inst, name + failure)
                return None
        inst.pinger, inst.sibling_pingers = clients[0], clients[1:]
        return clients

    async def _bring_up_containers(self, inst: ManagedInstance, plan: InstancePlan) -> None:
        """Start every container's process at once, then wait until each answers /ping: the instance is
        healthy when all are. A serial pipeline's handle chains them; a Direct one picks one by hostname."""
        for c in plan.containers:
            await self._fetch(c.launch.model_dir, c.model_data_url, c.compression)
        artifact_bytes = sum(
            [await asyncio.to_thread(unpacked_bytes, c.launch.model_dir) for c in plan.containers]
        )
        ready = [await self._with_requirements(c.launch) for c in plan.containers]
        inst.gpu_ids = self._gpus.take(plan.launch.gpus)  # the instance's GPUs, shared by its containers
        started_at_s = self._clock.monotonic()
        # Each container's worker processes (more than one with SAGEMAKER_MODEL_SERVER_WORKERS), in order.
        groups = [
            _worker_launches(replace(launch, gpu_ids=inst.gpu_ids), c.workers)
            for c, launch in zip(plan.containers, ready, strict=True)
        ]
        launches = [launch for group in groups for launch in group]
        processes = await self._start_all(inst, launches)
        names = [
            f"Container {c.hostname}: " if c.workers == 1 else f"Container {c.hostname}, worker {k + 1}: "
            for c in plan.containers
            for k in range(c.workers)
        ]
        clients = await self._await_all_healthy(inst, processes, names)
        if clients is None:
            return
        invokers: dict[str, Invoker] = {}
        heads: dict[str, LocalInstance] = {}
        start = 0
        for c, group in zip(plan.containers, groups, strict=True):
            end = start + len(group)
            invokers[c.hostname] = _invoker(processes[start:end], group, clients[start])
            heads[c.hostname] = processes[start]
            start = end
        first = next(iter(invokers.values()))
        client_invoker: Invoker = SerialInvoker(list(invokers.items())) if plan.mode == "Serial" else first
        # Each Direct container streams on its own connection (to its first worker); a serial pipeline's
        # answer is not streamed.
        streams = (
            {hostname: _stream_client(p) for hostname, p in heads.items()} if plan.mode != "Serial" else None
        )
        inst.handle = InstanceHandle(
            inst.id,
            plan.launch.variant,
            client_invoker,
            plan.log_stream_arn,
            containers=invokers,
            footprint=_footprint(plan, processes, started_at_s, artifact_bytes),
            container_streams=streams,
        )
        self._healthy(inst, plan)

    async def _fetch(self, model_dir: Path, url: str, compression: str | None) -> None:
        """Unpack a variant's artifact once; the instances of that variant share the directory."""
        lock = self._fetch_locks.setdefault(model_dir, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(self._fetch_blocking, model_dir, url, compression)

    def _fetch_blocking(self, model_dir: Path, url: str, compression: str | None) -> None:
        if model_dir.exists():
            return
        if not url:
            # A bring-your-own server need not have model data (its program may hold everything it needs).
            model_dir.mkdir(parents=True)
            return
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        fetch_model_data(
            self._objects,
            url,
            model_dir,
            max_bytes=self._settings.max_artifact_bytes,
            compression=compression,
        )

    async def _with_requirements(self, launch: LaunchSpec) -> LaunchSpec:
        """Our worker runs a model that has code/requirements.txt on that file's environment, installed
        first if need be (docs/requirements.md); a bring-your-own server installs what it needs itself."""
        if isinstance(launch.runtime, ServerProgram):
            return launch
        log_path = self._backend.log_path(launch.endpoint, launch.variant, launch.instance_id)
        python = await self._envs.interpreter(launch.model_dir, launch.environment, log_path)
        return launch if python is None else replace(launch, python=python)

    async def _ping(self, client: InstanceClient) -> bool:
        try:
            resp = await client.request("GET", "/ping", timeout_s=self._settings.ping_timeout_s)
        except (InstanceUnreachable, InstanceTimeout):
            return False
        return resp.status == 200

    async def _watch(self, inst: ManagedInstance) -> None:
        """Until a process exits or the pings fail: a multi-container instance is replaced whole when any
        of its containers does either."""
        assert inst.process is not None and inst.pinger is not None
        processes = [inst.process, *inst.siblings]
        pingers = [inst.pinger, *inst.sibling_pingers]
        exit_waits = {asyncio.ensure_future(p.process.wait()): p for p in processes}
        failures = 0
        try:
            while True:
                done, _ = await asyncio.wait(
                    exit_waits, timeout=self._settings.health_check_interval_s, return_when="FIRST_COMPLETED"
                )
                if done:
                    process = exit_waits[next(iter(done))]
                    log.warning(
                        "instance %s: %s exited with code %s; replacing it. %s",
                        inst.id,
                        process.spec.instance_id,
                        process.process.returncode,
                        _tail(process),
                    )
                    self._exit(inst, None)
                    return
                if all([await self._ping(pinger) for pinger in pingers]):
                    failures = 0
                    continue
                failures += 1
                if failures >= self._settings.unhealthy_after_failures:
                    log.warning("instance %s failed %d pings in a row; replacing it", inst.id, failures)
                    inst.phase = Phase.UNHEALTHY
                    self._events.unhealthy(inst)
                    return
        finally:
            for wait in exit_waits:
                wait.cancel()


def _worker_launches(launch: LaunchSpec, n: int) -> list[LaunchSpec]:
    """The launches of one container's ``n`` worker processes: they share its vCPUs (each its share of
    handler and native threads), its GPUs and its log stream, as on SageMaker."""
    if n == 1:
        return [launch]
    return [
        replace(
            launch,
            instance_id=f"{launch.instance_id}-w{k + 1}",
            log_id=launch.instance_id,
            vcpus=launch.vcpus / n,
        )
        for k in range(n)
    ]


def _invoker(
    processes: Sequence[LocalInstance], launches: Sequence[LaunchSpec], client: InstanceClient
) -> Invoker:
    """How invocations reach one container: frames to our worker (spread over its processes when it has
    several), or the contract's POST /invocations for a bring-your-own server."""
    sockets = [p.frame_socket_path for p in processes]
    if None in sockets:
        return HttpInvoker(client)
    frames = [
        FrameClient(path, connections=handler_threads(launch.vcpus))
        for path, launch in zip(sockets, launches, strict=True)
        if path is not None
    ]
    return frames[0] if len(frames) == 1 else WorkerSpread(frames)


def _footprint(
    plan: InstancePlan, processes: Sequence[LocalInstance], started_at_s: float, artifact_bytes: int
) -> InstanceFootprint:
    return InstanceFootprint(
        # start_new_session: each process leads a group of its own, whose id is its pid.
        process_groups=tuple(p.process.pid for p in processes),
        started_at_s=started_at_s,
        vcpus=plan.launch.vcpus,
        memory_bytes=plan.memory_bytes,
        artifact_bytes=artifact_bytes,
        disk_bytes=plan.disk_bytes,
    )


def _contract_client(process: LocalInstance) -> InstanceClient:
    """HTTP to the container contract: a server program's loopback port, or our worker's unix socket."""
    if process.port is not None:
        return InstanceClient(host="127.0.0.1", port=process.port)
    assert process.socket_path is not None
    return InstanceClient(unix_path=process.socket_path)


def _stream_client(process: LocalInstance) -> StreamClient:
    """Streamed invocations go over HTTP to the same contract address (docs/streaming.md)."""
    if process.port is not None:
        return StreamClient(host="127.0.0.1", port=process.port)
    assert process.socket_path is not None
    return StreamClient(unix_path=process.socket_path)


def _tail(process: LocalInstance | None) -> str:
    tail = process.log_tail(8) if process else ""
    return f"Last log lines:\n{tail}" if tail else ""
