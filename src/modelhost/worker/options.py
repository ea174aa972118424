"""The worker's command line and the SageMaker environment variables it honours, as one frozen value.

Built once by ``__main__`` (the composition root); the server writes the matching command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ACCEPT = "application/json"
DEFAULT_HANG_GRACE_S = 5.0


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
    default_accept: str = DEFAULT_ACCEPT  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT: for absent or */* Accept

    @property
    def prediction_threads(self) -> int:
        """Handler threads: one per whole vCPU, at least one."""
        return max(1, round(self.vcpus))

    @property
    def hang_after_s(self) -> float:
        """A prediction running this long means a stuck handler: /ping fails so the server replaces us."""
        return self.timeout_s + self.hang_grace_s


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelhost.worker",
        description="Serve one model over the SageMaker container contract on a unix socket.",
    )
    parser.add_argument("--socket", required=True, type=Path, help="unix socket path to listen on")
    parser.add_argument("--model-dir", required=True, type=Path, help="the unpacked model artifact")
    parser.add_argument("--runtime", required=True, help="framework adapter, e.g. sklearn")
    parser.add_argument("--vcpus", required=True, type=_positive_float, help="vCPUs of the instance type")
    parser.add_argument("--timeout-s", required=True, type=_positive_float, help="invocation timeout")
    parser.add_argument("--failure-file", required=True, type=Path, help="load failures are written here")
    parser.add_argument("--lifeline-fd", type=int, default=None, help="pipe read end; EOF = server gone")
    parser.add_argument(
        "--hang-grace-s",
        type=float,
        default=DEFAULT_HANG_GRACE_S,
        help="grace after --timeout-s before a running prediction counts as hung",
    )
    return parser


def parse_options(argv: Sequence[str], environ: Mapping[str, str]) -> WorkerOptions:
    """Options from the command line plus the model container's environment; exits 2 on bad arguments."""
    args = _parser().parse_args(list(argv))
    return WorkerOptions(
        socket_path=args.socket,
        model_dir=args.model_dir,
        runtime=args.runtime,
        vcpus=args.vcpus,
        timeout_s=args.timeout_s,
        failure_file=args.failure_file,
        lifeline_fd=args.lifeline_fd,
        hang_grace_s=max(0.0, args.hang_grace_s),
        program=environ.get("SAGEMAKER_PROGRAM") or None,
        default_accept=environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or DEFAULT_ACCEPT,
    )
