"""The worker's command line and the environment variables it honours, as one frozen value.

Built once by ``__main__`` (the composition root); the server writes the matching command line and passes the
model container's Environment (SAGEMAKER_* and MODELHOST_*_BATCH_* variables).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelhost.instances.catalog import handler_threads
from modelhost.worker.batching import BatchPolicy
from modelhost.worker.failure import LoadFailure

DEFAULT_HANG_GRACE_S = 5.0
MAX_BATCH_SIZE_ENV = "MODELHOST_MAX_BATCH_SIZE"
MAX_BATCH_DELAY_US_ENV = "MODELHOST_MAX_BATCH_DELAY_US"
PREFERRED_BATCH_SIZES_ENV = "MODELHOST_PREFERRED_BATCH_SIZES"
# Longer is surely a unit mistake (the value is in microseconds) and would eat into the invocation timeout.
MAX_BATCH_DELAY_US_LIMIT = 10_000_000
MULTI_MODEL_ENV = "SAGEMAKER_MULTI_MODEL"  # "true": the multi-model contract, read as the toolkit does
# The toolkit's model directory in multi-model mode; informational only, each model names its own directory.
MULTI_MODEL_DIR = Path("/opt/ml/models")


@dataclass(frozen=True)
class WorkerOptions:
    """Everything one worker process needs to know. Units are in the names."""

    socket_path: Path  # unix socket to serve the container contract on (under 108 bytes: an AF_UNIX limit)
    model_dir: Path  # the unpacked artifact; user code lives in <model_dir>/code
    runtime: str  # registry name of the framework adapter (sklearn, ...)
    vcpus: float  # the instance type's vCPUs; sizes the prediction thread pool
    timeout_s: float  # how long one invocation may take; bounds the drain on SIGTERM
    failure_file: Path  # where a load failure is explained in words, for the endpoint's FailureReason
    lifeline_fd: int | None = None  # read end of a pipe from the server; EOF means the server is gone
    hang_grace_s: float = DEFAULT_HANG_GRACE_S  # a prediction past timeout_s + this marks the worker hung
    program: str | None = None  # SAGEMAKER_PROGRAM: the handler file in <model_dir>/code, None = default
    # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT: for absent or */* Accept; None: the runtime's own default
    default_accept: str | None = None
    batching: BatchPolicy | None = None  # MODELHOST_*_BATCH_* variables; None: one request at a time
    frame_socket_path: Path | None = None  # unix socket for the router's invocation frames; None: HTTP only
    gpus: int = 0  # GPUs given to the instance, visible as devices 0..gpus-1 (CUDA_VISIBLE_DEVICES)
    # Multi-model contract (POST /models ...; docs/multi-model-worker.md): no model at start, each loaded on
    # request from its own directory. Frames stay single-model: the frame socket is not opened.
    multi_model: bool = False
    memory_limit_bytes: int | None = None  # multi-model: a load that would take the RSS past this gets 507

    @property
    def prediction_threads(self) -> int:
        """Handler threads: one per whole vCPU, at least one."""
        return handler_threads(self.vcpus)

    @property
    def hang_after_s(self) -> float:
        """A prediction running this long means a stuck handler: /ping fails so the server replaces us."""
        return self.timeout_s + self.hang_grace_s


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


class InvalidEnvironment(LoadFailure):
    """A variable of the model container's Environment has a bad value; the worker exits as a load failure."""

    def __init__(self, message: str, failure_file: Path) -> None:
        super().__init__(message)
        self.failure_file = failure_file


def _whole_number(name: str, text: str, what: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name} must be a whole number of {what}, at least {minimum}, not {text!r}")
    return value


def parse_batch_policy(environ: Mapping[str, str]) -> BatchPolicy | None:
    """Dynamic batching from the container's Environment; None when MODELHOST_MAX_BATCH_SIZE is absent or 1.

    Raises ``ValueError`` naming the variable and the value it needs.
    """
    size_text = environ.get(MAX_BATCH_SIZE_ENV, "").strip()
    max_batch_size = _whole_number(MAX_BATCH_SIZE_ENV, size_text, "rows", 1) if size_text else 1
    delay_text = environ.get(MAX_BATCH_DELAY_US_ENV, "").strip()
    delay_us = _whole_number(MAX_BATCH_DELAY_US_ENV, delay_text, "microseconds", 0) if delay_text else 0
    if delay_us > MAX_BATCH_DELAY_US_LIMIT:
        raise ValueError(
            f"{MAX_BATCH_DELAY_US_ENV} is {delay_us} microseconds, over the limit of "
            f"{MAX_BATCH_DELAY_US_LIMIT} (10 s); the value is in microseconds: 5000 means 5 ms"
        )
    preferred_text = environ.get(PREFERRED_BATCH_SIZES_ENV, "")
    preferred = {
        _whole_number(PREFERRED_BATCH_SIZES_ENV, item.strip(), "rows each, comma-separated", 1)
        for item in preferred_text.split(",")
        if item.strip()
    }
    if max_batch_size == 1:
        # Delay and preferred sizes may come from server-wide defaults; without batches they mean nothing.
        return None
    too_big = sorted(size for size in preferred if size > max_batch_size)
    if too_big:
        raise ValueError(
            f"{PREFERRED_BATCH_SIZES_ENV} holds {', '.join(map(str, too_big))}, more than "
            f"{MAX_BATCH_SIZE_ENV} ({max_batch_size}): a batch never exceeds the maximum"
        )
    return BatchPolicy(max_batch_size, delay_us, tuple(sorted(preferred)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelhost.worker",
        description="Serve one model over the SageMaker container contract on a unix socket.",
    )
    parser.add_argument("--socket", required=True, type=Path, help="unix socket path to listen on")
    parser.add_argument(
        "--frame-socket", type=Path, default=None, help="unix socket for invocations in frames (the router's)"
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="the unpacked model artifact (not with --multi-model)"
    )
    parser.add_argument("--runtime", required=True, help="framework adapter, e.g. sklearn")
    parser.add_argument("--vcpus", required=True, type=_positive_float, help="vCPUs of the instance type")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs the instance has (devices 0..N-1)")
    parser.add_argument("--timeout-s", required=True, type=_positive_float, help="invocation timeout")
    parser.add_argument("--failure-file", required=True, type=Path, help="load failures are written here")
    parser.add_argument("--lifeline-fd", type=int, default=None, help="pipe read end; EOF = server gone")
    parser.add_argument(
        "--hang-grace-s",
        type=float,
        default=DEFAULT_HANG_GRACE_S,
        help="grace after --timeout-s before a running prediction counts as hung",
    )
    parser.add_argument(
        "--multi-model",
        action="store_true",
        help=f"serve the multi-model contract (POST /models ...); also set by {MULTI_MODEL_ENV}=true",
    )
    parser.add_argument(
        "--memory-limit-bytes",
        type=_positive_int,
        default=None,
        help="multi-model: refuse (507) a load that takes the worker's resident memory past this",
    )
    return parser


def parse_options(argv: Sequence[str], environ: Mapping[str, str]) -> WorkerOptions:
    """Options from the command line plus the model container's environment.

    Exits 2 on bad arguments (the server's mistake); raises ``InvalidEnvironment`` on a bad environment value
    (the user's, reported as a load failure).
    """
    parser = _parser()
    args = parser.parse_args(list(argv))
    multi_model = bool(args.multi_model) or environ.get(MULTI_MODEL_ENV, "").strip().lower() == "true"
    if args.model_dir is None and not multi_model:
        parser.error("--model-dir is required unless the worker serves many models (--multi-model)")
    try:
        batching = parse_batch_policy(environ)
    except ValueError as exc:
        raise InvalidEnvironment(
            f"{exc}. Fix the model's container Environment (docs/batching.md)", args.failure_file
        ) from exc
    return WorkerOptions(
        socket_path=args.socket,
        model_dir=MULTI_MODEL_DIR if args.model_dir is None else args.model_dir,
        runtime=args.runtime,
        vcpus=args.vcpus,
        timeout_s=args.timeout_s,
        failure_file=args.failure_file,
        lifeline_fd=args.lifeline_fd,
        hang_grace_s=max(0.0, args.hang_grace_s),
        program=environ.get("SAGEMAKER_PROGRAM") or None,
        default_accept=environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or None,
        batching=batching,
        frame_socket_path=args.frame_socket,
        gpus=max(0, args.gpus),
        multi_model=multi_model,
        memory_limit_bytes=args.memory_limit_bytes,
    )
