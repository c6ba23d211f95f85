#!/usr/bin/env python3
"""Entry Predict benchmark (issue 4), printed as JSON.

In one run, on the demo model (tables user:8, item:12; 6 sparse features + 2 floats; MLP 78-16-8-1):
  entry      client -> real ``entry`` process -> 2 real ``ps`` processes (instances input)
  echo       the same process topology with trivial handlers (bench/echo_topology.py): the RPC floor
  hop        one such trivial server alone (client -> echo ``ps``): what a single grpc.aio hop costs here, the
             floor under any server's latency on this machine (``--no_hop`` leaves it out)
  in_process parse + local numpy lookup + pooling + MLP in this process, no RPC (1 in flight)
for batch 1/16/256 and 1/16 requests in flight: QPS, mean, p50, p99, server CPU ms per request per process.
Two load generators (``--client``), run back to back for each setting and named in each row's "client":
  h2load  nghttp2's C load generator (bench/h2load_client.py; ``make bench-deps``): leaves the 2 cores to the
          servers, sends one fixed request, and cannot read gRPC status, so the entry's rows count errors from
          its entry_predict_requests_total and the echo rows cannot observe errors;
  grpc    grpc.aio in this process (monolith_serving.client.profile, 32 pre-serialized requests cycled), which
          costs ~0.15-0.4 ms CPU per request on the same cores.
Targets at batch 16 / 16 in flight, per client: entry QPS >= 60 % of echo, entry p99 <= 10 ms
("targets_by_client"; "targets_batch16_inflight16" is the grpc client's, as before h2load). ``--rounds N`` runs
the entry and the echo floor N times, alternating, on fresh processes; "results" holds every round's rows,
"medians" one row per setting (median figures, every round's QPS and p99 beside them), and the targets are
read off the medians.

Usage: python bench/predict.py [--duration_s 5] [--warmup_s 1] [--batches 1,16,256] [--in_flight 1,16] [--rounds 1]
                               [--client {h2load,grpc,both}] [--entry_flag=--coalesce_ps_lookups=false ...]
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from h2load_client import CounterProbe, code_deltas, find_h2load, run_h2load, verified

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
NUM_REQUESTS = 32  # distinct random requests each grpc worker cycles through (h2load sends the first only)
CLIENTS = ("h2load", "grpc")
ENTRY_REQUESTS_SAMPLE = "entry_predict_requests_total"


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
    """The echo servers of bench/echo_topology.py: an entry over 2 PS (the RPC floor), or with ``hop`` one PS alone
    (a single hop)."""

    def __init__(self, *, hop: bool = False) -> None:
        self.hop = hop
        self.ps_ports = [free_port()] if hop else [free_port(), free_port()]
        self.entry_port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> str:
        script = str(HERE / "echo_topology.py")
        for port in self.ps_ports:
            self.processes.append(subprocess.Popen([sys.executable, script, "ps", "--port", str(port)]))
        if self.hop:
            address = f"127.0.0.1:{self.ps_ports[0]}"
            wait_serving(address)
            return address
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


def clients_of(choice: str) -> list[str]:
    return list(CLIENTS) if choice == "both" else [choice]


async def run_load(
    client: str,
    *,
    labels: dict[str, Any],
    target: str,
    requests: list[predict_pb2.PredictRequest],
    in_flight: int,
    duration_s: float,
    warmup_s: float,
    pids: dict[str, int],
    probe: CounterProbe | None,
) -> dict[str, Any]:
    """One load run as a result row, also printed to stderr: ``labels``, then the ProfileResult fields plus
    client, server and client CPU ms per request, and the server's replies by gRPC code (None where the
    server has no request counter)."""
    codes_before = probe.read() if probe else None
    cpu_before = cpu_seconds(list(pids.values()))
    if client == "h2load":
        run = await asyncio.to_thread(
            run_h2load,
            target=target,
            payload=requests[0].SerializeToString(),
            in_flight=in_flight,
            duration_s=duration_s,
            warmup_s=warmup_s,
        )
        result, client_cpu_s = run.profile, run.client_cpu_s
    else:
        client_cpu_before = time.process_time()
        result = await run_profile(
            targets=[target],
            requests=requests,
            workers=in_flight,
            duration_s=duration_s,
            warmup_s=warmup_s,
            timeout_s=10.0,
        )
        client_cpu_s = time.process_time() - client_cpu_before
    cpu_after = cpu_seconds(list(pids.values()))
    codes = code_deltas(codes_before, probe.read()) if probe and codes_before is not None else None
    if client == "h2load" and codes is not None:
        result = verified(result, codes)
    # CPU per request includes the warm-up requests, so it is a slight overestimate.
    calls = max(result.count, 1) * (1 + warmup_s / duration_s)
    row = {
        **labels,
        "client": client,
        **result.as_dict(),
        "server_cpu_ms_per_request": {
            name: round((after - before) * 1000 / calls, 3)
            for name, before, after in zip(pids, cpu_before, cpu_after, strict=True)
        },
        "client_cpu_ms_per_request": round(client_cpu_s * 1000 / calls, 3),
        # h2load cannot read gRPC status: its errors are only as good as the server's counter.
        "errors_observable": client == "grpc" or codes is not None,
        "server_codes": codes,
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


async def measure(
    label: str,
    round_index: int,
    target: str,
    spec: ServingSpec,
    batches: list[int],
    in_flight: list[int],
    args: argparse.Namespace,
    pids: dict[str, int],
    probe: CounterProbe | None,
) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        requests = requests_for(spec, batch)
        for workers in in_flight:
            # The clients take turns at each setting so drift on the shared machine hits both alike.
            for client in clients_of(args.client):
                row = await run_load(
                    client,
                    labels={"topology": label, "round": round_index, "batch": batch, "in_flight": workers},
                    target=target,
                    requests=requests,
                    in_flight=workers,
                    duration_s=args.duration_s,
                    warmup_s=args.warmup_s,
                    pids=pids,
                    probe=probe,
                )
                rows.append(row)
    return rows


async def measure_entry(
    export: Path,
    spec: ServingSpec,
    batches: list[int],
    in_flight: list[int],
    args: argparse.Namespace,
    round_index: int,
) -> list[dict[str, Any]]:
    metrics_port = free_port()
    # Appended last so it wins over an --entry_flag=--metrics_port: the h2load rows need the counter.
    entry_flags = (*args.entry_flag, f"--metrics_port={metrics_port}")
    cluster = StandaloneCluster(
        ClusterConfig(model_dir=export, num_ps=2, entry_port=free_port(), entry_flags=entry_flags)
    )
    cluster.launch()
    try:
        await cluster.wait_ready()
        pids = {
            "entry": cluster.processes[-1].pid,
            "ps_0": cluster.processes[0].pid,
            "ps_1": cluster.processes[1].pid,
        }
        probe = CounterProbe(f"http://127.0.0.1:{metrics_port}/metrics", ENTRY_REQUESTS_SAMPLE)
        return await measure("entry", round_index, cluster.address, spec, batches, in_flight, args, pids, probe)
    finally:
        cluster.stop()


async def measure_echo(
    spec: ServingSpec, batches: list[int], in_flight: list[int], args: argparse.Namespace, round_index: int
) -> list[dict[str, Any]]:
    echo = EchoTopology()
    try:
        address = echo.start()
        pids = {"entry": echo.processes[-1].pid, "ps_0": echo.processes[0].pid, "ps_1": echo.processes[1].pid}
        return await measure("echo", round_index, address, spec, batches, in_flight, args, pids, None)
    finally:
        echo.stop()


async def measure_hop(
    spec: ServingSpec, batches: list[int], in_flight: list[int], args: argparse.Namespace, round_index: int
) -> list[dict[str, Any]]:
    hop = EchoTopology(hop=True)
    try:
        address = hop.start()
        pids = {"hop": hop.processes[0].pid}
        return await measure("hop", round_index, address, spec, batches, in_flight, args, pids, None)
    finally:
        hop.stop()


_FIGURES = ("qps", "mean_ms", "p50_ms", "p99_ms", "client_cpu_ms_per_request")


def combine_rounds(rows: list[dict[str, Any]], average: Callable[[list[float]], float]) -> dict[str, Any]:
    """One setting's rows over its rounds: ``average`` of each figure the rows all have (and of each
    process's server CPU), errors summed."""
    combined: dict[str, Any] = {
        name: round(average([r[name] for r in rows]), 3) for name in _FIGURES if all(name in r for r in rows)
    }
    combined["errors"] = sum(r["errors"] for r in rows)
    cpu = [r["server_cpu_ms_per_request"] for r in rows if r.get("server_cpu_ms_per_request")]
    if cpu:
        combined["server_cpu_ms_per_request"] = {
            process: round(average([c[process] for c in cpu]), 3) for process in cpu[0]
        }
    return combined


def median_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (topology, batch, in flight, client) over its rounds: ``combine_rounds`` by median, the
    requests counted, and every round's QPS and p99 beside them."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for one in rows:
        key = (one["topology"], one["batch"], one["in_flight"], one["client"])
        groups.setdefault(key, []).append(one)
    return [
        {
            "topology": topology,
            "batch": batch,
            "in_flight": workers,
            "client": client,
            "rounds": len(group),
            "count": sum(r["count"] for r in group),
            **combine_rounds(group, statistics.median),
            "qps_by_round": [r["qps"] for r in group],
            "p99_ms_by_round": [r["p99_ms"] for r in group],
        }
        for (topology, batch, workers, client), group in groups.items()
    ]


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
        row = {"topology": "in_process", "batch": batch, "in_flight": 1, "client": "in_process", **result.as_dict()}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def pick(
    rows: list[dict[str, Any]], topology: str, batch: int, in_flight: int, client: str = "grpc"
) -> dict[str, Any] | None:
    for row in rows:
        if (
            row["topology"] == topology
            and row["batch"] == batch
            and row["in_flight"] == in_flight
            and row["client"] == client
        ):
            return row
    return None


def targets(rows: list[dict[str, Any]], client: str) -> dict[str, Any] | None:
    entry = pick(rows, "entry", 16, 16, client)
    floor = pick(rows, "echo", 16, 16, client)
    if not (entry and floor):
        return None
    ratio = entry["qps"] / floor["qps"] if floor["qps"] else 0.0
    hop = pick(rows, "hop", 16, 16, client)
    hop_figures = (
        {} if hop is None else {"hop_qps": hop["qps"], "hop_p50_ms": hop["p50_ms"], "hop_p99_ms": hop["p99_ms"]}
    )
    return {
        "entry_qps": entry["qps"],
        "echo_qps": floor["qps"],
        "qps_ratio": round(ratio, 3),
        "qps_target_ratio": 0.6,
        "qps_target_met": ratio >= 0.6,
        "entry_p99_ms": entry["p99_ms"],
        "entry_p99_ms_by_round": entry.get("p99_ms_by_round", [entry["p99_ms"]]),
        "p99_target_ms": 10.0,
        "p99_target_met": entry["p99_ms"] <= 10.0,
        "entry_p50_ms": entry["p50_ms"],
        "echo_p50_ms": floor["p50_ms"],
        "echo_p99_ms": floor["p99_ms"],
        "entry_errors": entry["errors"],
        "entry_cpu_ms_per_request": entry["server_cpu_ms_per_request"],
        "echo_cpu_ms_per_request": floor["server_cpu_ms_per_request"],
        "client_cpu_ms_per_request": entry["client_cpu_ms_per_request"],
        **hop_figures,
    }


def python_speed_ms(repeats: int = 5) -> float:
    """Median ms of ``sum(range(3_000_000))`` here: how fast this machine runs Python, so runs on different
    machines can be told apart (29 ms on the 2-core machine of docs/entry.md's main table, 44-65 ms on the slow
    one). Taken before any server starts."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sum(range(3_000_000))
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    speed_ms = python_speed_ms()
    batches = [int(b) for b in args.batches.split(",")]
    in_flight = [int(f) for f in args.in_flight.split(",")]
    clients = clients_of(args.client)
    if "h2load" in clients:
        find_h2load()  # fail before any server starts
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as scratch:
        export = Path(scratch) / "model"
        write_demo(DemoOptions(out=export, num_ps=2))
        spec = load_serving_spec(export / "entry" / "1")
        rows: list[dict[str, Any]] = []
        # Rounds alternate the entry and the echo floor, each on fresh processes, so drift on the shared machine
        # hits both; the targets are read off the medians over rounds.
        for round_index in range(args.rounds):
            rows += await measure_entry(export, spec, batches, in_flight, args, round_index)
            rows += await measure_echo(spec, batches, in_flight, args, round_index)
            if not args.no_hop:
                rows += await measure_hop(spec, batches, in_flight, args, round_index)
        rows += await in_process(export, spec, batches, args)
    medians = median_rows(rows)
    report: dict[str, Any] = {
        "setup": {
            "cpus": os.cpu_count(),
            "python_speed_ms": speed_ms,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "duration_s": args.duration_s,
            "model": "export-demo: tables user:8,item:12; 6 sparse features + ctx[2]; MLP 78-16-8-1",
            "input": "instances, ~2 fids per feature per example",
            "clients": {
                "h2load": "nghttp2 h2load, 1 connection, in_flight streams; one fixed request per run (its -d "
                "sends one body, so the 32 distinct requests cannot be cycled); gRPC status unreadable: entry "
                "errors from entry_predict_requests_total deltas (warm-up included), echo errors not observable",
                "grpc": "grpc.aio in the benchmark process, 32 distinct requests cycled",
            },
            "clients_run": clients,
            "entry_flags": args.entry_flag,
            "rounds": args.rounds,
        },
        "results": rows,
        "medians": medians,
    }
    by_client = {client: t for client in clients if (t := targets(medians, client)) is not None}
    if by_client:
        report["targets_by_client"] = by_client
    if "grpc" in by_client:
        grpc_targets = by_client["grpc"]
        report["targets_batch16_inflight16"] = {
            key: grpc_targets[key]
            for key in (
                "entry_qps",
                "echo_qps",
                "qps_ratio",
                "qps_target_ratio",
                "qps_target_met",
                "entry_p99_ms",
                "p99_target_ms",
                "p99_target_met",
            )
        }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration_s", type=float, default=5.0)
    parser.add_argument("--warmup_s", type=float, default=1.0)
    parser.add_argument("--batches", default="1,16,256")
    parser.add_argument("--rounds", type=int, default=1, help="entry/echo rounds, alternating; targets from medians")
    parser.add_argument("--in_flight", default="1,16")
    parser.add_argument("--client", choices=(*CLIENTS, "both"), default="both", help="load generator(s)")
    parser.add_argument("--no_hop", action="store_true", help="leave out the single-hop floor")
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
