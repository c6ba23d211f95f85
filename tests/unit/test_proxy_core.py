"""ProxyCore on fakes of our own interfaces (EndpointSource, UpstreamPool): retries, ejection, admission,
status merging, reload authorization, metrics (cancelled calls, bounded model labels)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

import grpc
import pytest

from monolith_serving.core.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from monolith_serving.core.serving_call import GET_MODEL_STATUS, CallContext, Metadata, RpcStatusError, UpstreamReply
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2, predict_pb2
from monolith_serving.proxy.core import RELOAD_CONFIG, CoreConfig, ProxyCore
from monolith_serving.proxy.endpoints import StaticEndpointSource
from monolith_serving.proxy.metrics import ModelLabels, ProxyMetrics
from monolith_serving.proxy.router import OutlierPolicy, Router
from monolith_serving.proxy.upstream import UpstreamPool


def _sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Runs an async test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


PREDICT = "/tensorflow.serving.PredictionService/Predict"
State = get_model_status_pb2.ModelVersionStatus


class FakePool:
    """Implements the UpstreamPool methods the core uses; behaviour per address."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.calls: list[tuple[str, str, float | None, Metadata]] = []
        self.replies: dict[str, bytes] = {}
        self.delay_s = 0.0
        self.healthy: set[str] = set()
        self.hung: set[str] = set()
        self.cancelling: set[str] = set()
        self.served: set[str] | None = None  # model names the entries serve (None: any); others NOT_FOUND

    async def call(
        self, address: str, method: str, request: bytes, *, timeout_s: float | None, metadata: Metadata
    ) -> UpstreamReply:
        self.calls.append((address, method, timeout_s, metadata))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.served is not None and method == PREDICT:
            model = predict_pb2.PredictRequest.FromString(request).model_spec.name
            if model not in self.served:
                raise RpcStatusError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model})")
        if address in self.down:
            raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        if address in self.cancelling:  # an entry whose handler was torn down under the call
            raise RpcStatusError(grpc.StatusCode.CANCELLED, "CANCELLED")
        if address in self.hung:  # a host that vanished: no answer until the deadline
            await asyncio.sleep(timeout_s or 0.0)
            raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return UpstreamReply(self.replies.get(address, address.encode()), (("x-from", address),))

    async def probe(self, address: str, timeout_s: float) -> bool:
        return address in self.healthy

    async def close_addresses(self, addresses: Sequence[str]) -> None:
        return None


def _core(
    targets: Sequence[str], pool: FakePool, *, models: Sequence[str] | None = ("entry",), **config: Any
) -> tuple[ProxyCore, ProxyMetrics]:
    metrics = ProxyMetrics()
    core = ProxyCore(
        source=StaticEndpointSource(targets, models=models),
        router=Router(OutlierPolicy(consecutive_failures=2, cooldown_s=0.01)),
        pool=cast(UpstreamPool, pool),
        metrics=metrics,
        config=CoreConfig(**config),
    )
    return core, metrics


def _predict(name: str = "entry") -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    return request.SerializeToString()


def _ctx(timeout_s: float | None = 5.0, token: str | None = None) -> CallContext:
    return CallContext(request_id="rid-1", timeout_s=timeout_s, protocol="grpc", admin_token=token)


def _count(metrics: ProxyMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def _requests(metrics: ProxyMetrics) -> dict[tuple[str, str], float]:
    """proxy_requests_total by (model label, code)."""
    found: dict[tuple[str, str], float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "proxy_requests_total":
                key = (sample.labels["model"], sample.labels["code"])
                found[key] = found.get(key, 0.0) + sample.value
    return found


@_sync
async def test_forwards_bytes_with_request_id_and_deadline() -> None:
    pool = FakePool()
    core, metrics = _core(["a:1"], pool)
    reply = await core.call(PREDICT, _predict(), _ctx(timeout_s=2.0))
    assert reply.response == b"a:1" and reply.trailing == (("x-from", "a:1"),)
    _, method, timeout_s, metadata = pool.calls[0]
    assert method == PREDICT and metadata == (("x-request-id", "rid-1"),)
    assert timeout_s is not None and 1.9 < timeout_s <= 2.0
    labels = {"model": "entry", "method": "Predict", "protocol": "grpc", "code": "OK"}
    assert _count(metrics, "proxy_requests_total", labels) == 1


@_sync
async def test_unavailable_is_retried_once_on_another_replica_then_ejected() -> None:
    pool = FakePool()
    pool.down.add("a:1")
    core, metrics = _core(["a:1", "b:1"], pool)
    for _ in range(20):
        assert (await core.call(PREDICT, _predict(), _ctx())).response == b"b:1"
    # a:1 failed twice in a row, got ejected, and was never tried again.
    assert [c[0] for c in pool.calls].count("a:1") == 2
    assert _count(metrics, "proxy_retries_total", {"method": "Predict"}) == 2
    assert _count(metrics, "proxy_ejections_total") == 1
    # After the cool-down a successful probe readmits it.
    pool.down.clear()
    pool.healthy.add("a:1")
    await asyncio.sleep(0.02)
    await core.maintenance_step()
    await asyncio.sleep(0.01)
    assert _count(metrics, "proxy_readmissions_total") == 1
    assert _count(metrics, "proxy_ejected_replicas") == 0
    await core.stop()


@_sync
async def test_an_upstream_cancelled_is_retried_on_another_replica() -> None:
    pool = FakePool()
    pool.cancelling.add("a:1")
    core, _metrics = _core(["a:1", "b:1"], pool)
    # Until the balancer has tried a:1 first at least once (it picks among equals at random).
    for _ in range(200):
        assert (await core.call(PREDICT, _predict(), _ctx())).response == b"b:1"
        if "a:1" in [c[0] for c in pool.calls]:
            break
    assert "a:1" in [c[0] for c in pool.calls]
    await core.stop()


@_sync
async def test_both_attempts_failing_names_the_model() -> None:
    pool = FakePool()
    pool.down.update({"a:1", "b:1"})
    core, _ = _core(["a:1", "b:1"], pool)
    with pytest.raises(RpcStatusError) as caught:
        await core.call(PREDICT, _predict(), _ctx())
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE and "'entry'" in caught.value.message
    assert len(pool.calls) == 2


@_sync
async def test_a_hung_replica_gets_half_the_deadline_then_the_other_one_answers() -> None:
    pool = FakePool()
    pool.hung.add("a:1")
    core, _ = _core(["a:1", "b:1"], pool)
    core._router = Router(OutlierPolicy(consecutive_failures=1000))
    answered = set()
    for _ in range(12):
        before = len(pool.calls)
        reply = await core.call(PREDICT, _predict(), _ctx(timeout_s=0.2))
        answered.add(reply.response)
        calls = pool.calls[before:]
        if calls[0][0] == "a:1":
            assert [c[0] for c in calls] == ["a:1", "b:1"]
            assert calls[0][2] is not None and calls[0][2] <= 0.1 + 1e-6
    assert answered == {b"b:1"}
    assert any(c[0] == "a:1" for c in pool.calls), "p2c never picked the hung replica; the test proved nothing"


@_sync
async def test_a_single_replica_gets_the_whole_deadline() -> None:
    pool = FakePool()
    core, _ = _core(["a:1"], pool)
    await core.call(PREDICT, _predict(), _ctx(timeout_s=0.2))
    assert pool.calls[0][2] is not None and pool.calls[0][2] > 0.15


@_sync
async def test_no_retry_when_the_deadline_is_nearly_spent() -> None:
    pool = FakePool()
    pool.down.add("a:1")
    # Ejection would hide a:1 after two failures; a high threshold keeps it in the rotation.
    core, _ = _core(["a:1", "b:1"], pool, min_retry_budget_s=10.0)
    core._router = Router(OutlierPolicy(consecutive_failures=1000))
    failures = 0
    for _ in range(40):
        before = len(pool.calls)
        try:
            await core.call(PREDICT, _predict(), _ctx(timeout_s=1.0))
        except RpcStatusError:
            failures += 1
            assert [c[0] for c in pool.calls[before:]] == ["a:1"]  # one attempt, no retry
    assert failures > 0


@_sync
async def test_unknown_model_empty_name_and_garbage() -> None:
    core, metrics = _core(["a:1"], FakePool())
    with pytest.raises(NotFoundError):
        await core.call(PREDICT, _predict("nope"), _ctx())
    with pytest.raises(InvalidArgumentError):
        await core.call(PREDICT, _predict(""), _ctx())
    with pytest.raises(InvalidArgumentError):
        await core.call(PREDICT, b"\x0a\x09ab", _ctx())
    labels = {"model": "unknown", "method": "Predict", "protocol": "grpc", "code": "NOT_FOUND"}
    assert _count(metrics, "proxy_requests_total", labels) == 1
    assert core.admission.in_flight == 0


@_sync
async def test_no_available_replica_is_unavailable_naming_the_model() -> None:
    core, _ = _core([], FakePool())
    with pytest.raises(UnavailableError, match="'entry'"):
        await core.call(PREDICT, _predict(), _ctx())


@_sync
async def test_in_flight_bound_refuses_immediately() -> None:
    pool = FakePool()
    pool.delay_s = 0.2
    core, metrics = _core(["a:1"], pool, max_in_flight=2)
    slow = [asyncio.create_task(core.call(PREDICT, _predict(), _ctx())) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert _count(metrics, "proxy_in_flight_requests") == 2
    with pytest.raises(ResourceExhaustedError):
        await core.call(PREDICT, _predict(), _ctx())
    assert all(r.response == b"a:1" for r in await asyncio.gather(*slow))
    assert _count(metrics, "proxy_rejected_requests_total", {"reason": "in_flight"}) == 1
    assert _count(metrics, "proxy_in_flight_requests") == 0
    assert (await core.call(PREDICT, _predict(), _ctx())).response == b"a:1"


@_sync
async def test_a_request_admitted_by_its_transport_takes_one_slot_for_all_its_core_calls() -> None:
    """The REST gateway's way: one slot from before the body is read until the answer, none per core call."""
    pool = FakePool()
    core, metrics = _core(["a:1"], pool, max_in_flight=1)
    admitted = CallContext(request_id="rid-1", timeout_s=5.0, protocol="rest", admitted=True)
    with core.admitted():
        assert core.admission.in_flight == 1
        # Its own core calls go through on the one slot it holds; any other request is refused.
        assert (await core.call(PREDICT, _predict(), admitted)).response == b"a:1"
        assert (await core.call(PREDICT, _predict(), admitted)).response == b"a:1"
        assert core.admission.in_flight == 1
        with pytest.raises(ResourceExhaustedError):
            await core.call(PREDICT, _predict(), _ctx())
        with pytest.raises(ResourceExhaustedError), core.admitted():
            pass
    assert core.admission.in_flight == 0
    assert _count(metrics, "proxy_rejected_requests_total", {"reason": "in_flight"}) == 2
    # A refusal by admitted() is the transport's to count as a request; call() counted its own refusal.
    assert _requests(metrics) == {("entry", "OK"): 2, ("unknown", "RESOURCE_EXHAUSTED"): 1}
    await core.admission.drain(0.0)
    with pytest.raises(UnavailableError, match="shutting down"), core.admitted():
        pass
    assert _count(metrics, "proxy_rejected_requests_total", {"reason": "draining"}) == 1


@_sync
async def test_drain_refuses_new_and_waits_for_in_flight() -> None:
    pool = FakePool()
    pool.delay_s = 0.1
    core, _ = _core(["a:1"], pool)
    running = asyncio.create_task(core.call(PREDICT, _predict(), _ctx()))
    await asyncio.sleep(0.01)
    drained = asyncio.create_task(core.admission.drain(5.0))
    await asyncio.sleep(0.01)
    with pytest.raises(UnavailableError, match="shutting down"):
        await core.call(PREDICT, _predict(), _ctx())
    assert await drained and (await running).response == b"a:1"


@_sync
async def test_model_status_is_merged_over_replicas() -> None:
    pool = FakePool()
    a = get_model_status_pb2.GetModelStatusResponse()
    a.model_version_status.add(version=1, state=State.AVAILABLE)
    a.model_version_status.add(version=2, state=State.LOADING)
    b = get_model_status_pb2.GetModelStatusResponse()
    b.model_version_status.add(version=2, state=State.AVAILABLE)
    b.model_version_status.add(version=1, state=State.UNLOADING)
    pool.replies = {"a:1": a.SerializeToString(), "b:1": b.SerializeToString()}
    pool.down.add("c:1")  # a failing replica does not fail the status
    core, _ = _core(["a:1", "b:1", "c:1"], pool)
    request = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "entry"}).SerializeToString()
    reply = await core.call(GET_MODEL_STATUS, request, _ctx())
    merged = get_model_status_pb2.GetModelStatusResponse.FromString(reply.response)
    assert [(s.version, s.state) for s in merged.model_version_status] == [(2, State.AVAILABLE), (1, State.AVAILABLE)]


@_sync
async def test_reload_needs_configured_and_presented_token() -> None:
    pool = FakePool()
    closed, _ = _core(["a:1", "b:1"], pool)
    with pytest.raises(RpcStatusError) as caught:
        await closed.call(RELOAD_CONFIG, b"", _ctx(token="anything"))
    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED and "--admin_token" in caught.value.message
    core, _ = _core(["a:1", "b:1"], pool, admin_token="s3cret")
    for token in (None, "wrong"):
        with pytest.raises(RpcStatusError) as caught:
            await core.call(RELOAD_CONFIG, b"", _ctx(token=token))
        assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert pool.calls == []
    await core.call(RELOAD_CONFIG, b"", _ctx(token="s3cret"))
    assert sorted(c[0] for c in pool.calls) == ["a:1", "b:1"]
    pool.down.add("b:1")
    with pytest.raises(RpcStatusError, match="1 of 2 replicas"):
        await core.call(RELOAD_CONFIG, b"", _ctx(token="s3cret"))


async def _cancel_after(core: ProxyCore, ctx: CallContext, wait_s: float) -> None:
    """Starts a Predict, cancels it after ``wait_s`` as the gRPC server does when the client stops waiting."""
    call = asyncio.create_task(core.call(PREDICT, _predict(), ctx))
    await asyncio.sleep(wait_s)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert core.admission.in_flight == 0


def test_a_call_the_client_cancels_is_counted_cancelled_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    pool = FakePool()
    pool.delay_s = 10.0
    core, metrics = _core(["a:1"], pool)
    with caplog.at_level(logging.INFO, logger="monolith_serving.proxy.core"):
        asyncio.run(_cancel_after(core, _ctx(timeout_s=30.0), 0.05))
    assert _requests(metrics) == {("entry", "CANCELLED"): 1}
    assert "request rid-1 Predict model=entry: CANCELLED" in caplog.text
    # The client's own doing: INFO, not WARNING.
    assert [r.levelno for r in caplog.records if "CANCELLED" in r.getMessage()] == [logging.INFO]


def test_a_call_cancelled_as_its_deadline_passes_is_counted_deadline_exceeded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = FakePool()
    pool.delay_s = 10.0  # ignores its timeout: only the cancellation ends the call
    core, metrics = _core(["a:1"], pool)
    with caplog.at_level(logging.INFO, logger="monolith_serving.proxy.core"):
        asyncio.run(_cancel_after(core, _ctx(timeout_s=0.05), 0.1))
    assert _requests(metrics) == {("entry", "DEADLINE_EXCEEDED"): 1}
    assert "request rid-1 Predict model=entry: DEADLINE_EXCEEDED" in caplog.text
    # The client's own doing: INFO, not WARNING.
    assert [r.levelno for r in caplog.records if "DEADLINE_EXCEEDED" in r.getMessage()] == [logging.INFO]


@_sync
async def test_a_call_whose_deadline_already_passed_is_not_forwarded() -> None:
    pool = FakePool()
    core, metrics = _core(["a:1", "b:1"], pool)
    with pytest.raises(DeadlineExceededError):
        await core.call(PREDICT, _predict(), _ctx(timeout_s=0.0))
    assert pool.calls == []
    assert _requests(metrics) == {("entry", "DEADLINE_EXCEEDED"): 1}


@_sync
async def test_a_source_taking_any_name_labels_only_names_an_entry_answered() -> None:
    pool = FakePool()
    pool.served = {"entry"}
    core, metrics = _core(["a:1"], pool, models=None)  # --entry_targets without --entry_models
    for i in range(50):
        with pytest.raises(RpcStatusError):
            await core.call(PREDICT, _predict(f"made-up-{i}"), _ctx())
    for _ in range(2):
        await core.call(PREDICT, _predict("entry"), _ctx())
    assert _requests(metrics) == {("unknown", "NOT_FOUND"): 50, ("entry", "OK"): 2}


@_sync
async def test_a_deferred_count_is_counted_once_when_its_transport_settles_it() -> None:
    """An OK answer is counted with the code its transport settles (what its client got), under the label the
    call chose; a failure is counted by the call itself; both are timed by the call, once."""
    pool = FakePool()
    pool.served = {"entry"}
    core, metrics = _core(["a:1"], pool, models=None)  # the label "entry" is earned by the OK answer
    reply, deferred = await core.call_deferring_count(PREDICT, _predict("entry"), _ctx())
    assert reply.response == b"a:1"
    assert _requests(metrics) == {}
    deferred.settle(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert _requests(metrics) == {("entry", "DEADLINE_EXCEEDED"): 1}
    _reply, deferred = await core.call_deferring_count(PREDICT, _predict("entry"), _ctx())
    deferred.settle(grpc.StatusCode.OK)
    with pytest.raises(RpcStatusError):
        await core.call_deferring_count(PREDICT, _predict("made-up"), _ctx())
    assert _requests(metrics) == {("entry", "DEADLINE_EXCEEDED"): 1, ("entry", "OK"): 1, ("unknown", "NOT_FOUND"): 1}
    latency = {"method": "Predict", "protocol": "grpc"}
    assert _count(metrics, "proxy_request_latency_seconds_count", latency) == 3
    assert core.admission.in_flight == 0
    # An internal call is counted by nobody: there is nothing to defer.
    internal = CallContext(request_id="rid-2", timeout_s=5.0, protocol="rest", internal=True)
    with pytest.raises(ValueError, match="internal"):
        await core.call_deferring_count(PREDICT, _predict("entry"), internal)
    assert len(pool.calls) == 3


def test_model_labels_stop_growing_at_their_cap() -> None:
    labels = ModelLabels(source_lists_models=False, max_answered=2)
    assert labels.of("a") == "unknown"
    assert [labels.answered(name) for name in ("a", "b", "c")] == ["a", "b", "unknown"]
    assert [labels.of(name) for name in ("a", "b", "c")] == ["a", "b", "unknown"]
    listed = ModelLabels(source_lists_models=True)
    assert listed.of("entry") == "entry"


def test_a_replica_cut_short_at_its_deadline_share_is_ejected_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = FakePool()
    pool.hung.add("a:1")
    core, metrics = _core(["a:1", "b:1"], pool)
    core._router = Router(OutlierPolicy(consecutive_failures=1, cooldown_s=60.0))

    async def until_a_was_tried() -> None:
        for _ in range(40):  # p2c picks a:1 first about every other time
            assert (await core.call(PREDICT, _predict(), _ctx(timeout_s=0.2))).response == b"b:1"
            if any(c[0] == "a:1" for c in pool.calls):
                return

    with caplog.at_level(logging.WARNING, logger="monolith_serving.proxy.core"):
        asyncio.run(until_a_was_tried())
    assert any(c[0] == "a:1" for c in pool.calls), "p2c never picked the hung replica; the test proved nothing"
    assert _count(metrics, "proxy_ejections_total") == 1
    assert _count(metrics, "proxy_ejected_replicas") == 1
    assert "ejected entry replica a:1" in caplog.text


METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"


@pytest.mark.parametrize("path", [PREDICT, METADATA])
def test_a_call_without_a_deadline_goes_upstream_with_the_default_one(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Without one, a replica that accepts and never answers held the call, and its admission slot, forever.
    pool = FakePool()
    pool.hung.add("a:1")
    core, metrics = _core(["a:1"], pool, default_timeout_s=0.2)
    with caplog.at_level(logging.INFO, logger="monolith_serving.proxy.core"), pytest.raises(RpcStatusError) as caught:
        asyncio.run(asyncio.wait_for(core.call(path, _predict(), _ctx(timeout_s=None)), 5.0))
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--grpc_default_timeout_in_ms" in caught.value.message and "'entry'" in caught.value.message
    timeout_s = pool.calls[0][2]
    assert timeout_s is not None and 0.1 < timeout_s <= 0.2
    assert _requests(metrics) == {("entry", "DEADLINE_EXCEEDED"): 1}
    # Not the client's doing (it set no deadline): WARNING.
    assert [r.levelno for r in caplog.records if "DEADLINE_EXCEEDED" in r.getMessage()] == [logging.WARNING]
    assert core.admission.in_flight == 0


@_sync
async def test_a_client_deadline_wins_over_the_default_and_none_disables_it() -> None:
    pool = FakePool()
    core, _ = _core(["a:1"], pool, default_timeout_s=0.2)
    await core.call(PREDICT, _predict(), _ctx(timeout_s=3.0))
    timeout_s = pool.calls[-1][2]
    assert timeout_s is not None and timeout_s > 2.9
    unbounded, _ = _core(["a:1"], pool, default_timeout_s=None)
    await unbounded.call(PREDICT, _predict(), _ctx(timeout_s=None))
    assert pool.calls[-1][2] is None


def test_calls_cut_by_the_end_of_the_drain_are_unavailable_not_the_clients_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # At shutdown the gRPC server cancels what is still running after the grace with UNAVAILABLE; counting that
    # CANCELLED blamed clients for the proxy's shutdown.
    pool = FakePool()
    pool.delay_s = 10.0
    core, metrics = _core(["a:1"], pool)

    async def scenario() -> None:
        early = asyncio.create_task(core.call(PREDICT, _predict(), _ctx(timeout_s=30.0)))
        late = asyncio.create_task(core.call(METADATA, _predict(), _ctx(timeout_s=30.0)))
        await asyncio.sleep(0.01)
        core.drain_started(0.05)
        early.cancel()  # a client that leaves during the drain is still the client
        await asyncio.sleep(0.1)
        late.cancel()  # the grace is over: the transport cuts the call
        for call in (early, late):
            with pytest.raises(asyncio.CancelledError):
                await call

    with caplog.at_level(logging.INFO, logger="monolith_serving.proxy.core"):
        asyncio.run(scenario())
    assert _requests(metrics) == {("entry", "CANCELLED"): 1, ("entry", "UNAVAILABLE"): 1}
    (record,) = [r for r in caplog.records if "UNAVAILABLE" in r.getMessage()]
    assert record.levelno == logging.WARNING and "drain timeout" in record.getMessage()
    assert core.admission.in_flight == 0
