#!/usr/bin/env python3
"""Proxy benchmark (issue 7): Predict through ``monolith-serving proxy`` vs straight to the entry, as JSON.

One run, one cluster (``demo`` topology: an entry over 2 PS processes, demo model, instances input) and one
proxy process in front of it (static ``--entry_targets``). The client (this process, grpc.aio, pre-serialized
requests, monolith_serving.client.profile) alternates direct and proxied rounds so drift on the shared 2-core
machine hits both alike. Reported per path: QPS, mean/p50/p99, server CPU ms per request per process; then the
overhead (proxy p50 - direct p50, proxy QPS / direct QPS). Targets at batch 16, 16 in flight:
p50 overhead <= 1 ms and proxy QPS >= 70 % of direct.

Usage: python bench/proxy.py [--duration_s 5] [--warmup_s 1] [--rounds 2] [--batch 16] [--in_flight 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from predict import cpu_seconds, requests_for, wait_serving

from monolith_serving.client.profile import run_profile
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.entry.standalone import ClusterConfig, StandaloneCluster, free_port

P50_TARGET_MS = 1.0
QPS_TARGET_RATIO = 0.7


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.fmean(r[key] for r in rows), 3)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    in_flight = [int(x) for x in args.in_flight.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as scratch:
        export = Path(scratch) / "model"
        write_demo(DemoOptions(out=export, num_ps=2))
        spec = load_serving_spec(export / "entry" / "1")
        requests = requests_for(spec, args.batch)
        cluster = StandaloneCluster(ClusterConfig(model_dir=export, num_ps=2, entry_port=free_port()))
        cluster.launch()
        proxy_port = free_port()
        proxy: subprocess.Popen[bytes] | None = None
        pids: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        try:
            await cluster.wait_ready()
            proxy = subprocess.Popen(
                [sys.executable, "-m", "monolith_serving", "proxy", "--log_level", "WARNING", "--host", "127.0.0.1",
                 "--port", str(proxy_port), "--entry_targets", cluster.address, "--entry_models", "entry"]
            )  # fmt: skip
            proxy_address = f"127.0.0.1:{proxy_port}"
            wait_serving(proxy_address)
            pids = {
                "proxy": proxy.pid,
                "entry": cluster.processes[-1].pid,
                "ps_0": cluster.processes[0].pid,
                "ps_1": cluster.processes[1].pid,
            }
            for workers in in_flight:
                for round_index in range(args.rounds):
                    for path, target in (("direct", cluster.address), ("proxy", proxy_address)):
                        cpu_before = cpu_seconds(list(pids.values()))
                        result = await run_profile(
                            target=target,
                            requests=requests,
                            workers=workers,
                            duration_s=args.duration_s,
                            warmup_s=args.warmup_s,
                            timeout_s=10.0,
                        )
                        cpu_after = cpu_seconds(list(pids.values()))
                        calls = max(result.count, 1) * (1 + args.warmup_s / args.duration_s)
                        row = {"path": path, "in_flight": workers, "round": round_index, **result.as_dict()}
                        row["server_cpu_ms_per_request"] = {
                            name: round((after - before) * 1000 / calls, 3)
                            for name, before, after in zip(pids, cpu_before, cpu_after, strict=True)
                        }
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        rows.append(row)
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(30)
            cluster.stop()
    summary: dict[str, Any] = {}
    for workers in in_flight:
        by_path = {}
        for path in ("direct", "proxy"):
            mine = [r for r in rows if r["path"] == path and r["in_flight"] == workers]
            by_path[path] = {
                "qps": _mean(mine, "qps"),
                "mean_ms": _mean(mine, "mean_ms"),
                "p50_ms": _mean(mine, "p50_ms"),
                "p99_ms": _mean(mine, "p99_ms"),
                "errors": sum(r["errors"] for r in mine),
                "server_cpu_ms_per_request": {
                    name: _mean([r["server_cpu_ms_per_request"] for r in mine], name) for name in pids
                },
            }
        overhead_ms = round(by_path["proxy"]["p50_ms"] - by_path["direct"]["p50_ms"], 3)
        ratio = round(by_path["proxy"]["qps"] / by_path["direct"]["qps"], 3) if by_path["direct"]["qps"] else 0.0
        summary[f"batch{args.batch}_inflight{workers}"] = {
            **by_path,
            "p50_overhead_ms": overhead_ms,
            "qps_ratio": ratio,
            # What the proxy hop costs: its own CPU per request (the figure to judge a proxy change by on a
            # busy machine; p50 overhead at saturation is roughly in_flight x the extra CPU per request).
            "proxy_cpu_ms_per_request": by_path["proxy"]["server_cpu_ms_per_request"]["proxy"],
        }
    target_key = f"batch{args.batch}_inflight16"
    report: dict[str, Any] = {
        "setup": {
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "duration_s": args.duration_s,
            "rounds": args.rounds,
            "batch": args.batch,
            "topology": "client -> [proxy ->] entry -> 2 ps, all processes on this machine",
        },
        "summary": summary,
        "rounds": rows,
    }
    if target_key in summary:
        row = summary[target_key]
        report["targets"] = {
            "p50_overhead_ms": row["p50_overhead_ms"],
            "p50_overhead_target_ms": P50_TARGET_MS,
            "p50_target_met": row["p50_overhead_ms"] <= P50_TARGET_MS,
            "qps_ratio": row["qps_ratio"],
            "qps_target_ratio": QPS_TARGET_RATIO,
            "qps_target_met": row["qps_ratio"] >= QPS_TARGET_RATIO,
        }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration_s", type=float, default=5.0)
    parser.add_argument("--warmup_s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--in_flight", default="1,16")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
