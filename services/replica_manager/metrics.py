"""Every metric of the replica-manager, on a registry the caller owns."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# (model, sub_graph, task) -> number of AVAILABLE, non-evicted replicas
AvailabilitySnapshot = Mapping[tuple[str, str, str], int]


class _AvailableReplicasCollector(Collector):
    """Exports the last published snapshot as it is, so groups that vanished from the registry vanish here
    too (a labelled Gauge would keep their old values). Scrapes run on the HTTP thread: the snapshot is
    replaced whole, never mutated."""

    def __init__(self) -> None:
        self.snapshot: AvailabilitySnapshot = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "monolith_replica_manager_available_replicas",
            "Replicas registered AVAILABLE and answering probes, per model / sub_graph / task.",
            labels=["model", "sub_graph", "task"],
        )
        for (model, sub_graph, task), count in sorted(self.snapshot.items()):
            family.add_metric([model, sub_graph, task], count)
        yield family


class ReplicaManagerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._available = _AvailableReplicasCollector()
        self.registry.register(self._available)
        self.evictions = Counter(
            "monolith_replica_manager_evictions",
            "Replicas marked unavailable because they stopped answering probes.",
            ["model"],
            registry=self.registry,
        )
        self.readmissions = Counter(
            "monolith_replica_manager_readmissions",
            "Evicted replicas that answered probes again.",
            ["model"],
            registry=self.registry,
        )
        self.registry_connected = Gauge(
            "monolith_replica_manager_registry_connected",
            "1 while the registry session is connected; 0 means the last known view is being served.",
            registry=self.registry,
        )
        self.probe_cycle_seconds = Histogram(
            "monolith_replica_manager_probe_cycle_seconds",
            "Duration of one probe round over every registered replica.",
            registry=self.registry,
        )
        self.probe_cycle_errors = Counter(
            "monolith_replica_manager_probe_cycle_errors",
            "Probe rounds that raised (logged with traceback).",
            registry=self.registry,
        )

    def publish_availability(self, snapshot: AvailabilitySnapshot) -> None:
        self._available.snapshot = dict(snapshot)
