"""HandleReloadConfigRequest refuses a config it cannot serve from, and changes nothing then: a PS process, an
in-process dense server and an in-process unified server, over real gRPC on loopback (the entry's refusals:
``test_entry_cluster``).

Refused: no config at all (an empty body) -> INVALID_ARGUMENT; a base_path that is not an existing folder ->
NOT_FOUND; a PS shard outside --num_ps -> INVALID_ARGUMENT; a version label on a version not AVAILABLE ->
FAILED_PRECONDITION. After each refusal the previous model keeps serving from its previous folder. An explicit
empty ``model_config_list {}`` is a config, and still unloads everything (the model manager's and agents' "host
nothing").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_ps_service import AVAILABLE, DIMS, NUM_PS, Ps, model_config_text, start_ps, write_version

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.export_layout import VersionPolicy
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.dense.config import DenseModelConfig, DenseServerConfig
from monolith_serving.dense.server import DenseServer
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from monolith_serving.unified.server import UnifiedConfig, UnifiedServer

pytestmark = pytest.mark.integration

RELOAD = "/tensorflow.serving.ModelService/HandleReloadConfigRequest"
INVALID, NOT_FOUND, FAILED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def reload_body(name: str, base_path: Path | str, labels: dict[str, int] | None = None) -> bytes:
    request = model_management_pb2.ReloadConfigRequest()
    model = request.config.model_config_list.config.add(name=name, base_path=str(base_path))
    model.version_labels.update(labels or {})
    return request.SerializeToString()


def empty_list() -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.SetInParent()
    return request


def bad_path_cases(name: str, tmp_path: Path) -> list[tuple[bytes, grpc.StatusCode, str]]:
    (tmp_path / "a_file").write_text("not a folder")
    return [
        (b"", INVALID, "ReloadConfigRequest.config is not set"),  # zero-length body: the config oneof is unset
        (reload_body(name, tmp_path / "missing"), NOT_FOUND, f"{name!r}: base_path {str(tmp_path / 'missing')!r}"),
        (reload_body(name, tmp_path / "a_file"), NOT_FOUND, f"{name!r}: base_path {str(tmp_path / 'a_file')!r}"),
        (reload_body(name, "/tmp/a\x00b"), NOT_FOUND, f"{name!r}: base_path '/tmp/a\\x00b'"),
    ]


def test_a_ps_refuses_a_bad_reload_and_keeps_serving_its_config(tmp_path: Path) -> None:
    base = tmp_path / "ps_0"
    rows = write_version(base, 1, seed=3)
    config = tmp_path / "models.config"
    config.write_text(model_config_text({"ps_0": base}))  # version label stable -> 1
    cases = [
        *bad_path_cases("ps_0", tmp_path),
        (reload_body("ps_5", base), INVALID, f"model 'ps_5' is not a shard of --num_ps {NUM_PS}"),
        (reload_body("ps_0", base, {"stable": 999}), FAILED, "'ps_0': version label 'stable' points at version 999"),
    ]
    query = {table: np.array(list(rows[table])[:50], dtype=np.int64) for table in DIMS}
    args = ["--model_config_file", str(config), "--num_ps", str(NUM_PS), "--file_system_poll_wait_seconds", "0.2"]
    with start_ps(tmp_path, args) as proc:
        ps = Ps(proc)
        reload = ps.channel.unary_unary(RELOAD)
        for body, code, message in cases:
            with pytest.raises(grpc.RpcError) as info:
                reload(body, timeout=30)
            assert (info.value.code(), message in str(info.value.details())) == (code, True), info.value.details()
            assert ps.status("ps_0") == {1: (AVAILABLE, 0, "")}
            with pytest.raises(grpc.RpcError):
                ps.status("ps_5")
            version, outputs = ps.lookup("ps_0", query, label="stable")
            assert version == 1
            for table in DIMS:
                np.testing.assert_array_equal(
                    outputs[f"{table}_value"], np.stack([rows[table][f] for f in query[table]])
                )
        # Its config still points at the first folder: a version written there is picked up by the poll.
        write_version(tmp_path / "staging", 2, seed=4)
        (tmp_path / "staging" / "2").rename(base / "2")
        ps.wait_state("ps_0", 2, AVAILABLE)
        ps.model_stub.HandleReloadConfigRequest(empty_list(), timeout=30)
        with pytest.raises(grpc.RpcError) as unloaded:
            ps.status("ps_0")
        assert unloaded.value.code() == NOT_FOUND


def test_a_dense_server_refuses_a_bad_reload_and_keeps_serving_its_config(tmp_path: Path) -> None:
    write_demo(DemoOptions(out=tmp_path / "export", num_ps=2, rows=20, dense_alone=True))
    base = tmp_path / "export" / "dense_0"
    model = DenseModelConfig("dense_0", base, VersionPolicy(), version_labels={"stable": 1})
    cases = [
        *bad_path_cases("dense_0", tmp_path),
        (reload_body("dense_0", base, {"stable": 999}), FAILED, "version label 'stable' points at version 999"),
    ]
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "dense_0"
    predict.model_spec.version_label = "stable"
    predict.inputs["dense_input"].CopyFrom(to_tensor_proto(np.ones((2, 82), dtype=np.float32)))
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "dense_0"

    async def scenario() -> None:
        config = DenseServerConfig(port=0, host="127.0.0.1", models=(model,), file_system_poll_wait_s=0)
        async with DenseServer(config) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reload = channel.unary_unary(RELOAD)
            models = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
            predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
            expected = (await predictions.Predict(predict, timeout=10)).outputs
            for body, code, message in cases:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await reload(body, timeout=10)
                assert (info.value.code(), message in str(info.value.details())) == (code, True), info.value.details()
                reply = await models.GetModelStatus(status, timeout=10)
                assert [(s.version, s.state) for s in reply.model_version_status] == [(1, AVAILABLE)]
                answer = await predictions.Predict(predict, timeout=10)
                assert answer.model_spec.version.value == 1 and answer.outputs == expected
            await models.HandleReloadConfigRequest(empty_list(), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as unloaded:
                await models.GetModelStatus(status, timeout=10)
            assert unloaded.value.code() == NOT_FOUND

    asyncio.run(scenario())


def test_a_unified_server_refuses_a_bad_reload_and_keeps_serving_its_config(tmp_path: Path) -> None:
    """The unified container's reload goes through the same checks for its PS side (its start-up config does
    not: the folders it names may come later)."""
    base = tmp_path / "demo" / "ps_0"
    write_version(base, 1, seed=3)
    start_config = tmp_path / "models.config"
    start_config.write_text(model_config_text({"demo:ps_0": base}))
    cases = [
        *bad_path_cases("demo:ps_0", tmp_path),
        (reload_body("demo:ps_0", base, {"stable": 999}), FAILED, "version label 'stable' points at version 999"),
    ]
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "demo:ps_0"

    async def scenario() -> None:
        config = UnifiedConfig(
            port=0, host="127.0.0.1", agent_address="127.0.0.1:1", model_config_file=start_config,
            file_system_poll_wait_s=0,
        )  # fmt: skip
        async with UnifiedServer(config) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reload = channel.unary_unary(RELOAD)
            models = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
            for body, code, message in cases:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await reload(body, timeout=10)
                assert (info.value.code(), message in str(info.value.details())) == (code, True), info.value.details()
                reply = await models.GetModelStatus(status, timeout=10)
                assert [(s.version, s.state) for s in reply.model_version_status] == [(1, AVAILABLE)]
            await models.HandleReloadConfigRequest(empty_list(), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as unloaded:
                await models.GetModelStatus(status, timeout=10)
            assert unloaded.value.code() == NOT_FOUND

    asyncio.run(scenario())
