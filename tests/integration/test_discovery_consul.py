"""Consul: the API subset we rely on, and ConsulDiscovery + the replica roles on top of it.

Runs against the in-repo double by default and against a real Consul agent when CONSUL_HTTP_ADDR is set,
so the double is held to Consul's behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import consul
import pytest
import requests
from consul_double import ConsulTarget

from monolith_serving.core.errors import FailedPreconditionError, UnavailableError
from monolith_serving.core.zk_paths import UNSET_REPLICA_ID, ReplicaPath, ServerType
from monolith_serving.discovery import DiscoveryConfig, EventKind, ModelState, SessionState, WatchEvent
from monolith_serving.discovery.consul_kv import SEQUENCE_COUNTER_NAME, ConsulDiscovery
from monolith_serving.discovery.replica_updater import LocalReplica, ReplicaUpdater, claim_entry_replica
from monolith_serving.discovery.replica_watcher import ReplicaWatcher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def client_for(target: ConsulTarget) -> consul.Consul:
    cfg = DiscoveryConfig.consul_from_address(target.address)
    return consul.Consul(host=cfg.consul_host, port=cfg.consul_port, scheme=cfg.consul_scheme)


def discovery_for(target: ConsulTarget, address: str | None = None) -> ConsulDiscovery:
    cfg = DiscoveryConfig.consul_from_address(
        address or target.address, session_timeout_s=10.0, consul_watch_wait_s=2.0
    )
    return ConsulDiscovery(cfg, retry_delay_s=0.1)


class CuttableLink:
    """A loopback TCP relay to Consul that the test can cut (refuse and drop every connection) and restore
    on the same port: a network outage that works the same against the double and a real agent."""

    def __init__(self, target_address: str) -> None:
        host, port = target_address.rsplit(":", 1)
        self._target = (host, int(port))
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                return  # cut: the listener is closed
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # the link was cut (``cut`` closes both sockets): that ends this direction
        finally:
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture()
def consul_link(consul_target: ConsulTarget) -> Iterator[CuttableLink]:
    link = CuttableLink(consul_target.address)
    try:
        yield link
    finally:
        link.cut()


def prefix() -> str:
    return f"monolith-test-{uuid.uuid4().hex[:10]}"


async def eventually(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- the raw API subset


def test_kv_values_indexes_cas_keys_and_recurse(consul_target: ConsulTarget) -> None:
    c = client_for(consul_target)
    p = prefix()
    assert c.kv.put(f"{p}/a/x", b"\x00bin\xff")
    index, entry = c.kv.get(f"{p}/a/x")
    assert entry["Value"] == b"\x00bin\xff" and entry["Key"] == f"{p}/a/x"
    assert int(index) >= entry["ModifyIndex"] >= entry["CreateIndex"] > 0
    # cas=0 creates only; cas=<ModifyIndex> updates only that version.
    assert not c.kv.put(f"{p}/a/x", b"no", cas=0)
    assert not c.kv.put(f"{p}/a/x", b"no", cas=entry["ModifyIndex"] + 1000)
    assert c.kv.put(f"{p}/a/x", b"v2", cas=entry["ModifyIndex"])
    _, entry2 = c.kv.get(f"{p}/a/x")
    assert entry2["Value"] == b"v2" and entry2["ModifyIndex"] > entry["ModifyIndex"]
    assert entry2["CreateIndex"] == entry["CreateIndex"]
    assert c.kv.put(f"{p}/a/y/deep", b"1") and c.kv.put(f"{p}/b", b"2") and c.kv.put(f"{p}bc", b"3")
    _, keys = c.kv.get(f"{p}/", keys=True, separator="/")
    assert keys == [f"{p}/a/", f"{p}/b"]
    _, entries = c.kv.get(f"{p}/", recurse=True)
    assert [e["Key"] for e in entries] == [f"{p}/a/x", f"{p}/a/y/deep", f"{p}/b"]
    assert c.kv.get(f"{p}/missing") == (c.kv.get(f"{p}/missing")[0], None)
    assert c.kv.delete(f"{p}/a/", recurse=True)
    _, entries = c.kv.get(f"{p}/", recurse=True)
    assert [e["Key"] for e in entries] == [f"{p}/b"]
    assert c.kv.delete(f"{p}", recurse=True)
    _, left = c.kv.get(p, recurse=True)
    assert left is None


def test_blocking_query_waits_for_a_change_or_the_wait_time(consul_target: ConsulTarget) -> None:
    c = client_for(consul_target)
    p = prefix()
    c.kv.put(f"{p}/k", b"1")
    index, _ = c.kv.get(f"{p}/", recurse=True)
    started = time.monotonic()
    again, _ = c.kv.get(f"{p}/", recurse=True, index=index, wait="1s")
    assert time.monotonic() - started >= 0.9  # nothing changed: held for the wait time
    assert int(again) >= int(index)

    writer = threading.Timer(0.3, lambda: c.kv.put(f"{p}/k", b"2"))
    writer.start()
    started = time.monotonic()
    new_index, entries = c.kv.get(f"{p}/", recurse=True, index=again, wait="10s")
    writer.join()
    assert time.monotonic() - started < 5
    assert int(new_index) > int(again) and entries[0]["Value"] == b"2"
    c.kv.delete(p, recurse=True)


def test_sessions_locks_and_delete_behavior(consul_target: ConsulTarget) -> None:
    c = client_for(consul_target)
    p = prefix()
    s1 = c.session.create(name="t1", ttl=10, behavior="delete", lock_delay=0)
    s2 = c.session.create(name="t2", ttl=10, behavior="release", lock_delay=0)
    try:
        assert c.kv.put(f"{p}/eph", b"a", acquire=s1)
        _, entry = c.kv.get(f"{p}/eph")
        assert entry["Session"] == s1 and entry["LockIndex"] == 1
        assert not c.kv.put(f"{p}/eph", b"b", acquire=s2)  # held by s1
        assert c.kv.put(f"{p}/eph", b"c", acquire=s1)  # the holder may rewrite
        _, entry = c.kv.get(f"{p}/eph")
        assert entry["Value"] == b"c" and entry["LockIndex"] == 1
        assert c.kv.put(f"{p}/rel", b"r", acquire=s2)
        assert not c.kv.put(f"{p}/rel", b"r", release=s1)
        assert c.kv.put(f"{p}/rel", b"r2", release=s2)
        _, entry = c.kv.get(f"{p}/rel")
        assert "Session" not in entry or not entry["Session"]
        renewed = c.session.renew(s1)
        assert renewed["ID"] == s1 and renewed["Behavior"] == "delete"
        # Destroying a delete-behavior session deletes the keys it holds.
        assert c.session.destroy(s1)
        _, gone = c.kv.get(f"{p}/eph")
        assert gone is None
        with pytest.raises(consul.NotFound):
            c.session.renew(s1)
        with pytest.raises(consul.ConsulException):
            c.kv.put(f"{p}/eph", b"x", acquire=s1)  # invalid session
    finally:
        c.session.destroy(s2)
        c.kv.delete(p, recurse=True)


def test_session_ttl_expiry_deletes_held_keys(consul_target: ConsulTarget) -> None:
    c = client_for(consul_target)
    p = prefix()
    session = c.session.create(ttl=10, behavior="delete", lock_delay=0)
    assert c.kv.put(f"{p}/eph", b"a", acquire=session)
    consul_target.pass_time(5)
    assert c.kv.get(f"{p}/eph")[1] is not None  # not yet: Consul never expires before the TTL
    consul_target.pass_time(16)  # past twice the TTL: certainly invalidated
    deadline = time.monotonic() + (30 if consul_target.real else 5)
    while c.kv.get(f"{p}/eph")[1] is not None:
        assert time.monotonic() < deadline, "session TTL did not delete the held key"
        time.sleep(0.2)
    with pytest.raises(consul.NotFound):
        c.session.renew(session)


def test_agent_services_with_ttl_checks_and_health_passing(consul_target: ConsulTarget) -> None:
    c = client_for(consul_target)
    name = prefix()
    sid = f"{name}-1"
    assert c.agent.service.register(
        name, service_id=sid, address="10.0.0.1", port=9000, tags=["ps", "task-0"], check=consul.Check.ttl("10s")
    )
    try:
        index, nodes = c.health.service(name)
        assert [n["Service"]["ID"] for n in nodes] == [sid]
        assert nodes[0]["Service"]["Address"] == "10.0.0.1" and nodes[0]["Service"]["Port"] == 9000
        statuses = {ch["CheckID"]: ch["Status"] for ch in nodes[0]["Checks"]}
        assert statuses[f"service:{sid}"] == "critical"  # a TTL check starts critical
        assert c.health.service(name, passing=True)[1] == []

        c.agent.check.ttl_pass(f"service:{sid}")
        new_index, passing = c.health.service(name, passing=True, index=index, wait="5s")
        assert int(new_index) > int(index) and [n["Service"]["ID"] for n in passing] == [sid]

        consul_target.pass_time(12)  # no TTL update: the check turns critical
        deadline = time.monotonic() + (20 if consul_target.real else 5)
        while c.health.service(name, passing=True)[1]:
            assert time.monotonic() < deadline, "TTL check did not turn critical"
            time.sleep(0.2)
    finally:
        assert c.agent.service.deregister(sid)
    assert c.health.service(name)[1] == []


# ----------------------------------------------------------------------------------- ConsulDiscovery


def test_consul_discovery_ephemerals_watch_and_session_loss(consul_target: ConsulTarget) -> None:
    raw = client_for(consul_target)
    p = prefix()
    path = f"/{p}/service/m/ps:0/1"

    async def body() -> None:
        disc = discovery_for(consul_target)
        states: list[SessionState] = []
        disc.add_state_listener(states.append)
        async with disc:
            assert await disc.wait_connected(15)
            await disc.register_ephemeral(path, b"one")
            _, entry = raw.kv.get(path.lstrip("/"))
            assert entry["Value"] == b"one" and entry["Session"] == disc.session_id
            await disc.update_ephemeral(path, b"two")
            assert await disc.get_data(path) == b"two"
            await disc.set_persistent(f"/{p}/saved_models/m/entry", b"{}")
            assert await disc.get_children(f"/{p}") == ["saved_models", "service"]
            assert await disc.get_data(f"/{p}/service") == b""  # an implicit directory

            events: list[WatchEvent] = []
            await disc.watch_subtree(f"/{p}/service", events.append)
            await eventually(lambda: len(events) == 1, what="initial ADDED")
            assert events[0] == WatchEvent(EventKind.ADDED, path, b"two")
            raw.kv.put(f"{p}/service/m/ps:1/2", b"x")
            await eventually(lambda: len(events) == 2, what="ADDED")
            raw.kv.put(f"{p}/service/m/ps:1/2", b"y")
            await eventually(lambda: len(events) == 3, what="CHANGED")
            assert events[2] == WatchEvent(EventKind.CHANGED, f"/{p}/service/m/ps:1/2", b"y")
            raw.kv.delete(f"{p}/service/m/ps:1/2")
            await eventually(lambda: len(events) == 4, what="REMOVED")
            assert events[3].kind is EventKind.REMOVED

            # Session loss: destroy it from outside; the backend reports LOST and re-acquires.
            old = disc.session_id
            assert old is not None
            raw.session.destroy(old)
            await eventually(lambda: SessionState.LOST in states, timeout_s=20, what="LOST")
            await eventually(lambda: disc.session_id not in (None, old), what="new session")

            def reacquired() -> bool:
                _, e = raw.kv.get(path.lstrip("/"))
                return e is not None and e.get("Session") == disc.session_id and e["Value"] == b"two"

            await eventually(reacquired, what="ephemeral re-acquired")
            assert disc.state is SessionState.CONNECTED
            await disc.delete(f"/{p}/saved_models", recursive=True)
            assert await disc.get_data(f"/{p}/saved_models/m/entry") is None
        # stop() destroyed the session: the ephemeral is gone.
        assert raw.kv.get(path.lstrip("/"))[1] is None
        raw.kv.delete(p, recurse=True)

    run(body)


def test_replica_roles_over_consul(consul_target: ConsulTarget) -> None:
    bzid = prefix()
    ps0 = LocalReplica(
        path=ReplicaPath(bzid=bzid, base_name="iptv", server_type=ServerType.PS, task=0, replica_id=3),
        model_name="ps_0",
        address="10.2.0.1:9000",
    )
    entry = LocalReplica(
        path=ReplicaPath(bzid=bzid, base_name="iptv", server_type=ServerType.ENTRY, task=0, replica_id=3),
        model_name="entry",
        address="10.2.0.1:9100",
    )
    states: dict[str, Sequence[int]] = {}

    async def status(replica: LocalReplica) -> Sequence[int]:
        return states.get(replica.model_name, [])

    async def body() -> None:
        async with discovery_for(consul_target) as agent, discovery_for(consul_target) as reader:
            assert await agent.wait_connected(15) and await reader.wait_connected(15)
            raw = client_for(consul_target)
            raw.kv.put(f"{bzid}/service/iptv/ps:0/99", b"{broken")
            updater = ReplicaUpdater(discovery=agent, replicas=[ps0, entry], status_source=status, interval_s=0.1)
            watcher = ReplicaWatcher(discovery=reader, bzid=bzid, base_name="iptv", resync_interval_s=0.5)
            async with updater, watcher:
                _, node = raw.kv.get(f"{bzid}/service/iptv/entry:0/00000000003")
                assert json.loads(node["Value"])["stat"] == ModelState.UNKNOWN
                # Registered UNKNOWN: a task seen so far is listed with no address (as in Monolith's HeartBeat).
                assert all(addresses == [] for addresses in watcher.get_all_replicas().values())
                states["ps_0"] = [ModelState.AVAILABLE]
                states["entry"] = [ModelState.LOADING, ModelState.AVAILABLE]
                assert await watcher.wait_until_available(ServerType.PS, [0], timeout_s=15)
                expected = {"entry:0": ["10.2.0.1:9100"], "ps:0": ["10.2.0.1:9000"]}
                await eventually(lambda: watcher.get_all_replicas() == expected, what="both available")
            assert await reader.get_children(f"/{bzid}/service/iptv/ps:0") == ["99"]
            raw.kv.delete(bzid, recurse=True)

    run(body)


# ------------------------------------------------------------------------------- entries without a replica id


def _unset_entry(bzid: str, port: int) -> LocalReplica:
    path = ReplicaPath(bzid=bzid, base_name="iptv", server_type=ServerType.ENTRY, task=0, replica_id=UNSET_REPLICA_ID)
    return LocalReplica(path=path, model_name="entry", address=f"10.2.0.1:{port}")


def test_entries_without_id_racing_for_sequence_numbers_never_share_one(consul_target: ConsulTarget) -> None:
    """Consul has no sequential nodes: a counter key taken with check-and-set stands in for ZooKeeper's. Agents
    claiming at the same moment (each its own session and threads) all get different numbers; the counter is a
    key of the parent that no read of the backend shows."""
    bzid = prefix()
    task_dir = f"/{bzid}/service/iptv/entry:0"
    agents, claims_each = 4, 5

    async def body() -> None:
        clients = [discovery_for(consul_target) for _ in range(agents)]
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
                assert await client.wait_connected(15)
            claims = [
                claim_entry_replica(client, _unset_entry(bzid, 9000 + n))
                for n in range(claims_each)
                for client in clients
            ]
            claimed = await asyncio.gather(*claims)
            ids = sorted(c.path.replica_id for c in claimed)
            assert ids == list(range(agents * claims_each))  # each number once, none skipped
            raw = client_for(consul_target)
            for c in claimed:
                _, entry = raw.kv.get(c.path.path.lstrip("/"))
                assert entry is not None and json.loads(entry["Value"])["replica"] == c.path.replica_id
                assert len(c.path.replica_name) == 11
            counter_key = f"{task_dir.lstrip('/')}/{SEQUENCE_COUNTER_NAME}"
            assert raw.kv.get(counter_key)[1]["Value"] == str(agents * claims_each).encode()
            # Hidden from every read of the backend, as ZooKeeper's counter is not a node.
            reader = clients[0]
            assert await reader.get_children(task_dir) == sorted(c.path.replica_name for c in claimed)
            assert set(await reader.get_leaves(f"/{bzid}")) == {c.path.path for c in claimed}
            events: list[WatchEvent] = []
            await reader.watch_subtree(f"/{bzid}", events.append)
            await eventually(lambda: len(events) == len(claimed), what="initial ADDED")
            assert all(SEQUENCE_COUNTER_NAME not in e.path for e in events)
        client_for(consul_target).kv.delete(bzid, recurse=True)

    run(body)


def test_a_corrupt_sequence_counter_is_a_clear_error(consul_target: ConsulTarget) -> None:
    """Not a traceback from deep inside the backend: FAILED_PRECONDITION naming the key, which an operator fixes."""
    bzid = prefix()
    counter_key = f"{bzid}/service/iptv/entry:0/{SEQUENCE_COUNTER_NAME}"

    async def body() -> None:
        raw = client_for(consul_target)
        raw.kv.put(counter_key, b"seven")
        async with discovery_for(consul_target) as disc:
            assert await disc.wait_connected(15)
            with pytest.raises(FailedPreconditionError, match=counter_key):
                await claim_entry_replica(disc, _unset_entry(bzid, 9000))
            assert await disc.get_children(f"/{bzid}/service/iptv/entry:0") == []
        raw.kv.delete(bzid, recurse=True)

    run(body)


def test_a_session_loss_brings_the_claimed_entry_key_back_under_its_number(consul_target: ConsulTarget) -> None:
    bzid = prefix()

    async def body() -> None:
        disc = discovery_for(consul_target)
        lost = asyncio.Event()
        disc.add_state_listener(lambda state: lost.set() if state is SessionState.LOST else None)
        raw = client_for(consul_target)
        async with disc:
            assert await disc.wait_connected(15)
            claimed = await claim_entry_replica(disc, _unset_entry(bzid, 9000))
            key = claimed.path.path.lstrip("/")
            old = disc.session_id
            assert old is not None
            raw.session.destroy(old)  # Consul deletes the keys of a destroyed delete-behaviour session
            await asyncio.wait_for(lost.wait(), 20)
            assert await disc.wait_connected(20)

            def back_under_new_session() -> bool:
                _, entry = raw.kv.get(key)
                return entry is not None and entry.get("Session") == disc.session_id != old

            await eventually(back_under_new_session, what="the same key re-acquired")
            assert await disc.get_children(claimed.path.task_path) == [claimed.path.replica_name]
            other = await claim_entry_replica(disc, _unset_entry(bzid, 9010))
            assert other.path.replica_id == claimed.path.replica_id + 1  # the lost one's number is not reused
        raw.kv.delete(bzid, recurse=True)

    run(body)


class LoseNextAcquireReply:
    """Stands in for the Consul client's ``kv.put``: the next acquiring put is sent, and done on the server if
    ``made``, but its reply is lost (a connection error), as when the link drops right after the request; every
    other put is the real one."""

    def __init__(self, real: Callable[..., bool], *, made: bool) -> None:
        self._real = real
        self._made = made
        self._armed = True
        self.acquired: list[str] = []  # the key the lost put acquired on the server

    def __call__(self, key: str, value: bytes, *args: Any, **kwargs: Any) -> bool:
        if not (self._armed and kwargs.get("acquire")):
            return self._real(key, value, *args, **kwargs)
        self._armed = False
        if self._made and self._real(key, value, *args, **kwargs):
            self.acquired.append(key)
        raise requests.exceptions.ConnectionError("reply lost")


def test_a_lost_acquire_reply_leaves_no_orphan_entry_key(
    consul_target: ConsulTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consul took the entry's sequential key for our session but the reply was lost: the claim's retry adopts
    that key instead of taking a second number whose key would stay, an UNKNOWN entry, for the session's life."""
    bzid = prefix()

    async def body() -> None:
        raw = client_for(consul_target)
        disc = discovery_for(consul_target)
        async with disc:
            assert await disc.wait_connected(15)
            lose = LoseNextAcquireReply(disc._client.kv.put, made=True)
            monkeypatch.setattr(disc._client.kv, "put", lose)
            entry = _unset_entry(bzid, 9000)
            with pytest.raises(UnavailableError):
                await claim_entry_replica(disc, entry)
            assert len(lose.acquired) == 1
            claimed = await claim_entry_replica(disc, entry)  # the agent's retry
            assert await disc.get_children(claimed.path.task_path) == [claimed.path.replica_name]
            key = claimed.path.path.lstrip("/")
            assert key == lose.acquired[0]
            assert claimed.path.replica_id == int(key.rsplit("/", 1)[1])
            _, held = raw.kv.get(key)
            assert held is not None and held["Session"] == disc.session_id
            assert json.loads(held["Value"])["replica"] == claimed.path.replica_id
        raw.kv.delete(bzid, recurse=True)

    run(body)


@pytest.mark.parametrize("made", [True, False], ids=["made", "not_made"])
def test_a_lost_acquire_reply_adopts_only_the_key_it_took(
    consul_target: ConsulTarget, monkeypatch: pytest.MonkeyPatch, made: bool
) -> None:
    """The retry after a lost reply takes the key that put acquired, if any, and nothing else under the prefix:
    not a registered key of the same session holding the same data, nor another session's."""
    bzid = prefix()
    path_prefix = f"/{bzid}/service/iptv/entry:0/0"
    data = b'{"stat": 0}'

    async def body() -> None:
        disc, other = discovery_for(consul_target), discovery_for(consul_target)
        async with disc, other:
            assert await disc.wait_connected(15) and await other.wait_connected(15)
            registered = await disc.register_ephemeral_sequential(path_prefix, data)
            lose = LoseNextAcquireReply(disc._client.kv.put, made=made)
            monkeypatch.setattr(disc._client.kv, "put", lose)
            with pytest.raises(UnavailableError):
                await disc.register_ephemeral_sequential(path_prefix, data)
            foreign = await other.register_ephemeral_sequential(path_prefix, data)
            retried = await disc.register_ephemeral_sequential(path_prefix, data)
            assert retried not in (registered, foreign)
            assert [f"/{k}" for k in lose.acquired] == ([retried] if made else [])
            leaves = sorted(p.rsplit("/", 1)[1] for p in (registered, foreign, retried))
            assert await disc.get_children(path_prefix.rsplit("/", 1)[0]) == leaves
        client_for(consul_target).kv.delete(bzid, recurse=True)

    run(body)


# ------------------------------------------------------------------------------- short Consul outages
# The outage is shorter than the session TTL: the session survives it, so whatever the backend could not
# write or delete during it has to be done once Consul answers again; the TTL never cleans it up.


async def _outage(
    disc: ConsulDiscovery, link: CuttableLink, during: Callable[[], Awaitable[None]], *, noticed: bool
) -> None:
    """Cut the link, run ``during``, restore. ``noticed``: wait until the backend reported SUSPENDED first
    (else the outage may end before a session renew sees it, and the session stays CONNECTED throughout)."""
    session = disc.session_id
    link.cut()
    if noticed:
        await eventually(lambda: disc.state is SessionState.SUSPENDED, what="SUSPENDED")
    await during()
    link.restore()
    await eventually(lambda: disc.state is SessionState.CONNECTED, what="CONNECTED")
    assert disc.session_id == session


@pytest.mark.parametrize("noticed", [True, False], ids=["suspended", "blip"])
def test_update_during_an_outage_is_written_after_it(
    consul_target: ConsulTarget, consul_link: CuttableLink, noticed: bool
) -> None:
    raw = client_for(consul_target)
    p = prefix()
    path = f"/{p}/service/m/ps:0/1"

    async def body() -> None:
        async with discovery_for(consul_target, consul_link.address) as disc:
            assert await disc.wait_connected(15)
            await disc.register_ephemeral(path, b"loading")

            async def became_available() -> None:
                await disc.update_ephemeral(path, b"available")

            await _outage(disc, consul_link, became_available, noticed=noticed)

            def written() -> bool:
                _, entry = raw.kv.get(path.lstrip("/"))
                return entry is not None and entry["Value"] == b"available" and entry["Session"] == disc.session_id

            await eventually(written, what="the update written once Consul answers")
        raw.kv.delete(p, recurse=True)

    run(body)


@pytest.mark.parametrize("noticed", [True, False], ids=["suspended", "blip"])
def test_unregister_during_an_outage_deletes_after_it(
    consul_target: ConsulTarget, consul_link: CuttableLink, noticed: bool
) -> None:
    raw = client_for(consul_target)
    p = prefix()
    path = f"/{p}/binding/m/ps_0:default:pod-a"
    kept = f"/{p}/binding/m/ps_1:default:pod-a"

    async def body() -> None:
        async with discovery_for(consul_target, consul_link.address) as disc:
            assert await disc.wait_connected(15)
            await disc.register_ephemeral(path, b"")
            await disc.register_ephemeral(kept, b"")

            async def unbind() -> None:
                await disc.unregister(path)

            await _outage(disc, consul_link, unbind, noticed=noticed)
            await eventually(lambda: raw.kv.get(path.lstrip("/"))[1] is None, what="the key deleted")
            _, entry = raw.kv.get(kept.lstrip("/"))
            assert entry is not None and entry["Session"] == disc.session_id
        raw.kv.delete(p, recurse=True)

    run(body)
