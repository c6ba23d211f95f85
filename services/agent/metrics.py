"""Every metric of the agent, registered on a registry the caller owns (served on ``--metrics_port``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class AgentMetrics:
    """Child supervision, registration state, layout size and registry write freshness."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._last_write_s: float | None = None
        self.child_restarts = Counter(
            "agent_child_restarts",
            "Times a model-server child exited unexpectedly and was restarted.",
            ["server"],
            registry=self.registry,
        )
        self.child_up = Gauge(
            "agent_child_up",
            "1 while a model-server child runs and its port answers, else 0.",
            ["server"],
            registry=self.registry,
        )
        self.registration_ready = Gauge(
            "agent_registration_ready",
            "1 while this agent's registry nodes are in place (session connected, nodes written).",
            registry=self.registry,
        )
        self.layout_size = Gauge(
            "agent_layout_items",
            "v3: layout items this container accepted (after filters and declaration checks).",
            registry=self.registry,
        )
        self.bindings = Gauge(
            "agent_bindings",
            "v3: binding nodes this container holds (its AVAILABLE saved models).",
            registry=self.registry,
        )
        self.seconds_since_registry_write = Gauge(
            "agent_seconds_since_registry_write",
            "Seconds since the last successful registry write of this agent (-1: none yet).",
            registry=self.registry,
        )
        self.seconds_since_registry_write.set_function(self._since_last_write)

    def record_registry_write(self) -> None:
        self._last_write_s = self._clock()

    def _since_last_write(self) -> float:
        return -1.0 if self._last_write_s is None else self._clock() - self._last_write_s
