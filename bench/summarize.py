"""Medians over several bench/invoke_latency.py runs, as the Markdown table bench/README.md quotes.

Usage: ``.venv/bin/python bench/summarize.py bench/results/invoke-*.json`` (one machine, one day's runs).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cell(values: Sequence[float], fmt: str) -> str:
    median = statistics.median(values)
    if len(values) < 2:
        return format(median, fmt)
    return f"{median:{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main(paths: Sequence[str]) -> int:
    docs: list[dict[str, Any]] = [json.loads(Path(p).read_text()) for p in paths]
    if not docs:
        sys.exit("usage: summarize.py RESULTS.json ...")
    rows: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for doc in docs:
        for run in doc["runs"]:
            rows.setdefault((run["target"], run["instances"], run["concurrency"]), []).append(run)
    print(f"{len(docs)} run(s): median [min-max]\n")
    print(
        "| target | conc | req/s | p50 ms | p99 ms | errors | server CPU ms/req (server + workers) | RSS MB "
        "| other CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (target, instances, conc), runs in rows.items():
        name = "floor" if target == "floor" else f"modelhost, {instances} instance{'s' * (instances > 1)}"
        cpu = [r["cpu_ms_per_request"] for r in runs]
        split = ""
        if "workers" in cpu[0]:
            server = statistics.median(c["server"] for c in cpu)
            workers = statistics.median(c["workers"] for c in cpu)
            split = f" ({server:.2f} + {workers:.2f})"
        print(
            f"| {name} | {conc} | {_cell([r['rps'] for r in runs], '.0f')} "
            f"| {_cell([r['p50_ms'] for r in runs], '.2f')} | {_cell([r['p99_ms'] for r in runs], '.1f')} "
            f"| {sum(r['socket_errors'] + r['non_2xx'] for r in runs)} "
            f"| {statistics.median(c['total'] for c in cpu):.2f}{split} "
            f"| {statistics.median(r['rss_mb']['total'] for r in runs):.0f} "
            f"| {statistics.median(r['other_cpu_pct'] for r in runs):.0f} |"
        )
    print("\n| in-process | p50 µs |\n|---|---|")
    for name in docs[0]["in_process"]:
        print(f"| {name} | {_cell([d['in_process'][name]['p50_us'] for d in docs], '.1f')} |")
    probes = [(k, name) for k in ("floor", "modelhost") for name in ("probe_c1", "worker_probe_c1")]
    print("\n| one-connection probe (c=1) | p50 µs |\n|---|---|")
    for target, name in probes:
        # The floor's probes sit at the top of its section; modelhost's under each instance count.
        sections = [d["floor"] if target == "floor" else d["modelhost"].get("1x", {}) for d in docs]
        values = [s[name]["p50_us"] for s in sections if name in s]
        if values:
            print(f"| {target} {name} | {_cell(values, '.0f')} |")
    print("\n| ratio | median [min-max] |\n|---|---|")
    for name in docs[0]["ratios"]:
        print(f"| {name} | {_cell([d['ratios'][name] for d in docs if name in d['ratios']], '.2f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
