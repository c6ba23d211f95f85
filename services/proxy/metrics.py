"""Every metric of the proxy, on its own registry (served at ``--metrics_port``/metrics).

``model`` labels only carry names the endpoint source knows (else ``unknown``) so a client cannot blow up
the series count by sending random model names.

The per-request metrics go through ``count_request``/``observe_latency``/``observe_upstream``, which keep
the labelled children (``core.metric_children``) instead of calling ``.labels()`` per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monolith_serving.core.metric_children import LabelledChildren

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
UNKNOWN_MODEL = "unknown"


@dataclass
class ProxyMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "proxy_requests",
            "Client requests by model, method, protocol (grpc/rest) and gRPC status code name",
            ["model", "method", "protocol", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "proxy_request_latency_seconds",
            "Client-facing latency (admission to reply)",
            ["method", "protocol"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "proxy_upstream_latency_seconds",
            "One attempt to an entry replica",
            ["method"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.upstream_errors = Counter(
            "proxy_upstream_errors", "Failed attempts to entry replicas by gRPC code", ["code"], registry=r
        )
        self.retries = Counter("proxy_retries", "Attempts retried on another replica", ["method"], registry=r)
        self.ejections = Counter("proxy_ejections", "Replicas ejected by outlier detection", registry=r)
        self.readmissions = Counter("proxy_readmissions", "Ejected replicas readmitted after a probe", registry=r)
        self.ejected = Gauge("proxy_ejected_replicas", "Replicas currently ejected", registry=r)
        self.in_flight = Gauge("proxy_in_flight_requests", "Client requests being served", registry=r)
        self.rejected = Counter("proxy_rejected_requests", "Requests refused at admission", ["reason"], registry=r)
        self.predicts_coalesced = Counter(
            "proxy_predicts_coalesced",
            "Client Predicts sent upstream merged with others into one Predict",
            ["model"],
            registry=r,
        )
        self.maintenance_seconds = Histogram(
            "proxy_maintenance_step_seconds", "One probe/prune step of the maintenance loop", registry=r
        )
        self._request_counts = LabelledChildren(self.requests)
        self._latencies = LabelledChildren(self.latency)
        self._upstream_latencies = LabelledChildren(self.upstream_latency)
        self._coalesced = LabelledChildren(self.predicts_coalesced)

    def count_request(self, model: str, method: str, protocol: str, code: str) -> None:
        self._request_counts[(model, method, protocol, code)].inc()

    def observe_latency(self, method: str, protocol: str, seconds: float) -> None:
        self._latencies[(method, protocol)].observe(seconds)

    def observe_upstream(self, method: str, seconds: float) -> None:
        self._upstream_latencies[(method,)].observe(seconds)

    def count_coalesced(self, model: str, requests: int) -> None:
        self._coalesced[(model,)].inc(requests)
