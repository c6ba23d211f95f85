"""A multi-task model (``export-demo --heads ctr,cvr``) end to end: real ``ps`` processes, a real ``entry`` and a
real ``proxy`` in front. Each head's scores are checked against ``entry_reference.ReferenceScorer``, straight from
the entry, through the proxy's coalescing (requests with different ``output_filter``s in flight together) and its
REST gateway; also ``output_filter``, GetModelMetadata, the client's output, and a ``dense_0`` server answering
the whole matrix that the entry splits (dense_alone).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from client_cli import run_client
from entry_reference import ReferenceScorer, assert_outputs_match, assert_predict_matches_reference
from proxy_procs import EntryBehindProxy

from monolith_serving.client.inputs import LogicalExample, encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.integration

ROWS = 200
HEADS = ("ctr", "cvr")
MAX_ROUNDS = 20  # until the proxy has merged something; one round nearly always does
FILTERS: tuple[tuple[str, ...], ...] = ((), ("ctr",), ("cvr",), ("cvr", "ctr"))


class HeadsCluster(EntryBehindProxy):
    def __init__(self, root: Path, *, dense_alone: bool = False) -> None:
        options = DemoOptions(out=root / "export", num_ps=2, rows=ROWS, version=1, heads=HEADS, dense_alone=dense_alone)
        super().__init__(options, root / "logs")
        self.reference = ReferenceScorer(self.export, 1)

    def examples(self, batch: int, seed: int) -> list[LogicalExample]:
        return random_examples(self.spec, batch, np.random.default_rng(seed), rows=ROWS)

    def request(
        self, examples: list[LogicalExample], output_filter: tuple[str, ...] = ()
    ) -> predict_pb2.PredictRequest:
        request = predict_request("entry", {"instances": encode_instances(self.spec, examples)})
        request.output_filter.extend(output_filter)
        return request


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadsCluster]:
    running = HeadsCluster(tmp_path_factory.mktemp("entry-heads"))
    try:
        yield running
    finally:
        running.stop()


def _predict(address: str, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    with grpc.insecure_channel(address) as channel:
        response: predict_pb2.PredictResponse = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30
        )
    return response


def test_each_head_matches_the_reference_and_output_filter_picks_heads(cluster: HeadsCluster) -> None:
    examples = cluster.examples(12, seed=1)
    expected = cluster.reference.outputs(examples)
    assert {name: array.shape for name, array in expected.items()} == {"ctr": (12, 1), "cvr": (12, 1)}
    for output_filter in FILTERS:
        label = f"filter {output_filter}"
        assert_predict_matches_reference(
            cluster.entry.address, cluster.export, examples, output_filter=output_filter, label=label
        )


def test_an_unknown_output_filter_name_is_invalid_argument_naming_it(cluster: HeadsCluster) -> None:
    for address in (cluster.entry.address, cluster.proxy.address):
        with pytest.raises(grpc.RpcError) as caught:
            _predict(address, cluster.request(cluster.examples(2, seed=2), ("ctr", "scores")))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown output(s) ['scores']" in str(caught.value.details())
    # and the entry keeps serving
    _predict(cluster.entry.address, cluster.request(cluster.examples(2, seed=2)))


def test_metadata_lists_every_head_with_dtype_and_shape(cluster: HeadsCluster) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "entry"
    with grpc.insecure_channel(cluster.proxy.address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    outputs = signatures.signature_def["serving_default"].outputs
    assert sorted(outputs) == sorted(HEADS)
    for name in HEADS:
        assert outputs[name].name == name and outputs[name].dtype == types_pb2.DT_FLOAT
        assert [d.size for d in outputs[name].tensor_shape.dim] == [-1, 1]


async def _concurrent(address: str, requests: list[predict_pb2.PredictRequest]) -> list[predict_pb2.PredictResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return list(await asyncio.gather(*(stub.Predict(r, timeout=30) for r in requests)))


def test_coalesced_predicts_with_different_filters_each_get_their_own_heads(cluster: HeadsCluster) -> None:
    batches = [cluster.examples(1 + i % 5, seed=100 + i) for i in range(24)]
    filters = [FILTERS[i % len(FILTERS)] for i in range(len(batches))]
    requests = [cluster.request(b, f) for b, f in zip(batches, filters, strict=True)]
    expected = [cluster.reference.outputs(b) for b in batches]
    coalesced_before = cluster.proxy.metric("proxy_predicts_coalesced_total", {"model": "entry"})
    for _ in range(MAX_ROUNDS):
        responses = asyncio.run(_concurrent(cluster.proxy.address, requests))
        for index, response in enumerate(responses):
            assert_outputs_match(response, expected[index], filters[index], f"request {index}")
        if cluster.proxy.metric("proxy_predicts_coalesced_total", {"model": "entry"}) > coalesced_before:
            break
    assert cluster.proxy.metric("proxy_predicts_coalesced_total", {"model": "entry"}) - coalesced_before >= 2


def _b64(blobs: list[bytes]) -> list[dict[str, str]]:
    return [{"b64": base64.b64encode(blob).decode()} for blob in blobs]


def test_rest_rows_are_objects_keyed_by_head_and_columnar_outputs_an_object(cluster: HeadsCluster) -> None:
    examples = cluster.examples(5, seed=3)
    expected = cluster.reference.outputs(examples)
    blobs = encode_instances(cluster.spec, examples)
    rows = {"instances": [{"instances": item} for item in _b64(blobs)]}
    status, body = cluster.proxy.rest("POST", "/v1/models/entry:predict", json.dumps(rows).encode())
    assert status == 200, body
    predictions = body["predictions"]
    assert len(predictions) == 5 and all(sorted(row) == sorted(HEADS) for row in predictions), predictions
    for name in HEADS:
        np.testing.assert_allclose([row[name] for row in predictions], expected[name], rtol=1e-5, atol=1e-6)
    columnar = {"inputs": {"instances": _b64(blobs)}}
    status, body = cluster.proxy.rest("POST", "/v1/models/entry:predict", json.dumps(columnar).encode())
    assert status == 200, body
    assert sorted(body["outputs"]) == sorted(HEADS), body
    for name in HEADS:
        np.testing.assert_allclose(body["outputs"][name], expected[name], rtol=1e-5, atol=1e-6)


def test_the_client_prints_every_head(cluster: HeadsCluster) -> None:
    spec = str(cluster.export / "entry" / "1" / "serving_spec.json")
    done = run_client("predict", "--target", cluster.proxy.address, "--spec", spec, "--batch_size", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == ["ctr", "cvr"], done.stdout
    done = run_client("predict", "--target", cluster.proxy.address, "--spec", spec, "--batch_size", "3", "--json")
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["outputs"]
    assert sorted(outputs) == ["ctr", "cvr"] and all(len(outputs[name]) == 3 for name in HEADS), outputs
    only_cvr = ("--output_filter", "cvr")
    done = run_client("predict", "--target", cluster.proxy.address, "--spec", spec, "--batch_size", "3", *only_cvr)
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()[1:]] == ["cvr"], done.stdout


def test_a_dense_server_answers_the_whole_matrix_and_the_entry_splits_it(tmp_path: Path) -> None:
    running = HeadsCluster(tmp_path, dense_alone=True)
    try:
        examples = running.examples(7, seed=4)
        for output_filter in FILTERS[:2]:
            label = f"filter {output_filter}"
            assert_predict_matches_reference(
                running.entry.address, running.export, examples, output_filter=output_filter, label=label
            )
    finally:
        running.stop()
