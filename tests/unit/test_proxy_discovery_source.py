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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_model_whose_last_replica_left_is_unavailable_a_name_never_registered_not_found() -> None:
    # NOT_FOUND tells clients not to retry: right for a typo, wrong for a model between replicas (all of them
    # restarting). The registry keeps nothing of a model once its replica nodes are gone, so the source
    # remembers the names it saw leave, for forget_departed_s and at most max_departed of them.
    async def scenario() -> None:
        clock = Clock()
        nodes = dict([_replica(1, "10.0.0.1:8500", AVAILABLE)])
        other = ReplicaPath("bz", "rec", ServerType.ENTRY, 0, 2).path
        discovery = StaticDiscovery(nodes=nodes)
        watcher = ReplicaWatcher(discovery=discovery, bzid="bz", base_name="rec", agent_version=1)
        source = DiscoveryEndpointSource(
            discovery=discovery,
            watcher=watcher,
            agent_version=1,
            sync_timeout_s=2.0,
            view_ttl_s=0.0,
            forget_departed_s=60.0,
            max_departed=1,
            clock=clock,
        )
        await source.start()
        try:
            assert source.endpoints("entry") == ("10.0.0.1:8500",)
            b_meta = ReplicaMeta(address="10.0.0.2:8500", stat=AVAILABLE, model_name="b")
            await discovery.set_persistent(other, b_meta.to_json())
            await asyncio.sleep(0.05)
            assert source.endpoints("b") == ("10.0.0.2:8500",)
            path, _ = _replica(1, "10.0.0.1:8500", AVAILABLE)
            await discovery.delete(path)  # the last replica of "entry" deregisters
            await asyncio.sleep(0.05)
            assert source.endpoints("entry") == ()  # known, no replica right now: the core answers UNAVAILABLE
            assert source.all_addresses() == ("10.0.0.2:8500",)
            with pytest.raises(NotFoundError):
                source.endpoints("nope")  # never registered
            clock.now += 30
            assert source.endpoints("entry") == ()
            # Back again: routed; leaving again starts a new memory.
            await discovery.set_persistent(path, _replica(1, "10.0.0.1:8500", AVAILABLE)[1])
            await asyncio.sleep(0.05)
            assert source.endpoints("entry") == ("10.0.0.1:8500",)
            await discovery.delete(path)
            await asyncio.sleep(0.05)
            assert source.endpoints("entry") == ()  # seen gone now (the maintenance step looks every 0.5 s)
            clock.now += 59
            assert source.endpoints("entry") == ()
            clock.now += 2  # forget_departed_s after it left: a name like any never seen
            with pytest.raises(NotFoundError):
                source.endpoints("entry")
            # The cap: remembering one name, the older departure is forgotten first.
            await discovery.set_persistent(path, _replica(1, "10.0.0.1:8500", AVAILABLE)[1])
            await asyncio.sleep(0.05)
            assert source.endpoints("entry") == ("10.0.0.1:8500",)
            await discovery.delete(path)
            await asyncio.sleep(0.05)
            assert source.endpoints("entry") == ()
            clock.now += 1
            await discovery.delete(other)
            await asyncio.sleep(0.05)
            assert source.endpoints("b") == ()
            with pytest.raises(NotFoundError):
                source.endpoints("entry")
        finally:
            await source.stop()

    asyncio.run(scenario())


def test_a_v3_model_whose_last_binding_left_is_remembered() -> None:
    async def scenario() -> None:
        binding = binding_path("bz", "rank", "entry", "c1", "0")
        nodes = {
            binding: b"",
            container_service_path("bz", "c1", "0"): ContainerServiceInfo(grpc="10.0.0.5:8500").to_json(),
        }
        source, discovery = await _source(nodes, agent_version=3)
        try:
            assert source.endpoints("rank:entry") == ("10.0.0.5:8500",)
            await discovery.delete(binding)
            await asyncio.sleep(0.05)
            assert source.endpoints("rank:entry") == ()
            with pytest.raises(NotFoundError):
                source.endpoints("other:entry")
        finally:
            await source.stop()

    asyncio.run(scenario())
