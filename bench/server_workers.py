"""SAGEMAKER_MODEL_SERVER_WORKERS: one instance with one worker process, the same instance with two, and two
instances of one worker each, on the shared LogisticRegression, in one run against one server.

Each target is loaded by wrk at every concurrency (warm-up, then the measured run), its answers checked
against the model's in-process predictions; the figures are req/s, p50/p99 and CPU per request, and the
ratios against one worker. Loopback only; the server and its data dir are removed at the end.

    .venv/bin/python bench/server_workers.py [--duration-s 15] [--warmup-s 3] [--conc 1,32] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import answers
from answers import Case
from load_measure import LoadSpec, Measurement, measure
from modelhost_target import MODEL_URL, write_artifact
from shared_model import sample_row, train
from targets import ModelhostTargets
from wrk_load import require_wrk

RESULTS = Path(__file__).parent / "results"
# label -> (instances, SAGEMAKER_MODEL_SERVER_WORKERS)
TARGETS = {"1 worker": (1, None), "2 workers": (1, "2"), "2 instances": (2, None)}


def run_once(
    mh: ModelhostTargets, body_file: Path, args: argparse.Namespace, cases: list[Case], run: int
) -> list[Measurement]:
    out = []
    for label, (instances, workers) in TARGETS.items():
        env = {"SAGEMAKER_MODEL_SERVER_WORKERS": workers} if workers else None
        name = f"sw{run}-" + label.replace(" ", "-")  # models and configs outlive their endpoint
        with mh.endpoint(name, label, MODEL_URL, env, instances) as served:
            checked = answers.check(served.address, served.path, cases)
            print(f"  {label}: {checked} answers checked against the model in process", flush=True)
            for conc in args.conc:
                spec = LoadSpec(body_file, "application/json", conc, args.warmup_s, args.duration_s)
                m = measure(label, "lr", served.url, spec, served.roles_of)
                out.append(m)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--conc", type=lambda v: [int(c) for c in v.split(",")], default=[1, 32])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    require_wrk()
    model, _ = train()
    row = sample_row()
    cases = answers.probe_bodies(model, row, instances=True)
    runs: list[list[Measurement]] = []
    with tempfile.TemporaryDirectory(prefix="mh-workers-") as tmp:
        root = Path(tmp)
        body_file = root / "body.json"
        body_file.write_text(json.dumps({"instances": [row]}))
        mh = ModelhostTargets(root / "data", root)
        write_artifact(mh.data_dir, model)
        try:
            for i in range(args.runs):
                print(f"run {i + 1} of {args.runs}", flush=True)
                runs.append(run_once(mh, body_file, args, cases, i))
        finally:
            mh.stop()
    summary = {}
    print("\nmedian over runs (req/s ratio against 1 worker at the same concurrency):")
    for conc in args.conc:
        base = statistics.median(
            m.rps for r in runs for m in r if m.target == "1 worker" and m.concurrency == conc
        )
        for label in TARGETS:
            ms = [m for r in runs for m in r if m.target == label and m.concurrency == conc]
            rps = statistics.median(m.rps for m in ms)
            row_summary = {
                "rps": round(rps),
                "rps_min": round(min(m.rps for m in ms)),
                "rps_max": round(max(m.rps for m in ms)),
                "p50_ms": round(statistics.median(m.p50_ms for m in ms), 2),
                "p99_ms": round(statistics.median(m.p99_ms for m in ms), 2),
                "cpu_ms_per_request": round(statistics.median(m.cpu_ms_per_request["total"] for m in ms), 3),
                "ratio": round(rps / base, 2),
                "errors": sum(m.errors for m in ms),
                "other_cpu_pct": round(statistics.median(m.other_cpu_pct for m in ms)),
            }
            summary[f"{label} c={conc}"] = row_summary
            print(f"  {label:12} c={conc:<3} {json.dumps(row_summary)}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"server-workers-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"settings": vars(args), "summary": summary}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
