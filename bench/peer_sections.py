"""The peer benchmark's sections (lr, mlp, payload, overload): which targets each loads, with what, and how
its answers are checked. Called in order by bench/peers_bench.py, which owns the ``Run`` they fill.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import answers
import mlp_workload
import payload_workload
from load_measure import LoadSpec, Measurement, measure
from modelhost_target import MODEL_URL, write_artifact
from overload import OverloadReport, check_overload
from shared_model import sample_row
from targets import ModelhostTargets, Served, floor, harness_verify, peer

INSTANCES_BODY = "body_instances.json"  # the harness's one-row request, sent byte for byte to every target


class Run:
    """What one benchmark run measured so far; the composition root fills it section by section."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.runs: list[Measurement] = []
        self.failures: dict[str, str] = {}
        self.extra: dict[str, Any] = {}
        self.startup_s: dict[str, float] = {}

    def spec(self, body_file: Path, concurrency: int, content_type: str = "application/json") -> LoadSpec:
        return LoadSpec(body_file, content_type, concurrency, self.args.warmup_s, self.args.duration_s)

    def attempt(self, name: str, work: Callable[[], None]) -> None:
        """Run one target's measurements; a target that fails is reported, and the others still run."""
        try:
            work()
        except Exception as exc:  # Ctrl-C and SIGTERM (SystemExit) are not Exceptions: they end the run
            self.failures[name] = f"{type(exc).__name__}: {exc}"[:1000]
            print(f"    FAILED {name}: {self.failures[name]}", file=sys.stderr, flush=True)


def load_target(
    run: Run,
    served: Served,
    workload: str,
    specs: Sequence[LoadSpec],
    check: Callable[[Served], int],
) -> None:
    """Check the answers, measure each spec, check again: a fast wrong answer must not count."""
    run.startup_s[f"{served.name}/{workload}"] = served.startup_s
    check(served)
    for spec in specs:
        run.runs.append(measure(served.name, workload, served.url, spec, served.roles_of))
    check(served)


def batch_env(args: argparse.Namespace) -> dict[str, str]:
    return {
        "MODELHOST_MAX_BATCH_SIZE": str(args.batch_size),
        "MODELHOST_MAX_BATCH_DELAY_US": str(args.batch_delay_us),
    }


def _endpoint_name(workload: str, label: str) -> str:
    return f"{workload}-{label.replace('+', '-')}"


# ---- lr: the shared LogisticRegression on every target


def _lr_floor(run: Run, specs: Sequence[LoadSpec], check: Callable[[Served], int]) -> None:
    with floor(run.tmp) as served:
        load_target(run, served, "lr", specs, check)


def _lr_peer(run: Run, harness: ModuleType, name: str, check: Callable[[Served], int]) -> None:
    with peer(harness, name, run.tmp) as (served, body_file):
        specs = [run.spec(body_file, c) for c in run.args.conc]
        if body_file.name != INSTANCES_BODY:
            # Another protocol (V2, ...): its own body, and the harness's verify.py instead of our check.
            check = functools.partial(harness_verify, harness, body_file=body_file)
        load_target(run, served, "lr", specs, check)


def _lr_modelhost(
    run: Run,
    mh: ModelhostTargets,
    label: str,
    env: dict[str, str] | None,
    specs: Sequence[LoadSpec],
    check: Callable[[Served], int],
) -> None:
    with mh.endpoint(_endpoint_name("lr", label), label, MODEL_URL, env) as served:
        load_target(run, served, "lr", specs, check)


def section_lr(run: Run, harness: ModuleType | None, mh: ModelhostTargets, model: Any) -> None:
    args = run.args
    row = sample_row()
    body_file = args.peers_dir / "common" / INSTANCES_BODY
    if not body_file.exists():  # no harness beside this checkout: the floor and modelhost still run
        body_file = run.tmp / INSTANCES_BODY
        body_file.write_bytes(json.dumps({"instances": [row]}).encode())
    if json.loads(body_file.read_bytes()) != {"instances": [row]}:
        raise SystemExit(f"{body_file} is not the sample row this benchmark checks answers against")
    cases = answers.probe_bodies(model, row, instances=True)
    specs = [run.spec(body_file, c) for c in args.conc]

    def check(served: Served) -> int:
        return answers.check(served.address, served.path, cases)

    print("lr: the shared LogisticRegression", flush=True)
    for name in args.peers:
        if name == "floor":
            run.attempt(name, functools.partial(_lr_floor, run, specs, check))
        else:
            assert harness is not None, "main loads the harness whenever a peer is asked for"
            run.attempt(name, functools.partial(_lr_peer, run, harness, name, check))
    write_artifact(mh.data_dir, model)
    targets: list[tuple[str, dict[str, str] | None]] = [
        ("modelhost", None),
        ("modelhost+batch", batch_env(args)),
    ]
    if args.workers > 1:
        targets.append(("modelhost+workers", {"SAGEMAKER_MODEL_SERVER_WORKERS": str(args.workers)}))
    for label, env in targets:
        run.attempt(label, functools.partial(_lr_modelhost, run, mh, label, env, specs, check))


# ---- mlp: where batching pays for real compute


def _mlp_modelhost(
    run: Run, mh: ModelhostTargets, label: str, env: dict[str, str], workload: mlp_workload.MlpWorkload
) -> None:
    body_file = run.tmp / "mlp.json"
    body_file.write_bytes(workload.body)
    specs = [run.spec(body_file, c) for c in run.args.mlp_conc]

    def check(served: Served) -> int:
        return answers.check(served.address, served.path, workload.cases, same=answers.close)

    with mh.endpoint(_endpoint_name("mlp", label), label, mlp_workload.MODEL_URL, env) as served:
        load_target(run, served, "mlp", specs, check)


def section_mlp(run: Run, mh: ModelhostTargets) -> mlp_workload.MlpLimit | None:
    args = run.args
    print("mlp: PyTorch MLP", flush=True)
    if importlib.util.find_spec("torch") is None:
        run.failures["mlp"] = "torch is not installed in this venv: .venv/bin/pip install torch==2.13.0"
        print(f"    skipped: {run.failures['mlp']}", flush=True)
        return None
    workload, handler, model = mlp_workload.prepare(args.mlp_threads)
    limit = mlp_workload.limit(handler, model, args.mlp_threads, args.mlp_batch_rows, timing_s=1.5)
    run.extra["mlp"] = {
        "parameters": workload.parameters,
        "limit": asdict(limit),
        "limit_rows_per_s": limit.rows_per_s,
        "single_row_rows_per_s": limit.single_rows_per_s,
    }
    print(
        f"    in-process: {limit.rows_per_s:.0f} rows/s in {limit.batch_rows}-row batches, "
        f"{limit.single_rows_per_s:.0f} rows/s one at a time ({workload.parameters:,} parameters)",
        flush=True,
    )
    mh.write(mlp_workload.MODEL_URL, workload.files)
    plain = dict(workload.environment)
    for label, env in (("modelhost", plain), ("modelhost+batch", {**plain, **batch_env(args)})):
        run.attempt(f"mlp {label}", functools.partial(_mlp_modelhost, run, mh, label, env, workload))
    return limit


# ---- payload: 1 KB to 1 MB bodies


def _payload_target(
    run: Run, served: Served, payloads: Sequence[payload_workload.Payload], files: dict[str, Path]
) -> None:
    for pl in payloads:
        case = [(pl.body, pl.expected_sum)]

        def check(served: Served, case: list[answers.Case] = case, ctype: str = pl.content_type) -> int:
            # Content-Type matters here (NPY), so the check sends the payload's own.
            return answers.check(served.address, served.path, case, 8, answers.close, ctype)

        specs = [run.spec(files[pl.label], c, pl.content_type) for c in run.args.payload_conc]
        load_target(run, served, pl.label, specs, check)


def _payload_floor(run: Run, payloads: Sequence[payload_workload.Payload], files: dict[str, Path]) -> None:
    with floor(run.tmp, handler="sum") as served:
        _payload_target(run, served, payloads, files)


def _payload_modelhost(
    run: Run, mh: ModelhostTargets, payloads: Sequence[payload_workload.Payload], files: dict[str, Path]
) -> None:
    mh.write(payload_workload.MODEL_URL, payload_workload.artifact_files())
    with mh.endpoint("sum", "modelhost", payload_workload.MODEL_URL) as served:
        _payload_target(run, served, payloads, files)


def section_payload(run: Run, mh: ModelhostTargets) -> list[str]:
    args = run.args
    print("payload: a flat array in, its sum out", flush=True)
    payloads = [payload_workload.make_payload(s, k) for k in args.payload_types for s in args.payload_sizes]
    files = {pl.label: run.tmp / f"payload-{pl.label}.bin" for pl in payloads}
    for pl in payloads:
        files[pl.label].write_bytes(pl.body)
    run.extra["payload_bytes"] = {pl.label: len(pl.body) for pl in payloads}
    run.attempt("payload floor", functools.partial(_payload_floor, run, payloads, files))
    run.attempt("payload modelhost", functools.partial(_payload_modelhost, run, mh, payloads, files))
    return [pl.label for pl in payloads]


# ---- overload: modelhost alone, open loop


def section_overload(run: Run, mh: ModelhostTargets, model: Any) -> OverloadReport | None:
    args = run.args
    print("overload: modelhost, open loop", flush=True)
    write_artifact(mh.data_dir, model)
    body_file = args.peers_dir / "common" / INSTANCES_BODY
    cases = answers.probe_bodies(model, sample_row(), instances=True)
    result: list[OverloadReport] = []

    def work() -> None:
        with mh.endpoint("overload", "modelhost", MODEL_URL) as served:
            answers.check(served.address, served.path, cases)
            result.append(
                check_overload(
                    url=served.url,
                    port=served.port,
                    path=served.path,
                    body_file=body_file,
                    factor=args.overload_factor,
                    duration_s=args.overload_s,
                    measure_s=args.duration_s,
                    max_connections=args.overload_connections,
                    rss_every_s=args.rss_every_s,
                    server_pids=lambda: [p for pids in mh.roles().values() for p in pids],
                    alive=mh.alive,
                    check_answers=lambda: answers.check(served.address, served.path, cases),
                )
            )

    run.attempt("overload", work)
    return result[0] if result else None
