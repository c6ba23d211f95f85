"""Every metric of the discovery roles, registered on a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DiscoveryMetrics:
    """Metrics of ReplicaUpdater and ReplicaWatcher (pass one instance to both)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A private registry by default keeps tests and several instances from clashing.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.updater_step_seconds = Histogram(
            "discovery_replica_updater_step_seconds",
            "Duration of one status poll + registry write of the replica updater.",
            registry=self.registry,
        )
        self.updater_step_errors = Counter(
            "discovery_replica_updater_step_errors",
            "Status poll steps that raised (logged with traceback).",
            registry=self.registry,
        )
        self.watcher_resync_seconds = Histogram(
            "discovery_replica_watcher_resync_seconds",
            "Duration of a full registry re-read by the replica watcher.",
            registry=self.registry,
        )
        self.watcher_stale = Gauge(
            "discovery_replica_watcher_stale",
            "1 while the watcher serves its last known view because the registry is unreachable.",
            registry=self.registry,
        )
        self.malformed_nodes = Counter(
            "discovery_malformed_nodes",
            "Registry nodes skipped because their path or data could not be parsed.",
            ["kind"],
            registry=self.registry,
        )
