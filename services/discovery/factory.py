"""Choose the discovery backend once, at start-up, from DiscoveryConfig."""

from __future__ import annotations

from monolith_serving.discovery.base import Discovery
from monolith_serving.discovery.config import Backend, DiscoveryConfig


def create_discovery(config: DiscoveryConfig) -> Discovery:
    """Build (not start) the backend named by ``config.backend``; imports only that backend's client."""
    if config.backend is Backend.ZOOKEEPER:
        from monolith_serving.discovery.zk import ZkDiscovery

        return ZkDiscovery(config)
    if config.backend is Backend.CONSUL:
        from monolith_serving.discovery.consul_kv import ConsulDiscovery

        return ConsulDiscovery(config)
    from monolith_serving.discovery.static import StaticDiscovery

    return StaticDiscovery(config)
