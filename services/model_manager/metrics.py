"""Every metric of the model manager, on its own registry (served at ``--metrics_port``/metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass
class ModelManagerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.rollouts = Counter(
            "monolith_model_manager_rollouts",
            "Rollouts by outcome: succeeded, failed, or interrupted (the manager stopped during it)",
            ["model", "outcome"],
            registry=r,
        )
        self.rollout_failures = Counter(
            "monolith_model_manager_rollout_failures",
            "Rollouts aborted (load failure or timeout); alert on any increase",
            ["model"],
            registry=r,
        )
        self.rollout_seconds = Histogram(
            "monolith_model_manager_rollout_seconds",
            "Duration of a rollout (all phases)",
            ["model"],
            buckets=_DURATION_BUCKETS_S,
            registry=r,
        )
        self.rollout_in_progress = Gauge(
            "monolith_model_manager_rollout_in_progress",
            "Version being rolled out (0: none)",
            ["model"],
            registry=r,
        )
        self.serving_version = Gauge(
            "monolith_model_manager_serving_version",
            "Newest version AVAILABLE on every replica of the sub_graph that answered (no series: none answered, "
            "they share no AVAILABLE version, or the sub_graph has no replica)",
            ["model", "sub_graph"],
            registry=r,
        )
        self.version_delay = Gauge(
            "monolith_model_manager_version_delay_seconds",
            "From when the newest complete version appeared until it started serving (still growing while it "
            "does not serve)",
            ["model"],
            registry=r,
        )
        self.update_delay = Gauge(
            "monolith_model_manager_update_delay_seconds",
            "Seconds since the serving version started serving",
            ["model"],
            registry=r,
        )
        self.newest_version = Gauge(
            "monolith_model_manager_newest_version", "Newest complete version in the source", ["model"], registry=r
        )
        self.copies = Counter(
            "monolith_model_manager_copies", "Version copies into the receive folder by outcome",
            ["model", "outcome"], registry=r,
        )  # fmt: skip
        self.copied_bytes = Counter(
            "monolith_model_manager_copied_bytes", "Bytes copied into the receive folder", ["model"], registry=r
        )
        self.deleted_versions = Counter(
            "monolith_model_manager_deleted_versions", "Versions removed by retention", ["model"], registry=r
        )
        self.replica_reloads = Counter(
            "monolith_model_manager_replica_reloads",
            "HandleReloadConfigRequest calls by outcome",
            ["model", "sub_graph", "outcome"],
            registry=r,
        )
        self.control_step_seconds = Gauge(
            "monolith_model_manager_control_step_seconds", "Duration of the last control-loop step", ["step"],
            registry=r,
        )  # fmt: skip
        self.control_step_errors = Counter(
            "monolith_model_manager_control_step_errors", "Control-loop steps that raised", ["step"], registry=r
        )
