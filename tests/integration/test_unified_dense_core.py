"""An in-process unified server over real gRPC on loopback: it hosts ``<model>:dense_<i>`` (dense_alone's network)
next to the PS and entry sub_graphs, refuses a bad dense part before any core changes, and its gRPC health follows
every hosted model as the PS's and the dense server's do."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from entry_reference import ReferenceScorer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_serving.client.inputs import random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from monolith_serving.unified.server import UnifiedConfig, UnifiedServer

pytestmark = pytest.mark.integration

ROWS = 120
AVAILABLE = 30
HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
NO_AGENT = "127.0.0.1:1"  # nothing listens: an entry core finds no PS or dense replica, so it never serves


def reload_request(models: dict[str, Path], labels: dict[str, dict[str, int]] | None = None) -> bytes:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.SetInParent()
    for name, base_path in models.items():
        model = request.config.model_config_list.config.add(name=name, base_path=str(base_path))
        model.model_version_policy.latest.num_versions = 1
        model.version_labels.update((labels or {}).get(name, {}))
    return request.SerializeToString()


def unified_config() -> UnifiedConfig:
    return UnifiedConfig(port=0, host="127.0.0.1", agent_address=NO_AGENT, file_system_poll_wait_s=0.2)


class Client:
    """The unified server's services on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.reload = channel.unary_unary("/tensorflow.serving.ModelService/HandleReloadConfigRequest")
        self.models = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
        self.health = health_pb2_grpc.HealthStub(channel)

    async def states(self, name: str) -> list[tuple[int, int]] | grpc.StatusCode:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            reply = await self.models.GetModelStatus(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return [(s.version, s.state) for s in reply.model_version_status]

    async def health_statuses(self) -> set[str]:
        statuses = set()
        for service in HEALTH_SERVICES:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            statuses.add(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        return statuses

    async def wait_health(self, status: str, timeout_s: float = 20.0) -> None:
        """Health follows the cores' polls: wait for it to say ``status`` on every service."""
        deadline = time.monotonic() + timeout_s
        while (seen := await self.health_statuses()) != {status}:
            assert time.monotonic() < deadline, f"health {seen}, not {status}"
            await asyncio.sleep(0.05)


def test_a_unified_server_hosts_dense_0_and_scores_like_the_reference(tmp_path: Path) -> None:
    export = tmp_path / "demo"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS, dense_alone=True))
    scorer = ReferenceScorer(export, 1)
    examples = random_examples(load_serving_spec(export / "entry" / "1"), 5, np.random.default_rng(11), rows=ROWS)
    rows = np.array([scorer.row(e) for e in examples], dtype=np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "demo:dense_0"
    request.model_spec.signature_name = "dense"
    request.inputs["dense_input"].CopyFrom(to_tensor_proto(rows))
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "demo:dense_0"

    async def scenario() -> None:
        async with (
            UnifiedServer(unified_config()) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            client = Client(channel)
            sub_graphs = {f"demo:{s}": export / s for s in ("ps_0", "ps_1", "dense_0")}
            await client.reload(reload_request(sub_graphs), timeout=30)
            for name in sub_graphs:
                assert await client.states(name) == [(1, AVAILABLE)], name
            response = await client.predictions.Predict(request, timeout=10)
            assert response.model_spec.name == "demo:dense_0" and response.model_spec.version.value == 1
            np.testing.assert_allclose(
                from_tensor_proto(response.outputs["scores"], "scores"), scorer.scores(examples), rtol=1e-5, atol=1e-6
            )
            described = await client.predictions.GetModelMetadata(metadata, timeout=10)
            assert described.model_spec.version.value == 1
            assert await client.health_statuses() == {"SERVING"}
            # Unpublished from the layout: the dense part empties, dense_0 is gone.
            await client.reload(reload_request({"demo:ps_0": export / "ps_0"}), timeout=30)
            assert await client.states("demo:dense_0") == grpc.StatusCode.NOT_FOUND
            assert await client.states("demo:ps_0") == [(1, AVAILABLE)]

    asyncio.run(scenario())


def test_a_bad_dense_part_refuses_the_whole_reload_before_any_core_changes(tmp_path: Path) -> None:
    export = tmp_path / "demo"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS, dense_alone=True))
    (tmp_path / "a_file").write_text("not a folder")
    hosted = {"demo:ps_0": export / "ps_0", "demo:dense_0": export / "dense_0"}
    with_ps_1 = {**hosted, "demo:ps_1": export / "ps_1"}  # a valid PS change that must not happen either
    cases = [
        (reload_request({**with_ps_1, "demo:dense_0": tmp_path / "missing"}), grpc.StatusCode.NOT_FOUND, "missing"),
        (reload_request({**with_ps_1, "demo:dense_0": tmp_path / "a_file"}), grpc.StatusCode.NOT_FOUND, "a_file"),
        (
            reload_request(with_ps_1, {"demo:dense_0": {"stable": 7}}),
            grpc.StatusCode.FAILED_PRECONDITION,
            "version label 'stable' points at version 7",
        ),
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "config is not set"),
    ]

    async def scenario() -> None:
        async with (
            UnifiedServer(unified_config()) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            client = Client(channel)
            await client.reload(reload_request(hosted), timeout=30)
            for body, code, message in cases:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.reload(body, timeout=10)
                assert refused.value.code() == code and message in str(refused.value.details()), refused.value
                assert await client.states("demo:dense_0") == [(1, AVAILABLE)]
                assert await client.states("demo:ps_1") == grpc.StatusCode.NOT_FOUND
            # The same label on an AVAILABLE version is fine.
            await client.reload(reload_request(with_ps_1, {"demo:dense_0": {"stable": 1}}), timeout=30)
            assert await client.states("demo:ps_1") == [(1, AVAILABLE)]

    asyncio.run(scenario())


def test_unified_health_follows_every_hosted_model(tmp_path: Path) -> None:
    staging, export = tmp_path / "staging", tmp_path / "demo"
    write_demo(DemoOptions(out=staging, num_ps=1, rows=ROWS, dense_alone=True))
    for sub_graph in ("ps_0", "dense_0"):
        (export / sub_graph).mkdir(parents=True)  # declared folders without a version yet
    entry_only = {"demo:entry": staging / "entry"}

    async def scenario() -> None:
        async with (
            UnifiedServer(unified_config()) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            client = Client(channel)
            assert await client.health_statuses() == {"SERVING"}  # hosting nothing: nothing to wait for
            await client.reload(reload_request({"demo:ps_0": export / "ps_0"}), timeout=30)
            assert await client.health_statuses() == {"NOT_SERVING"}  # ps_0 has no version
            (staging / "ps_0" / "1").rename(export / "ps_0" / "1")
            await client.wait_health("SERVING")  # the PS core's file-system poll found the version
            await client.reload(
                reload_request({"demo:ps_0": export / "ps_0", "demo:dense_0": export / "dense_0"}), timeout=30
            )
            assert await client.health_statuses() == {"NOT_SERVING"}  # dense_0 has no version
            (staging / "dense_0" / "1").rename(export / "dense_0" / "1")
            await client.wait_health("SERVING")
            # An entry whose PS and dense replicas cannot be found (no agent) loads its version but never serves it.
            await client.reload(reload_request(entry_only), timeout=30)
            entry_states = await client.states("demo:entry")
            assert isinstance(entry_states, list) and entry_states, entry_states
            assert AVAILABLE not in {state for _, state in entry_states}
            assert await client.health_statuses() == {"NOT_SERVING"}
            await client.reload(reload_request({}), timeout=30)
            assert await client.health_statuses() == {"SERVING"}

    asyncio.run(scenario())
