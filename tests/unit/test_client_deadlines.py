"""The deadline each call is given, as the server sees it (``ServicerContext.time_remaining()``).

tfs_client gives Predict a 30 s deadline and status, meta and load none (monolith/agent_service/tfs_client.py):
a reload that takes longer than any fixed deadline must not exit 1 while the server finishes it. Our action
spelling gives every call ``--timeout_s`` (5 s by default), and an explicit ``--timeout_s`` applies to every call
in either spelling."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from monolith_serving.client.cli import configure, run
from monolith_serving.client.flag_types import MAX_SECONDS
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

NO_DEADLINE = None


def about(remaining: float | None, deadline_s: float) -> bool:
    """``remaining`` is what a call given ``deadline_s`` has left when it arrives: a little less, or a little more
    (gRPC sends the timeout rounded up, in a few significant digits)."""
    return remaining is not None and deadline_s - 2.0 < remaining <= deadline_s + 0.5


class _Deadlines:
    """What each method's last call had left of its deadline when it arrived (None: it had none)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float | None] = {}

    def record(self, method: str, context: grpc.ServicerContext) -> None:
        remaining = context.time_remaining()
        # gRPC reports "no deadline" as a remaining time of about 2**63 ns.
        with self._lock:
            self._seen[method] = None if remaining is None or remaining > MAX_SECONDS else float(remaining)

    def take(self, method: str) -> float | None:
        with self._lock:
            return self._seen.pop(method)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, deadlines: _Deadlines) -> None:
        self._deadlines = deadlines

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        self._deadlines.record("status", context)
        return get_model_status_pb2.GetModelStatusResponse()

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        self._deadlines.record("load", context)
        return model_management_pb2.ReloadConfigResponse()


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, deadlines: _Deadlines) -> None:
        self._deadlines = deadlines

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        self._deadlines.record("predict", context)
        return predict_pb2.PredictResponse()

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        self._deadlines.record("meta", context)
        return get_model_metadata_pb2.GetModelMetadataResponse()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, _Deadlines]]:
    deadlines = _Deadlines()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(deadlines), grpc_server)  # type: ignore[no-untyped-call]
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(deadlines), grpc_server)  # type: ignore[no-untyped-call]
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield f"127.0.0.1:{port}", deadlines
    finally:
        grpc_server.stop(grace=None)


def _deadline_of(server: tuple[str, _Deadlines], method: str, tmp_path: Path, *argv: str) -> float | None:
    target, deadlines = server
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "entry" base_path: "/models/entry" } }\n')
    parser = argparse.ArgumentParser()
    configure(parser)
    # --config_file, which load reads and the others ignore (tfs_client names it --input_file, a predict's data file).
    assert run(parser.parse_args([*argv, f"--target={target}", f"--config_file={config}"])) == 0
    return deadlines.take(method)


@pytest.mark.parametrize("cmd_type", ["load", "status", "meta"])
def test_tfs_clients_spelling_gives_status_meta_and_load_no_deadline(
    server: tuple[str, _Deadlines], tmp_path: Path, cmd_type: str
) -> None:
    assert _deadline_of(server, cmd_type, tmp_path, f"--cmd_type={cmd_type}") is NO_DEADLINE


@pytest.mark.parametrize("cmd_type", ["load", "status", "meta"])
def test_an_explicit_timeout_s_is_every_calls_deadline_in_tfs_clients_spelling(
    server: tuple[str, _Deadlines], tmp_path: Path, cmd_type: str
) -> None:
    remaining = _deadline_of(server, cmd_type, tmp_path, f"--cmd_type={cmd_type}", "--timeout_s=7")
    assert about(remaining, 7), remaining


def test_tfs_clients_spelling_gives_predict_30_s(server: tuple[str, _Deadlines], tmp_path: Path) -> None:
    remaining = _deadline_of(server, "predict", tmp_path, "--cmd_type=get")
    assert about(remaining, 30), remaining


@pytest.mark.parametrize("action", ["load", "status", "meta"])
def test_the_action_spelling_keeps_its_5_s_deadline(
    server: tuple[str, _Deadlines], tmp_path: Path, action: str
) -> None:
    remaining = _deadline_of(server, action, tmp_path, action)
    assert about(remaining, 5), remaining
