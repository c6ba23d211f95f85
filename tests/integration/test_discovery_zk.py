"""ZkDiscovery, ReplicaUpdater and ReplicaWatcher against a real ZooKeeper server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss
from zk_harness import ZooKeeperServer

from monolith_serving.core.errors import UnavailableError
from monolith_serving.core.zk_paths import (
    UNSET_REPLICA_ID,
    ReplicaPath,
    ServerType,
    binding_path,
    container_service_path,
    service_root,
)
from monolith_serving.discovery import (
    Backend,
    DiscoveryConfig,
    EventKind,
    ModelState,
    ReplicaMeta,
    SessionState,
    WatchEvent,
    create_discovery,
)
from monolith_serving.discovery.metrics import DiscoveryMetrics
from monolith_serving.discovery.replica_meta import ContainerServiceInfo
from monolith_serving.discovery.replica_updater import LocalReplica, ReplicaUpdater, claim_entry_replica
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.discovery.zk import ZkDiscovery

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def zk_config(server: ZooKeeperServer, session_timeout_s: float = 6.0) -> DiscoveryConfig:
    return DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=server.hosts, session_timeout_s=session_timeout_s)


def new_bzid() -> str:
    return f"bz{uuid.uuid4().hex[:10]}"


async def eventually(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def plain_kazoo(server: ZooKeeperServer) -> KazooClient:
    client = KazooClient(hosts=server.hosts, timeout=10)
    client.start(timeout=15)
    return client


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def expire_session(server: ZooKeeperServer, session: tuple[int, bytes]) -> None:
    """ZooKeeper's own expiry technique: a second client joins the session and closes it."""
    thief = KazooClient(hosts=server.hosts, client_id=session, timeout=10)
    thief.start(timeout=15)
    thief.stop()
    thief.close()


class StatusScript:
    """A status source whose answers the test sets per model name (stands in for GetModelStatus)."""

    def __init__(self) -> None:
        self.states: dict[str, Sequence[int]] = {}
        self.fail: set[str] = set()

    async def __call__(self, replica: LocalReplica) -> Sequence[int]:
        if replica.model_name in self.fail:
            raise ConnectionError("model server not answering")
        return self.states.get(replica.model_name, [])


# --------------------------------------------------------------------------------------------- Discovery


def test_ephemeral_lifecycle_is_visible_to_a_plain_client(zk_server: ZooKeeperServer) -> None:
    bzid = new_bzid()
    path = f"/{bzid}/service/m/ps:0/1"

    async def body() -> None:
        disc = create_discovery(zk_config(zk_server))
        assert isinstance(disc, ZkDiscovery)
        async with disc:
            assert await disc.wait_connected(15)
            await disc.register_ephemeral(path, b"one")
            reader = plain_kazoo(zk_server)
            try:
                data, stat = reader.get(path)
                assert data == b"one"
                session = disc.session_id()
                assert session is not None and stat.ephemeralOwner == session[0]
                await disc.update_ephemeral(path, b"two")
                assert reader.get(path)[0] == b"two"
                assert await disc.get_data(path) == b"two"
                assert await disc.get_children(f"/{bzid}/service/m") == ["ps:0"]
                await disc.set_persistent(f"/{bzid}/saved_models/m/entry", b'{"x": 1}')
                assert reader.get(f"/{bzid}/saved_models/m/entry")[0] == b'{"x": 1}'
                assert (await disc.get_leaves(f"/{bzid}")).keys() == {path, f"/{bzid}/saved_models/m/entry"}
                await disc.unregister(path)
                assert reader.exists(path) is None
                await disc.register_ephemeral(path, b"three")
            finally:
                reader.stop()
                reader.close()
        # stop() deletes our ephemerals first, then closes the session.
        reader = plain_kazoo(zk_server)
        try:
            assert reader.exists(path) is None
            assert reader.exists(f"/{bzid}/saved_models/m/entry") is not None
        finally:
            reader.stop()
            reader.close()

    run(body)


def test_subtree_watch_reports_add_change_remove_of_leaves(zk_server: ZooKeeperServer) -> None:
    bzid = new_bzid()
    root = f"/{bzid}/service"

    async def body() -> None:
        async with create_discovery(zk_config(zk_server)) as disc:
            assert await disc.wait_connected(15)
            await disc.register_ephemeral(f"{root}/m/ps:0/1", b"a")
            events: list[WatchEvent] = []
            handle = await disc.watch_subtree(root, events.append)
            await eventually(lambda: len(events) == 1, what="initial ADDED")
            assert events[0] == WatchEvent(EventKind.ADDED, f"{root}/m/ps:0/1", b"a")

            writer = plain_kazoo(zk_server)
            try:
                writer.create(f"{root}/m/ps:1/7", b"b", makepath=True)
                await eventually(lambda: len(events) == 2, what="ADDED from another client")
                assert events[1] == WatchEvent(EventKind.ADDED, f"{root}/m/ps:1/7", b"b")
                writer.set(f"{root}/m/ps:1/7", b"c")
                await eventually(lambda: len(events) == 3, what="CHANGED")
                assert events[2] == WatchEvent(EventKind.CHANGED, f"{root}/m/ps:1/7", b"c")
                writer.delete(f"{root}/m/ps:1/7")
                await eventually(lambda: any(e.kind is EventKind.REMOVED for e in events), what="REMOVED")
                removed = [e for e in events if e.kind is EventKind.REMOVED]
                assert removed[0] == WatchEvent(EventKind.REMOVED, f"{root}/m/ps:1/7", b"c")
                # The emptied task directory became a leaf itself: reported, with its empty data.
                await eventually(lambda: any(e.path == f"{root}/m/ps:1" for e in events), what="dir leaf")
                handle.cancel()
                count = len(events)
                writer.create(f"{root}/m/ps:2/1", b"d", makepath=True)
                await asyncio.sleep(0.5)
                assert len(events) == count
            finally:
                writer.stop()
                writer.close()

    run(body)


def test_session_expiry_recreates_ephemerals_and_rearms_watches(zk_server: ZooKeeperServer) -> None:
    bzid = new_bzid()
    path = f"/{bzid}/service/m/entry:0/00000000001"

    async def body() -> None:
        disc = ZkDiscovery(zk_config(zk_server))
        states: list[SessionState] = []
        disc.add_state_listener(states.append)
        async with disc:
            assert await disc.wait_connected(15)
            await disc.register_ephemeral(path, b"v1")
            await disc.update_ephemeral(path, b"v2")
            events: list[WatchEvent] = []
            await disc.watch_subtree(f"/{bzid}/service", events.append)
            await eventually(lambda: len(events) == 1, what="initial event")
            old_session = disc.session_id()
            assert old_session is not None

            expire_session(zk_server, old_session)

            await eventually(lambda: SessionState.LOST in states, what="LOST")
            await eventually(lambda: disc.state is SessionState.CONNECTED, what="reconnect")
            new_session = disc.session_id()
            assert new_session is not None and new_session[0] != old_session[0]
            reader = plain_kazoo(zk_server)
            try:

                def recreated() -> bool:
                    stat = reader.exists(path)
                    return stat is not None and stat.ephemeralOwner == new_session[0]

                await eventually(recreated, what="ephemeral re-created under the new session")
                assert reader.get(path)[0] == b"v2"  # the latest data, not the first
                # Watches work again after the loss.
                reader.create(f"/{bzid}/service/m/ps:0/3", b"p", makepath=True)
                await eventually(lambda: any(e.path.endswith("ps:0/3") for e in events), what="event after re-arm")
            finally:
                reader.stop()
                reader.close()

    run(body)


def test_zookeeper_down_at_start_connects_and_registers_later(zk_private_server: ZooKeeperServer) -> None:
    zk_private_server.stop()
    path = "/bz/service/m/ps:0/4"

    async def body() -> None:
        async with ZkDiscovery(zk_config(zk_private_server)) as disc:
            assert not await disc.wait_connected(0.5)
            assert disc.state is not SessionState.CONNECTED
            await disc.register_ephemeral(path, b"late")  # recorded, written once connected
            with pytest.raises(Exception, match="not connected"):
                await disc.get_children("/bz")
            await asyncio.get_running_loop().run_in_executor(None, zk_private_server.start)
            assert await disc.wait_connected(30)
            await eventually(lambda: _exists(zk_private_server, path), what="late registration")

    run(body)


class FailNextSnapshot:
    """Stands in for ``ZkDiscovery.snapshot_blocking``: the read after ``arm()`` runs ``before_failing`` (on the
    executor thread, as the real read does) and then raises ``error``; every other read is the real one."""

    def __init__(
        self, real: Callable[[str, Any], dict[str, bytes]], error: Exception, before_failing: Callable[[], None]
    ) -> None:
        self._real = real
        self._error = error
        self._before_failing = before_failing
        self._armed = threading.Event()
        self.failed = threading.Event()

    def arm(self) -> None:
        self._armed.set()

    def __call__(self, root: str, watcher: Any) -> dict[str, bytes]:
        if not self._armed.is_set():
            return self._real(root, watcher)
        self._armed.clear()
        self._before_failing()
        self.failed.set()
        raise self._error


def _wait_in_thread(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("failure", ["session_replaced_during_read", "unexpected_error"])
def test_subtree_watch_survives_a_failed_resync(
    zk_server: ZooKeeperServer, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resync read that fails must not end the watch: neither a read cut by a session loss whose
    reconnect (new session, no watches yet) lands while the read is still failing, nor a bug in the read."""
    root = f"/{new_bzid()}/service"

    async def body() -> None:
        disc = ZkDiscovery(zk_config(zk_server))
        states: list[SessionState] = []
        disc.add_state_listener(states.append)
        async with disc:
            assert await disc.wait_connected(15)
            session = disc.session_id()
            assert session is not None

            def replace_session() -> None:
                expire_session(zk_server, session)
                # The new session's CONNECTED has reached the loop (and asked the watch to resync) before
                # this read reports its failure: the order that lost the watch.
                _wait_in_thread(
                    lambda: SessionState.LOST in states and disc.state is SessionState.CONNECTED, 30, "new session"
                )

            if failure == "session_replaced_during_read":
                fake = FailNextSnapshot(disc.snapshot_blocking, ConnectionLoss(), replace_session)
            else:
                fake = FailNextSnapshot(disc.snapshot_blocking, RuntimeError("injected bug"), lambda: None)
            monkeypatch.setattr(disc, "snapshot_blocking", fake)
            writer = plain_kazoo(zk_server)
            try:
                writer.create(f"{root}/ps:0/1", b"a", makepath=True)
                events: list[WatchEvent] = []
                await disc.watch_subtree(root, events.append)
                await eventually(lambda: len(events) == 1, what="initial ADDED")
                fake.arm()
                writer.create(f"{root}/ps:0/2", b"b")  # its resync is the read that fails
                await eventually(fake.failed.is_set, timeout_s=45, what="the failing read")
                writer.create(f"{root}/ps:0/3", b"c")
                await eventually(
                    lambda: {e.path for e in events} >= {f"{root}/ps:0/2", f"{root}/ps:0/3"},
                    what="events after the failed read",
                )
            finally:
                writer.stop()
                writer.close()

    run(body)


def test_nodes_with_null_data_read_as_empty(zk_server: ZooKeeperServer) -> None:
    """`zkCli.sh create <path>` without data leaves null data (kazoo returns None): read as b"", and the
    replica view skips such a node instead of failing whole."""
    bzid = new_bzid()
    root = service_root(bzid, "iptv")
    good = ReplicaMeta(address="10.0.0.1:1", stat=ModelState.AVAILABLE, server_type="ps", task=0, replica=1)

    async def body() -> None:
        async with create_discovery(zk_config(zk_server)) as disc:
            assert await disc.wait_connected(15)
            writer = plain_kazoo(zk_server)
            try:
                writer.create(f"{root}/ps:1", None, makepath=True)
                writer.create(f"{root}/ps:0/2", None, makepath=True)
                assert writer.get(f"{root}/ps:1")[0] is None  # what the server really stores
                assert await disc.get_data(f"{root}/ps:1") == b""
                assert await disc.get_leaves(root) == {f"{root}/ps:1": b"", f"{root}/ps:0/2": b""}
                events: list[WatchEvent] = []
                await disc.watch_subtree(root, events.append)
                await eventually(lambda: len(events) == 2, what="ADDED for the null nodes")
                assert {e.data for e in events} == {b""}
                async with ReplicaWatcher(discovery=disc, bzid=bzid, base_name="iptv") as watcher:
                    assert await watcher.wait_synced(10)
                    writer.create(f"{root}/ps:0/1", good.to_json())
                    await eventually(lambda: watcher.get_all_replicas() == {"ps:0": ["10.0.0.1:1"]}, what="view")
                await eventually(lambda: any(e.path == f"{root}/ps:0/1" for e in events), what="ADDED after")
            finally:
                writer.stop()
                writer.close()

    run(body)


def test_unregister_while_disconnected_deletes_once_the_session_resumes(
    zk_private_server: ZooKeeperServer,
) -> None:
    path = "/bz/binding/m/ps_0:default:pod-a"
    kept = "/bz/binding/m/ps_1:default:pod-a"

    async def body() -> None:
        # A session far longer than the outage: it survives, and so would a forgotten ephemeral.
        async with ZkDiscovery(zk_config(zk_private_server, session_timeout_s=20)) as disc:
            assert await disc.wait_connected(15)
            await disc.register_ephemeral(path, b"")
            await disc.register_ephemeral(kept, b"")
            session = disc.session_id()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, zk_private_server.stop)
            await eventually(lambda: disc.state is SessionState.SUSPENDED, what="SUSPENDED")
            await disc.unregister(path)
            await loop.run_in_executor(None, zk_private_server.start)
            await eventually(lambda: disc.state is SessionState.CONNECTED, timeout_s=30, what="reconnect")
            assert disc.session_id() == session  # same session: its ephemerals did not die with it
            await eventually(lambda: not _exists(zk_private_server, path), what="unregistered node deleted")
            assert _exists(zk_private_server, kept)

    run(body)


def _exists(server: ZooKeeperServer, path: str) -> bool:
    client = plain_kazoo(server)
    try:
        return client.exists(path) is not None
    finally:
        client.stop()
        client.close()


# --------------------------------------------------------------------------------------------- roles


def _replica(bzid: str, kind: ServerType, task: int, replica_id: int, port: int, **dc: str) -> LocalReplica:
    path = ReplicaPath(bzid=bzid, base_name="iptv", server_type=kind, task=task, replica_id=replica_id, **dc)
    name = "entry" if kind is ServerType.ENTRY else f"{kind.value}_{task}"
    return LocalReplica(
        path=path,
        model_name=name,
        address=f"127.0.0.1:{port}",
        address_ipv6=f"[::1]:{port}",
        archon_address=f"127.0.0.1:{port + 1}",
        archon_address_ipv6=f"[::1]:{port + 1}",
    )


def test_updater_registers_updates_and_watcher_follows(zk_server: ZooKeeperServer) -> None:
    bzid = new_bzid()
    entry = _replica(bzid, ServerType.ENTRY, 0, 7, 9000)
    ps0 = _replica(bzid, ServerType.PS, 0, 7, 9100)
    ps1 = _replica(bzid, ServerType.PS, 1, 7, 9200)
    status = StatusScript()

    async def body() -> None:
        async with (
            create_discovery(zk_config(zk_server)) as agent_disc,
            create_discovery(zk_config(zk_server)) as reader_disc,
        ):
            assert await agent_disc.wait_connected(15) and await reader_disc.wait_connected(15)
            updater = ReplicaUpdater(
                discovery=agent_disc, replicas=[entry, ps0, ps1], status_source=status, interval_s=0.1
            )
            watcher = ReplicaWatcher(discovery=reader_disc, bzid=bzid, base_name="iptv", resync_interval_s=1.0)
            async with updater, watcher:
                assert updater.ready
                reader = plain_kazoo(zk_server)
                try:
                    # Registered with stat UNKNOWN, entry id padded to 11 digits, every ReplicaMeta key.
                    data, _ = reader.get(f"/{bzid}/service/iptv/entry:0/00000000007")
                    meta = json.loads(data)
                    assert meta == {
                        "address": "127.0.0.1:9000",
                        "address_ipv6": "[::1]:9000",
                        "stat": 0,
                        "model_name": "entry",
                        "server_type": "entry",
                        "task": 0,
                        "replica": 7,
                        "archon_address": "127.0.0.1:9001",
                        "archon_address_ipv6": "[::1]:9001",
                    }
                    assert reader.exists(f"/{bzid}/service/iptv/ps:1/7") is not None
                    assert await watcher.wait_synced(10)
                    assert watcher.get_replicas(ServerType.PS, 0) == []  # UNKNOWN is not usable

                    status.states = {"ps_0": [ModelState.LOADING], "ps_1": [ModelState.AVAILABLE, ModelState.LOADING]}
                    assert await watcher.wait_until_available(ServerType.PS, [1], timeout_s=10)
                    assert watcher.get_replicas(ServerType.PS, 1) == ["127.0.0.1:9200"]
                    assert watcher.get_replicas(ServerType.PS, 0) == []
                    await eventually(
                        lambda: json.loads(reader.get(f"/{bzid}/service/iptv/ps:0/7")[0])["stat"] == 20,
                        what="LOADING written",
                    )

                    status.states["ps_0"] = [ModelState.AVAILABLE]
                    status.states["entry"] = [ModelState.AVAILABLE]
                    assert await watcher.wait_until_available(ServerType.PS, [0, 1], timeout_s=10)
                    await eventually(lambda: bool(watcher.get_replicas(ServerType.ENTRY, 0)), what="entry")
                    assert watcher.get_all_replicas() == {
                        "entry:0": ["127.0.0.1:9000"],
                        "ps:0": ["127.0.0.1:9100"],
                        "ps:1": ["127.0.0.1:9200"],
                    }
                    assert watcher.get_replica(ServerType.PS, 0) == "127.0.0.1:9100"
                    assert watcher.get_replica(ServerType.PS, 5) is None

                    # A server that stops answering is advertised UNKNOWN again.
                    status.fail.add("ps_1")
                    await eventually(lambda: watcher.get_replicas(ServerType.PS, 1) == [], what="ps_1 unknown")
                    assert updater.state_of(ps1) == ModelState.UNKNOWN
                finally:
                    reader.stop()
                    reader.close()
            # Updater stop deleted its nodes; the watcher view had followed until it stopped.
            assert await reader_disc.get_children(f"/{bzid}/service/iptv/ps:0") == []

    run(body)


def test_watcher_skips_malformed_nodes_and_keeps_going(zk_server: ZooKeeperServer) -> None:
    bzid = new_bzid()
    root = service_root(bzid, "iptv")
    good = ReplicaMeta(address="10.0.0.1:1", stat=ModelState.AVAILABLE, server_type="ps", task=0, replica=1)

    async def body() -> None:
        async with create_discovery(zk_config(zk_server)) as disc:
            assert await disc.wait_connected(15)
            writer = plain_kazoo(zk_server)
            try:
                writer.create(f"{root}/ps:0/1", good.to_json(), makepath=True)
                writer.create(f"{root}/ps:0/2", b"{not json", makepath=True)
                writer.create(f"{root}/ps:0/3", b'{"address": 5, "stat": 30}', makepath=True)
                writer.create(f"{root}/ps:0/4", b'{"address": "10.0.0.4:1", "stat": "30"}', makepath=True)
                writer.create(f"{root}/ps:0/junk", b"{}", makepath=True)
                extra = json.loads(good.to_json()) | {"address": "10.0.0.5:1", "new_key": [1]}
                writer.create(f"{root}/ps:0/5", json.dumps(extra).encode(), makepath=True)
                async with ReplicaWatcher(discovery=disc, bzid=bzid, base_name="iptv") as watcher:
                    assert await watcher.wait_synced(10)
                    await eventually(lambda: len(watcher.get_replicas("ps", 0)) == 2, what="good nodes")
                    assert watcher.get_replicas("ps", 0) == ["10.0.0.1:1", "10.0.0.5:1"]
                    # A good node turning bad is dropped; the watcher still follows later changes.
                    writer.set(f"{root}/ps:0/5", b"[]")
                    await eventually(lambda: watcher.get_replicas("ps", 0) == ["10.0.0.1:1"], what="drop")
                    writer.set(f"{root}/ps:0/2", good.to_json().replace(b"10.0.0.1", b"10.0.0.2"))
                    await eventually(lambda: len(watcher.get_replicas("ps", 0)) == 2, what="repaired node")
            finally:
                writer.stop()
                writer.close()

    run(body)


def test_watcher_keeps_good_replicas_through_resyncs_next_to_deeply_nested_nodes(zk_server: ZooKeeperServer) -> None:
    """Any registry writer can create a node of 100 kB of '[' (json.loads: RecursionError). It once aborted
    every resync half-way through an emptied view, and nothing repaired that while no node changed."""
    bzid = new_bzid()
    root = service_root(bzid, "iptv")
    poison = b"[" * 100_000

    def meta(kind: str, task: int, port: int) -> bytes:
        address = f"127.0.0.1:{port}"
        return ReplicaMeta(address=address, stat=ModelState.AVAILABLE, server_type=kind, task=task).to_json()

    good = {"entry:0/00000000000": meta("entry", 0, 9000), "ps:0/0": meta("ps", 0, 9100), "ps:1/0": meta("ps", 1, 9200)}
    expected = {"entry:0": ["127.0.0.1:9000"], "ps:0": ["127.0.0.1:9100"], "ps:1": ["127.0.0.1:9200"]}
    metrics = DiscoveryMetrics()

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return metrics.registry.get_sample_value(name, labels or {}) or 0.0

    async def body() -> None:
        async with create_discovery(zk_config(zk_server)) as disc:
            assert await disc.wait_connected(15)
            writer = plain_kazoo(zk_server)
            try:
                for leaf, data in good.items():
                    writer.create(f"{root}/{leaf}", data, makepath=True)
                watcher = ReplicaWatcher(
                    discovery=disc, bzid=bzid, base_name="iptv", resync_interval_s=0.3, metrics=metrics
                )
                async with watcher:
                    await eventually(lambda: watcher.get_all_replicas() == expected, what="good replicas")
                    # Poison before, between and after the good nodes of every task directory.
                    for leaf in ("dense:0/0", "entry:0/00000000001", "ps:0/00", "ps:0/1", "ps:1/9"):
                        writer.create(f"{root}/{leaf}", poison, makepath=True)
                    malformed = ("discovery_malformed_nodes_total", {"kind": "replica"})
                    await eventually(lambda: sample(*malformed) == 5, what="malformed nodes reported")
                    resyncs = sample("discovery_replica_watcher_resync_seconds_count")
                    await eventually(
                        lambda: sample("discovery_replica_watcher_resync_seconds_count") >= resyncs + 3,
                        what="three periodic resyncs",
                    )
                    assert watcher.get_all_replicas() == expected
                    await watcher.resync()
                    assert watcher.get_all_replicas() == expected
                    assert sample(*malformed) == 5  # counted once per node, not once per resync
                    # Later changes of good nodes are still followed.
                    writer.set(f"{root}/ps:1/0", meta("ps", 1, 9300))
                    await eventually(lambda: watcher.get_replicas("ps", 1) == ["127.0.0.1:9300"], what="ps:1 moved")
                    assert watcher.get_replicas("entry", 0) == ["127.0.0.1:9000"]
            finally:
                writer.stop()
                writer.close()

    run(body)


def test_dc_aware_paths_and_filtering(zk_server: ZooKeeperServer) -> None:
    bzid = new_bzid()
    lf = _replica(bzid, ServerType.PS, 0, 1, 9300, idc="lf", cluster="c1")
    hl = _replica(bzid, ServerType.PS, 0, 2, 9400, idc="hl", cluster="c2")
    status = StatusScript()
    status.states = {"ps_0": [ModelState.AVAILABLE]}

    async def body() -> None:
        async with create_discovery(zk_config(zk_server)) as disc:
            assert await disc.wait_connected(15)
            updater = ReplicaUpdater(discovery=disc, replicas=[lf, hl], status_source=status, interval_s=0.1)
            async with updater, ReplicaWatcher(discovery=disc, bzid=bzid, base_name="iptv") as watcher:
                assert await watcher.wait_until_available(ServerType.PS, [0], timeout_s=10)
                await eventually(lambda: len(watcher.get_replicas("ps", 0)) == 2, what="both dcs")
                assert await disc.get_children(f"/{bzid}/service/iptv") == ["hl:c2", "lf:c1"]
                assert await disc.get_children(f"/{bzid}/service/iptv/lf:c1/ps:0") == ["1"]
                assert watcher.get_replicas("ps", 0, idc="lf") == ["127.0.0.1:9300"]
                assert watcher.get_replicas("ps", 0, cluster="c2") == ["127.0.0.1:9400"]
                assert watcher.get_replicas("ps", 0, idc="lf", cluster="c2") == []
                assert watcher.get_all_replicas(idc="hl") == {"ps:0": ["127.0.0.1:9400"]}

    run(body)


def test_v3_bindings_and_container_services(zk_server: ZooKeeperServer) -> None:
    bzid = new_bzid()

    async def body() -> None:
        async with create_discovery(zk_config(zk_server)) as disc:
            assert await disc.wait_connected(15)
            c1 = ContainerServiceInfo(grpc="10.1.0.1:8500", http="10.1.0.1:8501", agent="10.1.0.1:8600", idc="lf")
            c2 = ContainerServiceInfo(grpc="10.1.0.2:8500", idc="hl", debug_info="pod-2")
            await disc.register_ephemeral(container_service_path(bzid, "clusterA", "1"), c1.to_json())
            await disc.register_ephemeral(container_service_path(bzid, "clusterA", "2"), c2.to_json())
            await disc.register_ephemeral(binding_path(bzid, "iptv", "ps_0", "clusterA", "1"), b"")
            await disc.register_ephemeral(binding_path(bzid, "iptv", "ps_0", "clusterA", "2"), b"")
            await disc.register_ephemeral(binding_path(bzid, "iptv", "entry", "clusterA", "2"), b"")
            # Bound to a container that never published its addresses: not routable.
            await disc.register_ephemeral(binding_path(bzid, "iptv", "ps_1", "clusterB", "9"), b"")
            async with ReplicaWatcher(discovery=disc, bzid=bzid, agent_version=3) as watcher:
                assert await watcher.wait_synced(10)
                await eventually(lambda: len(watcher.get_all_v3_replicas()) == 2, what="v3 view")
                assert watcher.get_all_v3_replicas() == {
                    "iptv:entry": ["10.1.0.2:8500"],
                    "iptv:ps_0": ["10.1.0.1:8500", "10.1.0.2:8500"],
                }
                assert watcher.get_v3_replicas("iptv", "ps_0", idc="lf") == ["10.1.0.1:8500"]
                assert watcher.get_v3_replicas("iptv", "ps_1") == []
                await disc.unregister(binding_path(bzid, "iptv", "ps_0", "clusterA", "1"))
                await eventually(lambda: watcher.get_v3_replicas("iptv", "ps_0") == ["10.1.0.2:8500"], what="unbind")
                await disc.register_ephemeral(container_service_path(bzid, "clusterB", "9"), c1.to_json())
                await eventually(lambda: watcher.get_v3_replicas("iptv", "ps_1") != [], what="late container")
            reader = plain_kazoo(zk_server)
            try:
                data, _ = reader.get(f"/{bzid}/container_service/clusterA:1")
                assert set(json.loads(data)) == {"grpc", "http", "archon", "agent", "idc", "debug_info"}
                assert reader.get_children(f"/{bzid}/binding/iptv") != []
            finally:
                reader.stop()
                reader.close()

    run(body)


def test_watcher_serves_last_view_while_zookeeper_is_down(zk_private_server: ZooKeeperServer) -> None:
    bzid = new_bzid()
    ps0 = _replica(bzid, ServerType.PS, 0, 1, 9500)
    status = StatusScript()
    status.states = {"ps_0": [ModelState.AVAILABLE]}

    async def body() -> None:
        cfg = zk_config(zk_private_server, session_timeout_s=20)
        async with create_discovery(cfg) as agent, create_discovery(cfg) as reader_disc:
            assert await agent.wait_connected(15) and await reader_disc.wait_connected(15)
            updater = ReplicaUpdater(discovery=agent, replicas=[ps0], status_source=status, interval_s=0.1)
            watcher = ReplicaWatcher(discovery=reader_disc, bzid=bzid, base_name="iptv", resync_interval_s=0.2)
            async with updater, watcher:
                assert await watcher.wait_until_available("ps", [0], timeout_s=10)
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, zk_private_server.stop)
                await eventually(lambda: watcher.stale, what="stale flag")
                assert not updater.ready
                await asyncio.sleep(0.5)  # several resync periods pass while disconnected
                assert watcher.get_replicas("ps", 0) == ["127.0.0.1:9500"]
                await loop.run_in_executor(None, zk_private_server.start)
                await eventually(lambda: not watcher.stale, timeout_s=30, what="reconnect")
                await eventually(lambda: updater.ready, what="updater ready again")
                assert watcher.get_replicas("ps", 0) == ["127.0.0.1:9500"]

    run(body)


# ------------------------------------------------------------------------------ Monolith-style reader


def test_monolith_style_reader_finds_every_replica(zk_server: ZooKeeperServer) -> None:
    """Read our tree the way Monolith's watcher does: children of the service root, `type:task`, JSON."""
    bzid = new_bzid()
    replicas = [
        _replica(bzid, ServerType.ENTRY, 0, 3, 9600),
        _replica(bzid, ServerType.ENTRY, 0, 12345678901, 9610),
        _replica(bzid, ServerType.PS, 0, 3, 9620),
        _replica(bzid, ServerType.PS, 1, 3, 9630),
        _replica(bzid, ServerType.DENSE, 0, 3, 9640),
    ]
    status = StatusScript()
    status.states = {r.model_name: [ModelState.AVAILABLE] for r in replicas}

    async def body() -> None:
        async with create_discovery(zk_config(zk_server)) as disc:
            assert await disc.wait_connected(15)
            updater = ReplicaUpdater(discovery=disc, replicas=replicas, status_source=status, interval_s=0.1)
            async with updater:
                reader = plain_kazoo(zk_server)
                try:
                    base = f"/{bzid}/service/iptv"

                    def read_all() -> dict[tuple[str, int], dict[int, dict[str, object]]]:
                        found: dict[tuple[str, int], dict[int, dict[str, object]]] = {}
                        for task_dir in reader.get_children(base):
                            server_type, task = task_dir.split(":")
                            for replica in reader.get_children(f"{base}/{task_dir}"):
                                meta = json.loads(reader.get(f"{base}/{task_dir}/{replica}")[0])
                                found.setdefault((server_type, int(task)), {})[int(replica)] = meta
                        return found

                    await eventually(
                        lambda: all(m["stat"] == 30 for group in read_all().values() for m in group.values()),
                        what="all AVAILABLE",
                    )
                    found = read_all()
                    assert set(found) == {("entry", 0), ("ps", 0), ("ps", 1), ("dense", 0)}
                    assert sorted(reader.get_children(f"{base}/entry:0")) == ["00000000003", "12345678901"]
                    for r in replicas:
                        meta = found[(r.path.server_type.value, r.path.task)][r.path.replica_id]
                        assert meta["address"] == r.address
                        assert meta["server_type"] == r.path.server_type.value
                        assert meta["task"] == r.path.task and meta["replica"] == r.path.replica_id
                        assert meta["model_name"] == r.model_name
                finally:
                    reader.stop()
                    reader.close()

    run(body)


def test_watcher_reads_nodes_as_a_monolith_agent_writes_them(zk_server: ZooKeeperServer) -> None:
    """Monolith's ReplicaUpdater writes `0.0.0.0:port` when gethostbyname fails and `ps:{task}/-1` when the PS
    has no replica id; its readers use `address_ipv6` then, and list that replica (data_def.ReplicaMeta.get_address,
    replica_manager.ReplicaWatcher)."""
    bzid = new_bzid()
    root = service_root(bzid, "iptv")

    def monolith_meta(address: str, address_ipv6: str, stat: int = ModelState.AVAILABLE) -> bytes:
        return ReplicaMeta(address=address, address_ipv6=address_ipv6, stat=stat).to_json()

    async def body() -> None:
        async with create_discovery(zk_config(zk_server)) as disc:
            assert await disc.wait_connected(15)
            writer = plain_kazoo(zk_server)
            try:
                writer.create(f"{root}/ps:0/-1", monolith_meta("0.0.0.0:9700", "[::1]:9700"), makepath=True)
                writer.create(f"{root}/ps:1/-1", monolith_meta("127.0.0.1:9710", "[::]:9710"), makepath=True)
                writer.create(f"{root}/ps:2/-1", monolith_meta("127.0.0.1:9720", "[::1]:9720", stat=20), makepath=True)
                async with ReplicaWatcher(discovery=disc, bzid=bzid, base_name="iptv") as watcher:
                    assert await watcher.wait_synced(10)
                    expected = {"ps:0": ["[::1]:9700"], "ps:1": ["127.0.0.1:9710"], "ps:2": []}
                    await eventually(lambda: watcher.get_all_replicas() == expected, what="every task")
                    await watcher.resync()  # the full re-read agrees with the watch events
                    assert watcher.get_all_replicas() == expected
                    assert watcher.get_replicas(ServerType.PS, 0) == ["[::1]:9700"]
                    assert {info.path.replica_id for info in watcher.replicas()} == {-1}
                    # The replica comes up: its stat changes in place, like any other node.
                    writer.set(f"{root}/ps:2/-1", monolith_meta("127.0.0.1:9720", "[::1]:9720"))
                    await eventually(lambda: watcher.get_replicas(ServerType.PS, 2) == ["127.0.0.1:9720"], what="up")
                    writer.delete(f"{root}/ps:0/-1")
                    await eventually(lambda: "ps:0" not in watcher.get_all_replicas(), what="ps:0 gone")
            finally:
                writer.stop()
                writer.close()

    run(body)


# --------------------------------------------------------------------------------------------- no replica id


def _unset_entry(bzid: str, port: int) -> LocalReplica:
    return _replica(bzid, ServerType.ENTRY, 0, UNSET_REPLICA_ID, port)


def test_entries_without_id_take_zookeepers_sequence_and_never_share_a_node(zk_server: ZooKeeperServer) -> None:
    """Two agents without a replica id (two sessions) get two entry nodes, numbered by ZooKeeper itself: a
    Monolith agent creating its sequential node in between takes the number between theirs."""
    bzid = new_bzid()
    task_dir = f"/{bzid}/service/iptv/entry:0"

    async def body() -> None:
        async with (
            create_discovery(zk_config(zk_server)) as agent_a,
            create_discovery(zk_config(zk_server)) as agent_b,
        ):
            assert await agent_a.wait_connected(15) and await agent_b.wait_connected(15)
            monolith = plain_kazoo(zk_server)
            try:
                first = await claim_entry_replica(agent_a, _unset_entry(bzid, 9000))
                between = monolith.create(f"{task_dir}/0", b"{}", ephemeral=True, sequence=True)
                second = await claim_entry_replica(agent_b, _unset_entry(bzid, 9010))
                ids = [first.path.replica_id, int(between.rsplit("/", 1)[1]), second.path.replica_id]
                assert ids == sorted(set(ids)), ids  # distinct, in creation order
                assert len({first.path.path, second.path.path, between}) == 3
                for claimed, session in ((first, agent_a), (second, agent_b)):
                    assert isinstance(session, ZkDiscovery)
                    data, stat = monolith.get(claimed.path.path)
                    assert len(claimed.path.replica_name) == 11 and claimed.path.path.startswith(f"{task_dir}/0")
                    own = session.session_id()
                    assert own is not None and stat.ephemeralOwner == own[0]
                    assert json.loads(data)["replica"] == claimed.path.replica_id  # the adopted id
            finally:
                monolith.stop()
                monolith.close()

    run(body)


def test_a_session_loss_brings_the_claimed_entry_node_back_under_its_number(zk_server: ZooKeeperServer) -> None:
    bzid = new_bzid()
    status = StatusScript()
    status.states = {"entry": [ModelState.AVAILABLE]}

    async def body() -> None:
        disc = ZkDiscovery(zk_config(zk_server))
        lost = asyncio.Event()
        disc.add_state_listener(lambda state: lost.set() if state is SessionState.LOST else None)
        async with disc:
            assert await disc.wait_connected(15)
            claimed = await claim_entry_replica(disc, _unset_entry(bzid, 9000))
            async with ReplicaUpdater(discovery=disc, replicas=[claimed], status_source=status, interval_s=0.1):
                reader = plain_kazoo(zk_server)
                try:
                    path = claimed.path.path

                    def stat_of_node() -> int | None:
                        node = reader.exists(path)
                        return None if node is None else int(json.loads(reader.get(path)[0])["stat"])

                    await eventually(lambda: stat_of_node() == ModelState.AVAILABLE, what="entry AVAILABLE")
                    old_session = disc.session_id()
                    assert old_session is not None
                    expire_session(zk_server, old_session)
                    await asyncio.wait_for(lost.wait(), 30)
                    assert await disc.wait_connected(30)
                    new_session = disc.session_id()
                    assert new_session is not None and new_session[0] != old_session[0]

                    def back_under_new_session() -> bool:
                        node = reader.exists(path)
                        return node is not None and node.ephemeralOwner == new_session[0]

                    await eventually(back_under_new_session, what="the same node re-created")
                    assert reader.get_children(claimed.path.task_path) == [claimed.path.replica_name]
                    assert json.loads(reader.get(path)[0])["replica"] == claimed.path.replica_id
                    # Its number is not handed out again: the next entry gets another one.
                    other = await claim_entry_replica(disc, _unset_entry(bzid, 9010))
                    assert other.path.replica_id > claimed.path.replica_id
                finally:
                    reader.stop()
                    reader.close()

    run(body)


class LoseNextSequentialReply:
    """Stands in for the kazoo client's ``create``: the next sequential create is sent, and made on the server if
    ``made``, but its reply is lost (ConnectionLoss), as when the connection drops right after the request; every
    other create is the real one."""

    def __init__(self, real: Callable[..., str], *, made: bool) -> None:
        self._real = real
        self._made = made
        self._armed = True
        self.created: list[str] = []  # what the lost create made on the server

    def __call__(self, path: str, value: bytes = b"", *args: Any, **kwargs: Any) -> str:
        if not (self._armed and kwargs.get("sequence")):
            return self._real(path, value, *args, **kwargs)
        self._armed = False
        if self._made:
            self.created.append(self._real(path, value, *args, **kwargs))
        raise ConnectionLoss()


def test_a_lost_create_reply_leaves_no_orphan_entry_node(
    zk_server: ZooKeeperServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server made the entry's sequential node but its reply was lost: the claim's retry adopts that node
    (this session's, holding what was sent) instead of making a second one that would stay, an UNKNOWN entry, for
    the session's life."""
    bzid = new_bzid()

    async def body() -> None:
        disc = ZkDiscovery(zk_config(zk_server))
        async with disc:
            assert await disc.wait_connected(15)
            lose = LoseNextSequentialReply(disc._client.create, made=True)
            monkeypatch.setattr(disc._client, "create", lose)
            entry = _unset_entry(bzid, 9000)
            with pytest.raises(UnavailableError):
                await claim_entry_replica(disc, entry)
            assert len(lose.created) == 1
            claimed = await claim_entry_replica(disc, entry)  # the agent's retry
            reader = plain_kazoo(zk_server)
            try:
                assert reader.get_children(claimed.path.task_path) == [claimed.path.replica_name]
                assert claimed.path.path == lose.created[0]
                assert claimed.path.replica_id == int(lose.created[0].rsplit("/", 1)[1])
                data, stat = reader.get(claimed.path.path)
                own = disc.session_id()
                assert own is not None and stat.ephemeralOwner == own[0]
                assert json.loads(data)["replica"] == claimed.path.replica_id
            finally:
                reader.stop()
                reader.close()

    run(body)


@pytest.mark.parametrize("made", [True, False], ids=["made", "not_made"])
def test_a_lost_sequential_reply_adopts_only_the_node_it_made(
    zk_server: ZooKeeperServer, monkeypatch: pytest.MonkeyPatch, made: bool
) -> None:
    """The retry after a lost reply takes the node that create made, if any, and nothing else under the prefix:
    not a registered node of the same session holding the same data, nor another session's (a Monolith agent's)."""
    prefix = f"/{new_bzid()}/service/iptv/entry:0/0"
    data = b'{"stat": 0}'

    async def body() -> None:
        disc = ZkDiscovery(zk_config(zk_server))
        async with disc:
            assert await disc.wait_connected(15)
            registered = await disc.register_ephemeral_sequential(prefix, data)
            lose = LoseNextSequentialReply(disc._client.create, made=made)
            monkeypatch.setattr(disc._client, "create", lose)
            with pytest.raises(UnavailableError):
                await disc.register_ephemeral_sequential(prefix, data)
            monolith = plain_kazoo(zk_server)
            try:
                foreign = monolith.create(prefix, data, ephemeral=True, sequence=True)
                retried = await disc.register_ephemeral_sequential(prefix, data)
                assert retried not in (registered, foreign)
                assert lose.created == ([retried] if made else [])
                parent = prefix.rsplit("/", 1)[0]
                leaves = sorted(p.rsplit("/", 1)[1] for p in (registered, foreign, retried))
                assert sorted(monolith.get_children(parent)) == leaves
            finally:
                monolith.stop()
                monolith.close()

    run(body)
