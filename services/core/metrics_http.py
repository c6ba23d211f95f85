"""Serves a service's own Prometheus registry over HTTP (/metrics)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

logger = logging.getLogger(__name__)


@dataclass
class MetricsEndpoint:
    """A running /metrics server; ``port`` is the bound port (useful when 0 was asked for)."""

    server: WSGIServer
    port: int

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> MetricsEndpoint:
    """Starts the endpoint in a daemon thread. Port 0 picks a free port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsEndpoint(server=server, port=bound)
