"""Configuration of the replica-manager, parsed once in ``main`` and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from monolith_serving.core.grpc_server import ChannelArguments
from monolith_serving.discovery.config import DiscoveryConfig

DEFAULT_PORT = 8890


@dataclass(frozen=True, kw_only=True)
class ReplicaManagerConfig:
    """``probe_timeout_s`` must not exceed ``probe_interval_s`` so that a dead replica is evicted within
    ``(failures_to_evict + 1) * probe_interval_s``."""

    discovery: DiscoveryConfig
    bzid: str
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    metrics_port: int = 0  # 0: /metrics not served
    grpc_channel_arguments: ChannelArguments = ()  # --grpc_channel_arguments
    probe_interval_s: float = 2.0
    probe_timeout_s: float = 1.0
    failures_to_evict: int = 2
    resync_interval_s: float = 30.0
    connect_log_interval_s: float = 5.0  # while the registry is down at start, say so this often (backoff)
    grace_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.bzid or "/" in self.bzid:
            raise ValueError(f"bad bzid {self.bzid!r}")
        if self.probe_interval_s <= 0:
            raise ValueError(f"probe_interval_s must be > 0, got {self.probe_interval_s}")
        if not 0 < self.probe_timeout_s <= self.probe_interval_s:
            raise ValueError(
                f"probe_timeout_s must be in (0, probe_interval_s={self.probe_interval_s}], got {self.probe_timeout_s}"
            )
        if self.failures_to_evict < 1:
            raise ValueError(f"failures_to_evict must be >= 1, got {self.failures_to_evict}")
