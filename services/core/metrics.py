"""Metrics every gRPC server of the package keeps, whatever its service (``core.grpc_server.build_server``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class GrpcServerMetrics:
    """What happens to calls before any service code sees them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Such a call never reaches a service's own request counter: without this, only a (rate-limited) log line
        # tells an operator that a client sends garbage.
        self.malformed_requests = Counter(
            "grpc_server_malformed_requests",
            "Calls whose request body did not parse as the method's message (answered INVALID_ARGUMENT).",
            ["method"],
            registry=registry,
        )
