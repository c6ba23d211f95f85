"""Every metric of the entry, on its own registry (served at ``--metrics_port``/metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


@dataclass
class EntryMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "entry_predict_requests", "Predict calls by outcome (gRPC code name)", ["code"], registry=r
        )
        self.latency = Histogram(
            "entry_predict_latency_seconds", "Predict latency inside the entry", buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.batch_size = Histogram(
            "entry_predict_batch_size", "Examples per Predict", buckets=_BATCH_BUCKETS, registry=r
        )
        self.ps_latency = Histogram(
            "entry_ps_lookup_latency_seconds",
            "One lookup RPC to a PS replica",
            ["shard"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ps_errors = Counter(
            "entry_ps_lookup_errors", "Failed lookup RPCs by shard and gRPC code", ["shard", "code"], registry=r
        )
        self.ps_retries = Counter(
            "entry_ps_lookup_retries", "Lookups retried on another replica", ["shard"], registry=r
        )
        self.ps_coalesced = Counter(
            "entry_ps_lookups_coalesced",
            "Shard lookups sent merged with others' in one call (--coalesce_ps_lookups)",
            ["shard"],
            registry=r,
        )
        self.predicts_coalesced = Counter(
            "entry_predicts_coalesced",
            "Predicts run merged with others in one lookup-pool-score pass (--coalesce_requests)",
            registry=r,
        )
        # dense_alone: the call to the dense server after pooling.
        self.dense_latency = Histogram(
            "entry_dense_latency_seconds", "One Predict RPC to a dense replica", buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.dense_errors = Counter("entry_dense_errors", "Failed dense RPCs by gRPC code", ["code"], registry=r)
        self.dense_retries = Counter("entry_dense_retries", "Dense calls retried on another replica", registry=r)
        self.served_version = Gauge("entry_served_version", "Newest entry version being served (0: none)", registry=r)
        self.loaded_versions = Gauge("entry_loaded_versions", "Entry versions loaded in memory", registry=r)
        self.control_step_seconds = Gauge(
            "entry_control_step_seconds", "Duration of the last control-loop step", ["step"], registry=r
        )
        self.control_step_errors = Counter(
            "entry_control_step_errors", "Control-loop steps that raised", ["step"], registry=r
        )
