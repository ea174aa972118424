"""The composition root of ``modelhost serve``: builds every object explicitly, runs the HTTP server and
the fleet controller, and takes both down cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

from modelhost.api.app import App
from modelhost.api.instance_metrics import InstanceMetrics
from modelhost.api.logs import LogsApi
from modelhost.api.metrics import InvocationMetrics
from modelhost.api.model_metrics import ModelCacheMetrics
from modelhost.api.runtime import RuntimeApi
from modelhost.api.sagemaker_json import SAGEMAKER_OPERATIONS, ControlPlaneApi, JsonService
from modelhost.clock import SystemClock
from modelhost.controller.fleet import Fleet
from modelhost.controlplane.context import ControlPlaneContext
from modelhost.http import ServerOptions, start_server
from modelhost.instances.catalog import InstanceCatalog, Resources
from modelhost.instances.local import LocalBackend
from modelhost.instances.placement import HostCapacity
from modelhost.router.invoke import Router
from modelhost.router.table import RouteTable
from modelhost.settings import Settings
from modelhost.store.metadata import MetadataStore
from modelhost.store.objects import open_object_store

log = logging.getLogger("modelhost")


def detect_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def host_capacity(settings: Settings) -> HostCapacity:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpus = settings.host_gpus if settings.host_gpus is not None else detect_gpus()
    return HostCapacity(
        os.cpu_count() or 1, memory, gpus, settings.cpu_overcommit, settings.memory_overcommit
    )


async def serve(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    clock = SystemClock()
    # SQLite wants one writer; one thread serializes every metadata call without locks of our own.
    db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelhost-db")
    store = await loop.run_in_executor(db, MetadataStore.open, settings.resolved_database_url)
    objects = open_object_store(settings.data_dir, settings.s3_endpoint_url)
    catalog = InstanceCatalog(
        {name: Resources(t.vcpus, t.memory_bytes, t.gpus) for name, t in settings.instance_types.items()}
    )
    table = RouteTable()
    backend = LocalBackend(settings.data_dir)
    host = host_capacity(settings)
    metrics = InvocationMetrics(table)
    model_metrics = ModelCacheMetrics(table)
    metrics.registry.register(model_metrics)
    metrics.registry.register(InstanceMetrics(table, clock))
    fleet = Fleet(
        settings=settings,
        store=store,
        objects=objects,
        backend=backend,
        catalog=catalog,
        table=table,
        clock=clock,
        db=db,
        host_gpus=host.gpus,
        model_events=model_metrics.events,
    )
    ctx = ControlPlaneContext(
        store=store,
        objects=objects,
        settings=settings,
        clock=clock,
        catalog=catalog,
        host=host,
        live=fleet,
        wake_controller=fleet.wake,
    )
    router = Router(
        table,
        settings.account_id,
        settings.max_concurrency_per_instance,
        settings.max_concurrency_per_endpoint,
        settings.multi_model_hot_in_flight,
    )
    app = App(
        ControlPlaneApi(ctx, db, [JsonService("sagemaker", SAGEMAKER_OPERATIONS)]),
        RuntimeApi(router, metrics, settings.max_payload_bytes),
        LogsApi(settings.data_dir / "logs"),
        metrics,
    )
    options = ServerOptions(
        max_body_bytes=app.max_body_bytes,
        body_too_large=app.body_too_large,
        idle_timeout_s=75.0,
        shutdown_grace_s=settings.shutdown_grace_s,
    )
    await fleet.start()
    try:
        try:
            server = await start_server(app, host=settings.host, port=settings.port, options=options)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
            raise SystemExit(1) from None
        log.info(
            "modelhost serving on http://%s:%d (data in %s)",
            settings.host,
            settings.port,
            settings.data_dir.resolve(),
        )
        await _until_signalled(loop)
        log.info("shutting down")
        server.close()
        app.stop_streams()
        await server.wait_closed()
        await app.close()
    finally:
        await fleet.close()
        await loop.run_in_executor(db, store.close)
        db.shutdown(wait=True)


async def _until_signalled(loop: asyncio.AbstractEventLoop) -> None:
    """Return on the first SIGTERM or SIGINT; a second one gets the default action (stop at once)."""
    stop = loop.create_future()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if not stop.done():
            stop.set_result(None)

    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    await stop


def run(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we support
        asyncio.run(serve(settings))
        return
    uvloop.run(serve(settings))
