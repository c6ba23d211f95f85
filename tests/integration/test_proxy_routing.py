"""The proxy as a real process in front of stand-in entry processes (proxy_fake_entry.py).

Covers routing and faults that need control over the upstream: request ids and trailing metadata, status
aggregation, the reload token, the in-flight bound, ejection and readmission, every bad input, SIGTERM
drain, calls the client abandons, the REST deadline, bounded model labels.
tests/integration/test_proxy_entry.py runs the proxy in front of real entries.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from proxy_procs import FakeEntry, Proxy

from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.integration

AVAILABLE, LOADING = 30, 20


def _request(model: str = "entry", value: float = 1.5) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(to_tensor_proto(np.array([[value, 2.0]], np.float32)))
    return request


def _text(response: predict_pb2.PredictResponse, name: str) -> str:
    return bytes(from_tensor_proto(response.outputs[name])[0]).decode()


class Client:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(
        self, request: predict_pb2.PredictRequest, *, timeout_s: float = 10.0, metadata: tuple = ()
    ) -> tuple[predict_pb2.PredictResponse, dict[str, str]]:
        response, call = self.predict_stub.Predict.with_call(request, timeout=timeout_s, metadata=metadata)
        return response, dict(call.trailing_metadata() or ())


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, list[FakeEntry], Client]]:
    logs = tmp_path_factory.mktemp("proxy-routing")
    fakes = [
        FakeEntry("a", logs, extra=["--version", "1", "--state", str(AVAILABLE)]).start(),
        FakeEntry("b", logs, extra=["--version", "2", "--state", str(LOADING)]).start(),
    ]
    targets = ",".join(f.address for f in fakes)
    proxy = Proxy(logs, ["--entry_targets", targets, "--entry_models", "entry", "--admin_token", "s3cret"]).start()
    client = Client(proxy.address)
    try:
        yield proxy, fakes, client
    finally:
        client.channel.close()
        proxy.stop()
        for fake in fakes:
            fake.stop()


def test_predict_is_forwarded_with_request_id_and_trailing_metadata(
    pair: tuple[Proxy, list[FakeEntry], Client],
) -> None:
    proxy, _, client = pair
    replicas = set()
    for i in range(30):
        response, trailing = client.predict(_request(value=float(i)))
        assert from_tensor_proto(response.outputs["x"]).tolist() == [[float(i), 2.0]]
        replicas.add(_text(response, "replica"))
        generated = _text(response, "request_id")
        assert len(generated) == 32 and trailing["x-request-id"] == generated
        assert trailing["x-monolith-ps-versions"].startswith("ps_0=")
    assert replicas == {"a", "b"}  # both replicas take load
    response, trailing = client.predict(_request(), metadata=(("x-request-id", "my-id-7"),))
    assert _text(response, "request_id") == "my-id-7" and trailing["x-request-id"] == "my-id-7"
    assert proxy.metric("proxy_requests_total", {"model": "entry", "method": "Predict", "code": "OK"}) >= 31


def test_unknown_model_and_garbage_requests(pair: tuple[Proxy, list[FakeEntry], Client]) -> None:
    _, _, client = pair
    with pytest.raises(grpc.RpcError) as caught:
        client.predict(_request(model="nope"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND and "nope" in caught.value.details()
    raw = client.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\x0a\x40short", timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        client.predict(predict_pb2.PredictRequest())
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "model_spec.name" in caught.value.details()
    client.predict(_request())  # still serving


def test_model_status_is_aggregated(pair: tuple[Proxy, list[FakeEntry], Client]) -> None:
    _, _, client = pair
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "entry"
    response = client.model_stub.GetModelStatus(request, timeout=10)
    assert [(s.version, s.state) for s in response.model_version_status] == [(2, LOADING), (1, AVAILABLE)]


def test_reload_refused_without_token_then_sent_to_every_replica(pair: tuple[Proxy, list[FakeEntry], Client]) -> None:
    _, _, client = pair
    request = model_management_pb2.ReloadConfigRequest()
    for metadata in ((), (("x-admin-token", "wrong"),), (("authorization", "Bearer nope"),)):
        with pytest.raises(grpc.RpcError) as caught:
            client.model_stub.HandleReloadConfigRequest(request, timeout=10, metadata=metadata)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    for metadata in ((("x-admin-token", "s3cret"),), (("authorization", "Bearer s3cret"),)):
        _, call = client.model_stub.HandleReloadConfigRequest.with_call(request, timeout=10, metadata=metadata)
        assert call.code() is grpc.StatusCode.OK


def test_rest_predict_status_metadata_and_bad_input(pair: tuple[Proxy, list[FakeEntry], Client]) -> None:
    proxy, _, client = pair
    status, body = proxy.rest("POST", "/v1/models/entry:predict", json.dumps({"instances": [[1, 2], [3, 4]]}).encode())
    # The fake's signature says x is DT_FLOAT: the proxy types the bare rows from it.
    assert status == 200 and body["predictions"][0]["x"] == [1.0, 2.0] and body["predictions"][1]["x"] == [3.0, 4.0]
    status, body = proxy.rest("POST", "/v1/models/entry/versions/1:predict", b'{"inputs": {"x": [[0.5]]}}')
    assert status == 200 and body["outputs"]["x"] == [[0.5]]
    status, body = proxy.rest("GET", "/v1/models/entry")
    assert status == 200 and [v["state"] for v in body["model_version_status"]] == ["LOADING", "AVAILABLE"]
    status, body = proxy.rest("GET", "/v1/models/entry/metadata")
    assert status == 200 and "x" in body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    for method, path, payload, expected in [
        ("POST", "/v1/models/entry:predict", b"{not json", 400),
        ("POST", "/v1/models/entry:predict", b'{"instances": [[1, 2], [3]]}', 400),
        ("POST", "/v1/models/entry:predict", b'{"rows": []}', 400),
        ("POST", "/v1/models/nope:predict", b'{"inputs": {"x": 1}}', 404),
        ("POST", "/v1/models/entry:explode", b"{}", 400),
        ("POST", "/v1/models/entry/versions/x:predict", b"{}", 400),
        ("GET", "/v1/models/nope", None, 404),
        ("GET", "/elsewhere", None, 404),
    ]:
        status, body = proxy.rest(method, path, payload)
        assert (status, set(body)) == (expected, {"error"}), (method, path, body)
    client.predict(_request())  # the proxy never dies on bad input


def test_in_flight_bound_returns_resource_exhausted(tmp_path: Path) -> None:
    with (
        FakeEntry("slow", tmp_path, extra=["--delay_ms", "1500"]) as slow,
        Proxy(tmp_path, ["--entry_targets", slow.address, "--max_in_flight", "2"]) as proxy,
    ):
        client = Client(proxy.address)
        with ThreadPoolExecutor(2) as pool:
            running = [pool.submit(client.predict, _request()) for _ in range(2)]
            time.sleep(0.5)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                client.predict(_request())
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - started < 0.5  # refused at once, not queued
            status, body = proxy.rest("POST", "/v1/models/entry:predict", b'{"inputs": {"x": [1.0]}}')
            assert status == 429 and "overloaded" in body["error"]
            assert all(_text(f.result()[0], "replica") == "slow" for f in running)
        client.predict(_request())
        client.channel.close()


def test_no_reachable_replica_is_unavailable_naming_the_model(tmp_path: Path) -> None:
    from procs import free_port

    with Proxy(tmp_path, ["--entry_targets", f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"]) as proxy:
        client = Client(proxy.address)
        with pytest.raises(grpc.RpcError) as caught:
            client.predict(_request(model="entry"))
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE and "'entry'" in caught.value.details()
        client.channel.close()


def test_ejected_replica_is_readmitted_after_it_comes_back(tmp_path: Path) -> None:
    a = FakeEntry("a", tmp_path).start()
    b = FakeEntry("b", tmp_path).start()
    args = ["--entry_targets", f"{a.address},{b.address}", "--ejection_failures", "2", "--ejection_cooldown_s", "0.5"]
    with Proxy(tmp_path, args) as proxy:
        client = Client(proxy.address)
        try:
            b.kill()
            for _ in range(20):  # every request succeeds: failures on b are retried on a
                assert _text(client.predict(_request())[0], "replica") == "a"
            assert proxy.metric("proxy_ejections_total") == 1
            assert proxy.metric("proxy_retries_total") >= 2
            b = FakeEntry("b", tmp_path, port=b.port).start()  # back on the same address
            deadline = time.monotonic() + 20
            seen: set[str] = set()
            while "b" not in seen and time.monotonic() < deadline:
                seen.add(_text(client.predict(_request())[0], "replica"))
                time.sleep(0.02)
            assert "b" in seen
            assert proxy.metric("proxy_readmissions_total") == 1 and proxy.metric("proxy_ejected_replicas") == 0
        finally:
            client.channel.close()
            a.stop()
            b.stop()


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    with FakeEntry("slow", tmp_path, extra=["--delay_ms", "1000"]) as slow:
        proxy = Proxy(tmp_path, ["--entry_targets", slow.address]).start()
        client = Client(proxy.address)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(client.predict, _request())
            time.sleep(0.3)
            assert proxy.process is not None
            proxy.process.send_signal(signal.SIGTERM)
            assert _text(running.result(timeout=10)[0], "replica") == "slow"
        assert proxy.process.wait(timeout=15) == 0
        with pytest.raises(grpc.RpcError) as caught:
            client.predict(_request(), timeout_s=2)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        client.channel.close()
        assert "proxy stopped" in proxy.log_path.read_text()


def _wait_for_metric(proxy: Proxy, name: str, labels: dict[str, str], expected: float) -> float:
    """The metric once it reaches ``expected``, or its value after 10 s."""
    deadline = time.monotonic() + 10
    value = proxy.metric(name, labels)
    while value < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = proxy.metric(name, labels)
    return value


def test_calls_the_client_abandons_are_counted_and_logged_as_such(tmp_path: Path) -> None:
    with (
        FakeEntry("slow", tmp_path, extra=["--delay_ms", "3000"]) as slow,
        Proxy(tmp_path, ["--entry_targets", slow.address, "--entry_models", "entry"]) as proxy,
    ):
        client = Client(proxy.address)
        with pytest.raises(grpc.RpcError) as caught:
            client.predict(_request(), timeout_s=0.3)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        abandoned = client.predict_stub.Predict.future(_request(), timeout=10)
        time.sleep(0.3)
        abandoned.cancel()
        predicts = {"model": "entry", "method": "Predict", "protocol": "grpc"}
        for code in ("DEADLINE_EXCEEDED", "CANCELLED"):
            assert _wait_for_metric(proxy, "proxy_requests_total", {**predicts, "code": code}, 1) == 1, code
            assert f"Predict model=entry: {code}" in proxy.log_path.read_text(), code
        assert proxy.metric("proxy_requests_total", {**predicts, "code": "OK"}) == 0
        client.channel.close()


def test_rest_signature_lookup_and_predict_share_the_rest_timeout(tmp_path: Path) -> None:
    # Each upstream call alone fits in the 1 s REST timeout; the two together do not.
    slow = ["--metadata_delay_ms", "700", "--delay_ms", "700"]
    with (
        FakeEntry("slow", tmp_path, extra=slow) as entry,
        Proxy(tmp_path, ["--entry_targets", entry.address, "--rest_api_timeout_in_ms", "1000"]) as proxy,
    ):
        status, body = proxy.rest("POST", "/v1/models/entry:predict", json.dumps({"instances": [[1, 2]]}).encode())
        assert status == 504, body


def test_model_names_clients_make_up_are_not_metric_labels(tmp_path: Path) -> None:
    # --entry_targets without --entry_models: the proxy forwards every name; the entry answers NOT_FOUND.
    with FakeEntry("a", tmp_path) as entry, Proxy(tmp_path, ["--entry_targets", entry.address]) as proxy:
        client = Client(proxy.address)
        for i in range(30):
            with pytest.raises(grpc.RpcError) as caught:
                client.predict(_request(model=f"made-up-{i}"))
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        client.predict(_request())
        counted = {(labels["model"], labels["code"]): value for labels, value in proxy.samples("proxy_requests_total")}
        assert counted == {("unknown", "NOT_FOUND"): 30, ("entry", "OK"): 1}
        client.channel.close()


def test_a_call_without_a_deadline_ends_at_the_proxys_default_deadline(tmp_path: Path) -> None:
    # An entry that accepts calls and never answers (as one SIGSTOPped): without a deadline of the client's or the
    # proxy's, such a call held its client and an admission slot for good.
    never = ["--delay_ms", "600000", "--metadata_delay_ms", "600000"]
    with (
        FakeEntry("never", tmp_path, extra=never) as entry,
        Proxy(tmp_path, ["--entry_targets", entry.address, "--grpc_default_timeout_in_ms", "500"]) as proxy,
    ):
        client = Client(proxy.address)
        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata_request.model_spec.name = "entry"
        for call in (client.predict_stub.Predict, client.predict_stub.GetModelMetadata):
            request = _request() if call is client.predict_stub.Predict else metadata_request
            started = time.monotonic()
            pending = call.future(request)  # no deadline
            try:
                with pytest.raises(grpc.RpcError) as caught:
                    pending.result(timeout=10)
            finally:
                pending.cancel()
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, caught.value
            assert "--grpc_default_timeout_in_ms" in caught.value.details()
            assert 0.4 < time.monotonic() - started < 10
        assert proxy.metric("proxy_in_flight_requests") == 0
        client.channel.close()


def test_calls_cut_by_the_end_of_the_drain_are_unavailable_not_cancelled(tmp_path: Path) -> None:
    with FakeEntry("slow", tmp_path, extra=["--delay_ms", "10000"]) as slow:
        args = ["--entry_targets", slow.address, "--entry_models", "entry", "--drain_timeout_s", "0.5"]
        proxy = Proxy(tmp_path, args).start()
        client = Client(proxy.address)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(client.predict, _request(), timeout_s=20)
            time.sleep(0.3)
            assert proxy.process is not None
            proxy.process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as caught:
                running.result(timeout=15)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value  # what gRPC answers the client
        assert proxy.process.wait(timeout=15) == 0
        client.channel.close()
        log = proxy.log_path.read_text()
        # Counted and logged as the answer the client got, the proxy's doing; not as the client giving up.
        assert "Predict model=entry: UNAVAILABLE cancelled at shutdown" in log, log
        assert "CANCELLED" not in log, log
