"""What the proxy tells operators about failures it did not cause: rate-limited logs (INFO for the client's
mistakes, WARNING for the proxy's or an upstream's), ``proxy_upstream_errors_total`` without the client's
mistakes, internal core calls not counted as client requests, and one admin-token implementation."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.serving_call import CallContext, Metadata, RpcStatusError, UpstreamReply
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2
from monolith_serving.proxy import grpc_servicer
from monolith_serving.proxy.config import config_from_args
from monolith_serving.proxy.core import CoreConfig, ProxyCore
from monolith_serving.proxy.endpoints import StaticEndpointSource
from monolith_serving.proxy.main import configure
from monolith_serving.proxy.metrics import ProxyMetrics
from monolith_serving.proxy.predict_coalesce import PredictCoalescing
from monolith_serving.proxy.router import OutlierPolicy, Router
from monolith_serving.proxy.upstream import UpstreamPool

PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
CORE_LOGGER = "monolith_serving.proxy.core"


def _sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class FailingPool:
    """Every call fails with ``code`` (UNAVAILABLE: the replica is down)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def call(
        self, address: str, method: str, request: bytes, *, timeout_s: float | None, metadata: Metadata
    ) -> UpstreamReply:
        raise RpcStatusError(self.code, f"{self.code.name} from {address}")

    async def probe(self, address: str, timeout_s: float) -> bool:
        return False

    async def close_addresses(self, addresses: Sequence[str]) -> None:
        return None


def _core(code: grpc.StatusCode, **config: Any) -> tuple[ProxyCore, ProxyMetrics]:
    metrics = ProxyMetrics()
    core = ProxyCore(
        source=StaticEndpointSource(["a:1"], models=None),
        router=Router(OutlierPolicy(consecutive_failures=10**6)),
        pool=cast(UpstreamPool, FailingPool(code)),
        metrics=metrics,
        config=CoreConfig(coalescing=PredictCoalescing(enabled=False), **config),
    )
    return core, metrics


def _predict(name: str = "entry") -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    return request.SerializeToString()


async def _fail(core: ProxyCore, count: int, *, request: bytes | None = None, internal: bool = False) -> None:
    for index in range(count):
        flags = {"internal": True} if internal else {}  # the flag only where the test is about it
        ctx = CallContext(request_id=f"rid-{index}", timeout_s=5.0, protocol="grpc", **flags)
        with pytest.raises(RpcStatusError):
            await core.call(PREDICT, _predict() if request is None else request, ctx)


@pytest.mark.parametrize(
    ("code", "level"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, logging.INFO),  # the audit's 2000 Predicts without inputs
        (grpc.StatusCode.NOT_FOUND, logging.INFO),
        (grpc.StatusCode.UNAVAILABLE, logging.WARNING),  # a killed shard
        (grpc.StatusCode.INTERNAL, logging.WARNING),
    ],
)
@_sync
async def test_two_hundred_failures_log_one_line_at_the_level_of_whose_fault(
    code: grpc.StatusCode, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    core, metrics = _core(code)
    with caplog.at_level(logging.INFO, logger=CORE_LOGGER):
        await _fail(core, 200)
    failures = [r for r in caplog.records if r.name == CORE_LOGGER and code.name in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    (record,) = failures
    assert record.levelno == level
    assert "rid-0" in record.getMessage()  # the request id of the occurrence logged
    labels = {"model": "unknown", "method": "Predict", "protocol": "grpc", "code": code.name}
    assert metrics.registry.get_sample_value("proxy_requests_total", labels) == 200  # the metrics count them all


@_sync
async def test_a_line_after_the_interval_says_how_many_were_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    metrics = ProxyMetrics()
    core = ProxyCore(
        source=StaticEndpointSource(["a:1"], models=None),
        router=Router(OutlierPolicy(consecutive_failures=10**6)),
        pool=cast(UpstreamPool, FailingPool(grpc.StatusCode.INVALID_ARGUMENT)),
        metrics=metrics,
        config=CoreConfig(),
        clock=lambda: now[0],
    )
    with caplog.at_level(logging.INFO, logger=CORE_LOGGER):
        await _fail(core, 5)
        now[0] = 11.0
        await _fail(core, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == CORE_LOGGER]
    assert len(lines) == 2 and "(and 4 more like it" in lines[1], lines


@_sync
async def test_a_request_refused_before_any_upstream_logs_at_info_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core, _ = _core(grpc.StatusCode.UNAVAILABLE)
    with caplog.at_level(logging.INFO, logger=CORE_LOGGER):
        for _ in range(50):
            with pytest.raises(InvalidArgumentError):
                await core.call(PREDICT, _predict(""), CallContext(request_id="r", timeout_s=1.0, protocol="grpc"))
    records = [r for r in caplog.records if r.name == CORE_LOGGER]
    assert [r.levelno for r in records] == [logging.INFO]


@pytest.mark.parametrize(
    ("code", "counted"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.CANCELLED, True),
    ],
)
@_sync
async def test_upstream_errors_count_only_the_upstreams_fault(code: grpc.StatusCode, counted: bool) -> None:
    core, metrics = _core(code)
    await _fail(core, 3)
    value = metrics.registry.get_sample_value("proxy_upstream_errors_total", {"code": code.name})
    assert (value or 0.0) == (3.0 if counted else 0.0)


@_sync
async def test_an_internal_call_is_neither_counted_nor_timed_as_a_client_request() -> None:
    core, metrics = _core(grpc.StatusCode.NOT_FOUND)
    await _fail(core, 4, internal=True)
    registry = metrics.registry
    labels = {"model": "unknown", "method": "Predict", "protocol": "grpc", "code": "NOT_FOUND"}
    assert registry.get_sample_value("proxy_requests_total", labels) is None
    assert (
        registry.get_sample_value("proxy_request_latency_seconds_count", {"method": "Predict", "protocol": "grpc"})
        is None
    )
    assert core.admission.in_flight == 0


# ---- the admin token: core.admin_token, one implementation ---------------------------------------------------
def _config_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(["--entry_targets", "a:1", *argv])


def test_the_admin_token_file_is_read_stripped_and_an_empty_one_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert config_from_args(_config_args("--admin_token_file", str(token_file)), {}).core.admin_token == "s3cret"
    token_file.write_text("  \n")
    with pytest.raises(InvalidArgumentError, match="empty"):
        config_from_args(_config_args("--admin_token_file", str(token_file)), {})
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        config_from_args(_config_args("--admin_token_file", str(tmp_path / "absent")), {})
    assert config_from_args(_config_args("--admin_token", "t"), {}).core.admin_token == "t"
    assert config_from_args(_config_args(), {}).core.admin_token is None


def test_the_grpc_metadata_token_is_a_bearer_or_x_admin_token() -> None:
    assert grpc_servicer._admin_token((("authorization", "BEARER abc "),)) == "abc"
    assert grpc_servicer._admin_token((("authorization", "Basic xyz"), ("x-admin-token", "t"))) == "t"
    assert grpc_servicer._admin_token((("x-admin-token", "t"),)) == "t"
    assert grpc_servicer._admin_token((("authorization", b"Bearer abc"),)) is None
    assert grpc_servicer._admin_token(()) is None


@_sync
async def test_deadline_exceeded_is_the_clients_only_once_its_own_deadline_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core, _ = _core(grpc.StatusCode.DEADLINE_EXCEEDED)  # the entry gave up well before the client's 5 s
    with caplog.at_level(logging.INFO, logger=CORE_LOGGER):
        await _fail(core, 10)
        for _ in range(10):  # no time left: refused before forwarding, the client's own short deadline
            with pytest.raises(Exception, match="deadline passed"):
                await core.call(PREDICT, _predict("other"), CallContext(request_id="r", timeout_s=0.0, protocol="grpc"))
    levels = sorted(r.levelno for r in caplog.records if r.name == CORE_LOGGER)
    assert levels == [logging.INFO, logging.WARNING]


@_sync
async def test_retries_while_a_replica_is_down_log_one_line_per_replica(caplog: pytest.LogCaptureFixture) -> None:
    """Every request retries while a replica is down; the retry line is held to one per failing replica."""
    metrics = ProxyMetrics()
    core = ProxyCore(
        source=StaticEndpointSource(["a:1", "b:1"], models=None),
        router=Router(OutlierPolicy(consecutive_failures=10**6)),
        pool=cast(UpstreamPool, FailingPool(grpc.StatusCode.UNAVAILABLE)),
        metrics=metrics,
        config=CoreConfig(coalescing=PredictCoalescing(enabled=False)),
    )
    with caplog.at_level(logging.INFO, logger=CORE_LOGGER):
        await _fail(core, 200)
    retries = [r.getMessage() for r in caplog.records if "retrying on" in r.getMessage()]
    assert 1 <= len(retries) <= 2, retries  # one per replica that failed first
    assert metrics.registry.get_sample_value("proxy_retries_total", {"method": "Predict"}) == 200


def test_the_default_grpc_deadline_flag_takes_both_spellings_and_zero_means_none() -> None:
    assert config_from_args(_config_args(), {}).core.default_timeout_s == 30.0
    assert config_from_args(_config_args("--grpc_default_timeout_in_ms", "500"), {}).core.default_timeout_s == 0.5
    assert config_from_args(_config_args("--grpc-default-timeout-in-ms=1500"), {}).core.default_timeout_s == 1.5
    assert config_from_args(_config_args("--grpc_default_timeout_in_ms", "0"), {}).core.default_timeout_s is None
    with pytest.raises(InvalidArgumentError, match="--grpc_default_timeout_in_ms"):
        config_from_args(_config_args("--grpc_default_timeout_in_ms", "-1"), {})
