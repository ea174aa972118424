"""Importing a multi-model worker's framework before it serves, so that each model's measured memory is its
own and not the framework's.

Called once by the lifecycle at start with ``--multi-model``, on a handler thread, before /ping answers 200.
Without it the first model a worker loads is charged for its framework's code and globals (about 90 MiB
for scikit-learn, more for torch), which Python never gives back. The imported objects are then frozen out
of garbage collection, which keeps the collections that measure each load cheap. And glibc is told to map
every large block on its own, so that a model's weights come and go exactly with it
(``process_memory.map_large_blocks``).
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging

from modelhost.worker.failure import describe_exception
from modelhost.worker.loading import runtime_for
from modelhost.worker.options import WorkerOptions
from modelhost.worker.process_memory import map_large_blocks

log = logging.getLogger("modelhost.worker")

# What a runtime's models import beyond the runtime module itself: unpickling a scikit-learn estimator
# imports its estimator package, a Triton repository's backend imports onnxruntime or torch on first use.
# The commonest estimator packages only: importing all of scikit-learn would cost every worker its rarest
# corners. Modules that are not installed are skipped (the model that needs one reports it on load).
FRAMEWORK_MODULES: dict[str, tuple[str, ...]] = {
    "sklearn": (
        "joblib",
        "sklearn",
        "sklearn.linear_model",
        "sklearn.pipeline",
        "sklearn.preprocessing",
        "sklearn.compose",
        "sklearn.tree",
        "sklearn.ensemble",
        "sklearn.svm",
        "sklearn.neighbors",
        "sklearn.cluster",
        "sklearn.decomposition",
        "sklearn.feature_extraction.text",
    ),
    "xgboost": ("joblib",),
    "lightgbm": ("joblib",),
    "triton": ("onnxruntime", "torch"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package of a dotted name
        return False


def import_framework(options: WorkerOptions) -> tuple[str, ...]:
    """Build the worker's runtime once (importing its module and framework) and import what its models
    will; returns the modules imported. ``LoadFailure`` when the runtime cannot start, as in single-model
    mode; a framework module that is installed but does not import is only logged."""
    # Without it, a freed model's weights raise glibc's mmap threshold, later models' weights land in the
    # heap instead, and loads reuse (and unloads leave) heap fragments: in a run of 1,500 loads beside 40
    # resident 1 MiB models, the worker's growth beyond its models went from up to 4.6 MiB to up to 1.2 MiB,
    # and no model measured 0 bytes. The price is a map and unmap for each large block a request allocates.
    map_large_blocks()
    runtime_for(options)
    imported = []
    for module in FRAMEWORK_MODULES.get(options.runtime, ()):
        if not _installed(module):
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:
            # Only the models that need it can fail for it; they say so when they load.
            log.warning(
                "%s does not import (%s); models that need it will not load", module, describe_exception(exc)
            )
            continue
        imported.append(module)
    # Every load and unload runs a full collection to measure memory (process_memory.py). The framework's
    # objects (some 100,000 with scikit-learn) live as long as the process, and walking them took 100 to
    # 150 ms per collection, twice per load: frozen, collections skip them. Garbage made by the imports goes
    # first; what the framework later drops from these objects is never collected, a few bytes at most.
    gc.collect()
    gc.freeze()
    return tuple(imported)
