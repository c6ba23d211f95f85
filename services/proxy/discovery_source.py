"""The EndpointSource backed by discovery's ReplicaWatcher (REFERENCE §7).

Model names, as clients put them in ``model_spec.name``:
- v1: the entry's TF Serving model name from its ReplicaMeta (``model_name``, ``entry`` when absent), served
  by the ``entry:0`` replicas under ``/{bzid}/service/{base_name}/``;
- v3: ``{model}:entry``, served by the containers bound to that sub-graph.

A model is *known* when any replica node of it exists (any state), or when one did within the last
``forget_departed_s``; its endpoints are the AVAILABLE ones, filtered to this proxy's idc/cluster when dc_aware.
A name never seen in the registry is NOT_FOUND (a typo: retrying will not help); a known one with no AVAILABLE
replica is UNAVAILABLE (retry). The registry alone cannot tell a model whose last replica left from a name
that never existed: v1 model names live in the replica nodes' data, and v3 bindings are the replicas
themselves, so nothing of either is left once they are gone. So the source remembers the names it saw leave
(at most ``max_departed``, each for ``forget_departed_s``); a proxy started after they left answers NOT_FOUND.
The per-model view is rebuilt at most every ``view_ttl_s`` (a watch event reaches requests within that time;
retries cover the gap).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from monolith_serving.core.errors import NotFoundError, UnavailableError
from monolith_serving.core.zk_paths import ServerType
from monolith_serving.discovery.base import Discovery
from monolith_serving.discovery.replica_watcher import ReplicaWatcher

log = logging.getLogger(__name__)

ENTRY_SUB_GRAPH = "entry"


@dataclass(frozen=True)
class _View:
    known: frozenset[str]
    available: dict[str, tuple[str, ...]] = field(default_factory=dict)
    all_available: tuple[str, ...] = ()


class DiscoveryEndpointSource:
    """Owns the discovery client and the watcher: ``start()`` connects and waits for the first view."""

    def __init__(
        self,
        *,
        discovery: Discovery,
        watcher: ReplicaWatcher,
        agent_version: int,
        idc: str | None = None,
        cluster: str | None = None,
        sync_timeout_s: float = 10.0,
        view_ttl_s: float = 0.25,
        forget_departed_s: float = 3600.0,
        max_departed: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._discovery = discovery
        self._watcher = watcher
        self._agent_version = agent_version
        self._idc = idc
        self._cluster = cluster
        self._sync_timeout_s = sync_timeout_s
        self._view_ttl_s = view_ttl_s
        self._clock = clock
        self._view = _View(frozenset())
        self._view_at = float("-inf")
        self._forget_departed_s = forget_departed_s
        self._max_departed = max_departed
        self._registered: frozenset[str] = frozenset()  # names with a replica node at the last rebuild
        self._departed: dict[str, float] = {}  # name -> when its last replica node was seen gone, oldest first

    async def start(self) -> None:
        # Never fail start-up on the registry: the watcher fills its view once the session comes up, and
        # until then requests get UNAVAILABLE (retriable) instead of the process crash-looping.
        await self._discovery.start()
        if not await self._discovery.wait_connected(self._sync_timeout_s):
            log.warning("discovery not connected after %s s; serving UNAVAILABLE until it is", self._sync_timeout_s)
        await self._watcher.start()
        if not await self._watcher.wait_synced(self._sync_timeout_s):
            log.warning("no registry view after %s s (empty registry or not connected)", self._sync_timeout_s)

    async def stop(self) -> None:
        await self._watcher.stop()
        await self._discovery.stop()

    @property
    def lists_models(self) -> bool:
        return True  # a name is served only when a replica node of it is registered

    def endpoints(self, model: str) -> tuple[str, ...]:
        """AVAILABLE addresses of ``model``; empty when none is AVAILABLE, or when it has no replica node now but
        had one within ``forget_departed_s``. NotFoundError for a name the registry has not had meanwhile."""
        view = self._current()
        if model not in view.known:
            if not self._watcher.synced:
                raise UnavailableError(f"model {model!r}: the discovery view is not loaded yet")
            raise NotFoundError(f"model {model!r} is not registered in discovery")
        return view.available.get(model, ())

    def all_addresses(self) -> tuple[str, ...]:
        return self._current().all_available

    def _current(self) -> _View:
        now = self._clock()
        if now - self._view_at >= self._view_ttl_s:
            view = self._build_v3() if self._agent_version == 3 else self._build_v1()
            self._view = self._remembering_departed(view, now)
            self._view_at = now
        return self._view

    def _remembering_departed(self, view: _View, now: float) -> _View:
        """``view`` with the names whose last replica node left within ``forget_departed_s`` known too."""
        departed = self._departed
        for name in self._registered - view.known:
            departed[name] = now
        for name in view.known & departed.keys():
            del departed[name]
        self._registered = view.known
        for name, left_at in list(departed.items()):  # oldest first: stop at the first one still remembered
            if left_at > now - self._forget_departed_s and len(departed) <= self._max_departed:
                break
            del departed[name]
        if not departed:
            return view
        return _View(view.known.union(departed), view.available, view.all_available)

    def _build_v1(self) -> _View:
        known: set[str] = set()
        available: dict[str, set[str]] = {}
        for info in self._watcher.replicas():
            if info.path.server_type is not ServerType.ENTRY:
                continue
            name = info.meta.model_name or ENTRY_SUB_GRAPH
            known.add(name)
            if not info.routable:  # AVAILABLE, with an address to dial (0.0.0.0 falls back to IPv6)
                continue
            if self._idc is not None and info.path.idc not in (None, self._idc):
                continue
            if self._cluster is not None and info.path.cluster not in (None, self._cluster):
                continue
            if info.address is not None:
                available.setdefault(name, set()).add(info.address)
        return _finish(known, available)

    def _build_v3(self) -> _View:
        known = {f"{b.model}:{b.sub_graph}" for b in self._watcher.bindings() if b.sub_graph == ENTRY_SUB_GRAPH}
        served = self._watcher.get_all_v3_replicas(idc=self._idc, cluster=self._cluster)
        available = {name: set(addresses) for name, addresses in served.items() if name in known}
        return _finish(known, available)


def _finish(known: set[str], available: dict[str, set[str]]) -> _View:
    by_model = {name: tuple(sorted(addresses)) for name, addresses in available.items()}
    everything = sorted({a for addresses in by_model.values() for a in addresses})
    return _View(frozenset(known), by_model, tuple(everything))
