"""The v1 agent (agent_version 1; deploy_type ps, entry, dense or mixed): launch, register, supervise.

Start-up, in order:
1. registry session, replica watcher and AgentService (the entry child asks it for PS replicas);
2. per child of the plan (PS and dense before entry): write its model config, spawn it, wait for its
   port, then register its replicas (``stat`` follows GetModelStatus every second, see ``stat_poll_interval``);
   an entry first waits until every PS task 0..num_ps-1 (and, with dense_alone, dense:0) has an
   AVAILABLE replica, at most ``max_waiting_sec`` (after that it starts anyway and gates requests itself).

Without a replica id (neither REPLICA_ID nor MY_POD_NAME) the agent does what Monolith's does
(``replica_manager.ReplicaUpdater.register``): an agent with an entry registers ``entry:0/0`` as a sequential
node before its first registration and adopts the node's number as its replica id for every node (so in a mixed
pod the PS nodes follow the entry's number; the node comes back under the same number after a session loss);
an agent without an entry registers its PS / dense nodes as ``-1``.

Stop (SIGTERM/SIGINT): delete our registry nodes first, wait ``drain_s`` so routers stop sending,
then stop the children, AgentService and the session. A child restarted by the supervisor keeps its
nodes; while it is down its ``stat`` turns UNKNOWN (its status poll fails), then AVAILABLE again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from monolith_serving.agent.config import ServerKind, ServerLaunchSpec, V1Plan, local_replicas
from monolith_serving.agent.local_server import LocalServerClient
from monolith_serving.agent.model_config_writer import write_child_files, write_model_config
from monolith_serving.agent.runtime import AgentRuntime
from monolith_serving.agent.supervisor import ChildSpec
from monolith_serving.core.agent_conf import AgentConfig
from monolith_serving.core.errors import UnavailableError
from monolith_serving.core.zk_paths import UNSET_REPLICA_ID, ServerType
from monolith_serving.discovery.metrics import DiscoveryMetrics
from monolith_serving.discovery.replica_updater import LocalReplica, ReplicaUpdater, claim_entry_replica

__all__ = ["ReplicaIdentity", "V1Agent"]

log = logging.getLogger(__name__)

# Pause before trying again to claim the entry's sequential node after the registry failed the call.
_CLAIM_RETRY_S = 1.0


# Monolith's ReplicaUpdater rewrites ``stat`` every second whatever agent.conf says: its update_model_status_interval
# only paces the entry's wait for PS (2 x interval between checks), which ours follows through the registry watch.
# So Monolith's sample conf (interval 10) must not make failover and rollouts wait 10 s for a ``stat``.
MONOLITH_STAT_PERIOD_S = 1.0


def stat_poll_interval(config: AgentConfig) -> float:
    """How often a v1 agent polls its children's GetModelStatus into ``stat``: every second, as Monolith's, or
    ``update_model_status_interval`` when that is shorter."""
    return min(config.update_model_status_interval, MONOLITH_STAT_PERIOD_S)


class ReplicaIdentity:
    """This agent's replica id, read by whoever reports it (GetResource): the configured one, else ``-1`` until the
    entry's sequential node gives one (Monolith's ``AgentConfig.replica_id`` after its first registration)."""

    def __init__(self, configured: int) -> None:
        self._replica_id = configured

    def current(self) -> int:
        return self._replica_id

    @property
    def known(self) -> bool:
        return self._replica_id != UNSET_REPLICA_ID

    def adopt(self, replica_id: int) -> None:
        if self.known:
            raise ValueError(f"replica id is {self._replica_id} already; cannot adopt {replica_id}")
        self._replica_id = replica_id


class V1Agent:
    """``start()`` brings every child up and registered; ``stop()`` is idempotent."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        plan: V1Plan,
        runtime: AgentRuntime,
        discovery_metrics: DiscoveryMetrics | None = None,
        identity: ReplicaIdentity | None = None,
    ) -> None:
        self._config = config
        self._plan = plan
        self._runtime = runtime
        self._discovery_metrics = discovery_metrics or DiscoveryMetrics()
        self._identity = identity or ReplicaIdentity(config.replica_id)
        self._claimed_entry: LocalReplica | None = None  # registered by the claim, until the entry's updater has it
        self._clients: dict[int, LocalServerClient] = {}  # by child port
        self._updaters: list[ReplicaUpdater] = []
        self._gauge_task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        await self._runtime.start()
        self._gauge_task = asyncio.create_task(self._registration_gauge_loop(), name="agent-registration-gauge")
        for spec in self._plan.servers:
            if spec.kind is ServerKind.ENTRY and self._plan.entry_waits_for_ps:
                await self._wait_for_ps()
            if spec.kind is ServerKind.ENTRY and self._plan.entry_waits_for_dense:
                await self._wait_for_dense()
            await self._launch(spec)

    async def _wait_for_ps(self) -> None:
        num_ps, timeout_s = self._config.num_ps, self._config.max_waiting_sec
        log.info("entry waits until PS tasks 0..%d are AVAILABLE (at most %d s)", num_ps - 1, timeout_s)
        started = time.monotonic()
        ok = await self._runtime.watcher.wait_until_available(
            ServerType.PS, range(num_ps), timeout_s=timeout_s, model=self._config.base_name
        )
        if ok:
            log.info("all %d PS tasks AVAILABLE after %.1f s; starting the entry", num_ps, time.monotonic() - started)
        else:
            log.warning("PS tasks not all AVAILABLE after %d s; starting the entry anyway", timeout_s)

    async def _wait_for_dense(self) -> None:
        """dense_alone: the entry's versions need dense_0 too; the deadline is ``max_waiting_sec`` again."""
        timeout_s = self._config.max_waiting_sec
        log.info("entry waits until dense:0 is AVAILABLE (at most %d s)", timeout_s)
        ok = await self._runtime.watcher.wait_until_available(
            ServerType.DENSE, range(1), timeout_s=timeout_s, model=self._config.base_name
        )
        if not ok:
            log.warning("dense:0 not AVAILABLE after %d s; starting the entry anyway", timeout_s)

    async def _launch(self, spec: ServerLaunchSpec) -> None:
        write_model_config(spec.model_config_path, spec.models)
        write_child_files(spec.files)
        await self._runtime.supervisor.start(ChildSpec(name=spec.name, argv=tuple(spec.argv()), port=spec.grpc_port))
        await self._runtime.supervisor.wait_ready(spec.name, self._runtime.options.child_ready_timeout_s)
        log.info("child %s answers on port %d; registering %d replicas", spec.name, spec.grpc_port, len(spec.replicas))
        self._clients[spec.grpc_port] = LocalServerClient(f"127.0.0.1:{spec.grpc_port}")
        if not self._identity.known and self._entry_spec() is not None:
            await self._claim_entry_node()
        updater = ReplicaUpdater(
            discovery=self._runtime.discovery,
            replicas=local_replicas(
                self._config,
                spec,
                host=self._runtime.options.hosts.ipv4,
                host_ipv6=self._runtime.options.hosts.ipv6,
                replica_id=self._identity.current(),
            ),
            status_source=self._status,
            interval_s=stat_poll_interval(self._config),
            metrics=self._discovery_metrics,
        )
        await updater.start()
        self._updaters.append(updater)
        if spec.kind is ServerKind.ENTRY:
            self._claimed_entry = None  # the entry's updater registered the same path and owns it now

    def _entry_spec(self) -> ServerLaunchSpec | None:
        return next((s for s in self._plan.servers if s.kind is ServerKind.ENTRY), None)

    async def _claim_entry_node(self) -> None:
        """Take the entry's sequential node and adopt its number; waits for the registry as long as it takes (the
        nodes to register need the number)."""
        spec = self._entry_spec()
        assert spec is not None
        options = self._runtime.options
        (template,) = local_replicas(
            self._config,
            spec,
            host=options.hosts.ipv4,
            host_ipv6=options.hosts.ipv6,
            replica_id=UNSET_REPLICA_ID,
        )
        discovery, timeout_s = self._runtime.discovery, self._runtime.options.connect_timeout_s
        while True:
            if not await discovery.wait_connected(timeout_s):
                log.warning("registry not connected after %.0f s; the entry's sequential node waits for it", timeout_s)
                await asyncio.sleep(_CLAIM_RETRY_S)  # wait_connected may return at once (a zero timeout)
                continue
            try:
                claimed = await claim_entry_replica(discovery, template)
                break
            except UnavailableError as exc:
                log.warning("could not create the entry's sequential node (%s); retrying", exc.message)
                await asyncio.sleep(_CLAIM_RETRY_S)
        self._claimed_entry = claimed
        self._identity.adopt(claimed.path.replica_id)
        log.info(
            "no REPLICA_ID or MY_POD_NAME: the entry's sequential node %s makes this agent replica %d",
            claimed.path.path,
            claimed.path.replica_id,
        )

    async def _status(self, replica: LocalReplica) -> list[int]:
        port = int(replica.address.rsplit(":", 1)[1])
        return await self._clients[port].model_states(replica.model_name)

    async def _registration_gauge_loop(self) -> None:
        while True:
            ready = bool(self._updaters) and all(u.ready for u in self._updaters)
            self._runtime.metrics.registration_ready.set(1 if ready else 0)
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._runtime.supervisor.hold_restarts()
        # Deregister before anything stops serving: routers drop us while our servers still answer.
        for updater in self._updaters:
            try:
                await updater.stop()
            except Exception:
                log.exception("deregistering failed; nodes vanish with the session")
        if self._claimed_entry is not None:  # stopped before the entry started (e.g. while it waited for the PS)
            try:
                await self._runtime.discovery.unregister(self._claimed_entry.path.path)
            except Exception:
                log.exception("deregistering the entry's node failed; it vanishes with the session")
        self._runtime.metrics.registration_ready.set(0)
        if self._updaters:
            log.info("deregistered; draining %.1f s before stopping children", self._runtime.options.drain_s)
            await asyncio.sleep(self._runtime.options.drain_s)
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauge_task
        await self._runtime.stop()
        for client in self._clients.values():
            await client.close()
