"""modelhost side by side with the floor and its peers (mosec, FastAPI, ...) in one run, with the goal ratios.

Measures, with the same wrk settings and the same /proc accounting for every target, one server at a time on
127.0.0.1:
  * lr: the peer harness's LogisticRegression and its one-row body ``{"instances": [[20 floats]]}`` on the
    floor (bench/floor_server.py), the peers (started from ../shared/bench/peers/, each in its own venv,
    installed by the harness's install_all.sh when missing) and modelhost without and with dynamic
    batching (deployed through boto3), at c=1 and c=32;
  * mlp: a PyTorch MLP of about 1M parameters on modelhost without and with batching (c=32), against its
    in-process batched throughput, the limit;
  * payload: 1 KB, 100 KB and 1 MB bodies (a flat array in, its sum out) through the floor and modelhost;
  * overload (``--overload``): modelhost open-loop at twice its sustainable rate (see overload.py).
It prints req/s, p50, p99, server CPU per request, RSS, the ratios to the floor and to the best peer and the
issue's goals with PASS/FAIL, and writes bench/results/peers-<UTC timestamp>.json.

Run: ``make bench-peers`` (= ``.venv/bin/python bench/peers_bench.py``); about 6 minutes with the defaults.
Loopback only; every load run bounded; every server stopped at the end, on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import goals
import mlp_workload
import numpy as np
import payload_workload
import peer_servers
import peers_report
import proc_tree
import sklearn
from overload import OverloadReport, verdicts
from peer_sections import Run, section_lr, section_mlp, section_overload, section_payload
from shared_model import train
from targets import ModelhostTargets
from wrk_load import require_wrk

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
SECTIONS = ("lr", "mlp", "payload")
DEFAULT_PEERS = "floor,fastapi,mosec,mosec+batch"


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--peers",
        default=DEFAULT_PEERS,
        help="floor and peer names of the harness (bench.py "
        f"--list), comma-separated; default {DEFAULT_PEERS}",
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help="any of lr, mlp, payload")
    p.add_argument("--warmup-s", type=float, default=2.0, help="wrk warm-up before each measurement")
    p.add_argument("--duration-s", type=float, default=8.0, help="each measured wrk run (max 60)")
    p.add_argument("--conc", default="1,32", help="concurrencies of the lr section")
    p.add_argument("--batch-size", type=int, default=32, help="MODELHOST_MAX_BATCH_SIZE of +batch")
    p.add_argument("--batch-delay-us", type=int, default=0, help="MODELHOST_MAX_BATCH_DELAY_US of +batch")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="past 1: the lr section adds modelhost+workers, with this SAGEMAKER_MODEL_SERVER_WORKERS",
    )
    p.add_argument("--mlp-threads", type=int, default=1, help="torch threads, in-process and served")
    p.add_argument("--mlp-batch-rows", type=int, default=32, help="rows per in-process batch (the limit)")
    p.add_argument("--mlp-conc", default="32", help="concurrencies of the mlp section")
    p.add_argument("--payload-sizes", default="1KB,100KB,1MB")
    p.add_argument("--payload-types", default="json", help="json and/or npy")
    p.add_argument("--payload-conc", default="1,8")
    p.add_argument("--overload", action="store_true", help="also run the overload check (modelhost alone)")
    p.add_argument("--overload-s", type=float, default=60.0, help="its length (max 900; the goal says 600)")
    p.add_argument("--overload-factor", type=float, default=2.0, help="times the sustainable rate")
    p.add_argument("--overload-connections", type=int, default=512, help="open-loop client connections")
    p.add_argument("--rss-every-s", type=float, default=5.0, help="RSS sampling period during overload")
    p.add_argument("--peers-dir", type=Path, default=peer_servers.PEERS_DIR, help="the peer harness")
    p.add_argument("--reinstall", action="store_true", help="rebuild the peer venvs (install_all.sh)")
    args = p.parse_args(argv)
    args.duration_s = min(60.0, max(1.0, args.duration_s))
    args.overload_s = min(900.0, max(1.0, args.overload_s))
    args.peers = _list(args.peers)
    args.sections = _list(args.sections)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    args.conc = [int(c) for c in _list(args.conc)]
    args.mlp_conc = [int(c) for c in _list(args.mlp_conc)]
    args.payload_conc = [int(c) for c in _list(args.payload_conc)]
    args.payload_sizes = _list(args.payload_sizes)
    args.payload_types = _list(args.payload_types)
    for kind in args.payload_types:
        if kind not in payload_workload.CONTENT_TYPES:
            p.error(f"--payload-types: {kind!r} is not one of {', '.join(payload_workload.CONTENT_TYPES)}")
    return args


# ---- composition


def machine(harness: ModuleType | None) -> dict[str, Any]:
    cpu_model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    wrk = subprocess.run([require_wrk(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "wrk": ((wrk.stdout or wrk.stderr).splitlines() or ["?"])[0],
    }
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["torch"] = torch.__version__
    if harness is not None:
        # What each peer venv ran, from the harness's own pip freeze after install.
        logs = Path(harness.WORK) / "logs"
        info["peer_venvs"] = {
            f.stem.removeprefix("freeze-"): f.read_text().splitlines()
            for f in sorted(logs.glob("freeze-*.txt"))
        }
    return info


def machine_busy_pct(window_s: float) -> float:
    """How busy the machine is before we start anything (all cores, percent)."""
    before = proc_tree.machine_busy_seconds()
    time.sleep(window_s)
    return 100 * (proc_tree.machine_busy_seconds() - before) / (window_s * (os.cpu_count() or 1))


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop every server, as on Ctrl-C.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    require_wrk()
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    peers = [name for name in args.peers if name != "floor"]
    harness: ModuleType | None = None
    if "lr" in args.sections and peers:
        work = peer_servers.work_dir()
        harness = peer_servers.load_harness(args.peers_dir, work)
        unknown = [name for name in peers if name not in harness.PEERS]
        if unknown:
            raise SystemExit(f"unknown peers {unknown}; the harness knows: floor, {', '.join(harness.PEERS)}")
        peer_servers.ensure_venvs(
            args.peers_dir, work, peer_servers.venv_names(harness, peers), args.reinstall
        )
    busy_pct = machine_busy_pct(1.0)
    if busy_pct > 20:
        print(
            f"warning: {busy_pct:.0f} % of all cores were busy before the start; expect noisy numbers "
            "(the 'other%' column shows how much else ran during each measurement)",
            flush=True,
        )
    model, model_source = train()
    tmp = Path(tempfile.mkdtemp(prefix="mh-peers-bench-"))
    run = Run(args, tmp)
    mh = ModelhostTargets(tmp / "data", tmp)
    limit: mlp_workload.MlpLimit | None = None
    payload_labels: list[str] = []
    overload: OverloadReport | None = None
    finished = False
    try:
        if "lr" in args.sections:
            section_lr(run, harness, mh, model)
        if "mlp" in args.sections:
            limit = section_mlp(run, mh)
        if "payload" in args.sections:
            payload_labels = section_payload(run, mh)
        if args.overload:
            overload = section_overload(run, mh, model)
        finished = True
    finally:
        mh.stop()
        if finished and not run.failures:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"\nserver logs kept in {tmp}", file=sys.stderr)
    lr_runs = [r for r in run.runs if r.workload == "lr"]
    if lr_runs:
        peers_report.print_lr(lr_runs, args.conc)
    mlp_runs = [r for r in run.runs if r.workload == "mlp"]
    if limit is not None and run.extra.get("mlp"):
        peers_report.print_mlp(limit, run.extra["mlp"]["parameters"], mlp_runs)
    if payload_labels:
        peers_report.print_payload(run.runs, payload_labels, args.payload_conc)
    if overload is not None:
        peers_report.print_overload(overload)
    goal_list = goals.evaluate(run.runs, verdicts(overload) if overload else None)
    peers_report.print_goals(goal_list)
    if run.failures:
        print("\nfailed:")
        for name, why in run.failures.items():
            print(f"  {name}: {why.splitlines()[0]}")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"peers-{stamp}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    doc = {
        "benchmark": "peers_bench",
        "utc": stamp,
        "machine": {**machine(harness), "busy_pct_before_start": busy_pct},
        "model": model_source,
        "settings": settings,
        "runs": [{**asdict(r), "errors": r.errors} for r in run.runs],
        "startup_s": run.startup_s,
        **run.extra,
        "overload": asdict(overload) if overload else None,
        "goals": [{**asdict(g), "verdict": g.verdict} for g in goal_list],
        "failures": run.failures,
        "wall_s": time.monotonic() - started,
    }
    out.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {out.relative_to(BENCH_DIR.parent)} ({time.monotonic() - started:.0f} s)")
    return 1 if run.failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit("interrupted; every server was stopped")
