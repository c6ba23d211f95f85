"""The proxy's channels to entry replicas that leave discovery are closed, fan-out-only ones included.

GetModelStatus and HandleReloadConfigRequest are sent to every replica, not routed: an address that only
ever saw them (a status-only or admin-only model) must still lose its channel once it leaves discovery,
as every entry pod restart brings a new address. A fan-out still in flight keeps its channel. Real gRPC
servers over loopback stand in for the entries; the discovery view is a mutable EndpointSource.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc
import pytest

from monolith_serving.core.serving_call import GET_MODEL_STATUS, CallContext
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
)
from monolith_serving.proxy.core import RELOAD_CONFIG, CoreConfig, ProxyCore
from monolith_serving.proxy.metrics import ProxyMetrics
from monolith_serving.proxy.router import OutlierPolicy, Router
from monolith_serving.proxy.upstream import UpstreamPool

pytestmark = pytest.mark.integration

AVAILABLE = 30
TOKEN = "s3cret"


class Discovery:
    """An EndpointSource whose AVAILABLE addresses the test sets; every model is served by all of them."""

    lists_models = True

    def __init__(self) -> None:
        self.addresses: tuple[str, ...] = ()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def endpoints(self, model: str) -> tuple[str, ...]:
        return self.addresses

    def all_addresses(self) -> tuple[str, ...]:
        return self.addresses


class Entry:
    """A ModelService stand-in; while ``hold`` is set, GetModelStatus waits for it to clear (``entered`` is
    set once a held call has arrived)."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.address = ""
        self.hold = False
        self.entered = asyncio.Event()
        self.released = asyncio.Event()

    async def status(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if self.hold:
            self.entered.set()
            await self.released.wait()
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=self.version, state=AVAILABLE)
        return response.SerializeToString()

    async def reload(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return model_management_pb2.ReloadConfigResponse().SerializeToString()


@asynccontextmanager
async def serving(entry: Entry) -> AsyncIterator[Entry]:
    server = grpc.aio.server()
    handlers = {
        "GetModelStatus": grpc.unary_unary_rpc_method_handler(entry.status),
        "HandleReloadConfigRequest": grpc.unary_unary_rpc_method_handler(entry.reload),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", handlers)])
    entry.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        yield entry
    finally:
        entry.released.set()
        await server.stop(0)


@asynccontextmanager
async def proxy_core(discovery: Discovery) -> AsyncIterator[tuple[ProxyCore, UpstreamPool]]:
    pool = UpstreamPool()
    core = ProxyCore(
        source=discovery,
        router=Router(OutlierPolicy()),
        pool=pool,
        metrics=ProxyMetrics(),
        config=CoreConfig(admin_token=TOKEN),
    )
    try:
        yield core, pool
    finally:
        await pool.close()


def _status_request(model: str) -> bytes:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    return request.SerializeToString()


def _ctx(token: str | None = None) -> CallContext:
    return CallContext(request_id="churn", timeout_s=5.0, protocol="grpc", admin_token=token)


async def _versions(core: ProxyCore, model: str) -> list[int]:
    reply = await core.call(GET_MODEL_STATUS, _status_request(model), _ctx())
    response = get_model_status_pb2.GetModelStatusResponse.FromString(reply.response)
    return sorted(s.version for s in response.model_version_status)


def _open_channels(pool: UpstreamPool) -> set[str]:
    return set(pool._channels)


def test_channels_of_replicas_that_only_saw_fan_outs_are_closed_when_they_leave_discovery() -> None:
    async def scenario() -> None:
        discovery = Discovery()
        async with AsyncExitStack() as stack:
            core, pool = await stack.enter_async_context(proxy_core(discovery))
            seen: list[str] = []
            for generation in range(1, 4):  # each entry pod restart is a new address
                entry = await stack.enter_async_context(serving(Entry(version=generation)))
                seen.append(entry.address)
                discovery.addresses = (entry.address,)
                assert await _versions(core, "status-only:entry") == [generation]
                await core.call(
                    RELOAD_CONFIG, model_management_pb2.ReloadConfigRequest().SerializeToString(), _ctx(TOKEN)
                )
                await core.maintenance_step()
                assert _open_channels(pool) == {entry.address}, f"generation {generation}: seen {seen}"
            discovery.addresses = ()
            await core.maintenance_step()
            assert _open_channels(pool) == set()

    asyncio.run(scenario())


def test_an_admin_only_replica_loses_its_channel_when_it_leaves_discovery() -> None:
    async def scenario() -> None:
        discovery = Discovery()
        async with AsyncExitStack() as stack:
            core, pool = await stack.enter_async_context(proxy_core(discovery))
            old = await stack.enter_async_context(serving(Entry(version=1)))
            new = await stack.enter_async_context(serving(Entry(version=2)))
            discovery.addresses = (old.address, new.address)
            await core.call(RELOAD_CONFIG, model_management_pb2.ReloadConfigRequest().SerializeToString(), _ctx(TOKEN))
            assert _open_channels(pool) == {old.address, new.address}
            discovery.addresses = (new.address,)
            await core.maintenance_step()
            assert _open_channels(pool) == {new.address}

    asyncio.run(scenario())


def test_a_channel_with_a_fan_out_in_flight_is_not_closed_under_it() -> None:
    async def scenario() -> None:
        discovery = Discovery()
        async with AsyncExitStack() as stack:
            core, pool = await stack.enter_async_context(proxy_core(discovery))
            leaving = await stack.enter_async_context(serving(Entry(version=1)))
            staying = await stack.enter_async_context(serving(Entry(version=2)))
            discovery.addresses = (leaving.address, staying.address)
            leaving.hold = True
            status = asyncio.create_task(_versions(core, "status-only:entry"))
            await asyncio.wait_for(leaving.entered.wait(), 5)

            discovery.addresses = (staying.address,)  # leaves discovery while its GetModelStatus runs
            await core.maintenance_step()
            assert _open_channels(pool) == {leaving.address, staying.address}

            leaving.released.set()
            assert await asyncio.wait_for(status, 5) == [1, 2]  # its answer was not cut off
            await core.maintenance_step()
            assert _open_channels(pool) == {staying.address}

    asyncio.run(scenario())
