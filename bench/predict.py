#!/usr/bin/env python3
"""Entry Predict benchmark (issue 4), printed as JSON.

In one run, on the demo model (tables user:8, item:12; 6 sparse features + 2 floats; MLP 78-16-8-1):
  entry      client -> real ``entry`` process -> 2 real ``ps`` processes (instances input)
  echo       the same process topology with trivial handlers (bench/echo_topology.py): the RPC floor
  in_process parse + local numpy lookup + pooling + MLP in this process, no RPC (1 in flight)
for batch 1/16/256 and 1/16 requests in flight: QPS, mean, p50, p99. The client runs in this process
(grpc.aio, pre-serialized requests). Targets at batch 16 / 16 in flight: entry QPS >= 60 % of echo,
entry p99 <= 10 ms.

Usage: python bench/predict.py [--duration_s 5] [--warmup_s 1] [--batches 1,16,256] [--in_flight 1,16]
                               [--entry_flag=--coalesce_ps_lookups=false ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from monolith_serving.client.health import wait_until_serving
from monolith_serving.client.inputs import encode, predict_request, random_examples
from monolith_serving.client.profile import run_profile, summarize
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import ServingSpec, load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.entry.local_lookup import LocalLookup
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel, EntryModelConfig
from monolith_serving.entry.standalone import ClusterConfig, StandaloneCluster, free_port
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2

HERE = Path(__file__).resolve().parent
NUM_REQUESTS = 32  # distinct random requests each worker cycles through


def requests_for(spec: ServingSpec, batch: int, seed: int = 0) -> list[predict_pb2.PredictRequest]:
    rng = np.random.default_rng(seed)
    return [
        predict_request("entry", encode(spec, "instances", random_examples(spec, batch, rng)))
        for _ in range(NUM_REQUESTS)
    ]


def cpu_seconds(pids: list[int]) -> list[float]:
    """User+system CPU time of each process so far (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = []
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) + int(fields[12])) / ticks)
    return out


def wait_serving(address: str, timeout_s: float = 30.0) -> None:
    wait_until_serving(address, timeout_s=timeout_s)


class EchoTopology:
    def __init__(self) -> None:
        self.ps_ports = [free_port(), free_port()]
        self.entry_port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> str:
        script = str(HERE / "echo_topology.py")
        for port in self.ps_ports:
            self.processes.append(subprocess.Popen([sys.executable, script, "ps", "--port", str(port)]))
        ps = ",".join(f"127.0.0.1:{p}" for p in self.ps_ports)
        self.processes.append(
            subprocess.Popen([sys.executable, script, "entry", "--port", str(self.entry_port), "--ps", ps])
        )
        address = f"127.0.0.1:{self.entry_port}"
        for port in [*self.ps_ports, self.entry_port]:
            wait_serving(f"127.0.0.1:{port}")
        return address

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(10)


async def measure(
    label: str,
    target: str,
    spec: ServingSpec,
    batches: list[int],
    in_flight: list[int],
    args: argparse.Namespace,
    pids: dict[str, int],
) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        requests = requests_for(spec, batch)
        for workers in in_flight:
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
            row = {"topology": label, "batch": batch, "in_flight": workers, **result.as_dict()}
            # Server CPU per request (includes the warm-up requests, so a slight overestimate).
            calls = max(result.count, 1) * (1 + args.warmup_s / args.duration_s)
            row["server_cpu_ms_per_request"] = {
                name: round((after - before) * 1000 / calls, 3)
                for name, before, after in zip(pids, cpu_before, cpu_after, strict=True)
            }
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


async def in_process(
    export: Path, spec: ServingSpec, batches: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    model = EntryModel(
        config=EntryModelConfig(name="entry", base_path=export / "entry"),
        num_ps=2,
        lookup=LocalLookup.from_export(export, 2, 1),
        ps_ready=lambda version: True,
        metrics=EntryMetrics(),
    )
    await model.refresh()
    rows = []
    for batch in batches:
        requests = requests_for(spec, batch)
        latencies: list[float] = []
        deadline = time.perf_counter() + args.warmup_s + args.duration_s
        measure_from = time.perf_counter() + args.warmup_s
        k = 0
        started = 0.0
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            if not started and now >= measure_from:
                started = now
            request = requests[k % len(requests)]
            k += 1
            # What the servicer does too: decode the tensors, then run the core.
            inputs = {name: from_tensor_proto(t, name) for name, t in request.inputs.items()}
            await model.predict(name="entry", version=None, signature_name="", inputs=inputs)
            if started:
                latencies.append(time.perf_counter() - now)
        result = summarize(latencies, 0, 1, time.perf_counter() - started, "")
        row = {"topology": "in_process", "batch": batch, "in_flight": 1, **result.as_dict()}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def pick(rows: list[dict[str, Any]], topology: str, batch: int, in_flight: int) -> dict[str, Any] | None:
    for row in rows:
        if row["topology"] == topology and row["batch"] == batch and row["in_flight"] == in_flight:
            return row
    return None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    batches = [int(b) for b in args.batches.split(",")]
    in_flight = [int(f) for f in args.in_flight.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as scratch:
        export = Path(scratch) / "model"
        write_demo(DemoOptions(out=export, num_ps=2))
        spec = load_serving_spec(export / "entry" / "1")
        rows: list[dict[str, Any]] = []
        cluster = StandaloneCluster(
            ClusterConfig(model_dir=export, num_ps=2, entry_port=free_port(), entry_flags=tuple(args.entry_flag))
        )
        cluster.launch()
        try:
            await cluster.wait_ready()
            pids = {
                "entry": cluster.processes[-1].pid,
                "ps_0": cluster.processes[0].pid,
                "ps_1": cluster.processes[1].pid,
            }
            rows += await measure("entry", cluster.address, spec, batches, in_flight, args, pids)
        finally:
            cluster.stop()
        echo = EchoTopology()
        try:
            address = echo.start()
            pids = {"entry": echo.processes[-1].pid, "ps_0": echo.processes[0].pid, "ps_1": echo.processes[1].pid}
            rows += await measure("echo", address, spec, batches, in_flight, args, pids)
        finally:
            echo.stop()
        rows += await in_process(export, spec, batches, args)
    report: dict[str, Any] = {
        "setup": {
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "duration_s": args.duration_s,
            "model": "export-demo: tables user:8,item:12; 6 sparse features + ctx[2]; MLP 78-16-8-1",
            "input": "instances, ~2 fids per feature per example, 32 distinct requests cycled",
            "entry_flags": args.entry_flag,
        },
        "results": rows,
    }
    entry = pick(rows, "entry", 16, 16)
    floor = pick(rows, "echo", 16, 16)
    if entry and floor:
        ratio = entry["qps"] / floor["qps"] if floor["qps"] else 0.0
        report["targets_batch16_inflight16"] = {
            "entry_qps": entry["qps"],
            "echo_qps": floor["qps"],
            "qps_ratio": round(ratio, 3),
            "qps_target_ratio": 0.6,
            "qps_target_met": ratio >= 0.6,
            "entry_p99_ms": entry["p99_ms"],
            "p99_target_ms": 10.0,
            "p99_target_met": entry["p99_ms"] <= 10.0,
        }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration_s", type=float, default=5.0)
    parser.add_argument("--warmup_s", type=float, default=1.0)
    parser.add_argument("--batches", default="1,16,256")
    parser.add_argument("--in_flight", default="1,16")
    parser.add_argument(
        "--entry_flag",
        action="append",
        default=[],
        help="extra entry flag, repeatable (e.g. --entry_flag=--coalesce_ps_lookups=false)",
    )
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
