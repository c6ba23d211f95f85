"""The serving spec's ``inputs``: a model that takes ExampleBatches only lists that input in GetModelMetadata, as a
Monolith entry's signature lists the one input its receiver defines. A client that fills every listed input
(Monolith's generic predictor client does) is answered; one sending another kind is INVALID_ARGUMENT naming the
input taken. Real ``ps`` and ``entry`` processes."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from entry_reference import ReferenceScorer
from proxy_procs import start_entry, start_ps_shards

from monolith_serving.client.inputs import encode_example_batch, encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.integration

ROWS = 100


def test_a_model_taking_example_batches_lists_and_takes_only_that_input(tmp_path: Path) -> None:
    export = tmp_path / "export"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS))
    spec_file = export / "entry" / "1" / "serving_spec.json"
    spec_json = json.loads(spec_file.read_text())
    spec_json["inputs"] = ["example_batch"]
    spec_file.write_text(json.dumps(spec_json))
    spec = load_serving_spec(export / "entry" / "1")
    examples = random_examples(spec, 6, np.random.default_rng(3), rows=ROWS)
    expected = ReferenceScorer(export, 1).scores(examples)

    ps = start_ps_shards(export, tmp_path, num_ps=2)
    entry = start_entry(export, ps, tmp_path / "entry.log")
    try:
        with grpc.insecure_channel(entry.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            request.model_spec.name = "entry"
            metadata = stub.GetModelMetadata(request, timeout=10)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            metadata.metadata["signature_def"].Unpack(signatures)
            listed = list(signatures.signature_def["serving_default"].inputs)
            assert listed == ["example_batch"]

            # Every listed input filled, as a client built from the metadata sends it.
            batch = encode_example_batch(spec, examples)
            response = stub.Predict(predict_request("entry", {name: [batch] for name in listed}), timeout=30)
            np.testing.assert_allclose(from_tensor_proto(response.outputs["scores"]), expected, rtol=1e-5, atol=1e-6)

            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(predict_request("entry", {"instances": encode_instances(spec, examples)}), timeout=30)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "'instances'" in str(refused.value.details()) and "example_batch" in str(refused.value.details())
    finally:
        for server in (entry, *ps):
            assert server.stop() == 0
