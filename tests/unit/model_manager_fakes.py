"""In-memory fakes of the model manager's own interfaces (ReplicaControl, VersionSource) and an injectable clock.

A ``FakeReplica`` is one sub-model served at an address. Usually an address hosts one (an agent's child);
``FakeCluster.colocate`` puts several behind one address, like a unified container: a reload there replaces
the whole set, and a sub-model the reload leaves out is unloaded (recorded in ``unloaded``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from monolith_serving.core.errors import NotFoundError, UnavailableError
from monolith_serving.model_manager.control import (
    LoadConfig,
    Replica,
    ReplicaControl,
    ServerKind,
    VersionState,
    VersionStatus,
)
from monolith_serving.model_manager.fs import LocalFileSystem
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.rollout import RolloutConfig, RolloutCoordinator
from monolith_serving.model_manager.sources import VersionCandidate, VersionSource

MODEL = "demo"


@dataclass
class FakeReplica:
    replica: Replica
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    configs: list[LoadConfig] = field(default_factory=list)  # its part of every reload of its address
    up: bool = True
    hosting: bool = True  # False after a drop config: GetModelStatus answers NOT_FOUND


class FakeCluster(ReplicaControl):
    def __init__(
        self,
        num_ps: int = 2,
        ps_replicas: int = 2,
        entries: int = 2,
        base_dir: str = f"/receive/{MODEL}",
        dense_replicas: int = 0,
    ) -> None:
        self.num_ps = num_ps
        self.base_dir = base_dir
        # Keyed by address; a colocated sub-model by "address/sub_graph" (see ``colocate``).
        self.nodes: dict[str, FakeReplica] = {}
        for task in range(num_ps):
            for r in range(ps_replicas):
                self.add(Replica(ServerKind.PS, task, f"ps{task}-{r}:1"))
        for r in range(dense_replicas):  # a dense_alone model's dense_0 servers
            self.add(Replica(ServerKind.DENSE, 0, f"dense-{r}:1"))
        for e in range(entries):
            self.add(Replica(ServerKind.ENTRY, 0, f"entry-{e}:1"))
        self.broken: set[int] = set()  # versions whose PS load fails
        self.broken_dense: set[int] = set()  # versions whose dense load fails
        self.broken_entries: dict[str, set[int]] = {}  # entry address -> versions it fails to load
        self.slow_ps: set[int] = set()  # versions a PS never finishes loading
        self.violations: list[str] = []
        self.requests: list[tuple[str, tuple[LoadConfig, ...]]] = []  # every reload: address, configs
        self.unloaded: list[str] = []  # "sub_graph@address" of sub-models a reload left out
        self.reload_yields = 0  # event-loop turns a reload waits before it takes effect

    def add(self, replica: Replica, versions: tuple[int, ...] = ()) -> FakeReplica:
        node = FakeReplica(replica, {v: VersionStatus(v, VersionState.AVAILABLE) for v in versions})
        self.nodes[replica.address] = node
        return node

    def colocate(self, address: str, *replicas: FakeReplica) -> None:
        """Moves ``replicas`` (added before) behind one ``address``, like the sub_graphs of a unified container."""
        for node in replicas:
            del self.nodes[node.replica.address]
            node.replica = Replica(node.replica.kind, node.replica.task, address)
            self.nodes[f"{address}/{node.replica.sub_graph}"] = node

    def at(self, address: str) -> list[FakeReplica]:
        return [n for n in self.nodes.values() if n.replica.address == address]

    def replicas(self, model: str) -> list[Replica]:
        assert model == MODEL
        return sorted(n.replica for n in self.nodes.values())

    async def status(self, replica: Replica, served_name: str, timeout_s: float) -> list[VersionStatus]:
        assert served_name == replica.sub_graph
        [node] = [n for n in self.at(replica.address) if n.replica.sub_graph == served_name]
        if not node.up:
            raise UnavailableError(f"{replica.address} is down")
        if not node.hosting:
            raise NotFoundError(f"model {served_name!r} is not served here")
        return list(node.versions.values())

    def ps_has(self, version: int) -> bool:
        """Every replica of every PS shard, and every dense server, has ``version`` AVAILABLE: what an entry
        pins its calls to."""
        return all(
            n.versions.get(version, VersionStatus(version, VersionState.END)).state is VersionState.AVAILABLE
            for n in self.nodes.values()
            if n.replica.kind in (ServerKind.PS, ServerKind.DENSE)
        )

    def serving(self, kind: ServerKind) -> set[int]:
        return {
            v
            for n in self.nodes.values()
            if n.replica.kind is kind
            for v, s in n.versions.items()
            if s.state is VersionState.AVAILABLE
        }

    def check(self) -> None:
        for version in self.serving(ServerKind.ENTRY):
            if not self.ps_has(version):
                self.violations.append(f"entry serves {version} but a PS or dense replica lacks it")

    async def reload(self, address: str, configs: Sequence[LoadConfig], timeout_s: float) -> None:
        for _ in range(self.reload_yields):  # the RPC's round trip: other tasks run meanwhile
            await asyncio.sleep(0)
        nodes = {n.replica.sub_graph: n for n in self.at(address)}
        if not all(n.up for n in nodes.values()):
            raise UnavailableError(f"{address} is down")
        self.requests.append((address, tuple(configs)))
        wanted = {c.served_name: c for c in configs if not c.drop}
        assert len(wanted) == len([c for c in configs if not c.drop]), f"a served name twice in {configs}"
        assert set(wanted) <= set(nodes), f"{address} hosts {sorted(nodes)}, not {sorted(wanted)}"
        # The whole set is replaced: PS first (as the unified server applies it), then the entry.
        for sub_graph, node in sorted(nodes.items(), key=lambda item: item[1].replica.kind is ServerKind.ENTRY):
            config = wanted.get(sub_graph)
            if config is None:
                # Left out (a drop config, or none at all): the address stops hosting it.
                config = LoadConfig(sub_graph, f"{self.base_dir}/{sub_graph}", (), drop=True)
                if len(nodes) > 1 and node.hosting:
                    self.unloaded.append(f"{sub_graph}@{address}")
            self._apply(node, config)
        self.check()

    def _apply(self, node: FakeReplica, config: LoadConfig) -> None:
        replica = node.replica
        assert config.base_path == f"{self.base_dir}/{replica.sub_graph}"
        node.configs.append(config)
        wanted = set(config.versions)
        node.hosting = not config.drop
        if config.drop:
            if len(self.at(replica.address)) == 1:
                assert replica.kind is ServerKind.ENTRY  # only entries are dropped (a PS gets specific {})
            node.versions = {}
        elif replica.kind in (ServerKind.PS, ServerKind.DENSE):  # our dense server loads as the PS does
            broken = self.broken if replica.kind is ServerKind.PS else self.broken_dense
            for v in wanted:
                held = node.versions.get(v)
                if held is None or held.state is VersionState.END:
                    if v in broken:
                        node.versions[v] = VersionStatus(v, VersionState.END, "corrupt dump")
                    elif v in self.slow_ps:
                        node.versions[v] = VersionStatus(v, VersionState.LOADING)
                    else:
                        node.versions[v] = VersionStatus(v, VersionState.AVAILABLE)
            # Like our PS: old versions go once a wanted one is AVAILABLE, all of them under specific {}.
            if not wanted or any(node.versions[v].state is VersionState.AVAILABLE for v in wanted):
                for v, s in list(node.versions.items()):
                    if v not in wanted and s.state is VersionState.AVAILABLE:
                        node.versions[v] = VersionStatus(v, VersionState.END)
        else:
            # Our entry: serves a wanted version only once every PS shard has it.
            for v in self.broken_entries.get(replica.address, set()) & wanted:
                node.versions[v] = VersionStatus(v, VersionState.END, "corrupt entry")
            ready = [v for v in wanted if self.ps_has(v) and v not in self.broken_entries.get(replica.address, ())]
            if ready:
                node.versions = {v: VersionStatus(v, VersionState.END) for v in node.versions}
                for v in ready:
                    node.versions[v] = VersionStatus(v, VersionState.AVAILABLE)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class FakeSource(VersionSource):
    """A source replicas load from directly (nothing is copied) listing the complete versions in ``versions``;
    a version's fingerprint is ``fp{version}`` unless ``fingerprints`` says otherwise."""

    needs_copy = False

    def __init__(self, model: str = MODEL, base_dir: str = f"/receive/{MODEL}") -> None:
        self.model = model
        self.fs = LocalFileSystem()
        self.base_dir = base_dir
        self.versions: set[int] = set()
        self.fingerprints: dict[int, str] = {}

    def scan(self) -> list[VersionCandidate]:
        return [
            VersionCandidate(self.model, v, {"entry": f"{self.base_dir}/entry/{v}"}, self.fingerprints.get(v, f"fp{v}"))
            for v in sorted(self.versions)
        ]

    def describe(self) -> str:
        return f"fake source of {self.model}"


def fake_coordinator(cluster: ReplicaControl, clock: FakeClock, metrics: ModelManagerMetrics) -> RolloutCoordinator:
    """A coordinator over ``cluster`` on the fake clock: 30 s rollouts, 1 s polls, 0.5 s drains."""
    return RolloutCoordinator(
        control=cluster,
        config=RolloutConfig(timeout_s=30, poll_interval_s=1, drain_s=0.5),
        metrics=metrics,
        clock=clock,
        wall=clock,
        sleep=clock.sleep,
    )
