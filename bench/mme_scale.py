"""The multi-model scale benchmark: 1,000 small models under one prefix behind one endpoint whose memory
budget holds about 50, driven with a Zipf-skewed pattern by many concurrent clients for a bounded time.

Every answer is checked against its model's in-process prediction (each model answers differently). Reports
requests, errors, mismatches, the hit ratio (the server's ModelCacheHit / modelhost_model_requests, and an
ideal LRU of the same capacity over the request stream the clients sent), load latencies from the
server's histograms, request p50/p99, LoadedModelCount and RSS over time against the budget, and the
in-process load time of one model. Loopback only; the server and its data dir are removed at the end.

    .venv/bin/python bench/mme_scale.py [--duration-s 180] [--models 1000] [--fit 50] [--clients 32]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import platform
import shutil
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mme_models
import numpy as np
import proc_tree
from modelhost_target import Modelhost
from prometheus_client.parser import text_string_to_metric_families

ENDPOINT = "mme-scale"
PREFIX = "s3://bench/mme/"
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Call:
    started_s: float
    latency_ms: float
    key: str
    status: int  # 0: no HTTP answer
    right: bool
    error: str = ""  # the start of an error's body


def zipf_probabilities(count: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** s
    return weights / weights.sum()


def client(
    port: int, keys: list[str], probs: np.ndarray, expected: dict[str, float], seed: int, stop_at: float,
    out: list[Call],
) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    path = f"/endpoints/{ENDPOINT}/invocations"
    while time.monotonic() < stop_at:
        key = keys[int(rng.choice(len(keys), p=probs))]
        started = time.monotonic()
        status, right, error = 0, False, ""
        try:
            conn.request(
                "POST", path, mme_models.CSV_ROW,
                {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": key},
            )  # fmt: skip
            response = conn.getresponse()
            body = response.read()
            status = response.status
            if status == 200:
                right = json.loads(body) == [expected[key]]
            else:
                error = body[:160].decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        out.append(Call(started, (time.monotonic() - started) * 1000, key, status, right, error))
    conn.close()


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("EndpointName", ENDPOINT) == ENDPOINT:
                samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def histogram_quantiles(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> dict[str, Any]:
    """count, mean and p50/p99 (ms) of a µs histogram, interpolated within buckets as histogram_quantile."""
    buckets = sorted((float(labels["le"]), value) for labels, value in samples.get(name + "_bucket", []))
    count = total(samples, name + "_count")
    result: dict[str, Any] = {"count": int(count)}
    if not count:
        return result
    result["mean_ms"] = round(total(samples, name + "_sum") / count / 1000, 2)
    for q in (0.5, 0.99):
        rank, lower, below = q * count, 0.0, 0.0
        for bound, cumulative in buckets:
            if cumulative >= rank:
                upper = bound if bound != float("inf") else lower
                share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                result[f"p{int(q * 100)}_ms"] = round((lower + (upper - lower) * share) / 1000, 2)
                break
            lower, below = bound, cumulative
    return result


def lru_hit_ratio(keys: list[str], capacity: int) -> float:
    cache: collections.OrderedDict[str, None] = collections.OrderedDict()
    hits = 0
    for key in keys:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
        else:
            cache[key] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / len(keys) if keys else 0.0


def sampler(target: Modelhost, budget: int, stop: threading.Event, out: list[dict[str, Any]]) -> None:
    started = time.monotonic()
    while not stop.wait(1.0):
        samples = scrape(target.url)
        workers = target.workers()
        out.append(
            {
                "t_s": round(time.monotonic() - started, 1),
                "loaded_models": int(total(samples, "LoadedModelCount")),
                "model_memory_bytes": int(total(samples, "modelhost_model_cache_memory_bytes")),
                "unowned_bytes": int(total(samples, "modelhost_model_cache_unowned_bytes")),
                "budget_bytes": budget,
                "server_rss_bytes": proc_tree.rss_bytes(target.server.pid),
                "worker_rss_bytes": sum(proc_tree.rss_bytes(w.pid) for w in workers),
                "worker_pids": sorted(w.pid for w in workers),
            }
        )


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    padding = args.model_kib * 1024 // 8
    print(f"calibrating: one model's memory in a multi-model worker ({args.model_kib} KiB of weights) ...")
    model_bytes = mme_models.measured_model_bytes(5, padding)
    budget = model_bytes * args.fit
    inproc = mme_models.in_process_load_ms(20, padding)
    data_dir = Path(tempfile.mkdtemp(prefix="mme-scale-"))
    try:
        started = time.monotonic()
        expected = mme_models.write_models(data_dir / "buckets" / "bench" / "mme", args.models, padding)
        build_s = time.monotonic() - started
        print(
            f"built {args.models} models in {build_s:.1f} s; each measures {model_bytes} bytes, "
            f"budget {budget}"
        )
        target = Modelhost(data_dir, data_dir / "server.log")
        # The server takes its settings from the environment it inherits (docs/multi-model.md).
        os.environ["MODELHOST_MULTI_MODEL_MEMORY_BUDGET_BYTES"] = str(budget)
        try:
            target.start()
            target.deploy(ENDPOINT, 1, model_url=PREFIX, multi_model=True)
            baseline_worker_rss = sum(proc_tree.rss_bytes(w.pid) for w in target.workers())
            keys = [mme_models.key_of(i) for i in np.random.default_rng(1).permutation(args.models)]
            probs = zipf_probabilities(args.models, args.zipf_s)
            calls: list[list[Call]] = [[] for _ in range(args.clients)]
            timeline: list[dict[str, Any]] = []
            stop = threading.Event()
            watcher = threading.Thread(target=sampler, args=(target, budget, stop, timeline), daemon=True)
            watcher.start()
            stop_at = time.monotonic() + args.duration_s
            threads = [
                threading.Thread(
                    target=client, args=(target.port, keys, probs, expected, 100 + i, stop_at, calls[i])
                )
                for i in range(args.clients)
            ]
            print(f"driving {args.clients} clients for {args.duration_s} s ...")
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            stop.set()
            watcher.join()
            # Once every request is answered and every load and unload is done: memory against the models.
            time.sleep(3.0)
            metrics = scrape(target.url)
            quiet = {
                "loaded_models": int(total(metrics, "LoadedModelCount")),
                "model_memory_bytes": int(total(metrics, "modelhost_model_cache_memory_bytes")),
                "unowned_bytes": int(total(metrics, "modelhost_model_cache_unowned_bytes")),
                "worker_rss_bytes": sum(proc_tree.rss_bytes(w.pid) for w in target.workers()),
            }
        finally:
            target.stop()
        every = sorted((c for per in calls for c in per), key=lambda c: c.started_s)
        answered = [c for c in every if c.status == 200]
        hits = total(metrics, "ModelCacheHit_total")
        requests = total(metrics, "modelhost_model_requests_total")
        pids = {tuple(s["worker_pids"]) for s in timeline}
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "settings": vars(args),
            "model_bytes_measured": model_bytes,
            "memory_budget_bytes": budget,
            "after_the_run": quiet,
            "build_s": round(build_s, 1),
            "requests": len(every),
            "throughput_rps": round(len(every) / args.duration_s, 1),
            "errors": len(every) - len(answered),
            "error_statuses": dict(collections.Counter(c.status for c in every if c.status != 200)),
            "error_messages": dict(
                collections.Counter(c.error for c in every if c.status != 200).most_common(5)
            ),
            "mismatches": sum(1 for c in answered if not c.right),
            "distinct_models_requested": len({c.key for c in every}),
            "hit_ratio_server": round(hits / requests, 4) if requests else None,
            "hit_ratio_ideal_lru": round(lru_hit_ratio([c.key for c in every], args.fit), 4),
            "request_ms": {
                "p50": percentile([c.latency_ms for c in answered], 50),
                "p99": percentile([c.latency_ms for c in answered], 99),
                "max": percentile([c.latency_ms for c in answered], 100),
            },
            "model_loading_time": histogram_quantiles(metrics, "ModelLoadingTime"),
            "model_downloading_time": histogram_quantiles(metrics, "ModelDownloadingTime"),
            "model_loading_wait_time": histogram_quantiles(metrics, "ModelLoadingWaitTime"),
            "model_unloading_time": histogram_quantiles(metrics, "ModelUnloadingTime"),
            "in_process_load_ms": {"p50": percentile(inproc, 50), "p99": percentile(inproc, 99)},
            "loaded_models_max": max((s["loaded_models"] for s in timeline), default=0),
            "model_memory_max_bytes": max((s["model_memory_bytes"] for s in timeline), default=0),
            "worker_rss_baseline_bytes": baseline_worker_rss,
            "worker_rss_max_bytes": max((s["worker_rss_bytes"] for s in timeline), default=0),
            "server_rss_max_bytes": max((s["server_rss_bytes"] for s in timeline), default=0),
            "worker_replaced": len(pids) > 1,
            "timeline": timeline,
        }
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def report(result: dict[str, Any]) -> None:
    mib = 2**20
    load, download, wait = (
        result["model_loading_time"],
        result["model_downloading_time"],
        result["model_loading_wait_time"],
    )
    inproc = result["in_process_load_ms"]
    print(
        f"\nrequests {result['requests']} ({result['throughput_rps']}/s), errors {result['errors']} "
        f"{result['error_statuses'] or ''}, mismatches {result['mismatches']}, "
        f"models requested {result['distinct_models_requested']}\n"
        f"hit ratio: server {result['hit_ratio_server']}, ideal LRU of {result['settings']['fit']} "
        f"{result['hit_ratio_ideal_lru']}\n"
        f"request ms p50 {result['request_ms']['p50']} p99 {result['request_ms']['p99']}\n"
        f"loads {load.get('count')}: ModelLoadingTime p50 {load.get('p50_ms')} p99 {load.get('p99_ms')} ms; "
        f"ModelDownloadingTime p50 {download.get('p50_ms')} p99 {download.get('p99_ms')} ms; "
        f"ModelLoadingWaitTime p50 {wait.get('p50_ms')} p99 {wait.get('p99_ms')} ms\n"
        f"in-process joblib.load + first predict: p50 {inproc['p50']} ms p99 {inproc['p99']} ms\n"
        f"LoadedModelCount max {result['loaded_models_max']}; model memory max "
        f"{result['model_memory_max_bytes'] / mib:.1f} MiB of a "
        f"{result['memory_budget_bytes'] / mib:.1f} MiB budget; "
        f"worker RSS {result['worker_rss_baseline_bytes'] / mib:.0f} MiB at start, max "
        f"{result['worker_rss_max_bytes'] / mib:.0f} MiB; server RSS max "
        f"{result['server_rss_max_bytes'] / mib:.0f} MiB; worker replaced: {result['worker_replaced']}"
    )
    quiet = result["after_the_run"]
    print(
        f"after the run: {quiet['loaded_models']} models loaded, {quiet['model_memory_bytes'] / mib:.1f} MiB "
        f"accounted, {quiet['unowned_bytes'] / mib:.1f} MiB unowned; worker RSS growth "
        f"{(quiet['worker_rss_bytes'] - result['worker_rss_baseline_bytes']) / mib:.1f} MiB"
    )
    for message, count in result["error_messages"].items():
        print(f"  {count} x {message}")
    print("t_s  loaded  model_MiB  unowned_MiB  worker_RSS_growth_MiB  server_RSS_MiB")
    for sample in result["timeline"][:: max(1, len(result["timeline"]) // 12)]:
        growth = sample["worker_rss_bytes"] - result["worker_rss_baseline_bytes"]
        print(
            f"{sample['t_s']:>5} {sample['loaded_models']:>6} {sample['model_memory_bytes'] / mib:>10.1f} "
            f"{sample['unowned_bytes'] / mib:>12.1f} {growth / mib:>22.1f} "
            f"{sample['server_rss_bytes'] / mib:>15.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=180.0)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--fit", type=int, default=50, help="models the memory budget holds")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--model-kib", type=int, default=1024, help="weight each model holds in memory")
    args = parser.parse_args()
    result = run(args)
    report(result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"mme-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwritten to {path}")
    if result["mismatches"] or result["worker_replaced"]:
        raise SystemExit("FAILED: wrong answers or a replaced worker")


if __name__ == "__main__":
    main()
