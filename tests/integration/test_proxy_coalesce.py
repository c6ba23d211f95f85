"""Predict coalescing through a real proxy in front of real entries and PS: concurrent Predicts (gRPC and
REST together) get the scores each gets straight from the entry, and the proxy really merged some."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from test_proxy_entry import PS_VERSIONS_KEY, EntryCluster, _instances, _predict

from monolith_serving.client.inputs import predict_request
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

pytestmark = pytest.mark.integration

CONCURRENT = 24
MAX_ROUNDS = 20  # until the proxy has merged something; one round nearly always does


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntryCluster]:
    running = EntryCluster(tmp_path_factory.mktemp("proxy-coalesce"))
    try:
        yield running
    finally:
        running.stop()


async def _concurrent_grpc(
    address: str, requests: list[predict_pb2.PredictRequest]
) -> list[tuple[np.ndarray, dict[str, str]]]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def one(index: int, request: predict_pb2.PredictRequest) -> tuple[np.ndarray, dict[str, str]]:
            call = stub.Predict(request, timeout=30, metadata=(("x-request-id", f"client-{index}"),))
            response = await call
            trailing = {k: v for k, v in (await call.trailing_metadata() or ()) if isinstance(v, str)}
            return from_tensor_proto(response.outputs["scores"]), trailing

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))


async def _concurrent_rest(cluster: EntryCluster, batches: list[list[bytes]]) -> list[tuple[int, object]]:
    loop = asyncio.get_running_loop()

    def one(blobs: list[bytes]) -> tuple[int, object]:
        body = {"instances": [{"instances": {"b64": base64.b64encode(b).decode()}} for b in blobs]}
        return cluster.proxy.rest("POST", "/v1/models/entry:predict", json.dumps(body).encode())

    return list(await asyncio.gather(*(loop.run_in_executor(None, one, blobs) for blobs in batches)))


def test_concurrent_predicts_through_the_proxy_are_merged_and_match_direct_calls(cluster: EntryCluster) -> None:
    batches = [_instances(cluster, 1 + i % 16, seed=100 + i) for i in range(CONCURRENT)]
    requests = [predict_request("entry", {"instances": blobs}) for blobs in batches]
    # One at a time straight to the entry: nothing merged anywhere.
    direct = [_predict(cluster.entries[0].address, r)[0] for r in requests]
    rest_batches = batches[:4]
    coalesced_before = cluster.proxy.metric("proxy_predicts_coalesced_total", {"model": "entry"})
    for _ in range(MAX_ROUNDS):

        async def round_trip() -> tuple[list[tuple[np.ndarray, dict[str, str]]], list[tuple[int, object]]]:
            grpc_answers = _concurrent_grpc(cluster.proxy.address, requests)
            rest_answers = _concurrent_rest(cluster, rest_batches)
            return await asyncio.gather(grpc_answers, rest_answers)

        grpc_results, rest_results = asyncio.run(round_trip())
        for index, ((scores, trailing), expected) in enumerate(zip(grpc_results, direct, strict=True)):
            assert scores.shape == expected.shape == (len(batches[index]), 1)
            # The same scores (a larger batch's matrix product may round the last bit differently).
            np.testing.assert_allclose(scores, expected, rtol=1e-6)
            assert trailing["x-request-id"] == f"client-{index}"  # each client's own id, not the merged one
            assert trailing[PS_VERSIONS_KEY] == "ps_0=1,ps_1=1"
        for (status, body), expected in zip(rest_results, direct, strict=False):
            assert status == 200, body
            assert isinstance(body, dict)
            np.testing.assert_allclose(np.asarray(body["predictions"], dtype=np.float32), expected, rtol=1e-6)
        if cluster.proxy.metric("proxy_predicts_coalesced_total", {"model": "entry"}) > coalesced_before:
            break
    coalesced = cluster.proxy.metric("proxy_predicts_coalesced_total", {"model": "entry"}) - coalesced_before
    assert coalesced >= 2
    # Every client request is still counted on its own, and the upstream saw fewer calls than clients sent.
    requests_ok = cluster.proxy.metric(
        "proxy_requests_total", {"model": "entry", "method": "Predict", "protocol": "grpc", "code": "OK"}
    )
    upstream_calls = cluster.proxy.metric("proxy_upstream_latency_seconds_count", {"method": "Predict"})
    assert requests_ok >= CONCURRENT and upstream_calls < requests_ok


def test_a_bad_request_among_concurrent_ones_fails_alone(cluster: EntryCluster) -> None:
    good = [predict_request("entry", {"instances": _instances(cluster, 4, seed=200 + i)}) for i in range(8)]
    direct = [_predict(cluster.entries[0].address, r)[0] for r in good]
    bad = predict_request("entry", {"instances": [b"\xff\xfe\xfd"]})

    async def mixed() -> list[object]:
        async with grpc.aio.insecure_channel(cluster.proxy.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            calls = [stub.Predict(r, timeout=30) for r in (*good[:4], bad, *good[4:])]
            return list(await asyncio.gather(*calls, return_exceptions=True))

    for _ in range(MAX_ROUNDS):
        results = asyncio.run(mixed())
        failure = results.pop(4)
        assert isinstance(failure, grpc.aio.AioRpcError) and failure.code() is grpc.StatusCode.INVALID_ARGUMENT
        for response, expected in zip(results, direct, strict=True):
            assert isinstance(response, predict_pb2.PredictResponse), response
            np.testing.assert_allclose(from_tensor_proto(response.outputs["scores"]), expected, rtol=1e-6)
        if "failed with INVALID_ARGUMENT" in cluster.proxy.log_path.read_text():
            break
    # The bad request was merged with others at least once, and the members were then sent alone.
    assert "merged Predicts) failed with INVALID_ARGUMENT" in cluster.proxy.log_path.read_text()
