"""The fleet controller: keeps each endpoint's instances at their desired counts (each one's life is the
supervisor's), moves endpoint statuses on, and publishes the routing table. One per server; it owns every
background task it starts and cancels them in ``close``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from modelhost.clock import Clock
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
from modelhost.controller.supervisor import (
    ContainerPlan,
    InstancePlan,
    ManagedInstance,
    Supervisor,
    SupervisorEvents,
)
from modelhost.domain.specs import (
    ContainerSpec,
    DeploymentSpec,
    ServerProgram,
    VariantSpec,
    deployment_spec,
    server_workers,
)
from modelhost.domain.status import EndpointStatus
from modelhost.errors import ModelhostError
from modelhost.ids import log_stream_arn, new_instance_id
from modelhost.instances.byo import resolve_image
from modelhost.instances.catalog import GIB, InstanceCatalog
from modelhost.instances.gpus import GpuPool
from modelhost.instances.local import LaunchSpec, LocalBackend
from modelhost.router.model_cache import (
    PINNED_ENV,
    PRELOAD_ENV,
    ModelCacheEvents,
    ModelCachePlan,
    model_list,
)
from modelhost.router.table import (
    ContainerRoute,
    EndpointRoute,
    InstanceHandle,
    RouteTable,
    VariantRoute,
)
from modelhost.settings import Settings
from modelhost.store.metadata import EndpointRow, MetadataStore
from modelhost.store.objects import ObjectStore

log = logging.getLogger("modelhost.fleet")
T = TypeVar("T")


class Fleet:
    def __init__(
        self,
        *,
        settings: Settings,
        store: MetadataStore,
        objects: ObjectStore,
        backend: LocalBackend,
        catalog: InstanceCatalog,
        table: RouteTable,
        clock: Clock,
        db: Executor,
        host_gpus: int = 0,
        model_events: Callable[[str, str], ModelCacheEvents] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._backend = backend
        self._catalog = catalog
        self._table = table
        self._clock = clock
        self._db = db
        self._artifacts_dir = settings.data_dir / "artifacts"
        self._models_dir = settings.data_dir / "mme"  # multi-model instances' disk caches
        self._instances: dict[str, ManagedInstance] = {}
        self._rows: dict[str, EndpointRow] = {}
        self._specs: dict[str, DeploymentSpec] = {}  # by deployment id
        self._failures: dict[str, str] = {}  # deployment id → why an instance could not start
        self._crashes: dict[TargetKey, int] = {}
        self._blocked_until: dict[TargetKey, float] = {}
        self._supervisor = Supervisor(
            settings=settings,
            backend=backend,
            objects=objects,
            clock=clock,
            events=SupervisorEvents(healthy=self._healthy, unhealthy=self._changed, exited=self._exited),
            gpus=GpuPool(host_gpus),
            model_events=model_events,
        )
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    # Called from the control plane's thread.
    def wake(self) -> None:
        self._loop.call_soon_threadsafe(self._wake.set)

    def healthy_counts(self, endpoint: str, deployment_id: str) -> Mapping[str, int]:
        counts: dict[str, int] = {}
        for inst in list(self._instances.values()):
            if (
                inst.key.endpoint == endpoint
                and inst.key.deployment_id == deployment_id
                and inst.phase == Phase.HEALTHY
            ):
                counts[inst.key.variant] = counts.get(inst.key.variant, 0) + 1
        return counts

    async def start(self) -> None:
        killed = await self._run(self._backend.cleanup_stale)
        if killed:
            log.warning("killed %d worker(s) left behind by a previous run", killed)
        # Model caches of a previous run's multi-model instances, which are all gone now.
        await self._run(shutil.rmtree, self._models_dir, True)
        self._loop_task = asyncio.create_task(self._run_loop(), name="fleet-loop")

    async def close(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._side_tasks):
            task.cancel()
        for inst in list(self._instances.values()):
            if inst.task:
                inst.task.cancel()
        await asyncio.gather(
            *self._side_tasks, *(i.task for i in self._instances.values() if i.task), return_exceptions=True
        )
        await asyncio.gather(
            *(self._supervisor.stop(i, drain=False) for i in list(self._instances.values())),
            return_exceptions=True,
        )
        self._backend.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(self._db, partial(fn, *args))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _run_loop(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.reconcile_interval_s)
            self._wake.clear()

    def _deployment(self, snapshot: Mapping[str, Any]) -> DeploymentSpec:
        dep_id = snapshot["id"]
        spec = self._specs.get(dep_id)
        if spec is None:
            resolve = partial(resolve_image, commands=self._settings.container_commands)
            spec = self._specs[dep_id] = deployment_spec(snapshot, resolve)
        return spec

    async def reconcile_once(self) -> None:
        rows = await self._run(self._store.list_endpoints)
        self._rows = {r.name: r for r in rows}
        now = self._clock.now()
        # 1. Move statuses on. The routing table takes the new state before the store does: a client that
        # sees InService must find the instances routable, and a finished update must route to the new
        # fleet before step 3 stops the old one.
        changed = [new for row in rows if (new := self._advance(row, now)) is not None]
        self._publish_routes()
        for new in changed:
            if not await self._run(self._store.save_endpoint, new):
                # An API call changed the endpoint since this pass read it; the next pass starts from that.
                self._wake.set()
        # 3. Instances.
        wanted: dict[TargetKey, int] = {}
        for row in self._rows.values():
            wanted.update(targets(row))
        states = [InstanceState(i.id, i.key, i.phase, i.started_at) for i in self._instances.values()]
        for action in plan(wanted, states, self._clock.monotonic(), self._blocked_until):
            if isinstance(action, Launch):
                self._launch(action.key)
            elif isinstance(action, Stop):
                self._begin_stop(self._instances[action.instance_id], action.drain)
            elif isinstance(action, Reap):
                self._reap(self._instances.pop(action.instance_id))
        # 4. Deleted endpoints whose instances are all gone.
        for row in list(self._rows.values()):
            if row.status == EndpointStatus.DELETING and not any(
                i.key.endpoint == row.name for i in self._instances.values()
            ):
                await self._run(self._finish_delete, row)
                self._rows.pop(row.name, None)
                self._table.remove(row.name)
                self._forget_failures(row)

    def _advance(self, row: EndpointRow, now: float) -> EndpointRow | None:
        healthy: dict[str, dict[str, int]] = {}
        live: dict[str, int] = {}
        for i in self._instances.values():
            if i.key.endpoint != row.name:
                continue
            if i.phase == Phase.HEALTHY:
                per = healthy.setdefault(i.key.deployment_id, {})
                per[i.key.variant] = per.get(i.key.variant, 0) + 1
            if i.phase in (Phase.HEALTHY, Phase.STARTING) and i.key.deployment_id == row.deployment["id"]:
                live[i.key.variant] = live.get(i.key.variant, 0) + 1
        new = progress(row, healthy, self._failures, live, now)
        if new is None:
            return None
        self._rows[row.name] = new
        if new.status != row.status or new.deployment["id"] != row.deployment["id"]:
            log.info(
                "endpoint %s: %s -> %s%s",
                row.name,
                row.status,
                new.status,
                f" ({new.failure_reason})" if new.failure_reason and new.status == "Failed" else "",
            )
        return new

    def _finish_delete(self, row: EndpointRow) -> None:
        self._store.delete_endpoint(row.name)
        self._store.delete_tags(row.arn)
        shutil.rmtree(self._artifacts_dir / row.name, ignore_errors=True)
        shutil.rmtree(self._models_dir / row.name, ignore_errors=True)

    def _forget_failures(self, row: EndpointRow) -> None:
        for snap in (row.deployment, row.pending_deployment):
            if snap is not None:
                self._failures.pop(snap["id"], None)
                self._specs.pop(snap["id"], None)

    def _publish_routes(self) -> None:
        for row in self._rows.values():
            if row.status in (EndpointStatus.FAILED, EndpointStatus.DELETING):
                self._table.remove(row.name)
                continue
            prefixes: dict[str, str | None] = {}
            containers: dict[str, ContainerRoute | None] = {}
            try:
                spec = self._deployment(row.deployment)
                timeout = spec.invocation_timeout_s
                prefixes = {v.name: _model_prefix(v) for v in spec.variants}
                containers = {v.name: _containers(v) for v in spec.variants}
            except ModelhostError:
                # An image this server no longer understands (say, a name dropped from
                # MODELHOST_CONTAINER_COMMANDS): its instances fail to plan and say why; others go on.
                timeout = None
            by_variant: dict[str, list[InstanceHandle]] = {}
            for i in self._instances.values():
                if (
                    i.key.endpoint == row.name
                    and i.key.deployment_id == row.deployment["id"]
                    and i.phase == Phase.HEALTHY
                    and i.handle is not None
                ):
                    by_variant.setdefault(i.key.variant, []).append(i.handle)
            variants = tuple(
                VariantRoute(
                    v["VariantName"],
                    float(v["DesiredWeight"]),
                    tuple(sorted(by_variant.get(v["VariantName"], []), key=lambda h: h.id)),
                    prefixes.get(v["VariantName"]),
                    containers.get(v["VariantName"]),
                )
                for v in row.variants
            )
            old = self._table.routes.get(row.name)
            timeout = timeout or self._settings.invocation_timeout_s
            route = EndpointRoute(row.name, variants, timeout, starting=row.status == EndpointStatus.CREATING)
            if (
                old is None
                or old.variants != route.variants
                or old.timeout_s != route.timeout_s
                or old.starting != route.starting
            ):
                self._table.publish(route)

    # Instances.

    def _launch(self, key: TargetKey) -> None:
        inst = ManagedInstance(new_instance_id(), key, self._clock.monotonic())
        self._instances[inst.id] = inst
        try:
            instance_plan = self._plan(inst)
        except ModelhostError as exc:
            self._exited(inst, exc.message)
            return
        except Exception as exc:
            log.exception("instance %s: could not plan it", inst.id)
            self._exited(inst, f"modelhost could not plan the instance: {exc!r}")
            return
        inst.task = asyncio.create_task(self._supervisor.run(inst, instance_plan), name=f"instance-{inst.id}")

    def _plan(self, inst: ManagedInstance) -> InstancePlan:
        """What the instance runs: its deployment's variant, container, artifact and resources."""
        row = self._rows[inst.key.endpoint]
        snap = row.deployment if row.deployment["id"] == inst.key.deployment_id else row.pending_deployment
        assert snap is not None
        spec = self._deployment(snap)
        variant = spec.variant(inst.key.variant)
        container = variant.model.containers[0]
        resources = self._catalog.resources(variant.instance_type)
        multi_model = container.multi_model
        environment = (
            dict(container.environment)
            if isinstance(container.runtime, ServerProgram)
            else self._worker_environment(container.environment)
        )
        if multi_model:
            environment["SAGEMAKER_MULTI_MODEL"] = "true"
            # Each instance has a disk cache of its own, deleted with it.
            model_dir = self._models_dir / row.name / inst.id
        else:
            model_dir = self._artifacts_dir / row.name / spec.raw["id"] / variant.name / "model"
        launch = LaunchSpec(
            instance_id=inst.id,
            endpoint=row.name,
            variant=variant.name,
            runtime=container.runtime,
            model_dir=model_dir,
            environment=environment,
            vcpus=resources.vcpus,
            gpus=resources.gpus,
            timeout_s=spec.invocation_timeout_s or self._settings.invocation_timeout_s,
            multi_model=multi_model,
            memory_limit_bytes=resources.memory_bytes if multi_model else None,
        )
        stream = log_stream_arn(
            self._settings.region, self._settings.account_id, row.name, f"{variant.name}/{inst.id}"
        )
        memory = resources.memory_bytes
        if multi_model:
            cache = self._model_cache_plan(variant, container, model_dir, resources.memory_bytes)
            disk = cache.disk_budget_bytes
            return InstancePlan(launch, "", None, stream, cache, memory_bytes=memory, disk_bytes=disk)
        volume = variant.volume_size_gb
        disk = volume * GIB if volume else self._settings.instance_disk_bytes
        if variant.model.multi_container:
            return self._containers_plan(launch, variant, model_dir.parent, memory, disk)
        url = container.model_data_url or ""
        # Our worker runs as many processes as SAGEMAKER_MODEL_SERVER_WORKERS asks; a server program is given
        # the variable and runs its workers itself.
        workers = 1 if isinstance(container.runtime, ServerProgram) else server_workers(container)
        return InstancePlan(
            launch, url, container.compression, stream, memory_bytes=memory, disk_bytes=disk, workers=workers
        )

    def _containers_plan(
        self, first: LaunchSpec, variant: VariantSpec, variant_dir: Path, memory_bytes: int, disk_bytes: int
    ) -> InstancePlan:
        """A serial pipeline or multi-container instance: one process per container, each with its own
        artifact directory, runtime, Environment and log stream."""
        model = variant.model
        plans = []
        for i, (container, hostname) in enumerate(zip(model.containers, model.hostnames, strict=True)):
            launch = replace(
                first,
                instance_id=f"{first.instance_id}-c{i + 1}",
                runtime=container.runtime,
                model_dir=variant_dir / f"c{i + 1}" / "model",
                environment=(
                    dict(container.environment)
                    if isinstance(container.runtime, ServerProgram)
                    else self._worker_environment(container.environment)
                ),
            )
            stream = log_stream_arn(
                self._settings.region,
                self._settings.account_id,
                first.endpoint,
                f"{variant.name}/{launch.instance_id}",
            )
            url = container.model_data_url or ""
            workers = 1 if isinstance(container.runtime, ServerProgram) else server_workers(container)
            plans.append(ContainerPlan(hostname, launch, url, container.compression, stream, workers))
        head = plans[0]
        return InstancePlan(
            head.launch,
            head.model_data_url,
            head.compression,
            head.log_stream_arn,
            None,
            tuple(plans),
            model.mode,
            memory_bytes=memory_bytes,
            disk_bytes=disk_bytes,
        )

    def _model_cache_plan(
        self, variant: VariantSpec, container: ContainerSpec, root: Path, memory_bytes: int
    ) -> ModelCachePlan:
        """A multi-model instance's budgets: memory from its instance type, disk from VolumeSizeInGB."""
        settings = self._settings
        memory = settings.multi_model_memory_budget_bytes or int(
            memory_bytes * settings.multi_model_memory_fraction
        )
        volume = variant.volume_size_gb
        disk = volume * GIB if volume else settings.multi_model_disk_budget_bytes
        assert container.model_prefix is not None  # CreateModel requires the ModelDataUrl
        return ModelCachePlan(
            prefix=container.model_prefix,
            root=root,
            memory_budget_bytes=memory,
            disk_budget_bytes=disk,
            instance_type=variant.instance_type,
            cache_enabled=container.model_cache_enabled,
            load_timeout_s=settings.multi_model_load_timeout_s,
            max_artifact_bytes=settings.max_artifact_bytes,
            gpu_memory_budget_bytes=settings.multi_model_gpu_memory_budget_bytes,
            gpu_memory_fraction=settings.multi_model_gpu_memory_fraction,
            preload=model_list(container.environment, PRELOAD_ENV),
            pinned=frozenset(model_list(container.environment, PINNED_ENV)),
        )

    def _worker_environment(self, environment: Mapping[str, str]) -> dict[str, str]:
        """The container's Environment, with the server's batching defaults where the model sets none."""
        env = dict(environment)
        env.setdefault("MODELHOST_MAX_BATCH_SIZE", str(self._settings.max_batch_size))
        env.setdefault("MODELHOST_MAX_BATCH_DELAY_US", str(self._settings.max_batch_delay_us))
        return env

    def _changed(self, _inst: ManagedInstance | None = None) -> None:
        self._wake.set()

    def _healthy(self, inst: ManagedInstance) -> None:
        self._crashes.pop(inst.key, None)
        self._changed()

    def _exited(self, inst: ManagedInstance, failure: str | None) -> None:
        inst.phase = Phase.EXITED
        inst.failure = failure
        if not inst.ever_healthy and failure:
            self._failures.setdefault(inst.key.deployment_id, failure)
        # Back off a crash-looping variant: 1, 2, 4 ... seconds up to the limit.
        n = self._crashes[inst.key] = self._crashes.get(inst.key, 0) + 1
        delay = min(self._settings.restart_backoff_max_s, 2.0 ** (n - 1)) if n > 1 else 0.0
        self._blocked_until[inst.key] = self._clock.monotonic() + delay
        self._changed()

    def _reap(self, inst: ManagedInstance) -> None:
        self._spawn(self._supervisor.stop(inst, drain=False), f"reap-{inst.id}")

    def _begin_stop(self, inst: ManagedInstance, drain: bool) -> None:
        if inst.task:
            inst.task.cancel()
        inst.phase = Phase.STOPPING
        self._publish_routes()  # out of the table before draining
        self._spawn(self._stop_and_forget(inst, drain), f"stop-{inst.id}")

    async def _stop_and_forget(self, inst: ManagedInstance, drain: bool) -> None:
        try:
            await self._supervisor.stop(inst, drain)
        finally:
            self._instances.pop(inst.id, None)
            self._changed()


def _model_prefix(variant: VariantSpec) -> str | None:
    return variant.model.containers[0].model_prefix if variant.model.containers else None


def _containers(variant: VariantSpec) -> ContainerRoute | None:
    model = variant.model
    if not model.multi_container:
        return None
    return ContainerRoute(model.hostnames, direct=model.mode == "Direct")
