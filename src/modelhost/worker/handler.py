"""Finding and checking the user's handler functions in ``<model_dir>/code/<SAGEMAKER_PROGRAM>``.

Called once at load time; the result tells the pipeline which functions replace the runtime's defaults and
which of them take a context. Every contract violation becomes a ``LoadFailure`` saying how to fix it.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from modelhost.worker.failure import LoadFailure, describe_exception

DEFAULT_PROGRAM = "inference.py"
# Module-level flag of the batch contract (docs/batching.md).
BATCHING_FLAG = "SUPPORTS_BATCHING"

# Base parameters of each function the inference toolkit looks up, in call order.
BASE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "pre_model_fn": ("model_dir",),
    "model_fn": ("model_dir",),
    "model_warmup_fn": ("model_dir", "model"),
    "input_fn": ("input_data", "content_type"),
    "predict_fn": ("data", "model"),
    "output_fn": ("prediction", "accept"),
    "transform_fn": ("model", "input_data", "content_type", "accept"),
}


@dataclass(frozen=True, slots=True)
class HandlerFunction:
    """One user function and whether it is called with a trailing context argument."""

    name: str
    fn: Callable[..., object]
    takes_context: bool


@dataclass(frozen=True)
class UserHandlers:
    """The functions the user's code defines; ``None`` where the runtime's default applies."""

    source: Path | None = None  # the handler file; None when the model has no handler code
    pre_model_fn: HandlerFunction | None = None
    model_fn: HandlerFunction | None = None
    model_warmup_fn: HandlerFunction | None = None
    input_fn: HandlerFunction | None = None
    predict_fn: HandlerFunction | None = None
    output_fn: HandlerFunction | None = None
    transform_fn: HandlerFunction | None = None
    # SUPPORTS_BATCHING = True: predict_fn takes the rows of several requests at once (docs/batching.md).
    supports_batching: bool = False


def handler_path(model_dir: Path, program: str | None) -> Path | None:
    """The handler file, or None when the default ``code/inference.py`` is absent (runtime defaults only).

    A ``SAGEMAKER_PROGRAM`` that names a missing file is an error rather than silently ignored: the user
    meant to run code.
    """
    code_dir = model_dir / "code"
    name = program or DEFAULT_PROGRAM
    # The toolkit takes SAGEMAKER_PROGRAM as a module name with or without ".py".
    path = code_dir / (name if name.endswith(".py") else f"{name}.py")
    if path.is_file():
        return path
    if program is None:
        return None
    present = sorted(entry.name for entry in code_dir.iterdir()) if code_dir.is_dir() else []
    found = f"code/ holds: {', '.join(present)}" if present else f"{code_dir} is missing or empty"
    raise LoadFailure(
        f"SAGEMAKER_PROGRAM is {program!r} but {path} does not exist ({found}). Put the handler file in the "
        "model artifact's code/ directory or change SAGEMAKER_PROGRAM"
    )


def import_handler_module(path: Path, module_name: str | None = None) -> ModuleType:
    """Import ``path`` under its file name (or ``module_name``: a multi-model worker gives each model's
    handler a name of its own), with its directory on sys.path for its own helper modules."""
    code_dir = str(path.parent)
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    name = module_name or path.stem
    # Loaded from the file itself, not by module name: an installed package that happens to be called
    # "inference" must not shadow the user's file.
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadFailure(f"Cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, as a normal import does: pickle and dataclasses look classes up there.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        hint = (
            "List the missing package in code/requirements.txt, or install it in the worker's environment"
            if isinstance(exc, ModuleNotFoundError)
            else "Fix the handler code"
        )
        raise LoadFailure(f"Importing {path} failed: {describe_exception(exc, path.parent)}. {hint}") from exc
    return module


def takes_context(name: str, fn: Callable[..., object], source: Path) -> bool:
    """Whether ``fn`` is called with a trailing context argument.

    Compatibility contract: like the SageMaker inference toolkit, a function gets a context exactly when it
    declares one parameter more than its base signature, counting every parameter (defaults, *args and
    **kwargs included). User code relies on this arity rule; do not replace it with name or type sniffing.
    """
    base = BASE_PARAMETERS[name]
    try:
        count = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        # Builtins and some C callables expose no signature; call them with the base arguments.
        return False
    if count == len(base):
        return False
    if count == len(base) + 1:
        return True
    raise LoadFailure(
        f"{name} in {source} takes {count} parameters; expected {len(base)} ({', '.join(base)}) or "
        f"{len(base) + 1} ({', '.join(base)}, context)"
    )


def _lookup(module: ModuleType, name: str, source: Path) -> HandlerFunction | None:
    fn = getattr(module, name, None)
    if fn is None:
        return None
    if not callable(fn):
        raise LoadFailure(f"{name} in {source} is a {type(fn).__name__}, not a function")
    return HandlerFunction(name=name, fn=fn, takes_context=takes_context(name, fn, source))


def find_handlers(module: ModuleType, source: Path) -> UserHandlers:
    """The handler functions ``module`` defines, checked against the toolkit's contract."""
    found = {name: _lookup(module, name, source) for name in BASE_PARAMETERS}
    if found["transform_fn"] is not None:
        clashing = [name for name in ("input_fn", "predict_fn", "output_fn") if found[name] is not None]
        if clashing:
            raise LoadFailure(
                f"{source} defines transform_fn together with {', '.join(clashing)}: transform_fn replaces "
                "input_fn, predict_fn and output_fn. Define either transform_fn or those three"
            )
    supports_batching = _batching_declaration(module, source, found)
    return UserHandlers(
        source=source,
        pre_model_fn=found["pre_model_fn"],
        model_fn=found["model_fn"],
        model_warmup_fn=found["model_warmup_fn"],
        input_fn=found["input_fn"],
        predict_fn=found["predict_fn"],
        output_fn=found["output_fn"],
        transform_fn=found["transform_fn"],
        supports_batching=supports_batching,
    )


def _batching_declaration(module: ModuleType, source: Path, found: dict[str, HandlerFunction | None]) -> bool:
    """The module's ``SUPPORTS_BATCHING``, checked against the functions it defines."""
    declared = getattr(module, BATCHING_FLAG, False)
    if not isinstance(declared, bool):
        raise LoadFailure(
            f"{BATCHING_FLAG} in {source} is {declared!r}; set it to True (predict_fn takes a batch of rows) "
            "or False"
        )
    if not declared:
        return False
    if found["transform_fn"] is not None:
        raise LoadFailure(
            f"{source} sets {BATCHING_FLAG} = True but defines transform_fn, which always runs one request "
            "at a time. Remove the flag, or replace transform_fn with input_fn, predict_fn and output_fn"
        )
    predict_fn = found["predict_fn"]
    if predict_fn is not None and predict_fn.takes_context:
        raise LoadFailure(
            f"{source} sets {BATCHING_FLAG} = True but predict_fn takes a context, which belongs to a single "
            "request. A batching predict_fn takes (data, model); read request headers in input_fn or "
            "output_fn"
        )
    return True


def load_user_handlers(model_dir: Path, program: str | None) -> UserHandlers:
    """Import the model's handler code, if it has any, and collect its functions."""
    path = handler_path(model_dir, program)
    if path is None:
        return UserHandlers()
    return find_handlers(import_handler_module(path), path)
