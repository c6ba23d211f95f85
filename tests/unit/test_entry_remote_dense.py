"""dense_alone: the entry's ``RemoteDense`` against a real in-process ``DenseServer`` on loopback, the dense
server's contract (bad input, versions, status, reload) and the entry's version gating on dense_0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from entry_fakes import FilledLookup

from monolith_serving.client.inputs import encode, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import FailedPreconditionError, UnavailableError
from monolith_serving.core.export_layout import VersionPolicy
from monolith_serving.core.serving_spec import ServingSpec, load_serving_spec
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.dense.config import DenseModelConfig, DenseServerConfig
from monolith_serving.dense.server import DenseServer
from monolith_serving.entry.dense import DenseModel, Float32Array, load_dense
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel, EntryModelConfig, ModelState
from monolith_serving.entry.ps_client import ChannelPool, RetryPolicy
from monolith_serving.entry.remote_dense import DenseReplicas, RemoteDenseConfig, dense_model_name
from monolith_serving.entry.replica_source import StaticReplicaSource
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

WIDTH = 82  # the demo's input width (user 8*4 + item 12*4 + ctx 2)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dense-alone")
    write_demo(DemoOptions(out=root / "plain", num_ps=2, rows=20))
    write_demo(DemoOptions(out=root / "alone", num_ps=2, rows=20, dense_alone=True))
    return root / "plain", root / "alone"


def _dense_server(alone: Path) -> DenseServer:
    model = DenseModelConfig("dense_0", alone / "dense_0", VersionPolicy())
    return DenseServer(DenseServerConfig(port=0, host="127.0.0.1", models=(model,), file_system_poll_wait_s=0))


def _remote(spec: ServingSpec, addresses: list[str], metrics: EntryMetrics, entry: str = "entry") -> DenseModel:
    shared = DenseReplicas(
        config=RemoteDenseConfig(entry_model_name=entry, retry=RetryPolicy(retry=2, min_attempt_s=0.2)),
        replicas=StaticReplicaSource([addresses]),
        channels=ChannelPool(),
        metrics=metrics,
    )
    return shared.bind(spec)


def _dead_address() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # closed again: connections are refused


def test_remote_scores_equal_the_local_network_and_retry_another_replica(exports: tuple[Path, Path]) -> None:
    plain, alone = exports
    spec = load_serving_spec(alone / "entry" / "1")
    x = np.random.default_rng(5).standard_normal((6, spec.input_width)).astype(np.float32)
    expected = load_dense(load_serving_spec(plain / "entry" / "1"), plain / "entry" / "1").predict(x)

    async def scenario() -> None:
        async with _dense_server(alone) as server:
            metrics = EntryMetrics()
            good = f"127.0.0.1:{server.port}"
            remote = _remote(spec, [_dead_address(), good], metrics)
            for _ in range(3):  # round-robin starts on either replica; the dead one is retried past
                got = await remote.score(x, version=1, timeout_s=5.0)
                np.testing.assert_array_equal(got, expected)
            assert remote.output_width == 1
            assert metrics.dense_retries._value.get() >= 1
            # A version the server does not have: NOT_FOUND on every replica -> UNAVAILABLE naming dense_0.
            with pytest.raises(UnavailableError, match=r"dense sub-model dense_0 version 2 failed: .*NOT_FOUND"):
                await _remote(spec, [good], metrics).score(x, version=2, timeout_s=5.0)
            with pytest.raises(UnavailableError, match="dense_0 has no known replica"):
                await _remote(spec, [], metrics).score(x, version=1, timeout_s=5.0)

    asyncio.run(scenario())


def test_dense_model_name_follows_the_entry_name() -> None:
    assert dense_model_name("entry") == "dense_0"
    assert dense_model_name("demo:entry") == "demo:dense_0"


def test_dense_server_contract(exports: tuple[Path, Path]) -> None:
    _, alone = exports

    def request(**changes: object) -> predict_pb2.PredictRequest:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = str(changes.get("name", "dense_0"))
        req.model_spec.signature_name = "dense"
        if "version" in changes:
            req.model_spec.version.value = int(str(changes["version"]))
        value = changes.get("value", np.ones((2, WIDTH), dtype=np.float32))
        req.inputs[str(changes.get("input", "dense_input"))].CopyFrom(to_tensor_proto(value))
        return req

    async def scenario() -> None:
        async with _dense_server(alone) as server:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            try:
                predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
                models = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
                response = await predict.Predict(request(version=1))
                assert response.model_spec.version.value == 1
                assert list(response.outputs) == ["scores"]
                assert [d.size for d in response.outputs["scores"].tensor_shape.dim] == [2, 1]
                unknown_dtype = request()
                unknown_dtype.inputs["dense_input"].dtype = 999  # type: ignore[assignment]
                bad = [
                    (request(value=np.ones((2, WIDTH - 1), dtype=np.float32)), "dense_input"),
                    (request(value=np.ones((2, WIDTH), dtype=np.float64)), "'dense_input' must be DT_FLOAT"),
                    (request(input="x"), "unknown input"),
                    (unknown_dtype, "got unknown DataType 999"),  # proto3 keeps an enum number it lacks
                ]
                for req, message in bad:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await predict.Predict(req)
                    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                    assert message in str(caught.value.details())
                for req, code in [(request(version=9), grpc.StatusCode.NOT_FOUND), (request(name="ps_0"), None)]:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await predict.Predict(req)
                    assert caught.value.code() is (code or grpc.StatusCode.NOT_FOUND)
                status_request = get_model_status_pb2.GetModelStatusRequest()
                status_request.model_spec.name = "dense_0"
                status = await models.GetModelStatus(status_request)
                assert [(s.version, s.state) for s in status.model_version_status] == [(1, ModelState.AVAILABLE)]
                unload = model_management_pb2.ReloadConfigRequest()
                unload.config.model_config_list.SetInParent()  # an explicit empty list unloads (no config: refused)
                await models.HandleReloadConfigRequest(unload)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await models.GetModelStatus(status_request)
                assert caught.value.code() is grpc.StatusCode.NOT_FOUND
            finally:
                await channel.close()

    asyncio.run(scenario())


class FakeRemote(DenseModel):
    """Our own DenseModel interface, recording what the entry awaits."""

    def __init__(self, spec: ServingSpec) -> None:
        self.input_width = spec.input_width
        self.output_width = 1
        self.calls: list[tuple[int, int, float]] = []

    async def score(self, x: Float32Array, *, version: int, timeout_s: float) -> Float32Array:
        self.calls.append((version, x.shape[1], timeout_s))
        return np.full((len(x), 1), 0.5, dtype=np.float32)


def test_entry_gates_a_remote_dense_version_on_dense_0(exports: tuple[Path, Path]) -> None:
    _, alone = exports
    spec = load_serving_spec(alone / "entry" / "1")
    examples = random_examples(spec, 3, np.random.default_rng(1), rows=20)
    inputs = {k: np.array(v, dtype=object) for k, v in encode(spec, "instances", examples).items()}
    remotes: list[FakeRemote] = []
    dense_available: set[int] = set()

    def factory(version_spec: ServingSpec) -> DenseModel:
        remotes.append(FakeRemote(version_spec))
        return remotes[-1]

    async def scenario() -> None:
        config = EntryModelConfig(name="entry", base_path=alone / "entry", fetch_ps_timeout_ms=250)
        model = EntryModel(
            config=config,
            num_ps=2,
            lookup=FilledLookup(0.0),
            ps_ready=lambda v: True,
            metrics=EntryMetrics(),
            remote_dense=factory,
            dense_ready=dense_available.__contains__,
        )
        await model.refresh()
        (status,) = model.status("entry")
        assert status.state is ModelState.LOADING and "dense_0" in status.detail
        dense_available.add(1)
        await model.refresh()
        assert model.served_versions == (1,)
        result = await model.predict(name="entry", version=None, signature_name="", inputs=inputs)
        assert result.outputs["scores"].shape == (3, 1)
        ((version, width, timeout_s),) = remotes[0].calls
        assert (version, width) == (1, spec.input_width) and 0 < timeout_s <= 0.25  # fetch_ps_timeout_ms budget
        # An entry without any dense replica source cannot load such a version, and says why.
        lonely = EntryModel(
            config=config, num_ps=2, lookup=FilledLookup(0.0), ps_ready=lambda v: True, metrics=EntryMetrics()
        )
        await lonely.refresh()
        (failed,) = lonely.status("entry")
        assert failed.state is ModelState.END and isinstance(failed.error, FailedPreconditionError)
        assert "--dense_targets" in failed.error.message

    asyncio.run(scenario())
