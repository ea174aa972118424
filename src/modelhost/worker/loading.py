"""Loading the model: runtime, user code, pre_model_fn, model_fn, warm-up, in the toolkit's order.

Run once by the lifecycle on a handler thread. Any failure becomes a ``LoadFailure`` whose message goes to the
failure file, so it names what failed and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from modelhost import __version__
from modelhost.errors import ModelhostError, ValidationError
from modelhost.runtimes.registry import load_runtime
from modelhost.runtimes.runtime import Runtime, RuntimeResources
from modelhost.worker.batching import BatchPolicy
from modelhost.worker.context import HandlerContext
from modelhost.worker.failure import LoadFailure, describe_exception
from modelhost.worker.handler import HandlerFunction, UserHandlers, load_user_handlers
from modelhost.worker.options import WorkerOptions
from modelhost.worker.pipeline import Pipeline


@runtime_checkable
class BatchesByModel(Protocol):
    """A runtime whose model artifact says how to batch (Triton's config.pbtxt ``dynamic_batching``)."""

    def batch_policy(self, model: object) -> BatchPolicy | None: ...


def system_properties(options: WorkerOptions, model_dir: Path | None = None) -> dict[str, object]:
    """What toolkit code reads from ``context.system_properties`` (TorchServe's names)."""
    return {
        "model_dir": str(options.model_dir if model_dir is None else model_dir),
        "gpu_id": 0 if options.gpus else None,  # the instance's first GPU, as TorchServe numbers them
        "batch_size": 1,
        "server_name": "modelhost",
        "server_version": __version__,
    }


def _runtime(name: str, resources: RuntimeResources) -> Runtime:
    try:
        return load_runtime(name, resources)
    except ValidationError as exc:
        raise LoadFailure(f"{exc.message}. Change the model's Image to one of them") from exc
    except ImportError as exc:
        raise LoadFailure(
            f"The {name} runtime cannot start: {describe_exception(exc)}. Install modelhost[{name}] where "
            "the worker runs"
        ) from exc


def _run_user(function: HandlerFunction, context: HandlerContext, source: Path, *args: object) -> object:
    try:
        if function.takes_context:
            return function.fn(*args, context)
        return function.fn(*args)
    except BaseException as exc:
        where = f"{source.parent.name}/{source.name}"
        raise LoadFailure(
            f"{function.name} in {where} raised {describe_exception(exc, source.parent)}. "
            f"Fix {function.name} or the model artifact"
        ) from exc


def _run_default(runtime: Runtime, step: str, call: Callable[[], object]) -> object:
    try:
        return call()
    except ModelhostError as exc:
        raise LoadFailure(exc.message) from exc
    except Exception as exc:
        raise LoadFailure(f"The {runtime.name} runtime's {step} failed: {describe_exception(exc)}") from exc


def runtime_for(options: WorkerOptions) -> Runtime:
    """A new instance of the worker's runtime (one per model in a multi-model worker)."""
    resources = RuntimeResources(vcpus=options.vcpus, gpu_ids=tuple(range(options.gpus)))
    return _runtime(options.runtime, resources)


def check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise LoadFailure(
            f"The model directory {model_dir} does not exist; the artifact was not unpacked there"
        )


def load_pipeline(options: WorkerOptions) -> Pipeline:
    """Everything that happens before /ping may answer 200."""
    runtime = runtime_for(options)
    check_model_dir(options.model_dir)
    handlers = load_user_handlers(options.model_dir, options.program)
    return build_pipeline(options, runtime, options.model_dir, handlers)


def build_pipeline(
    options: WorkerOptions, runtime: Runtime, model_dir: Path, handlers: UserHandlers
) -> Pipeline:
    """pre_model_fn, model_fn and warm-up of the model in ``model_dir``, with its handler code imported."""
    properties = system_properties(options, model_dir)
    context = HandlerContext((), properties)
    source = handlers.source
    if source is not None and handlers.pre_model_fn is not None:
        _run_user(handlers.pre_model_fn, context, source, str(model_dir))
    if source is not None and handlers.model_fn is not None:
        model = _run_user(handlers.model_fn, context, source, str(model_dir))
    else:
        model = _run_default(runtime, "model_fn", lambda: runtime.model_fn(str(model_dir)))
    if source is not None and handlers.model_warmup_fn is not None:
        _run_user(handlers.model_warmup_fn, context, source, str(model_dir), model)
    _run_default(runtime, "warm-up", lambda: runtime.warm_up(model))
    # The Environment's MODELHOST_MAX_BATCH_SIZE (above 1) wins; without it the model's own policy applies.
    batching = options.batching
    if batching is None and isinstance(runtime, BatchesByModel):
        batching = runtime.batch_policy(model)
    return Pipeline(
        model=model,
        runtime=runtime,
        handlers=handlers,
        system_properties=properties,
        default_accept=options.default_accept or runtime.default_accept,
        batching=batching,
    )
