"""The proxy in front of two real entry processes (each over the same two real PS processes).

Results through the proxy (gRPC, REST, and a client built only from the tensorflow-protobuf stubs) must equal
those of the entry called directly; killing one entry under steady load must fail no client request.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from proxy_procs import Proxy, start_entry, start_ps_shards

from monolith_serving.client.inputs import encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

pytestmark = pytest.mark.integration

ROWS = 200
PS_VERSIONS_KEY = "x-monolith-ps-versions"
TFS_CLIENT = Path(__file__).with_name("proxy_tfs_client.py")


class EntryCluster:
    def __init__(self, root: Path) -> None:
        export = root / "export"
        self.export = export
        write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS, version=1, seed=11))
        self.spec = load_serving_spec(export / "entry" / "1")
        logs = root / "logs"
        self.ps = start_ps_shards(export, logs)
        self.entries = [start_entry(export, self.ps, logs / f"entry_{index}.log") for index in range(2)]
        self.proxy = Proxy(
            logs, ["--entry_targets", ",".join(e.address for e in self.entries), "--entry_models", "entry"]
        ).start()

    def stop(self) -> None:
        for process in (self.proxy, *self.entries, *self.ps):
            process.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntryCluster]:
    running = EntryCluster(tmp_path_factory.mktemp("proxy-entry"))
    try:
        yield running
    finally:
        running.stop()


def _predict(address: str, request: predict_pb2.PredictRequest) -> tuple[np.ndarray, dict[str, str]]:
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response, call = stub.Predict.with_call(request, timeout=30)
    return from_tensor_proto(response.outputs["scores"]), dict(call.trailing_metadata() or ())


def _instances(cluster: EntryCluster, batch: int, seed: int) -> list[bytes]:
    examples = random_examples(cluster.spec, batch, np.random.default_rng(seed), rows=ROWS)
    return encode_instances(cluster.spec, examples)


def test_grpc_predict_through_the_proxy_matches_the_entry(cluster: EntryCluster) -> None:
    request = predict_request("entry", {"instances": _instances(cluster, 16, seed=1)})
    direct, direct_trailing = _predict(cluster.entries[0].address, request)
    for _ in range(4):  # whichever entry answers, the result is the same
        proxied, trailing = _predict(cluster.proxy.address, request)
        np.testing.assert_array_equal(proxied, direct)
        assert trailing[PS_VERSIONS_KEY] == direct_trailing[PS_VERSIONS_KEY] == "ps_0=1,ps_1=1"
        assert len(trailing["x-request-id"]) == 32


def test_rest_predict_through_the_proxy_matches_the_entry(cluster: EntryCluster) -> None:
    instances = _instances(cluster, 8, seed=2)
    direct, _ = _predict(cluster.entries[1].address, predict_request("entry", {"instances": instances}))
    b64 = [{"b64": base64.b64encode(blob).decode()} for blob in instances]
    status, body = cluster.proxy.rest(
        "POST", "/v1/models/entry:predict", json.dumps({"instances": [{"instances": v} for v in b64]}).encode()
    )
    assert status == 200, body
    np.testing.assert_array_equal(np.asarray(body["predictions"], dtype=np.float32), direct)
    status, body = cluster.proxy.rest(
        "POST", "/v1/models/entry:predict", json.dumps({"inputs": {"instances": b64}}).encode()
    )
    assert status == 200, body
    np.testing.assert_array_equal(np.asarray(body["outputs"], dtype=np.float32), direct)
    status, body = cluster.proxy.rest("GET", "/v1/models/entry")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


def test_bad_input_is_answered_by_the_entry_through_the_proxy(cluster: EntryCluster) -> None:
    request = predict_request("entry", {"instances": [b"\xff\xfe\xfd"]})
    with pytest.raises(grpc.RpcError) as caught:
        _predict(cluster.proxy.address, request)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        _predict(cluster.proxy.address, predict_request("other", {"instances": _instances(cluster, 1, seed=3)}))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_client_built_from_tensorflow_protobuf_stubs_succeeds(cluster: EntryCluster) -> None:
    instances = _instances(cluster, 4, seed=4)
    direct, _ = _predict(cluster.entries[0].address, predict_request("entry", {"instances": instances}))
    command = {"address": cluster.proxy.address, "model": "entry", "instances_hex": [b.hex() for b in instances]}
    done = subprocess.run(
        [sys.executable, str(TFS_CLIENT)], input=json.dumps(command), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["shape"] == list(direct.shape)
    np.testing.assert_array_equal(np.asarray(result["scores"], dtype=np.float32), direct.reshape(-1))
    assert result["ps_versions"] == "ps_0=1,ps_1=1" and "serving_default" in result["signatures"]


def test_killing_one_of_two_entries_under_load_fails_no_request(tmp_path: Path, cluster: EntryCluster) -> None:
    # A third entry of our own to kill, so the module's cluster keeps both of its entries.
    victim = start_entry(cluster.export, cluster.ps, tmp_path / "victim.log")
    survivor = cluster.entries[0]
    proxy = Proxy(tmp_path, ["--entry_targets", f"{survivor.address},{victim.address}"]).start()
    request = predict_request("entry", {"instances": _instances(cluster, 16, seed=5)})
    expected, _ = _predict(survivor.address, request)
    failures: list[str] = []
    successes = [0]
    stop = threading.Event()

    def load() -> None:
        with grpc.insecure_channel(proxy.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    response = stub.Predict(request, timeout=10)
                    # Concurrent Predicts are merged (by the proxy and the entry) into larger batches, and BLAS
                    # need not round a row alike at every batch size: on some CPUs a score differs in its last bit.
                    np.testing.assert_allclose(from_tensor_proto(response.outputs["scores"]), expected, rtol=1e-6)
                    successes[0] += 1
                except (grpc.RpcError, AssertionError) as error:
                    failures.append(repr(error))

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        before_kill = successes[0]
        assert victim.process is not None
        victim.process.kill()  # SIGKILL: in-flight requests on it break mid-call
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        retries = proxy.metric("proxy_retries_total")
        ejections = proxy.metric("proxy_ejections_total")
    finally:
        stop.set()
        proxy.stop()
        victim.stop()
    assert failures == []
    assert before_kill > 0 and successes[0] > before_kill
    assert retries >= 1 and ejections == 1  # the victim's failures were retried, then it was ejected
