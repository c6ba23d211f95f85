"""Every metric of the proxy, on its own registry (served at ``--metrics_port``/metrics).

``model`` labels only carry names the proxy can vouch for (else ``unknown``, see :class:`ModelLabels`) so a
client cannot blow up the series count by sending random model names.

The per-request metrics go through ``count_request``/``observe_latency``/``observe_upstream``, which keep
the labelled children (``core.metric_children``) instead of calling ``.labels()`` per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monolith_serving.core.metric_children import LabelledChildren

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
UNKNOWN_MODEL = "unknown"
# Names a source that takes any name may add as labels (an entry answering every name must not let clients
# grow the series); far above the models one proxy fronts.
MAX_ANSWERED_MODELS = 100

log = logging.getLogger(__name__)


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
            "proxy_upstream_errors",
            "Routed attempts to entry replicas that failed through the entry's or the transport's fault, by gRPC "
            "code (UNAVAILABLE, DEADLINE_EXCEEDED of the attempt, CANCELLED under the proxy, INTERNAL, ...); an "
            "entry's answer to the client's mistake (INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE, PERMISSION_DENIED, "
            "UNAUTHENTICATED) is not one",
            ["code"],
            registry=r,
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


class ModelLabels:
    """The ``model`` label value of a model name; the set of values stays bounded whatever clients send.

    A source that lists its models (discovery, ``--entry_models``) has refused unknown names before the label
    is asked for, so its names are used as they are. A source that takes any name (``--entry_targets`` alone)
    cannot tell a model from a typo: there a name becomes a label once an entry answered a request for it
    with OK, for the first ``max_answered`` names so answered; every other name is ``unknown``.
    Names are never forgotten (their series would stay exported anyway). Not thread-safe: one loop owns it.
    """

    def __init__(self, *, source_lists_models: bool, max_answered: int = MAX_ANSWERED_MODELS) -> None:
        self._source_lists_models = source_lists_models
        self._max_answered = max_answered
        self._answered: set[str] = set()

    def of(self, model: str) -> str:
        if self._source_lists_models or model in self._answered:
            return model
        return UNKNOWN_MODEL

    def answered(self, model: str) -> str:
        """The label of ``model`` after an entry answered OK for it; remembers the name while there is room."""
        label = self.of(model)
        if label == model or len(self._answered) >= self._max_answered:
            return label  # already a label (or literally "unknown"), or no room left
        self._answered.add(model)
        if len(self._answered) == self._max_answered:
            log.warning(
                "%d model names are metric labels now; requests for other names are labelled %r",
                self._max_answered,
                UNKNOWN_MODEL,
            )
        return model
