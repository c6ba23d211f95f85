"""A real ``monolith-serving dense`` process: health (every service) is SERVING only while every configured dense
sub-model has an AVAILABLE version, and follows the file-system poll and HandleReloadConfigRequest."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from procs import ServerProcess, free_port, model_server_health, wait_model_server_health

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)

pytestmark = pytest.mark.integration


def _versions(stub: model_service_pb2_grpc.ModelServiceStub, timeout_s: float = 30.0) -> dict[int, int]:
    """dense_0's {version: state}, once the server is up and hosts it."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "dense_0"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reply = stub.GetModelStatus(request, timeout=5)
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
            continue
        return {s.version: s.state for s in reply.model_version_status}


def test_dense_health_waits_for_a_version_and_follows_reloads(tmp_path: Path) -> None:
    write_demo(DemoOptions(out=tmp_path / "staging", num_ps=1, rows=10, dense_alone=True))
    base = tmp_path / "export" / "dense_0"
    base.mkdir(parents=True)  # an export without versions yet
    port = free_port()
    args = ["--port", str(port), "--host", "127.0.0.1", "--model_name", "dense_0", "--model_base_path", str(base),
            "--file_system_poll_wait_seconds", "0.2"]  # fmt: skip
    proc = ServerProcess("dense", args, port=port, log_path=tmp_path / "dense.log").launch()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            assert _versions(stub) == {}
            deadline = time.monotonic() + 1.0  # several polls find nothing: still not serving
            while time.monotonic() < deadline:
                assert model_server_health(proc) == {"NOT_SERVING"}, proc.log_tail()
                time.sleep(0.1)
            (tmp_path / "staging" / "dense_0" / "1").rename(base / "1")
            wait_model_server_health(proc, "SERVING")
            # Serving nothing (an empty ``specific {}``): the reload unloads version 1, health follows at once.
            request = model_management_pb2.ReloadConfigRequest()
            entry = request.config.model_config_list.config.add(name="dense_0", base_path=str(base))
            entry.model_version_policy.specific.SetInParent()
            stub.HandleReloadConfigRequest(request, timeout=30)
            assert model_server_health(proc) == {"NOT_SERVING"}
    finally:
        assert proc.stop() == 0
