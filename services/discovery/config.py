"""Configuration of the discovery client, parsed once by the entrypoint and passed down."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from monolith_serving.core.agent_conf import AgentConfig, DiscoveryKind


class Backend(enum.StrEnum):
    ZOOKEEPER = "zookeeper"
    CONSUL = "consul"
    STATIC = "static"


@dataclass(frozen=True, kw_only=True)
class DiscoveryConfig:
    """Which coordination service to use and how to talk to it.

    ``session_timeout_s`` is the ZooKeeper session timeout and the Consul session TTL (Consul requires
    at least 10 s). ``static_nodes`` / ``static_file`` feed the static backend (standalone mode): a map
    of absolute path → UTF-8 data (JSON file: ``{"/path": "data" | {json object}}``).
    """

    backend: Backend = Backend.ZOOKEEPER
    zk_servers: str = ""
    consul_host: str = "127.0.0.1"
    consul_port: int = 8500
    consul_scheme: str = "http"
    consul_token: str | None = None
    session_timeout_s: float = 10.0
    executor_workers: int = 4
    consul_watch_wait_s: float = 5.0
    static_nodes: dict[str, str] = field(default_factory=dict)
    static_file: str | None = None

    def __post_init__(self) -> None:
        if self.backend is Backend.ZOOKEEPER and not self.zk_servers:
            raise ValueError("zookeeper backend needs zk_servers (host:port[,host:port...])")
        if self.session_timeout_s <= 0:
            raise ValueError(f"session_timeout_s must be > 0, got {self.session_timeout_s}")
        if self.executor_workers < 1:
            raise ValueError(f"executor_workers must be >= 1, got {self.executor_workers}")
        if self.backend is Backend.CONSUL and self.session_timeout_s < 10:
            raise ValueError("consul session TTL (session_timeout_s) must be at least 10 s")

    @classmethod
    def consul_from_address(cls, address: str, **kwargs: object) -> DiscoveryConfig:
        """Build a Consul config from ``host:port`` or ``http(s)://host:port`` (CONSUL_HTTP_ADDR form)."""
        scheme = "http"
        if "://" in address:
            scheme, address = address.split("://", 1)
        host, _, port = address.rstrip("/").rpartition(":")
        if not host:
            raise ValueError(f"consul address needs host:port, got {address!r}")
        return cls(
            backend=Backend.CONSUL,
            consul_host=host,
            consul_port=int(port),
            consul_scheme=scheme,
            **kwargs,  # type: ignore[arg-type]
        )


def discovery_config_from_agent(conf: AgentConfig, *, session_timeout_s: float = 10.0) -> DiscoveryConfig:
    """The discovery part of an agent.conf (`discovery`, `zk_servers`, `consul_address`)."""
    if conf.discovery is DiscoveryKind.ZK:
        return DiscoveryConfig(
            backend=Backend.ZOOKEEPER, zk_servers=conf.zk_servers or "", session_timeout_s=session_timeout_s
        )
    if conf.discovery is DiscoveryKind.CONSUL:
        return DiscoveryConfig.consul_from_address(conf.consul_address, session_timeout_s=max(10.0, session_timeout_s))
    return DiscoveryConfig(backend=Backend.STATIC, session_timeout_s=session_timeout_s)
