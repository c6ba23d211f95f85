"""Every Prometheus metric of the dense server, on the registry the caller passes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class DenseMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "monolith_dense_predict_requests", "Predict calls by outcome (gRPC code name)", ["code"], registry=registry
        )
        self.latency = Histogram(
            "monolith_dense_predict_latency_seconds",
            "Predict handling time inside the server",
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_size = Histogram(
            "monolith_dense_predict_batch_size", "Rows per Predict", buckets=_BATCH_BUCKETS, registry=registry
        )
        self.version_state = Gauge(
            "monolith_dense_version_state",
            "ModelVersionStatus.State of each known version (30 = AVAILABLE)",
            ["model", "version"],
            registry=registry,
        )
        self.load_failures = Counter(
            "monolith_dense_load_failures", "Versions that failed to load", ["model"], registry=registry
        )
        self.loop_step_failures = Counter(
            "monolith_dense_loop_step_failures", "Poll-loop steps that raised", ["step"], registry=registry
        )
