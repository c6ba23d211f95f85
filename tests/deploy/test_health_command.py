"""``monolith-serving health`` against a real gRPC server on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from monolith_serving.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


def test_serving_exits_zero(
    health_server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    addr, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert main(["health", "--addr", addr]) == 0
    assert capsys.readouterr().out.strip() == f"{addr} SERVING"


def test_not_serving_exits_one(
    health_server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    addr, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(["health", "--addr", addr]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err


def test_named_service(health_server: tuple[str, health.HealthServicer]) -> None:
    addr, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    servicer.set("tensorflow.serving.PredictionService", health_pb2.HealthCheckResponse.SERVING)
    assert main(["health", "--addr", addr, "--service", "tensorflow.serving.PredictionService"]) == 0
    # A service the server never registered is NOT_FOUND, which is not healthy.
    assert main(["health", "--addr", addr, "--service", "nope"]) == 1


def test_nothing_listening_exits_one_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is closed again: the check must fail with UNAVAILABLE, not hang past its deadline.
    done = subprocess.run(
        [sys.executable, "-m", "monolith_serving", "health", "--addr", f"127.0.0.1:{port}", "--timeout_s", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr or "DEADLINE_EXCEEDED" in done.stderr
