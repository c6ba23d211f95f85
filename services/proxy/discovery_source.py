"""The EndpointSource backed by discovery's ReplicaWatcher (REFERENCE §7).

Model names, as clients put them in ``model_spec.name``:
- v1: the entry's TF Serving model name from its ReplicaMeta (``model_name``, ``entry`` when absent), served
  by the ``entry:0`` replicas under ``/{bzid}/service/{base_name}/``;
- v3: ``{model}:entry``, served by the containers bound to that sub-graph.

A model is *known* when any replica node of it exists (any state); its endpoints are the AVAILABLE ones,
filtered to this proxy's idc/cluster when dc_aware. The per-model view is rebuilt at most every
``view_ttl_s`` (a watch event reaches requests within that time; retries cover the gap).
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
            self._view = self._build_v3() if self._agent_version == 3 else self._build_v1()
            self._view_at = now
        return self._view

    def _build_v1(self) -> _View:
        known: set[str] = set()
        available: dict[str, set[str]] = {}
        for info in self._watcher.replicas():
            if info.path.server_type is not ServerType.ENTRY:
                continue
            name = info.meta.model_name or ENTRY_SUB_GRAPH
            known.add(name)
            if not info.meta.available or not info.meta.address:
                continue
            if self._idc is not None and info.path.idc not in (None, self._idc):
                continue
            if self._cluster is not None and info.path.cluster not in (None, self._cluster):
                continue
            available.setdefault(name, set()).add(info.meta.address)
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
