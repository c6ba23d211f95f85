"""A pure-numpy scorer that reads an export's files directly — the oracle of the entry tests.

The scorer is deliberately independent of the server code: it parses TFRecord framing and EntryDump records
itself, reads serving_spec.json as plain JSON and runs the MLP with its own loop. ``assert_predict_matches_reference``
puts a running entry to it over gRPC; ``assert_entry_predicts_reference`` does so with random examples.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from monolith_serving.client.inputs import LogicalExample, encode_instances, predict_request, random_examples
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.monolith.hash_table import entry_dump_pb2
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

_DUMP = re.compile(r"^MonolithHashTable_(?P<table>.+)_(?P<k>\d+)-\d{5}-of-\d{5}$")
U64 = (1 << 64) - 1


def tfrecords(path: Path) -> list[bytes]:
    data = path.read_bytes()
    records, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        pos += 12  # length + its crc
        records.append(data[pos : pos + length])
        pos += length + 4  # data + its crc
    return records


def load_tables(export: Path, version: int) -> dict[str, dict[int, np.ndarray]]:
    """table -> {unsigned fid: embedding}, unioned over every ps_<i> folder."""
    tables: dict[str, dict[int, np.ndarray]] = {}
    for ps_dir in sorted(export.glob("ps_*")):
        for path in (ps_dir / str(version) / "assets").iterdir():
            match = _DUMP.match(path.name)
            if match is None:
                continue
            table = tables.setdefault(match["table"], {})
            for record in tfrecords(path):
                entry = entry_dump_pb2.EntryDump.FromString(record)
                table[entry.id & U64] = np.array(entry.num, dtype=np.float32)
    return tables


def _activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    return x


class ReferenceScorer:
    def __init__(self, export: Path, version: int) -> None:
        folder = export / "entry" / str(version)
        self.spec: dict[str, Any] = json.loads((folder / "serving_spec.json").read_text())
        self.dims = {t["name"]: t["dim"] for t in self.spec["tables"]}
        self.tables = load_tables(export, version)
        dense = self.spec["dense"]
        if dense["backend"] == "remote":  # dense_alone: the MLP is in the dense sub-model's version folder
            folder = export / dense["sub_model"] / str(version)
            dense = json.loads((folder / "dense_spec.json").read_text())["dense"]
        self.layers = [
            (np.load(folder / layer["weight"]).astype(np.float64), np.load(folder / layer["bias"]), layer["activation"])
            for layer in dense["layers"]
        ]

    def row(self, example: LogicalExample) -> list[float]:
        row: list[float] = []
        for feature in self.spec["features"]:
            dim = self.dims[feature["table"]]
            table = self.tables[feature["table"]]
            vectors = [
                table.get(fid, np.zeros(dim, dtype=np.float32)) for fid in example.sparse.get(feature["name"], [])
            ]
            if feature["pooling"] == "firstn":
                for n in range(feature["first_n"]):
                    row.extend(vectors[n].tolist() if n < len(vectors) else [0.0] * dim)
                continue
            pooled = np.sum(vectors, axis=0) if vectors else np.zeros(dim)
            if feature["pooling"] == "mean" and vectors:
                pooled = pooled / len(vectors)
            row.extend(np.asarray(pooled).tolist())
        for dense_input in self.spec["dense_inputs"]:
            row.extend(example.dense.get(dense_input["name"], [0.0] * dense_input["dim"]))
        return row

    def scores(self, examples: list[LogicalExample]) -> np.ndarray:
        h = np.array([self.row(e) for e in examples], dtype=np.float64)
        for weight, bias, activation in self.layers:
            h = _activation(activation, h @ weight + bias)
        return h

    def outputs(self, examples: list[LogicalExample]) -> dict[str, np.ndarray]:
        """Output name -> [batch, width]: the network's columns cut as the spec's ``outputs`` say (in order),
        or all of them under ``output_name`` when it has none."""
        scores = self.scores(examples)
        heads = self.spec.get("outputs")
        if heads is None:
            return {self.spec.get("output_name", "scores"): scores}
        assert sum(head["width"] for head in heads) == scores.shape[1], "the spec's widths do not fit the network"
        answer, start = {}, 0
        for head in heads:
            answer[head["name"]] = scores[:, start : start + head["width"]]
            start += head["width"]
        return answer


def assert_outputs_match(
    response: predict_pb2.PredictResponse,
    expected: Mapping[str, np.ndarray],
    output_filter: Sequence[str] = (),
    label: str = "",
) -> None:
    """``response`` has exactly the outputs of ``expected`` (a ``ReferenceScorer.outputs``), or those
    ``output_filter`` names when it names any, each DT_FLOAT and equal to it within rtol 1e-5, atol 1e-6.
    ``label`` names the case in a failure."""
    names = list(output_filter) or list(expected)
    assert sorted(response.outputs) == sorted(names), label
    for name in names:
        tensor = response.outputs[name]
        assert tensor.dtype == types_pb2.DT_FLOAT, f"{label} {name}"
        np.testing.assert_allclose(
            from_tensor_proto(tensor, name), expected[name], rtol=1e-5, atol=1e-6, err_msg=f"{label} {name}"
        )


def assert_predict_matches_reference(
    address: str,
    export: Path,
    examples: list[LogicalExample],
    *,
    version: int = 1,
    model_name: str = "entry",
    inputs: Mapping[str, list[bytes]] | None = None,
    output_filter: Sequence[str] = (),
    retry_unavailable_s: float = 0.0,
    label: str = "",
) -> tuple[predict_pb2.PredictResponse, dict[str, str]]:
    """One Predict of ``examples`` on the model ``model_name`` at ``address``, sent as ``inputs`` (their Instances
    when None) with ``output_filter``: it answers from ``version`` and its outputs match the reference's of
    ``export``'s ``version`` as ``assert_outputs_match`` checks. UNAVAILABLE is retried for ``retry_unavailable_s``
    (while a cluster's views settle). ``label`` names the case in a failure. Returns the response and its trailing
    metadata."""
    if inputs is None:
        inputs = {"instances": encode_instances(load_serving_spec(export / "entry" / str(version)), examples)}
    request = predict_request(model_name, dict(inputs))
    request.output_filter.extend(output_filter)
    deadline = time.monotonic() + retry_unavailable_s
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
        while True:
            try:
                response, call = stub.Predict.with_call(request, timeout=20)
                break
            except grpc.RpcError as error:
                if error.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    assert response.model_spec.version.value == version, label
    assert_outputs_match(response, ReferenceScorer(export, version).outputs(examples), output_filter, label)
    return response, dict(call.trailing_metadata() or ())


def assert_entry_predicts_reference(
    address: str,
    export: Path,
    *,
    rows: int,
    seed: int,
    version: int = 1,
    batch: int = 4,
    model_name: str = "entry",
    output_filter: Sequence[str] = (),
    retry_unavailable_s: float = 0.0,
) -> tuple[predict_pb2.PredictResponse, dict[str, str]]:
    """``assert_predict_matches_reference`` of ``batch`` random examples, drawn with ``seed``, their fids among the
    ``rows`` that ``export`` holds."""
    spec = load_serving_spec(export / "entry" / str(version))
    examples = random_examples(spec, batch, np.random.default_rng(seed), rows=rows)
    return assert_predict_matches_reference(
        address,
        export,
        examples,
        version=version,
        model_name=model_name,
        output_filter=output_filter,
        retry_unavailable_s=retry_unavailable_s,
    )
