"""The unified server's REST API (``--rest_api_port``) as a real process hosting a dense_alone model's ``ps_<i>`` and
``dense_0`` sub_graphs: every hosted sub_graph answers REST by name, as gRPC does (a PS lookup's pre-serialized
answer too), with the reference's values; an unknown name is the gRPC NOT_FOUND as 404; the requests are counted
under ``unified_rest_*``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from entry_reference import ReferenceScorer
from procs import ServerProcess, free_port
from rest_calls import metric_value, rest_json

from monolith_serving.client.inputs import random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.integration

ROWS = 120
SUB_GRAPHS = ("ps_0", "ps_1", "dense_0")


class UnifiedWithRest:
    def __init__(self, root: Path) -> None:
        self.export = root / "export"
        write_demo(DemoOptions(out=self.export, num_ps=2, rows=ROWS, dense_alone=True, seed=3))
        self.scorer = ReferenceScorer(self.export, 1)
        config = root / "models.config"
        entries = "".join(f'  config {{ name: "demo:{s}" base_path: "{self.export / s}" }}\n' for s in SUB_GRAPHS)
        config.write_text(f"model_config_list {{\n{entries}}}\n")
        self.rest_port, self.metrics_port = free_port(), free_port()
        port = free_port()
        args = [
            f"--port={port}",
            "--host=127.0.0.1",
            f"--rest_api_port={self.rest_port}",
            f"--metrics_port={self.metrics_port}",
            "--agent_address=127.0.0.1:1",  # no entry hosted: nothing asks the agent
            f"--model_config_file={config}",
        ]
        self.server = ServerProcess("unified", args, port=port, log_path=root / "unified.log").start()

    def rest(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return rest_json(self.rest_port, method, path, None if body is None else json.dumps(body).encode())

    def grpc_predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        with grpc.insecure_channel(self.server.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response: predict_pb2.PredictResponse = stub.Predict(request, timeout=30)
        return response


@pytest.fixture(scope="module")
def unified(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnifiedWithRest]:
    running = UnifiedWithRest(tmp_path_factory.mktemp("unified-rest"))
    try:
        yield running
    finally:
        running.server.stop()


def test_every_hosted_sub_graph_reports_its_status_over_rest(unified: UnifiedWithRest) -> None:
    for sub_graph in SUB_GRAPHS:
        status, answer = unified.rest("GET", f"/v1/models/demo:{sub_graph}")
        assert status == 200, answer
        assert [v["state"] for v in answer["model_version_status"]] == ["AVAILABLE"], sub_graph
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "demo:entry"
    with grpc.insecure_channel(unified.server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert unified.rest("GET", "/v1/models/demo:entry") == (404, {"error": caught.value.details()})


def test_dense_0_scores_over_rest_as_over_grpc_and_as_the_reference(unified: UnifiedWithRest) -> None:
    spec = load_serving_spec(unified.export / "entry" / "1")
    examples = random_examples(spec, 6, np.random.default_rng(5), rows=ROWS)
    rows = np.array([unified.scorer.row(e) for e in examples], dtype=np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "demo:dense_0"
    request.model_spec.signature_name = "dense"
    request.inputs["dense_input"].CopyFrom(to_tensor_proto(rows))
    over_grpc = from_tensor_proto(unified.grpc_predict(request).outputs["scores"], "scores")
    for body, key in (
        ({"signature_name": "dense", "instances": rows.tolist()}, "predictions"),
        ({"signature_name": "dense", "inputs": {"dense_input": rows.tolist()}}, "outputs"),
    ):
        status, answer = unified.rest("POST", "/v1/models/demo:dense_0:predict", body)
        assert status == 200, answer
        over_rest = np.asarray(answer[key], dtype=np.float32)
        np.testing.assert_array_equal(over_rest, over_grpc, err_msg=key)
        np.testing.assert_allclose(over_rest, unified.scorer.scores(examples), rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_ps_lookup_over_rest_answers_the_embeddings_as_over_grpc(unified: UnifiedWithRest) -> None:
    """The PS answers a lookup with bytes it serialized itself; REST reads them as a gRPC client does."""
    tables = unified.scorer.tables
    fids = {name: sorted(fid for fid in table if fid % 2 == 0 and fid < 2**63)[:3] for name, table in tables.items()}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "demo:ps_0"
    request.model_spec.signature_name = "lookup"
    for name, ids in fids.items():
        request.inputs[f"{name}_id"].CopyFrom(to_tensor_proto(np.array(ids, dtype=np.int64)))
    over_grpc = unified.grpc_predict(request).outputs
    body = {"signature_name": "lookup", "inputs": {f"{name}_id": ids for name, ids in fids.items()}}
    counted_before = _rest_predicts_ok(unified)
    status, answer = unified.rest("POST", "/v1/models/demo:ps_0:predict", body)
    assert status == 200, answer
    assert sorted(answer["outputs"]) == sorted(over_grpc) == sorted(f"{name}_value" for name in fids)
    for name, ids in fids.items():
        over_rest = np.asarray(answer["outputs"][f"{name}_value"], dtype=np.float32)
        np.testing.assert_array_equal(over_rest, from_tensor_proto(over_grpc[f"{name}_value"]), err_msg=name)
        np.testing.assert_array_equal(over_rest, np.array([tables[name][fid] for fid in ids]), err_msg=name)
    assert _rest_predicts_ok(unified) - counted_before == 1


def _rest_predicts_ok(unified: UnifiedWithRest) -> float:
    return metric_value(unified.metrics_port, "unified_rest_requests_total", {"method": "Predict", "code": "OK"})


def test_classify_and_regress_are_answered_as_tf_serving_does(unified: UnifiedWithRest) -> None:
    """A hosted sub_graph (looked up by the core that hosts it) is INVALID_ARGUMENT; a name no core hosts, or one
    the unified server routes to a core that does not have it, is NOT_FOUND: gRPC and REST alike."""
    for sub_graph in ("ps_1", "dense_0"):
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = f"demo:{sub_graph}"
        with grpc.insecure_channel(unified.server.address) as channel, pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=30)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "a unified server serves predict signatures only" in (caught.value.details() or "")
        status, answer = unified.rest("POST", f"/v1/models/demo:{sub_graph}:regress", {})
        assert status == 400 and "no regression signature" in answer["error"], answer
    for name in ("demo:ps_7", "demo:entry", "elsewhere"):
        status, answer = unified.rest("POST", f"/v1/models/{name}:classify", {})
        assert status == 404, (name, answer)
