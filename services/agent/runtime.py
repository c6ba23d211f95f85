"""What every agent version shares: the registry session, the replica watcher and AgentService.

``AgentRuntime`` owns them and starts/stops them in order; the v1 and v3 agents compose one and add
their own behaviour. Stop order is the reverse of start order, and the registry session is closed
last so the agent's own node deletions still reach ZooKeeper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from monolith_serving.agent.advertised_hosts import AdvertisedHosts
from monolith_serving.agent.metrics import AgentMetrics
from monolith_serving.agent.supervisor import ChildSupervisor
from monolith_serving.core.grpc_server import GrpcServer, GrpcServerOptions, build_server
from monolith_serving.discovery.addresses import AddressFamily
from monolith_serving.discovery.agent_servicer import AgentServiceServicer, add_agent_service
from monolith_serving.discovery.agent_view import ResourceSampler, WatcherReplicaView
from monolith_serving.discovery.base import Discovery
from monolith_serving.discovery.replica_watcher import ReplicaWatcher

__all__ = ["AgentOptions", "AgentRuntime"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AgentOptions:
    """Run-time knobs of the agent process (flags of ``monolith-serving agent``)."""

    work_dir: Path  # model config files of the children
    hosts: AdvertisedHosts  # the hosts written into registry addresses
    connect_timeout_s: float = 30.0  # how long start-up waits for the registry before going on
    child_ready_timeout_s: float = 120.0
    drain_s: float = 2.0  # after deregistering, before stopping children
    child_stop_grace_s: float = 10.0
    # Which registered address of a replica HeartBeat hands out when both are set (Monolith: IPv6 only on a host
    # without IPv4; ``discovery.addresses.host_address_family``).
    replica_address_family: AddressFamily = AddressFamily.IPV4


class AgentRuntime:
    """Registry session + watcher + AgentService server + child supervisor. Not thread-safe."""

    def __init__(
        self,
        *,
        discovery: Discovery,
        watcher: ReplicaWatcher,
        view: WatcherReplicaView,
        resource: ResourceSampler,
        agent_port: int,
        supervisor: ChildSupervisor,
        metrics: AgentMetrics,
        options: AgentOptions,
    ) -> None:
        self.discovery = discovery
        self.watcher = watcher
        self.supervisor = supervisor
        self.metrics = metrics
        self.options = options
        self._servicer = AgentServiceServicer(view, resource.sample)
        self._agent_port = agent_port
        self._grpc: GrpcServer | None = None
        self._started_watcher = False

    @property
    def agent_port(self) -> int:
        return self._grpc.port if self._grpc is not None else self._agent_port

    async def start(self) -> None:
        """Connect (bounded wait; registrations queue while disconnected), watch, serve AgentService."""
        await self.discovery.start()
        if not await self.discovery.wait_connected(self.options.connect_timeout_s):
            log.warning(
                "registry not connected after %.0f s; continuing, nodes are written on connect",
                self.options.connect_timeout_s,
            )
        await self.watcher.start()
        self._started_watcher = True
        self._grpc = build_server(
            GrpcServerOptions(
                port=self._agent_port, reflection_services=("monolith.serving.agent_service.AgentService",)
            ),
            [add_agent_service(self._servicer)],
            registry=self.metrics.registry,
        )
        await self._grpc.start()
        await self._grpc.set_serving(True)
        log.info("AgentService on port %d", self._grpc.port)

    async def stop_children(self) -> None:
        await self.supervisor.stop(self.options.child_stop_grace_s)

    async def stop(self) -> None:
        """Stop children (if still running), AgentService, watcher, then the registry session."""
        await self.stop_children()
        if self._grpc is not None:
            await self._grpc.stop(1.0)
        if self._started_watcher:
            await self.watcher.stop()
        await self.discovery.stop()
