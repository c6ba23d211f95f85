"""The entry end to end: a real ``entry`` process in front of real ``ps`` processes.

Scores are checked against ``entry_reference.ReferenceScorer`` (reads the export files itself) for all
three input kinds, including SHARED ExampleBatch lists, v1 fids and fids no table holds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from entry_reference import ReferenceScorer, assert_predict_matches_reference
from google.protobuf import text_format
from procs import ServerProcess, free_port

from monolith_serving.client.inputs import (
    LogicalExample,
    encode_example_batch,
    encode_instances,
    encode_tf_examples,
    predict_request,
    random_examples,
)
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import ServingSpec, load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

pytestmark = pytest.mark.integration

ROWS = 200
MAX_BATCH = 64
PS_VERSIONS_KEY = "x-monolith-ps-versions"


class Cluster:
    """``replicas[i]`` PS processes for shard i, and one entry with static --ps_targets."""

    def __init__(self, export: Path, logs: Path, replicas: tuple[int, ...] = (1, 1)) -> None:
        self.export = export
        self.ps: list[list[ServerProcess]] = []
        for shard, count in enumerate(replicas):
            shard_procs = []
            for r in range(count):
                port = free_port()
                shard_procs.append(
                    ServerProcess(
                        "ps",
                        [
                            "--host=127.0.0.1",
                            f"--port={port}",
                            f"--model_name=ps_{shard}",
                            f"--model_base_path={export / f'ps_{shard}'}",
                            f"--num_ps={len(replicas)}",
                            "--file_system_poll_wait_seconds=0.3",
                            "--model_version_policy=all",
                        ],
                        port=port,
                        log_path=logs / f"ps_{shard}_{r}.log",
                    ).start()
                )
            self.ps.append(shard_procs)
        port = free_port()
        targets = ";".join(",".join(p.address for p in shard) for shard in self.ps)
        self.entry = ServerProcess(
            "entry",
            [
                f"--port={port}",
                f"--model_base_path={export / 'entry'}",
                f"--ps_targets={targets}",
                f"--max_batch_size={MAX_BATCH}",
                "--file_system_poll_wait_seconds=0.3",
                "--fetch_ps_timeout_ms=300",
            ],
            port=port,
            log_path=logs / "entry.log",
        ).start()
        self.channel = grpc.insecure_channel(self.entry.address)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(
        self, request: predict_pb2.PredictRequest, timeout_s: float | None = 10.0
    ) -> tuple[predict_pb2.PredictResponse, dict[str, str]]:
        response, call = self.predict_stub.Predict.with_call(request, timeout=timeout_s)
        return response, dict(call.trailing_metadata() or ())

    def stop(self) -> None:
        self.channel.close()
        self.entry.stop()
        for shard in self.ps:
            for process in shard:
                process.stop()


def scores(response: predict_pb2.PredictResponse) -> np.ndarray:
    return from_tensor_proto(response.outputs["scores"], "scores")


def export_demo(folder: Path, version: int = 1, seed: int = 7) -> tuple[Path, ServingSpec]:
    write_demo(DemoOptions(out=folder, num_ps=2, rows=ROWS, version=version, seed=seed))
    return folder, load_serving_spec(folder / "entry" / str(version))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    export, _ = export_demo(tmp_path_factory.mktemp("entry-export"))
    running = Cluster(export, tmp_path_factory.mktemp("entry-logs"))
    try:
        yield running
    finally:
        running.stop()


def make_examples(spec: ServingSpec, batch: int, seed: int) -> list[LogicalExample]:
    # rows + 40: some fids are in no table (their embeddings must be zeros).
    return random_examples(spec, batch, np.random.default_rng(seed), rows=ROWS + 40)


def test_scores_match_the_reference_for_every_input_kind(cluster: Cluster) -> None:
    spec = load_serving_spec(cluster.export / "entry" / "1")
    examples = make_examples(spec, 12, seed=1)
    named = {"user_hist", "item_recent"}
    requests = {
        "instances (v1 fids)": {"instances": encode_instances(spec, examples)},
        "instances (named v2 lists)": {"instances": encode_instances(spec, examples, named=named)},
        "example_batch (v2)": {"example_batch": [encode_example_batch(spec, examples)]},
        "example_batch (v1)": {"example_batch": [encode_example_batch(spec, examples, v1={"user_id", "item_id"})]},
        "examples (tf.Example)": {"examples": encode_tf_examples(examples)},
    }
    for label, inputs in requests.items():
        _, trailing = assert_predict_matches_reference(
            cluster.entry.address, cluster.export, examples, inputs=inputs, label=label
        )
        assert trailing[PS_VERSIONS_KEY] == "ps_0=1,ps_1=1"


def test_shared_example_batch_lists(cluster: Cluster) -> None:
    spec = load_serving_spec(cluster.export / "entry" / "1")
    examples = make_examples(spec, 6, seed=2)
    shared = {"user_id", "user_hist", "user_recent", "ctx"}
    # A SHARED list carries one value for the batch: make every example hold the first one's.
    first = examples[0]
    examples = [
        LogicalExample(
            {n: (first.sparse[n] if n in shared else f) for n, f in e.sparse.items()},
            {n: (first.dense[n] if n in shared else v) for n, v in e.dense.items()},
        )
        for e in examples
    ]
    inputs = {"example_batch": [encode_example_batch(spec, examples, shared=shared)]}
    assert_predict_matches_reference(cluster.entry.address, cluster.export, examples, inputs=inputs)


def _bad_requests(spec: ServingSpec) -> list[tuple[str, predict_pb2.PredictRequest, grpc.StatusCode, str]]:
    good = encode_instances(spec, make_examples(spec, 2, seed=3))
    cases = []
    missing = predict_request("entry", {})
    cases.append(("missing inputs", missing, grpc.StatusCode.INVALID_ARGUMENT, "missing input"))
    wrong_dtype = predict_request("entry", {})
    wrong_dtype.inputs["instances"].CopyFrom(to_tensor_proto(np.array([1, 2], dtype=np.int64)))
    cases.append(("wrong dtype", wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT, "must be DT_STRING"))
    garbage = predict_request("entry", {"instances": [b"\xff\xfe\xfd"]})
    cases.append(("unparsable Instance", garbage, grpc.StatusCode.INVALID_ARGUMENT, "not a serialized parser.proto"))
    garbage_eb = predict_request("entry", {"example_batch": [b"\x0a\x09\x01"]})
    cases.append(("unparsable ExampleBatch", garbage_eb, grpc.StatusCode.INVALID_ARGUMENT, "ExampleBatch"))
    unknown = LogicalExample({"no_such_feature": [1]}, {})
    cases.append(
        (
            "unknown feature",
            predict_request("entry", {"examples": encode_tf_examples([unknown])}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown feature 'no_such_feature'",
        )
    )
    too_big = predict_request("entry", {"instances": good * (MAX_BATCH // 2 + 1)})
    cases.append(("batch too large", too_big, grpc.StatusCode.INVALID_ARGUMENT, f"maximum of {MAX_BATCH}"))
    cases.append(
        ("unknown model", predict_request("nope", {"instances": good}), grpc.StatusCode.NOT_FOUND, "not served here")
    )
    cases.append(
        (
            "unserved version",
            predict_request("entry", {"instances": good}, version=99),
            grpc.StatusCode.NOT_FOUND,
            "version 99",
        )
    )
    return cases


def test_every_bad_input_is_rejected_and_the_server_keeps_serving(cluster: Cluster) -> None:
    spec = load_serving_spec(cluster.export / "entry" / "1")
    good = predict_request("entry", {"instances": encode_instances(spec, make_examples(spec, 2, seed=4))})
    for label, request, code, message in _bad_requests(spec):
        with pytest.raises(grpc.RpcError) as info:
            cluster.predict(request)
        assert info.value.code() == code, label
        assert message in info.value.details(), (label, info.value.details())
        response, _ = cluster.predict(good)
        assert scores(response).shape == (2, 1), label


def test_status_metadata_and_reload(cluster: Cluster) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "entry"
    status = cluster.model_stub.GetModelStatus(request, timeout=5)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]
    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = "entry"
    meta = cluster.predict_stub.GetModelMetadata(meta_request, timeout=5)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert set(signature.inputs) == {"instances", "example_batch", "examples"}
    assert [d.size for d in signature.outputs["scores"].tensor_shape.dim] == [-1, 1]

    # No config at all (an empty body) is refused and changes nothing; an explicit empty list unloads: NOT_FOUND;
    # then load it again.
    spec = load_serving_spec(cluster.export / "entry" / "1")
    good = predict_request("entry", {"instances": encode_instances(spec, make_examples(spec, 2, seed=5))})
    with pytest.raises(grpc.RpcError) as refused:
        cluster.model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ReloadConfigRequest.config is not set" in str(refused.value.details())
    assert cluster.predict(good)[0].model_spec.version.value == 1
    cluster.model_stub.HandleReloadConfigRequest(
        model_management_pb2.ReloadConfigRequest(
            config=text_format.Parse("model_config_list {}", model_server_config_pb2.ModelServerConfig())
        ),
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as info:
        cluster.predict(good)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    config = text_format.Parse(
        f'model_config_list {{ config {{ name: "entry" base_path: "{cluster.export / "entry"}" }} }}',
        model_server_config_pb2.ModelServerConfig(),
    )
    cluster.model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=10)
    response, _ = cluster.predict(good)
    assert response.model_spec.version.value == 1


def test_a_reload_the_entry_cannot_serve_from_is_refused_and_it_keeps_serving(cluster: Cluster, tmp_path: Path) -> None:
    """Each refused reload changes nothing: the entry answers with the same scores from version 1 after it."""
    (tmp_path / "empty").mkdir()  # an existing folder with no version (like "/")
    entry = cluster.export / "entry"

    def config(base_path: Path | str, labels: str = "") -> bytes:
        text = f'model_config_list {{ config {{ name: "entry" base_path: "{base_path}" {labels} }} }}'
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(text, request.config)
        return request.SerializeToString()

    invalid, not_found, failed = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip
    cases = [
        (b"", invalid, "ReloadConfigRequest.config is not set"),  # zero-length body: the config oneof is unset
        (config(tmp_path / "missing"), not_found, f"'entry': base_path {str(tmp_path / 'missing')!r}"),
        (config(entry / "1" / "serving_spec.json"), not_found, "does not exist or is not a folder"),
        (config("/tmp/a\\000b"), not_found, "'entry': base_path '/tmp/a\\x00b'"),
        (config(tmp_path / "empty"), failed, "nothing to serve under base_path"),
        (config(cluster.export / "ps_0"), failed, "serving_spec.json"),  # another sub-model's folder
        (config(entry, 'version_labels { key: "stable" value: 999 }'), failed, "label 'stable' points at version 999"),
    ]
    spec = load_serving_spec(entry / "1")
    good = predict_request("entry", {"instances": encode_instances(spec, make_examples(spec, 3, seed=6))})
    expected = scores(cluster.predict(good)[0])
    reload = cluster.channel.unary_unary("/tensorflow.serving.ModelService/HandleReloadConfigRequest")
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "entry"
    for body, code, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            reload(body, timeout=30)
        assert (info.value.code(), message in str(info.value.details())) == (code, True), info.value.details()
        reply = cluster.model_stub.GetModelStatus(status, timeout=5)
        assert [(s.version, s.state) for s in reply.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        ]
        response, _ = cluster.predict(good)
        assert response.model_spec.version.value == 1
        np.testing.assert_array_equal(scores(response), expected)


def test_ps_failover_and_all_replicas_down(tmp_path: Path) -> None:
    export, spec = export_demo(tmp_path / "export")
    running = Cluster(export, tmp_path / "logs", replicas=(2, 1))
    try:
        examples = make_examples(spec, 8, seed=6)
        request = predict_request("entry", {"instances": encode_instances(spec, examples)})
        running.ps[0][0].stop()  # one of shard 0's two replicas dies
        for _ in range(20):
            assert_predict_matches_reference(running.entry.address, export, examples)

        # Shard 1's only replica hangs: UNAVAILABLE once fetch_ps_timeout_ms (300 ms) passes, no hang.
        hung = running.ps[1][0].process
        assert hung is not None
        os.kill(hung.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                running.predict(request, timeout_s=None)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "PS shard 1" in info.value.details()
            assert time.monotonic() - started < 2.0
            # With a client deadline the PS calls get the rest of it: the client sees its deadline, no later.
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                running.predict(request, timeout_s=1.0)
            assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
            assert time.monotonic() - started < 2.0
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        assert_predict_matches_reference(running.entry.address, export, examples)

        running.ps[1][0].stop()  # shard 1 has no replica left: UNAVAILABLE quickly
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            running.predict(request, timeout_s=5.0)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 2.0
    finally:
        running.stop()


def _move_in(scratch: Path, export: Path, sub_model: str, version: int) -> None:
    # A rename is atomic: the servers never see a half-written version folder.
    (scratch / sub_model / str(version)).rename(export / sub_model / str(version))


def test_entry_version_waits_for_every_ps_shard(tmp_path: Path) -> None:
    export, spec = export_demo(tmp_path / "export")
    scratch, _ = export_demo(tmp_path / "scratch", version=2, seed=99)
    running = Cluster(export, tmp_path / "logs")
    try:
        examples = make_examples(spec, 5, seed=7)
        request = predict_request("entry", {"instances": encode_instances(spec, examples)})

        def check_v1(wait_s: float) -> None:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                _, trailing = assert_predict_matches_reference(running.entry.address, export, examples, version=1)
                assert trailing[PS_VERSIONS_KEY] == "ps_0=1,ps_1=1"
                time.sleep(0.1)

        _move_in(scratch, export, "entry", 2)
        check_v1(1.5)
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "entry"
        states = {
            s.version: s.state
            for s in running.model_stub.GetModelStatus(status_request, timeout=5).model_version_status
        }
        assert states == {
            2: get_model_status_pb2.ModelVersionStatus.LOADING,
            1: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        }
        _move_in(scratch, export, "ps_0", 2)
        check_v1(1.5)  # shard 1 still lacks version 2
        _move_in(scratch, export, "ps_1", 2)
        deadline = time.monotonic() + 15
        while True:
            response, trailing = running.predict(request)
            version = response.model_spec.version.value
            # Entry and PS versions never mix.
            assert trailing[PS_VERSIONS_KEY] == f"ps_0={version},ps_1={version}"
            if version == 2:
                break
            assert time.monotonic() < deadline, "entry never switched to version 2"
            time.sleep(0.1)
        _, trailing = assert_predict_matches_reference(running.entry.address, export, examples, version=2)
        assert trailing[PS_VERSIONS_KEY] == "ps_0=2,ps_1=2"
        # The versions score differently, so the check above tells them apart.
        assert not np.allclose(ReferenceScorer(export, 1).scores(examples), ReferenceScorer(export, 2).scores(examples))
    finally:
        running.stop()
