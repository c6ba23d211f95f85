#!/usr/bin/env python3
"""The proxy hop alone: client -> ``monolith-serving proxy`` -> echo entry, proxy CPU ms per request, as JSON.

The upstream is ``echo_topology.py ps`` (answers every Predict with an empty PredictResponse, no work), so
the figure that matters, the proxy process's own CPU per request (utime+stime from /proc), is not drowned
by the real entry's cost and stays comparable on a busy shared machine. Requests are the demo model's
batch-16 instances Predicts (same bytes as bench/proxy.py). ``--profile_out FILE`` records the proxy with
py-spy during the measured window (``pip install py-spy``; not a project dependency).

Usage: python bench/proxy_hop.py [--duration_s 3] [--warmup_s 0.5] [--in_flight 1,16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from predict import HERE, cpu_seconds, requests_for, wait_serving

from monolith_serving.client.profile import run_profile
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.entry.standalone import free_port


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    in_flight = [int(x) for x in args.in_flight.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-proxy-hop-") as scratch:
        export = Path(scratch) / "model"
        write_demo(DemoOptions(out=export, num_ps=2))
        requests = requests_for(load_serving_spec(export / "entry" / "1"), args.batch)
        echo_port, proxy_port = free_port(), free_port()
        procs: list[subprocess.Popen[bytes]] = []
        rows: list[dict[str, Any]] = []
        try:
            procs.append(
                subprocess.Popen([sys.executable, str(HERE / "echo_topology.py"), "ps", "--port", str(echo_port)])
            )
            proxy_cmd = [
                sys.executable, "-m", "monolith_serving", "proxy", "--log_level", "WARNING", "--host", "127.0.0.1",
                "--port", str(proxy_port), "--entry_targets", f"127.0.0.1:{echo_port}", "--entry_models", "entry",
            ]  # fmt: skip
            procs.append(subprocess.Popen(proxy_cmd))
            wait_serving(f"127.0.0.1:{echo_port}")
            wait_serving(f"127.0.0.1:{proxy_port}")
            pids = {"proxy": procs[1].pid, "echo_entry": procs[0].pid}
            for workers in in_flight:
                for round_index in range(args.rounds):
                    profiler = None
                    if args.profile_out and round_index == args.rounds - 1 and workers == in_flight[-1]:
                        profiler = subprocess.Popen(
                            ["py-spy", "record", "--pid", str(pids["proxy"]), "--duration", str(int(args.duration_s)),
                             "--rate", "500", "--format", args.profile_format, "--output", args.profile_out,
                             *(["--native"] if args.native else ["--nonblocking"])]
                        )  # fmt: skip
                    before = cpu_seconds(list(pids.values()))
                    result = await run_profile(
                        targets=[f"127.0.0.1:{proxy_port}"],
                        requests=requests,
                        workers=workers,
                        duration_s=args.duration_s,
                        warmup_s=args.warmup_s,
                        timeout_s=10.0,
                    )
                    after = cpu_seconds(list(pids.values()))
                    if profiler is not None:
                        profiler.wait(60)
                    calls = max(result.count, 1) * (1 + args.warmup_s / args.duration_s)
                    row = {"in_flight": workers, "round": round_index, **result.as_dict()}
                    row["cpu_ms_per_request"] = {
                        name: round((a - b) * 1000 / calls, 3) for name, b, a in zip(pids, before, after, strict=True)
                    }
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(30)
    summary = {
        f"inflight{w}": {
            "proxy_cpu_ms_per_request": min(r["cpu_ms_per_request"]["proxy"] for r in rows if r["in_flight"] == w),
            "qps": max(r["qps"] for r in rows if r["in_flight"] == w),
            "p50_ms": min(r["p50_ms"] for r in rows if r["in_flight"] == w),
        }
        for w in in_flight
    }
    return {"summary": summary, "rounds": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration_s", type=float, default=3.0)
    parser.add_argument("--warmup_s", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--in_flight", default="1,16")
    parser.add_argument("--profile_out", default="", help="py-spy output of the last round at the last in_flight")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--profile_format", default="raw", help="py-spy format: raw (collapsed stacks), flamegraph")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
