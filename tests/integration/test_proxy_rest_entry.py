"""The proxy's REST API in front of a real entry (over two real PS), as a TF Serving REST client sees it: the
answers' JSON as TF Serving writes it (tensorflow_serving/util/json_tensor.cc, model_servers/http_rest_api_util.cc),
and requests TF Serving takes taken. The gateway's finer points run against a fake upstream in test_proxy_rest.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from proxy_procs import EntryBehindProxy
from rest_calls import instances_rows, rest_text

from monolith_serving.client.inputs import encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import prediction_service_pb2_grpc

pytestmark = pytest.mark.integration

ROWS = 200


class Cluster(EntryBehindProxy):
    def __init__(self, root: Path) -> None:
        super().__init__(DemoOptions(out=root / "export", num_ps=2, rows=ROWS, version=1, seed=7), root / "logs")

    def instances(self, batch: int, seed: int) -> list[bytes]:
        examples = random_examples(self.spec, batch, np.random.default_rng(seed), rows=ROWS)
        return encode_instances(self.spec, examples)

    def direct_scores(self, instances: list[bytes]) -> np.ndarray:
        with grpc.insecure_channel(self.entry.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(predict_request("entry", {"instances": instances}), timeout=30)
        return from_tensor_proto(response.outputs["scores"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("proxy-rest-entry"))
    try:
        yield running
    finally:
        running.stop()


def _raw_rest(cluster: Cluster, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    """One HTTP call to the proxy's REST port; the body as text, numbers as written."""
    return rest_text(cluster.proxy.rest_port, method, path, body)


def _float_tokens(text: str) -> Any:
    return json.loads(text, parse_float=str, parse_constant=str)


def test_scores_are_written_as_tf_serving_writes_floats(cluster: Cluster) -> None:
    instances = cluster.instances(16, seed=1)
    direct = cluster.direct_scores(instances)
    status, text = _raw_rest(cluster, "POST", "/v1/models/entry:predict", instances_rows(instances, padded=True))
    assert status == 200, text
    rows = _float_tokens(text)["predictions"]
    tokens = [token for row in rows for token in row]
    assert len(tokens) == direct.size
    # TF Serving writes a DT_FLOAT with at most 9 significant digits, never the 16-17 of the double nearest it
    # (0.567736804, not 0.567736804485321), and each reads back as exactly the entry's float32.
    for token, value in zip(tokens, direct.reshape(-1).tolist(), strict=True):
        digits = re.sub(r"e[-+]\d+$", "", token).replace("-", "").replace(".", "").lstrip("0")
        assert len(digits) <= 9, token
        assert np.float32(float(token)) == np.float32(value), (token, value)


def test_base64_without_padding_is_taken(cluster: Cluster) -> None:
    instances = [blob for blob in cluster.instances(40, seed=2) if len(blob) % 3][:8]  # base64 with '='
    assert instances
    padded = _raw_rest(cluster, "POST", "/v1/models/entry:predict", instances_rows(instances, padded=True))
    unpadded = _raw_rest(cluster, "POST", "/v1/models/entry:predict", instances_rows(instances, padded=False))
    assert padded[0] == 200 and unpadded == padded, unpadded


def test_metadata_and_status_are_printed_as_tf_serving_prints_them(cluster: Cluster) -> None:
    status, text = _raw_rest(cluster, "GET", "/v1/models/entry/metadata")
    assert status == 200, text
    document = json.loads(text)
    assert document["model_spec"] == {"name": "entry", "signature_name": "", "version": "1"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict" and "defaults" not in signature
    assert signature["inputs"]["instances"] == {
        "name": "instances",
        "dtype": "DT_STRING",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False},
    }
    assert signature["outputs"]["scores"]["tensor_shape"]["unknown_rank"] is False
    status, text = _raw_rest(cluster, "GET", "/V1/MODELS/entry/VERSIONS/1")  # TF Serving's words are case-blind
    assert status == 200, text
    assert json.loads(text) == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    status, text = _raw_rest(cluster, "GET", "/v1/models")
    assert status == 400 and json.loads(text) == {"error": "Missing model name in request."}, text
