"""``monolith-serving demo``: a whole serving cluster on loopback (Monolith's ``stand_alone_serving``).

Starts one ``ps`` process per shard, a ``dense`` process when the export is dense_alone (its serving spec names a
remote dense backend), and one ``entry`` process with static discovery (``--ps_targets``, ``--dense_targets``),
waits until the entry reports a version AVAILABLE (which needs every shard AVAILABLE), prints the address (and the
entry's REST API with ``--rest_api_port``) and serves until Ctrl-C / SIGTERM, then stops the children (SIGTERM,
then SIGKILL after a grace period).

Why subprocesses rather than servers in this process: every Python gRPC server is bound to one core by
the GIL, so separate processes let the entry and the shards use all cores, exactly like a deployment;
and it exercises the real command lines. Without ``--model`` it first writes the demo export
(``export-demo``) into a temporary folder that is removed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from monolith_serving.core.aio_wait import within
from monolith_serving.core.cli_flags import add_flag, flag_type, parse_port
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import MonolithServingError, UnavailableError
from monolith_serving.core.export_layout import list_versions
from monolith_serving.core.logging_setup import parse_log_level
from monolith_serving.core.serving_spec import DenseBackend, load_serving_spec
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2

logger = logging.getLogger(__name__)

STATUS_METHOD = "/tensorflow.serving.ModelService/GetModelStatus"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


def free_port() -> int:
    """A port the OS considers free right now (tiny race until the child binds it; fine on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ClusterConfig:
    model_dir: Path  # export base: entry/ and ps_<i>/
    num_ps: int
    entry_port: int
    entry_rest_port: int = 0  # the entry's --rest_api_port (0: no REST API)
    host: str = "127.0.0.1"
    log_level: str = "WARNING"
    ready_timeout_s: float = 60.0
    stop_grace_s: float = 5.0
    entry_flags: tuple[str, ...] = ()  # extra flags for the entry (benchmarks compare settings this way)
    dense_sub_model: str = ""  # dense_alone exports: the sub-model a ``dense`` process serves (else none)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "monolith_serving", *args]


class StandaloneCluster:
    """PS shards + entry as child processes. ``start()`` returns once the entry serves a version."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.ps_ports = [free_port() for _ in range(config.num_ps)]
        self.dense_port = free_port() if config.dense_sub_model else None
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.entry_port}"

    @property
    def rest_address(self) -> str | None:
        """``http://host:port`` of the entry's REST API, None without one."""
        port = self.config.entry_rest_port
        return f"http://{self.config.host}:{port}" if port else None

    def _spawn(self, args: Sequence[str]) -> None:
        self.processes.append(subprocess.Popen(command(*args)))

    def launch(self) -> None:
        c = self.config
        for i, port in enumerate(self.ps_ports):
            self._spawn(
                [
                    "ps",
                    "--log_level",
                    c.log_level,
                    "--host",
                    c.host,
                    "--port",
                    str(port),
                    "--model_name",
                    f"ps_{i}",
                    "--model_base_path",
                    str(c.model_dir / f"ps_{i}"),
                    "--num_ps",
                    str(c.num_ps),
                ]
            )
        targets = ";".join(f"{c.host}:{port}" for port in self.ps_ports)
        dense_flags: list[str] = []
        if self.dense_port is not None:
            # Only the dense server's folder: its model_name/base_path pair is what an agent would configure.
            self._spawn(
                [
                    "dense",
                    "--log_level",
                    c.log_level,
                    "--host",
                    c.host,
                    "--port",
                    str(self.dense_port),
                    "--model_name",
                    c.dense_sub_model,
                    "--model_base_path",
                    str(c.model_dir / c.dense_sub_model),
                ]
            )
            dense_flags = ["--dense_targets", f"{c.host}:{self.dense_port}"]
        self._spawn(
            [
                "entry",
                "--log_level",
                c.log_level,
                "--host",
                c.host,
                "--port",
                str(c.entry_port),
                "--model_name",
                "entry",
                "--model_base_path",
                str(c.model_dir / "entry"),
                "--ps_targets",
                targets,
                "--rest_api_port",
                str(c.entry_rest_port),
                *dense_flags,
                *c.entry_flags,
            ]
        )

    async def wait_ready(self) -> int:
        """The entry version that became AVAILABLE; raises UnavailableError on timeout or a dead child."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        async with grpc.aio.insecure_channel(self.address) as channel:
            call = channel.unary_unary(
                STATUS_METHOD,
                request_serializer=get_model_status_pb2.GetModelStatusRequest.SerializeToString,
                response_deserializer=get_model_status_pb2.GetModelStatusResponse.FromString,
            )
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "entry"
            while time.monotonic() < deadline:
                dead = [p for p in self.processes if p.poll() is not None]
                if dead:
                    raise UnavailableError(
                        f"a cluster process exited early: {dead[0].args!r} code {dead[0].returncode}"
                    )
                try:
                    response = await call(request, timeout=1.0)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.2)
                    continue
                ready = [s.version for s in response.model_version_status if s.state == AVAILABLE]
                if ready:
                    return int(max(ready))
                await asyncio.sleep(0.2)
        raise UnavailableError(f"the entry at {self.address} served no version within {self.config.ready_timeout_s} s")

    def stop(self) -> None:
        """SIGTERM every child (entry first), then SIGKILL whatever is left after the grace period."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_grace_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def configure(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--model", type=Path, default=None, help="export base (default: a fresh export-demo)")
    add_flag(parser, "--num_ps", type=int, default=2, help="PS shards when exporting the demo (default %(default)s)")
    add_flag(parser, "--port", type=flag_type(parse_port), default=8500, help="entry gRPC port (default %(default)s)")
    add_flag(
        parser,
        "--rest_api_port",
        type=flag_type(parse_port),
        default=0,
        help="the entry's TF Serving REST API port (default %(default)s: none)",
    )
    add_flag(
        parser,
        "--child_log_level",
        type=flag_type(parse_log_level),
        default="WARNING",
        help="log level of every cluster process (PS, dense, entry): DEBUG, INFO, WARNING, ERROR or CRITICAL",
    )
    add_flag(parser, "--ready_timeout_s", type=float, default=60.0, help="give up if not AVAILABLE by then")


async def _serve(config: ClusterConfig, stop: asyncio.Event) -> int:
    cluster = StandaloneCluster(config)
    cluster.launch()
    try:
        waiter = asyncio.create_task(cluster.wait_ready())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            waiter.cancel()
            return 0
        stopper.cancel()
        version = waiter.result()
        dense = f", dense server on port {cluster.dense_port}" if cluster.dense_port is not None else ""
        rest = f", REST API at {cluster.rest_address}/v1/models/entry" if cluster.rest_address is not None else ""
        print(
            f"monolith-serving demo: entry serving model 'entry' version {version} at {cluster.address}{rest} "
            f"({config.num_ps} PS shards on ports {', '.join(map(str, cluster.ps_ports))}{dense}); Ctrl-C stops",
            flush=True,
        )
        while not stop.is_set():
            dead = [p for p in cluster.processes if p.poll() is not None]
            if dead:
                logger.error("cluster process %s exited with code %s", dead[0].args, dead[0].returncode)
                return 1
            try:
                await within(stop.wait(), 1.0)
            except TimeoutError:
                continue
        return 0
    finally:
        cluster.stop()


def run(args: argparse.Namespace) -> int:
    from monolith_serving.core.grpc_server import run_async_main

    with tempfile.TemporaryDirectory(prefix="monolith-demo-") as scratch:
        try:
            model_dir = args.model
            if model_dir is None:
                model_dir = Path(scratch) / "model"
                write_demo(DemoOptions(out=model_dir, num_ps=args.num_ps))
            versions = list_versions(model_dir / "entry")
            if not versions:
                raise UnavailableError(f"no entry version under {model_dir / 'entry'}")
            spec = load_serving_spec(model_dir / "entry" / str(versions[-1]))
        except MonolithServingError as error:
            logger.error("%s", error.message)
            return 2
        config = ClusterConfig(
            model_dir=model_dir.resolve(),
            num_ps=spec.num_ps,
            dense_sub_model=spec.dense.sub_model if spec.dense.backend is DenseBackend.REMOTE else "",
            entry_port=args.port,
            entry_rest_port=args.rest_api_port,
            log_level=args.child_log_level,
            ready_timeout_s=args.ready_timeout_s,
        )

        async def main(stop: asyncio.Event) -> int:
            try:
                return await _serve(config, stop)
            except MonolithServingError as error:
                logger.error("%s", error.message)
                return 1

        return run_async_main(main)
