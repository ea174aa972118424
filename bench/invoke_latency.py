"""InvokeEndpoint latency and throughput of modelhost, side by side with its baselines, in one run.

Measures, for the peer harness's scikit-learn LogisticRegression (20 features) and a one-row JSON body:
  * in-process ``model.predict`` (1 row and 32 rows): the limit, with no HTTP at all;
  * the floor: a bare ASGI app on uvicorn + httptools + uvloop + orjson, one process
    (bench/floor_server.py);
  * modelhost: ``POST /endpoints/<name>/invocations`` on ``modelhost serve``, the endpoint deployed through
    boto3 with 1 and then 2 ml.m5.large instances (client → server → unix socket → worker → back);
with wrk (closed loop, keep-alive) at concurrency 1 and 32, and reports req/s, p50, p99, server CPU per
request (server and worker processes, from /proc), RSS, and the ratios modelhost / floor. A one-connection
Python client also times the worker alone over its unix socket, to split modelhost's extra latency.

Run: ``make bench`` (= ``.venv/bin/python bench/invoke_latency.py``); about 3 minutes with the defaults.
Needs wrk (``apt-get install -y wrk``). Loopback only; every run bounded; every server stopped at the end.
Results: a table on stdout and bench/results/invoke-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import answers
import inprocess
import numpy as np
import orjson
import proc_tree
import sklearn
from http_probe import Address, ProbeResult, probe
from load_measure import LoadSpec, measure
from modelhost_target import Modelhost, write_artifact
from server_process import ServerProcess, free_port
from shared_model import sample_row, train
from wrk_load import require_wrk

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
CONCURRENCIES = (1, 32)


@dataclass(frozen=True)
class LoadRun:
    target: str  # "floor" or "modelhost"
    instances: int  # worker processes behind the target (the floor has none: 0)
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    non_2xx: int
    cpu_ms_per_request: Mapping[str, float]  # by role (server, workers) and "total"
    rss_mb: Mapping[str, float]  # by role, after the run
    other_cpu_pct: float  # share of all cores busy with processes other than ours during the run


def load_run(
    target: str,
    instances: int,
    url: str,
    body_file: Path,
    concurrency: int,
    roles: Mapping[str, Sequence[int]],
    args: argparse.Namespace,
) -> LoadRun:
    spec = LoadSpec(body_file, "application/json", concurrency, args.warmup_s, args.duration_s)
    m = measure(target, "lr", url, spec, lambda: roles)
    other_pct = m.other_cpu_pct
    run = LoadRun(
        target,
        instances,
        concurrency,
        m.requests,
        m.rps,
        m.p50_ms,
        m.p99_ms,
        m.max_ms,
        m.socket_errors,
        m.non_2xx,
        m.cpu_ms_per_request,
        m.rss_mb,
        other_pct,
    )
    print(
        f"  {target:<9} x{instances} c={concurrency:<2} {run.rps:8.0f} req/s  p50 {run.p50_ms:.3f} ms  "
        f"p99 {run.p99_ms:.3f} ms  errors {run.socket_errors + run.non_2xx}  other CPU {other_pct:.0f} %",
        flush=True,
    )
    return run


def bench_floor(
    model: Any, body_file: Path, cases: list[tuple[bytes, list[Any]]], tmp: Path, args: argparse.Namespace
) -> tuple[list[LoadRun], dict[str, Any]]:
    port = free_port()
    server = ServerProcess(
        [sys.executable, str(BENCH_DIR / "floor_server.py"), "--port", str(port)],
        f"http://127.0.0.1:{port}/ping",
        tmp / "floor.log",
    )
    try:
        startup_s = server.start()
        address = Address(port=port)
        answers.check(address, "/invocations", cases)
        roles = {"server": [server.pid]}
        runs = [
            load_run("floor", 0, f"http://127.0.0.1:{port}/invocations", body_file, c, roles, args)
            for c in CONCURRENCIES
        ]
        checked = answers.check(address, "/invocations", cases)
        extra: dict[str, Any] = {"startup_s": startup_s, "answers_checked_after_load": checked}
        if args.probe_s > 0:
            extra["probe_c1"] = asdict(probe(address, "/invocations", cases[0][0], args.probe_s))
        return runs, extra
    finally:
        server.stop()


def bench_modelhost(
    model: Any, body_file: Path, cases: list[tuple[bytes, list[Any]]], tmp: Path, args: argparse.Namespace
) -> tuple[list[LoadRun], dict[str, Any]]:
    data_dir = tmp / "data"
    write_artifact(data_dir, model)
    mh = Modelhost(data_dir, tmp / "modelhost.log")
    runs: list[LoadRun] = []
    extra: dict[str, Any] = {}
    try:
        extra["startup_s"] = mh.start()
        address = Address(port=mh.port)
        for instances in args.instances:
            endpoint = f"bench-{instances}x"
            path = mh.invocations_path(endpoint)
            info: dict[str, Any] = {"deploy_s": mh.deploy(endpoint, instances)}
            workers = mh.workers()
            if len(workers) != instances:
                raise RuntimeError(f"expected {instances} worker processes, found {workers}")
            answers.check(address, path, cases)
            roles = {"server": [mh.server.pid], "workers": [w.pid for w in workers]}
            runs += [
                load_run("modelhost", instances, mh.url + path, body_file, c, roles, args)
                for c in CONCURRENCIES
            ]
            info["answers_checked_after_load"] = answers.check(address, path, cases)
            if args.probe_s > 0:
                info["probe_c1"] = asdict(probe(address, path, cases[0][0], args.probe_s))
                # The worker alone, over its unix socket: what the server hop costs is the difference.
                worker = Address(unix_path=workers[0].socket_path)
                info["worker_probe_c1"] = asdict(probe(worker, "/invocations", cases[0][0], args.probe_s))
            extra[f"{instances}x"] = info
            mh.delete(endpoint)
        return runs, extra
    finally:
        mh.stop()


def find(runs: Sequence[LoadRun], target: str, instances: int, concurrency: int) -> LoadRun | None:
    return next(
        (r for r in runs if (r.target, r.instances, r.concurrency) == (target, instances, concurrency)), None
    )


def ratios(
    runs: Sequence[LoadRun], predict_p50_us: float, instance_counts: Sequence[int]
) -> dict[str, float]:
    out: dict[str, float] = {}
    f1, f32 = find(runs, "floor", 0, 1), find(runs, "floor", 0, 32)
    if f1:
        out["floor_overhead_c1_us"] = f1.p50_ms * 1000 - predict_p50_us
    for n in instance_counts:
        m1, m32 = find(runs, "modelhost", n, 1), find(runs, "modelhost", n, 32)
        if m1 and f1:
            out[f"modelhost{n}x_p50_over_floor_c1"] = m1.p50_ms / f1.p50_ms
            out[f"modelhost{n}x_overhead_c1_us"] = m1.p50_ms * 1000 - predict_p50_us
            out[f"modelhost{n}x_extra_over_floor_c1_us"] = (m1.p50_ms - f1.p50_ms) * 1000
        if m32 and f32:
            out[f"modelhost{n}x_rps_over_floor_c32"] = m32.rps / f32.rps
            out[f"modelhost{n}x_cpu_over_floor_c32"] = (
                m32.cpu_ms_per_request["total"] / f32.cpu_ms_per_request["total"]
            )
    return out


def print_report(
    runs: Sequence[LoadRun],
    timings: Mapping[str, inprocess.CallTiming],
    rat: Mapping[str, float],
    probes: Mapping[str, ProbeResult],
) -> None:
    print("\nin-process (this process, no HTTP):")
    for name, t in timings.items():
        print(f"  {name:<28} p50 {t.p50_us:8.1f} µs   p99 {t.p99_us:8.1f} µs   ({t.calls} calls)")
    print("\nwrk, one-row JSON body, closed loop (p99 corrected for coordinated omission):")
    print(
        f"  {'target':<13}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'CPU ms/req':>12}{'(server':>9}{'workers)':>10}{'RSS MB':>8}{'other %':>9}"
    )
    for r in runs:
        name = "floor" if r.target == "floor" else f"modelhost {r.instances}x"
        cpu = r.cpu_ms_per_request
        print(
            f"  {name:<13}{r.concurrency:>5}{r.rps:>9.0f}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}"
            f"{r.socket_errors + r.non_2xx:>8}{cpu['total']:>12.3f}{cpu['server']:>9.3f}"
            f"{cpu.get('workers', 0.0):>10.3f}{r.rss_mb['total']:>8.0f}{r.other_cpu_pct:>9.0f}"
        )
    if probes:
        print("\none connection, one request at a time (Python client, same for all), p50 / p99 µs:")
        for name, p in probes.items():
            print(f"  {name:<28} {p.p50_us:8.1f} / {p.p99_us:8.1f}   ({p.requests} requests)")
    print("\nratios:")
    for name, value in rat.items():
        unit = " µs" if name.endswith("_us") else "x"
        print(f"  {name:<36} {value:9.2f}{unit}")


def machine() -> dict[str, Any]:
    cpu_model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    wrk = subprocess.run([require_wrk(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?",
    }


def machine_busy_pct(window_s: float) -> float:
    """How busy the machine is before we start anything (all cores, percent)."""
    before = proc_tree.machine_busy_seconds()
    time.sleep(window_s)
    return 100 * (proc_tree.machine_busy_seconds() - before) / (window_s * (os.cpu_count() or 1))


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop every server, as on Ctrl-C.
    raise SystemExit(128 + signum)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup-s", type=float, default=3.0, help="wrk warm-up before each measurement")
    parser.add_argument("--duration-s", type=float, default=15.0, help="each measured wrk run (max 60)")
    parser.add_argument(
        "--instances", default="1,2", help="modelhost instance counts to measure, comma-separated"
    )
    parser.add_argument("--probe-s", type=float, default=2.0, help="one-connection probe per target; 0 = off")
    parser.add_argument("--inproc-s", type=float, default=1.5, help="timing of each in-process call")
    args = parser.parse_args(argv)
    args.duration_s = min(60.0, max(1.0, args.duration_s))
    args.instances = [int(n) for n in args.instances.split(",") if n.strip()]
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    require_wrk()
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    busy_pct = machine_busy_pct(1.0)
    if busy_pct > 20:
        print(
            f"warning: {busy_pct:.0f} % of all cores were busy before the start; expect noisy numbers "
            "(the 'other %' column shows how much else ran during each measurement)",
            flush=True,
        )
    model, model_source = train()
    row = sample_row()
    cases = answers.probe_bodies(model, row)
    tmp = Path(tempfile.mkdtemp(prefix="mh-bench-"))
    ok = False
    try:
        body_file = tmp / "body.json"
        body_file.write_bytes(orjson.dumps([row]))
        print(f"model from {model_source}; in-process timings ...", flush=True)
        timings = inprocess.measure(model, row, args.inproc_s)
        print("floor ...", flush=True)
        floor_runs, floor_extra = bench_floor(model, body_file, cases, tmp, args)
        print("modelhost ...", flush=True)
        mh_runs, mh_extra = bench_modelhost(model, body_file, cases, tmp, args)
        ok = True
    finally:
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"\nstopped early; server logs kept in {tmp}", file=sys.stderr)
    runs = floor_runs + mh_runs
    rat = ratios(runs, timings["predict_1_row"].p50_us, args.instances)
    probes: dict[str, ProbeResult] = {}
    if "probe_c1" in floor_extra:
        probes["floor"] = ProbeResult(**floor_extra["probe_c1"])
    for n in args.instances:
        info = mh_extra.get(f"{n}x", {})
        if "probe_c1" in info:
            probes[f"modelhost {n}x"] = ProbeResult(**info["probe_c1"])
            probes[f"modelhost {n}x: worker alone"] = ProbeResult(**info["worker_probe_c1"])
    print_report(runs, timings, rat, probes)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"invoke-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "invoke_latency",
                "utc": stamp,
                "machine": {**machine(), "busy_pct_before_start": busy_pct},
                "model": model_source,
                "settings": {
                    "warmup_s": args.warmup_s,
                    "duration_s": args.duration_s,
                    "instances": args.instances,
                    "concurrencies": list(CONCURRENCIES),
                    "body": "[[20 floats]]",
                    "probe_s": args.probe_s,
                },
                "in_process": {name: asdict(t) for name, t in timings.items()},
                "runs": [asdict(r) for r in runs],
                "ratios": rat,
                "floor": floor_extra,
                "modelhost": mh_extra,
                "wall_s": time.monotonic() - started,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out.relative_to(BENCH_DIR.parent)} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit("interrupted; every server was stopped")
