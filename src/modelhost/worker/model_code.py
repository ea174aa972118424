"""Each model's handler code as modules of its own in a multi-model worker, and their removal on unload.

Used by the model service (``models.py``). Two artifacts both ship ``code/inference.py`` (and often a
``code/helpers.py``); importing them by file name would hand the second model the first one's module. So:

* the handler file is imported under a name unique to the load (``modelhost_model_<n>_inference``);
* helper modules the handler imports at its top level come from its own ``code/`` directory: before the
  import, same-named helpers of other loaded models are taken out of ``sys.modules`` (their handlers keep
  the module objects they already bound);
* on unload, the handler, every module loaded from that ``code/`` directory, and the directory's
  ``sys.path`` entry go, so nothing of the model stays reachable from the interpreter.

Limit: a module imported by name at call time (inside a function, or by pickle) resolves through
``sys.modules``/``sys.path``, where the most recently loaded model's helpers win.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from modelhost.worker.handler import import_handler_module

_UNSAFE = re.compile(r"\W")


@dataclass(frozen=True)
class ModelCode:
    """One model's imported handler module."""

    module: ModuleType
    module_name: str
    code_dir: str


def _module_dir(module: object) -> str | None:
    file = getattr(module, "__file__", None)
    return os.path.dirname(file) if isinstance(file, str) else None


def _under(directory: str, root: str) -> bool:
    return directory == root or directory.startswith(root + os.sep)


class CodeImporter:
    """Imports handler files one at a time (``sys.modules``/``sys.path`` edits must not interleave) while
    model_fn calls run in parallel; safe to call from several handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._code_dirs: Counter[str] = Counter()  # code dirs of loaded models (the same artifact twice: 2)

    def import_handler(self, path: Path) -> ModelCode:
        """Import ``path`` for one model; raises ``LoadFailure`` as single-model loading does."""
        code_dir = str(path.parent)
        with self._lock:
            name = f"modelhost_model_{next(self._counter)}_{_UNSAFE.sub('_', path.stem)}"
            self._set_aside_helpers_of_others(code_dir)
            try:
                module = import_handler_module(path, name)
            except BaseException:
                self._forget(code_dir, name, in_use=self._code_dirs[code_dir] > 0)
                raise
            self._code_dirs[code_dir] += 1
        return ModelCode(module, name, code_dir)

    def forget(self, code: ModelCode) -> None:
        """The model is unloaded: drop what the interpreter holds of its code."""
        with self._lock:
            self._code_dirs[code.code_dir] -= 1
            self._forget(code.code_dir, code.module_name, in_use=self._code_dirs[code.code_dir] > 0)
            if self._code_dirs[code.code_dir] <= 0:
                del self._code_dirs[code.code_dir]

    def _set_aside_helpers_of_others(self, code_dir: str) -> None:
        others = [other for other in self._code_dirs if other != code_dir]
        if not others:
            return
        for name, module in list(sys.modules.items()):
            directory = _module_dir(module)
            top = name.partition(".")[0]
            if (
                directory is not None
                and any(_under(directory, other) for other in others)
                and _provides(code_dir, top)
            ):
                del sys.modules[name]

    def _forget(self, code_dir: str, module_name: str, *, in_use: bool) -> None:
        sys.modules.pop(module_name, None)
        if in_use:
            return  # another model loaded from the same directory still needs its helpers
        for name, module in list(sys.modules.items()):
            directory = _module_dir(module)
            if directory is not None and _under(directory, code_dir):
                del sys.modules[name]
        while code_dir in sys.path:
            sys.path.remove(code_dir)


def _provides(code_dir: str, top_name: str) -> bool:
    """Whether ``import <top_name>`` would find a module in ``code_dir``."""
    base = os.path.join(code_dir, top_name)
    return os.path.isfile(base + ".py") or os.path.isdir(base)
