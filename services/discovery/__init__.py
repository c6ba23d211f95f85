"""Service discovery: one interface (``Discovery``), ZooKeeper / Consul / static backends, and the
replica registry roles built on it (``ReplicaUpdater`` writes, ``ReplicaWatcher`` reads)."""

from monolith_serving.core.model_state import ModelState
from monolith_serving.discovery.base import (
    Discovery,
    EventKind,
    SessionState,
    WatchEvent,
    WatchHandle,
)
from monolith_serving.discovery.config import Backend, DiscoveryConfig, discovery_config_from_agent
from monolith_serving.discovery.factory import create_discovery
from monolith_serving.discovery.replica_meta import ContainerServiceInfo, ReplicaMeta

__all__ = [
    "Backend",
    "ContainerServiceInfo",
    "Discovery",
    "DiscoveryConfig",
    "EventKind",
    "ModelState",
    "ReplicaMeta",
    "SessionState",
    "WatchEvent",
    "WatchHandle",
    "create_discovery",
    "discovery_config_from_agent",
]
