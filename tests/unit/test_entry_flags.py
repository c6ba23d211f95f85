"""``monolith-serving entry`` flags: coalescing (defaults on, both spellings, a bad value refused), the fid
limit, from the command line to a Predict refused through a real grpc.aio server, and ``--host`` down to the
sockets the entry listens on."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path

import grpc
import numpy as np
import pytest
from entry_fakes import FilledLookup
from ports import free_port

from monolith_serving.client.inputs import encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.grpc_server import GrpcServerOptions, build_server
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.entry.main import EntryServer, configure, server_config_from_args
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel
from monolith_serving.entry.ps_coalesce import CoalesceConfig
from monolith_serving.entry.request_coalesce import RequestCoalescing
from monolith_serving.entry.request_parser import DEFAULT_MAX_FIDS_PER_REQUEST
from monolith_serving.entry.servicer import EntryPredictionServicer
from monolith_serving.proto_gen.idl.matrix.proto import example_pb2 as mex
from monolith_serving.proto_gen.tensorflow_serving.apis import prediction_service_pb2_grpc


def _parse(export: Path, *argv: str, shards: tuple[str, ...] = ("a:1,b:2",)) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    targets = [arg for shard in shards for arg in ("--ps_targets", shard)]
    return parser.parse_args(["--model_base_path", str(export / "entry"), *targets, *argv])


TWO_SHARDS = ("a:1", "b:2")  # the demo export's num_ps, for tests that load its version


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    write_demo(DemoOptions(out=tmp_path, num_ps=2, rows=10, version=1))
    return tmp_path


def test_both_coalescings_default_on(export: Path) -> None:
    config = server_config_from_args(_parse(export), {})
    assert config.coalesce == CoalesceConfig() and config.coalesce.enabled
    assert config.coalesce_requests == RequestCoalescing() and config.coalesce_requests.enabled


def test_predict_coalescing_flags_in_both_spellings(export: Path) -> None:
    config = server_config_from_args(_parse(export, "--coalesce-requests", "false", "--coalesce_max_rows", "32"), {})
    assert config.coalesce_requests == RequestCoalescing(enabled=False, max_rows=32)


def test_a_max_rows_below_one_is_refused_naming_the_flag(export: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="--coalesce_max_rows"):
        server_config_from_args(_parse(export, "--coalesce_max_rows", "0"), {})


def test_the_fid_limit_defaults_to_the_ps_limit_and_reaches_the_parser_in_both_spellings(export: Path) -> None:
    assert server_config_from_args(_parse(export), {}).max_fids_per_request == DEFAULT_MAX_FIDS_PER_REQUEST == 1 << 21
    config = server_config_from_args(_parse(export, "--max-fids-per-request", "10", shards=TWO_SHARDS), {})
    assert config.max_fids_per_request == 10

    async def loaded_limit() -> int:
        server = EntryServer(config)
        await server.model.refresh()  # loads version 1; no PS is needed for that
        loaded = server.model.version(1)
        assert loaded is not None
        await server.close()
        return loaded.parser.max_fids_per_request

    assert asyncio.run(loaded_limit()) == 10


def test_a_fid_limit_below_one_is_refused_naming_the_flag(export: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="--max_fids_per_request"):
        server_config_from_args(_parse(export, "--max_fids_per_request", "0"), {})


def test_requests_the_entry_cannot_take_are_invalid_argument_over_grpc(export: Path) -> None:
    """A SHARED list over the fid limit and a rank-65 tensor: INVALID_ARGUMENT (not INTERNAL), counted, and the
    entry keeps serving."""
    config = server_config_from_args(_parse(export, "--max_fids_per_request", "100", shards=TWO_SHARDS), {})
    assert config.model is not None
    spec = load_serving_spec(export / "entry" / "1")
    good = predict_request(
        "entry", {"instances": encode_instances(spec, random_examples(spec, 2, np.random.default_rng(0)))}
    )
    shared = mex.ExampleBatch(batch_size=8)
    feature = spec.features[0]
    shared.named_feature_list.add(name=feature.name, type=mex.SHARED).feature.add().fid_v2_list.value.extend(
        (feature.slot << 48) | k for k in range(13)
    )
    over_limit = predict_request("entry", {"example_batch": [shared.SerializeToString()]})
    rank_65 = predict_request("entry", {"instances": [b""]})
    for _ in range(64):  # numpy cannot build this shape, so the proto is extended by hand
        rank_65.inputs["instances"].tensor_shape.dim.add(size=1)

    async def scenario() -> dict[str, float | None]:
        metrics = EntryMetrics()
        model = EntryModel(
            config=config.model,
            num_ps=2,
            lookup=FilledLookup(1.0, shards=2),
            ps_ready=lambda version: True,
            metrics=metrics,
            max_fids_per_request=config.max_fids_per_request,
        )
        await model.refresh()
        servicer = EntryPredictionServicer(model, metrics)
        server = build_server(
            GrpcServerOptions(port=0, host="127.0.0.1"),
            [lambda s: prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, s)],  # type: ignore[no-untyped-call]
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Predict(over_limit, timeout=10)
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert f"list {feature.name!r}: 104 fids (13 shared by 8 examples)" in (refused.value.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as too_deep:
                    await stub.Predict(rank_65, timeout=10)
                assert too_deep.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert "'instances': shape has 65 dimensions" in (too_deep.value.details() or "")
                response = await stub.Predict(good, timeout=10)
                assert response.model_spec.version.value == 1
        finally:
            await server.server.stop(None)
        registry = metrics.registry
        return {
            code: registry.get_sample_value("entry_predict_requests_total", {"code": code})
            for code in ("INVALID_ARGUMENT", "OK")
        }

    assert asyncio.run(scenario()) == {"INVALID_ARGUMENT": 2.0, "OK": 1.0}


def test_the_agent_port_comes_from_port2_checked(export: Path) -> None:
    without_targets = _parse(export, shards=())
    assert server_config_from_args(without_targets, {"PORT2": "9123"}).agent_address == "localhost:9123"
    for bad in ("abc", "70000"):
        with pytest.raises(InvalidArgumentError, match="PORT2"):
            server_config_from_args(without_targets, {"PORT2": bad})
    with pytest.raises(InvalidArgumentError, match=r"set \$PORT2"):  # empty counts as unset
        server_config_from_args(without_targets, {"PORT2": ""})
    with pytest.raises(SystemExit):
        _parse(export, "--rest_api_port", "70000")


def test_the_host_defaults_to_every_interface_like_the_other_servers(export: Path) -> None:
    assert server_config_from_args(_parse(export), {}).host == "0.0.0.0"
    assert server_config_from_args(_parse(export, "--host", "127.0.0.1"), {}).host == "127.0.0.1"


# /proc/net/tcp{,6} spell 127.0.0.1, ::1 and ::ffff:127.0.0.1 so (hex, each 32-bit word little-endian).
_LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
_TCP_LISTEN = "0A"


def _listening_addresses(port: int) -> set[str]:
    """The local addresses (as /proc/net/tcp spells them) of the sockets listening on ``port``."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == _TCP_LISTEN and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from Linux's /proc")
def test_host_loopback_binds_grpc_and_metrics_to_loopback_only(export: Path) -> None:
    metrics_port = free_port()
    args = _parse(export, "--host", "127.0.0.1", "--port", "0", "--metrics_port", str(metrics_port), shards=TWO_SHARDS)
    config = server_config_from_args(args, {})

    async def bound() -> tuple[set[str], set[str]]:
        server = EntryServer(dataclasses.replace(config, ps_status_timeout_s=0.1))
        try:
            await server.start()
            return _listening_addresses(server.port), _listening_addresses(metrics_port)
        finally:
            await server.stop()

    grpc_addresses, metrics_addresses = asyncio.run(bound())
    assert grpc_addresses and grpc_addresses <= _LOOPBACK_HEX, grpc_addresses
    assert metrics_addresses and metrics_addresses <= _LOOPBACK_HEX, metrics_addresses
