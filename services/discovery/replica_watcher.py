"""The ReplicaWatcher role: an in-memory view of which replicas are AVAILABLE, kept current by watches.

v1: ``(model, server_type, task) → AVAILABLE addresses`` from ``/{bzid}/service/...`` ReplicaMeta nodes.
The address handed out is chosen as Monolith's readers choose it (``addresses.choose_address``), and a
replica node named ``-1`` (a PS or dense started without a replica id) is read like any other
(``ReplicaPath.parse`` accepts it).
v3: ``model:sub_graph → gRPC addresses`` from ``/{bzid}/binding/...`` joined with
``/{bzid}/container_service/...``.

Watch events update the view incrementally, one node at a time; a periodic full re-read builds a new
view aside and swaps it in whole, repairing anything missed. A node that cannot be parsed is skipped on
its own (logged and counted once per node and content) and never affects the others. When the registry
session is not CONNECTED the last known view keeps being served and ``stale`` is True.
Not thread-safe: all methods and callbacks run on one asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from monolith_serving.core.aio_wait import event_set_within, within
from monolith_serving.core.errors import InvalidArgumentError, UnavailableError
from monolith_serving.core.zk_paths import (
    ReplicaPath,
    ServerType,
    binding_root,
    container_service_root,
    parse_binding_name,
    parse_container_service_name,
    service_root,
    task_key,
)
from monolith_serving.discovery.addresses import AddressFamily
from monolith_serving.discovery.base import Discovery, EventKind, SessionState, WatchEvent, WatchHandle
from monolith_serving.discovery.metrics import DiscoveryMetrics
from monolith_serving.discovery.replica_meta import ContainerServiceInfo, ReplicaMeta

log = logging.getLogger(__name__)

__all__ = ["ReplicaInfo", "ReplicaWatcher", "V3Binding"]


@dataclass(frozen=True)
class ReplicaInfo:
    """One v1 replica node as read from the registry.

    ``address`` is the one to dial, chosen from ``meta.address`` / ``meta.address_ipv6`` by the watcher's
    address family (None when neither is usable); read it rather than ``meta.address``.
    """

    path: ReplicaPath
    meta: ReplicaMeta
    address: str | None

    @property
    def routable(self) -> bool:
        """AVAILABLE and with an address to dial."""
        return self.meta.available and bool(self.address)


@dataclass(frozen=True)
class V3Binding:
    """One v3 binding: a container serving ``model:sub_graph``."""

    model: str
    sub_graph: str
    ctx_cluster: str
    ctx_id: str


@dataclass
class _View:
    """The parsed registry: what every query reads. A resync fills a new one and swaps it in."""

    replicas: dict[str, ReplicaInfo] = field(default_factory=dict)  # v1: node path -> replica
    bindings: dict[str, V3Binding] = field(default_factory=dict)  # v3: node path -> binding
    containers: dict[tuple[str, str], ContainerServiceInfo] = field(default_factory=dict)  # v3: (cluster, id)


class ReplicaWatcher:
    """Watches the registry of one bzid (all models, or only ``base_name``).

    ``agent_version`` 1 watches the v1 service tree; 3 watches bindings and container services.
    ``address_family`` is the v1 address preferred when a replica registered both (Monolith prefers IPv6
    only on an IPv6-only host: pass ``addresses.host_address_family(os.environ)``, decided once at start-up).
    """

    def __init__(
        self,
        *,
        discovery: Discovery,
        bzid: str,
        base_name: str | None = None,
        agent_version: int = 1,
        resync_interval_s: float = 30.0,
        rng: random.Random | None = None,
        metrics: DiscoveryMetrics | None = None,
        address_family: AddressFamily = AddressFamily.IPV4,
    ) -> None:
        if agent_version not in (1, 3):
            raise ValueError(f"agent_version must be 1 or 3, got {agent_version}")
        self._discovery = discovery
        self._bzid = bzid
        self._base_name = base_name
        self._agent_version = agent_version
        self._resync_interval_s = resync_interval_s
        self._rng = rng or random.Random()
        self._metrics = metrics or DiscoveryMetrics()
        self._address_family = address_family
        self._view = _View()
        self._malformed: dict[str, bytes] = {}  # node path -> digest of the malformed data last logged
        self._handles: list[WatchHandle] = []
        self._resync_task: asyncio.Task[None] | None = None
        self._events_seen = 0  # bumped per applied event; a resync started earlier is then discarded
        self._synced = asyncio.Event()
        self._changed = asyncio.Event()  # replaced after each change (see _notify_changed)
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._discovery.add_state_listener(self._on_session_state)
        self._metrics.watcher_stale.set(0 if self._discovery.state is SessionState.CONNECTED else 1)
        for root in self._roots():
            self._handles.append(await self._discovery.watch_subtree(root, self._on_event))
        self._resync_task = asyncio.create_task(self._resync_loop(), name="replica-watcher-resync")

    async def stop(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()
        self._discovery.remove_state_listener(self._on_session_state)
        if self._resync_task is not None:
            self._resync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync_task
            self._resync_task = None

    async def __aenter__(self) -> ReplicaWatcher:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _roots(self) -> list[str]:
        if self._agent_version == 3:
            return [binding_root(self._bzid), container_service_root(self._bzid)]
        if self._base_name is not None:
            return [service_root(self._bzid, self._base_name)]
        return [f"/{self._bzid}/service"]

    # ---- freshness -------------------------------------------------------------------------------------
    @property
    def stale(self) -> bool:
        """True when the registry is unreachable and the view is the last known one."""
        return self._discovery.state is not SessionState.CONNECTED

    @property
    def synced(self) -> bool:
        """True once the view has been filled from the registry at least once."""
        return self._synced.is_set()

    async def wait_synced(self, timeout_s: float) -> bool:
        return await event_set_within(self._synced, timeout_s)

    def _on_session_state(self, state: SessionState) -> None:
        self._metrics.watcher_stale.set(0 if state is SessionState.CONNECTED else 1)
        if state is not SessionState.CONNECTED:
            log.warning("registry %s: serving the last known replica view (stale)", state.value)

    # ---- event handling --------------------------------------------------------------------------------
    def _on_event(self, event: WatchEvent) -> None:
        self._events_seen += 1
        self._apply(self._view, event.kind, event.path, event.data)
        self._synced.set()
        self._notify_changed()

    def _apply(self, view: _View, kind: EventKind, path: str, data: bytes) -> None:
        """Update ``view`` for one node. Never raises: a node that cannot be handled is skipped (and dropped)."""
        try:
            parts = path.split("/")
            if len(parts) >= 3 and parts[2] == "service":
                self._apply_v1(view, kind, path, data)
            elif len(parts) == 5 and parts[2] == "binding":
                self._apply_binding(view, kind, path, data, parts[3], parts[4])
            elif len(parts) == 4 and parts[2] == "container_service":
                self._apply_container(view, kind, path, parts[3], data)
        except Exception as exc:
            # Parsing raises only InvalidArgumentError; anything else is a bug, and must not cost other nodes.
            view.replicas.pop(path, None)
            view.bindings.pop(path, None)
            self._skip_malformed("unexpected", path, data, f"{type(exc).__name__}: {exc}", exc_info=True)

    def _skip_malformed(self, kind: str, path: str, data: bytes, reason: str, *, exc_info: bool = False) -> None:
        """Count and log a skipped node, once per node and content (a resync re-reads it every time)."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if self._malformed.get(path) == digest:
            return
        self._malformed[path] = digest
        self._metrics.malformed_nodes.labels(kind=kind).inc()
        log.warning("skipping %s node %s: %s", kind, path, reason[:500], exc_info=exc_info)

    def _apply_v1(self, view: _View, kind: EventKind, path: str, data: bytes) -> None:
        if kind is EventKind.REMOVED:
            view.replicas.pop(path, None)
            self._malformed.pop(path, None)
            return
        try:
            replica_path = ReplicaPath.parse(path)
        except InvalidArgumentError:
            # Intermediate nodes without children (an emptied `ps:0`) are leaves too; not replicas.
            log.debug("ignoring non-replica node %s", path)
            return
        try:
            meta = ReplicaMeta.from_json(data)
        except InvalidArgumentError as exc:
            view.replicas.pop(path, None)
            self._skip_malformed("replica", path, data, f"malformed data: {exc.message}")
            return
        view.replicas[path] = ReplicaInfo(replica_path, meta, meta.serving_address(self._address_family))
        self._malformed.pop(path, None)

    def _apply_binding(self, view: _View, kind: EventKind, path: str, data: bytes, model: str, name: str) -> None:
        if kind is EventKind.REMOVED:
            view.bindings.pop(path, None)
            self._malformed.pop(path, None)
            return
        try:
            leaf = parse_binding_name(name)
        except InvalidArgumentError as exc:
            self._skip_malformed("binding", path, data, exc.message)
            return
        view.bindings[path] = V3Binding(model, leaf.sub_graph, leaf.ctx_cluster, leaf.ctx_id)
        self._malformed.pop(path, None)

    def _apply_container(self, view: _View, kind: EventKind, path: str, name: str, data: bytes) -> None:
        if kind is EventKind.REMOVED:
            self._malformed.pop(path, None)
        try:
            leaf = parse_container_service_name(name)
        except InvalidArgumentError as exc:
            if kind is not EventKind.REMOVED:
                self._skip_malformed("container_service", path, data, exc.message)
            return
        key = (leaf.ctx_cluster, leaf.ctx_id)
        if kind is EventKind.REMOVED:
            view.containers.pop(key, None)
            return
        try:
            view.containers[key] = ContainerServiceInfo.from_json(data)
        except InvalidArgumentError as exc:
            view.containers.pop(key, None)
            self._skip_malformed("container_service", path, data, f"malformed data: {exc.message}")
            return
        self._malformed.pop(path, None)

    def _notify_changed(self) -> None:
        # Wake every waiter of the current generation; later waiters wait on a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- periodic full resync --------------------------------------------------------------------------
    async def resync(self) -> None:
        """Re-read every watched subtree into a new view and swap it in (skipped while disconnected).

        Queries see either the old view or the new one, never a partial one; malformed nodes are left out.
        """
        if self._discovery.state is not SessionState.CONNECTED:
            return
        started = time.monotonic()
        events_before = self._events_seen
        snapshots: list[Mapping[str, bytes]] = []
        try:
            for root in self._roots():
                snapshots.append(await self._discovery.get_leaves(root))
        except UnavailableError as exc:
            log.warning("replica resync skipped: %s", exc.message)
            return
        if self._events_seen != events_before:
            return  # newer watch events arrived meanwhile; this snapshot may be older than them
        view = _View()
        for snapshot in snapshots:
            for path, data in snapshot.items():
                self._apply(view, EventKind.ADDED, path, data)
        self._view = view
        present = {path for snapshot in snapshots for path in snapshot}
        self._malformed = {p: d for p, d in self._malformed.items() if p in present}
        self._synced.set()
        self._notify_changed()
        self._metrics.watcher_resync_seconds.observe(time.monotonic() - started)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval_s)
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica watcher resync failed")

    # ---- v1 queries ------------------------------------------------------------------------------------
    def replicas(self) -> list[ReplicaInfo]:
        """Every v1 replica node currently known (any state), sorted by path."""
        return [self._view.replicas[p] for p in sorted(self._view.replicas)]

    def _select(self, model: str | None, idc: str | None, cluster: str | None) -> Iterable[ReplicaInfo]:
        """Replicas in any state that pass the filters."""
        for info in self._view.replicas.values():
            if model is not None and info.path.base_name != model:
                continue
            if idc is not None and info.path.idc != idc:
                continue
            if cluster is not None and info.path.cluster != cluster:
                continue
            yield info

    def get_replicas(
        self,
        server_type: ServerType | str,
        task: int,
        *,
        model: str | None = None,
        idc: str | None = None,
        cluster: str | None = None,
    ) -> list[str]:
        """Sorted addresses of AVAILABLE replicas of one task (filters: model, idc, cluster)."""
        kind = ServerType(server_type)
        return sorted(
            {
                info.address
                for info in self._select(model, idc, cluster)
                if info.address and info.routable and info.path.server_type is kind and info.path.task == task
            }
        )

    def get_all_replicas(
        self,
        server_type: ServerType | str | None = None,
        *,
        model: str | None = None,
        idc: str | None = None,
        cluster: str | None = None,
    ) -> dict[str, list[str]]:
        """``"{server_type}:{task}" → sorted AVAILABLE addresses`` (the v1 HeartBeat map).

        As in Monolith, a task with replica nodes of which none is routable maps to ``[]`` (the key is
        there, the list is empty); a task with no replica node at all has no key.
        """
        kind = ServerType(server_type) if server_type is not None else None
        view: dict[str, set[str]] = {}
        for info in self._select(model, idc, cluster):
            if kind is not None and info.path.server_type is not kind:
                continue
            addresses = view.setdefault(task_key(info.path.server_type, info.path.task), set())
            if info.address and info.routable:
                addresses.add(info.address)
        return {k: sorted(v) for k, v in sorted(view.items())}

    def get_replica(
        self,
        server_type: ServerType | str,
        task: int,
        *,
        model: str | None = None,
        idc: str | None = None,
        cluster: str | None = None,
    ) -> str | None:
        """A random AVAILABLE replica address of one task, or None."""
        candidates = self.get_replicas(server_type, task, model=model, idc=idc, cluster=cluster)
        return self._rng.choice(candidates) if candidates else None

    async def wait_until_available(
        self,
        server_type: ServerType | str,
        tasks: Iterable[int],
        *,
        timeout_s: float,
        model: str | None = None,
    ) -> bool:
        """Wait until every task has an AVAILABLE replica (an entry waits for all PS tasks)."""
        wanted = list(tasks)

        def all_available() -> bool:
            return all(self.get_replicas(server_type, t, model=model) for t in wanted)

        deadline = time.monotonic() + timeout_s
        while not all_available():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await within(self._changed.wait(), remaining_s)
        return True

    # ---- v3 queries ------------------------------------------------------------------------------------
    def bindings(self) -> list[V3Binding]:
        return [self._view.bindings[p] for p in sorted(self._view.bindings)]

    def containers(self) -> dict[tuple[str, str], ContainerServiceInfo]:
        return dict(self._view.containers)

    def get_v3_replicas(
        self, model: str, sub_graph: str, *, idc: str | None = None, cluster: str | None = None
    ) -> list[str]:
        """Sorted gRPC addresses of containers bound to ``model:sub_graph`` (filters: idc, ctx_cluster)."""
        return self.get_all_v3_replicas(idc=idc, cluster=cluster).get(f"{model}:{sub_graph}", [])

    def get_all_v3_replicas(
        self, *, model: str | None = None, idc: str | None = None, cluster: str | None = None
    ) -> dict[str, list[str]]:
        """``"{model}:{sub_graph}" → sorted gRPC addresses`` (the v3 HeartBeat map).

        ``cluster`` matches the cluster part of a binding's ctx_cluster: Monolith names a container's cluster
        ``{psm};{idc};{cluster}`` (and so do our agents); a bare name, as older agents of ours wrote it, is the
        cluster itself."""
        view: dict[str, set[str]] = {}
        for binding in self._view.bindings.values():
            if model is not None and binding.model != model:
                continue
            if cluster is not None and binding.ctx_cluster.rsplit(";", 1)[-1] != cluster:
                continue
            container = self._view.containers.get((binding.ctx_cluster, binding.ctx_id))
            if container is None or not container.grpc:
                continue  # bound but its address is not (yet) published
            if idc is not None and container.idc != idc:
                continue
            view.setdefault(f"{binding.model}:{binding.sub_graph}", set()).add(container.grpc)
        return {k: sorted(v) for k, v in sorted(view.items())}
