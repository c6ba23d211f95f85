"""The entry's own REST API (``--rest_api_port``, as tensorflow_model_server's) in front of two real PS processes: a
REST Predict, row or columnar, of serialized Instances (``{"b64": ...}``) scores as the reference does and answers
what gRPC answers; status and metadata read as TF Serving prints them; an error is the gRPC status mapped to HTTP
with the gRPC message; a body over ``--rest_api_max_body_bytes`` is refused unread; REST requests are counted on the
entry's /metrics under entry names; and without ``--rest_api_port`` no REST port is listened on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from entry_reference import ReferenceScorer, assert_predict_matches_reference
from procs import ServerProcess, free_port
from proxy_procs import start_entry, start_ps_shards
from rest_calls import instances_columns, instances_rows, metric_samples, metric_value, rest_json

from monolith_serving.client.inputs import LogicalExample, encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.integration

ROWS = 200
MAX_BODY_BYTES = 65536
_TCP_LISTEN = "0A"
_LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1 (IPv4, v4-mapped) as /proc spells it


class EntryWithRest:
    """A demo export, a ``ps`` per shard and an entry over them bound to loopback with its REST API and /metrics."""

    def __init__(self, root: Path) -> None:
        self.export = root / "export"
        write_demo(DemoOptions(out=self.export, num_ps=2, rows=ROWS, version=1, seed=5))
        self.spec = load_serving_spec(self.export / "entry" / "1")
        self.logs = root / "logs"
        self.rest_port, self.metrics_port = free_port(), free_port()
        self.ps = start_ps_shards(self.export, self.logs)
        try:
            self.entry = start_entry(
                self.export,
                self.ps,
                self.logs / "entry.log",
                [
                    "--host=127.0.0.1",
                    f"--rest_api_port={self.rest_port}",
                    f"--metrics_port={self.metrics_port}",
                    f"--rest_api_max_body_bytes={MAX_BODY_BYTES}",
                ],
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in (getattr(self, "entry", None), *self.ps):
            if process is not None:
                process.stop()

    def examples(self, batch: int, seed: int) -> list[LogicalExample]:
        return random_examples(self.spec, batch, np.random.default_rng(seed), rows=ROWS)

    def rest(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        return rest_json(self.rest_port, method, path, body)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntryWithRest]:
    running = EntryWithRest(tmp_path_factory.mktemp("entry-rest"))
    try:
        yield running
    finally:
        running.stop()


def test_rest_predicts_score_as_the_reference_and_answer_what_grpc_answers(cluster: EntryWithRest) -> None:
    examples = cluster.examples(16, seed=1)
    blobs = encode_instances(cluster.spec, examples)
    response, _ = assert_predict_matches_reference(cluster.entry.address, cluster.export, examples)
    over_grpc = from_tensor_proto(response.outputs["scores"])
    reference = ReferenceScorer(cluster.export, 1).outputs(examples)["scores"]
    for path, body, key in (
        ("/v1/models/entry:predict", instances_rows(blobs), "predictions"),
        ("/v1/models/entry:predict", instances_rows(blobs, padded=False), "predictions"),
        ("/v1/models/entry/versions/1:predict", instances_columns(blobs), "outputs"),
    ):
        status, answer = cluster.rest("POST", path, body)
        assert status == 200, answer
        over_rest = np.asarray(answer[key], dtype=np.float32)
        # Floats are written so that they read back as the same float32: the REST answer is the gRPC one.
        np.testing.assert_array_equal(over_rest, over_grpc, err_msg=f"{path} {key}")
        np.testing.assert_allclose(over_rest, reference, rtol=1e-5, atol=1e-6, err_msg=f"{path} {key}")


def test_status_and_metadata_read_as_tf_serving_prints_them(cluster: EntryWithRest) -> None:
    available = {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert cluster.rest("GET", "/v1/models/entry") == (200, available)
    assert cluster.rest("GET", "/v1/models/entry/versions/1") == (200, available)
    status, metadata = cluster.rest("GET", "/v1/models/entry/metadata")
    assert status == 200, metadata
    assert metadata["model_spec"] == {"name": "entry", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(signature["inputs"]) == ["example_batch", "examples", "instances"]
    assert signature["inputs"]["instances"]["dtype"] == "DT_STRING"
    assert list(signature["outputs"]) == ["scores"]


def _grpc_failure(call: Callable[[grpc.Channel], object], address: str) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
        call(channel)
    return caught.value.code(), caught.value.details()


def _predict(request: Any) -> Callable[[grpc.Channel], object]:
    return lambda channel: prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def _refused(method: str, name: str, *, version: int | None = None) -> Callable[[grpc.Channel], object]:
    """A Classify or Regress of model ``name`` (at ``version``), with no inputs: none is looked at."""
    message = classification_pb2.ClassificationRequest if method == "Classify" else classification_pb2.RegressionRequest
    request = message()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return lambda channel: getattr(prediction_service_pb2_grpc.PredictionServiceStub(channel), method)(
        request, timeout=30
    )


def _multi_inference(request: Any) -> Callable[[grpc.Channel], object]:
    return lambda channel: prediction_service_pb2_grpc.PredictionServiceStub(channel).MultiInference(
        request, timeout=30
    )


def _status(name: str, *, version: int | None = None, label: str | None = None) -> Callable[[grpc.Channel], object]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return lambda channel: model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)


def test_an_error_is_the_grpc_status_as_http_with_the_grpc_message(cluster: EntryWithRest) -> None:
    blobs = encode_instances(cluster.spec, cluster.examples(2, seed=2))
    garbage = [b"\xff\xfe\xfd"]
    cases = [  # (the REST request, the gRPC call it becomes, the HTTP status of that call's code)
        (
            ("POST", "/v1/models/entry:predict", instances_rows(garbage)),
            _predict(predict_request("entry", {"instances": garbage})),
            400,
        ),
        (
            ("POST", "/v1/models/nope:predict", instances_rows(blobs)),
            _predict(predict_request("nope", {"instances": blobs})),
            404,
        ),
        (("GET", "/v1/models/entry/versions/7", None), _status("entry", version=7), 404),
        (("GET", "/v1/models/entry/labels/canary", None), _status("entry", label="canary"), 404),
        (("POST", "/v1/models/entry:classify", instances_rows(blobs)), _refused("Classify", "entry"), 400),
        (("POST", "/v1/models/nope:classify", instances_rows(blobs)), _refused("Classify", "nope"), 404),
        (("POST", "/v1/models/entry/versions/7:regress", b"{}"), _refused("Regress", "entry", version=7), 404),
        (("POST", "/v1/models/entry/versions/1:regress", b"{}"), _refused("Regress", "entry", version=1), 400),
    ]
    for (method, path, body), call, http_status in cases:
        code, details = _grpc_failure(call, cluster.entry.address)
        assert cluster.rest(method, path, body) == (http_status, {"error": details}), (path, code)
    status, answer = cluster.rest("POST", "/v1/models/entry:predict", b'{"instances": [')
    assert status == 400 and answer["error"].startswith("JSON Parse error"), answer


def test_classify_regress_and_multi_inference_are_answered_as_tf_serving_does(cluster: EntryWithRest) -> None:
    """On a model with predict signatures only: NOT_FOUND for a model or version not served, else INVALID_ARGUMENT
    (as tensorflow_model_server); the entry and the PS alike."""
    for address, served, server in (
        (cluster.entry.address, "entry", "the entry"),
        (cluster.ps[0].address, "ps_0", "a PS"),
    ):
        for method, kind in (("Classify", "classification"), ("Regress", "regression")):
            assert _grpc_failure(_refused(method, served), address) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method}: model {served!r} has no {kind} signature 'serving_default': {server} serves predict "
                "signatures only (use Predict)",
            )
            assert _grpc_failure(_refused(method, "nope"), address)[0] == grpc.StatusCode.NOT_FOUND
            assert _grpc_failure(_refused(method, served, version=99), address)[0] == grpc.StatusCode.NOT_FOUND
        request = classification_pb2.MultiInferenceRequest()
        request.tasks.add().model_spec.name = served
        code, details = _grpc_failure(_multi_inference(request), address)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("MultiInference:"), details
    # The entry kept serving.
    assert_predict_matches_reference(cluster.entry.address, cluster.export, cluster.examples(4, seed=9))


def test_a_body_over_the_limit_is_refused_before_it_is_read(cluster: EntryWithRest) -> None:
    body = b" " * (MAX_BODY_BYTES + 1)
    status, answer = cluster.rest("POST", "/v1/models/entry:predict", body)
    assert status == 413, answer
    assert answer == {"error": f"request body larger than {MAX_BODY_BYTES} bytes ({MAX_BODY_BYTES + 1} declared)"}


def test_rest_requests_are_counted_on_the_entrys_metrics(cluster: EntryWithRest) -> None:
    def counts() -> tuple[float, ...]:
        rest = "entry_rest_requests_total"
        return (
            metric_value(cluster.metrics_port, rest, {"method": "Predict", "code": "OK"}),
            metric_value(cluster.metrics_port, rest, {"method": "Predict", "code": "INVALID_ARGUMENT"}),
            metric_value(cluster.metrics_port, rest, {"method": "GetModelStatus", "code": "OK"}),
            metric_value(cluster.metrics_port, rest, {"method": "unknown", "code": "NOT_FOUND"}),
            metric_value(cluster.metrics_port, "entry_predict_requests_total", {"code": "OK"}),
        )

    before = counts()
    blobs = encode_instances(cluster.spec, cluster.examples(3, seed=3))
    assert cluster.rest("POST", "/v1/models/entry:predict", instances_rows(blobs))[0] == 200
    assert cluster.rest("POST", "/v1/models/entry:predict", b"[")[0] == 400
    assert cluster.rest("GET", "/v1/models/entry")[0] == 200
    assert cluster.rest("GET", "/v2/anything")[0] == 404
    # A REST Predict is the entry's Predict: its own Predict counter counts it too. The signature lookup each
    # REST Predict makes is no request of its own.
    assert tuple(after - first for after, first in zip(counts(), before, strict=True)) == (1, 1, 1, 1, 1)
    assert metric_samples(cluster.metrics_port, "entry_rest_requests_total")
    names = {name for name, _ in _metric_names(cluster.metrics_port)}
    assert not [name for name in names if name.startswith("proxy_")], names


def _metric_names(port: int) -> list[tuple[str, str]]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [(line.split()[2], line) for line in text.splitlines() if line.startswith("# TYPE ")]


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address as /proc/net spells it, port) of every TCP socket process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in (Path(f"/proc/{pid}/net/tcp"), Path(f"/proc/{pid}/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == _TCP_LISTEN and fields[9] in inodes:
                found.add((address, int(hex_port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads listening sockets from Linux's /proc")
def test_the_rest_port_binds_host_and_rest_api_port_0_listens_on_nothing(
    cluster: EntryWithRest, tmp_path: Path
) -> None:
    assert cluster.entry.process is not None
    listening = _listening(cluster.entry.process.pid)
    assert {port for _, port in listening} == {cluster.entry.port, cluster.rest_port, cluster.metrics_port}
    assert {address for address, _ in listening} <= _LOOPBACK_HEX, listening  # --host 127.0.0.1, REST too

    metrics_port = free_port()
    plain: ServerProcess = start_entry(
        cluster.export, cluster.ps, tmp_path / "entry.log", [f"--metrics_port={metrics_port}"]
    )
    try:
        assert plain.process is not None
        assert {port for _, port in _listening(plain.process.pid)} == {plain.port, metrics_port}
        assert "REST API on port" not in plain.log_path.read_text()
    finally:
        plain.stop()
