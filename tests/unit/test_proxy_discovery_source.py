"""DiscoveryEndpointSource over the real ReplicaWatcher fed by the in-process static discovery backend."""

from __future__ import annotations

import asyncio

import pytest

from monolith_serving.core.errors import NotFoundError
from monolith_serving.core.zk_paths import ReplicaPath, ServerType, binding_path, container_service_path
from monolith_serving.discovery.replica_meta import ContainerServiceInfo, ReplicaMeta
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.discovery.static import StaticDiscovery
from monolith_serving.proxy.discovery_source import DiscoveryEndpointSource

AVAILABLE, LOADING = 30, 20


def _replica(replica_id: int, address: str, stat: int, server_type: ServerType = ServerType.ENTRY) -> tuple[str, bytes]:
    path = ReplicaPath("bz", "rec", server_type, 0, replica_id)
    meta = ReplicaMeta(address=address, stat=stat, model_name=server_type.value if server_type else None)
    return path.path, meta.to_json()


async def _source(nodes: dict[str, bytes], agent_version: int = 1) -> tuple[DiscoveryEndpointSource, StaticDiscovery]:
    discovery = StaticDiscovery(nodes=nodes)
    watcher = ReplicaWatcher(discovery=discovery, bzid="bz", base_name="rec", agent_version=agent_version)
    source = DiscoveryEndpointSource(
        discovery=discovery, watcher=watcher, agent_version=agent_version, sync_timeout_s=2.0, view_ttl_s=0.0
    )
    await source.start()
    return source, discovery


def test_v1_available_entries_only_and_unknown_models() -> None:
    async def scenario() -> None:
        nodes = dict(
            [
                _replica(1, "10.0.0.1:8500", AVAILABLE),
                _replica(2, "10.0.0.2:8500", LOADING),
                _replica(3, "10.0.0.3:8500", AVAILABLE, ServerType.PS),
            ]
        )
        source, discovery = await _source(nodes)
        try:
            assert source.endpoints("entry") == ("10.0.0.1:8500",)
            assert source.all_addresses() == ("10.0.0.1:8500",)
            with pytest.raises(NotFoundError):
                source.endpoints("ps")  # PS replicas are never proxy targets
            with pytest.raises(NotFoundError):
                source.endpoints("other")
            # The only AVAILABLE entry goes LOADING: still known, nothing to route to.
            path, data = _replica(1, "10.0.0.1:8500", LOADING)
            await discovery.set_persistent(path, data)
            await asyncio.sleep(0.05)
            assert source.endpoints("entry") == ()
        finally:
            await source.stop()

    asyncio.run(scenario())


def test_v3_bindings_joined_with_container_addresses() -> None:
    async def scenario() -> None:
        nodes = {
            binding_path("bz", "rank", "entry", "c1", "0"): b"",
            binding_path("bz", "rank", "ps_0", "c1", "1"): b"",
            container_service_path("bz", "c1", "0"): ContainerServiceInfo(grpc="10.0.0.5:8500").to_json(),
            container_service_path("bz", "c1", "1"): ContainerServiceInfo(grpc="10.0.0.6:8500").to_json(),
        }
        source, _ = await _source(nodes, agent_version=3)
        try:
            assert source.endpoints("rank:entry") == ("10.0.0.5:8500",)
            with pytest.raises(NotFoundError):
                source.endpoints("rank:ps_0")
        finally:
            await source.stop()

    asyncio.run(scenario())
