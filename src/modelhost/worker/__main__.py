"""``python -m modelhost.worker``: the worker's composition root.

Command line (written by the server's instance backend)::

    python -m modelhost.worker --socket PATH --model-dir DIR --runtime sklearn --vcpus N --timeout-s 60
        --failure-file PATH [--lifeline-fd FD] [--hang-grace-s 5]
        [--multi-model [--memory-limit-bytes N]]  (then no --model-dir: docs/multi-model-worker.md)

Environment: the model container's ``Environment`` (SAGEMAKER_PROGRAM, SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT,
SAGEMAKER_MULTI_MODEL, MODELHOST_MAX_BATCH_SIZE, MODELHOST_MAX_BATCH_DELAY_US,
MODELHOST_PREFERRED_BATCH_SIZES, user variables), SM_MODEL_DIR, and the *_NUM_THREADS variables the server
derives from the vCPUs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import uvloop

from modelhost.worker.failure import write_failure_file
from modelhost.worker.lifecycle import WorkerProcess, flush_std_streams
from modelhost.worker.options import InvalidEnvironment, parse_options


def main() -> None:
    try:
        options = parse_options(sys.argv[1:], os.environ)
    except InvalidEnvironment as exc:
        sys.stderr.write(f"load failed: {exc.message}\n")
        with contextlib.suppress(OSError):
            write_failure_file(exc.failure_file, exc.message)
        sys.exit(1)
    # Handler code's print() must reach the instance's log stream as it happens, not when a buffer fills.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    # The process id tells apart the lines of an instance's workers, which share its log stream.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    code = uvloop.run(WorkerProcess(options).run())
    flush_std_streams()
    # os._exit, not sys.exit: the interpreter joins handler threads at exit, and a stuck handler (the reason
    # we may be stopping) would keep the process alive forever.
    os._exit(code)


if __name__ == "__main__":
    main()
