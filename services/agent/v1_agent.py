"""The v1 agent (agent_version 1; deploy_type ps, entry, dense or mixed): launch, register, supervise.

Start-up, in order:
1. registry session, replica watcher and AgentService (the entry child asks it for PS replicas);
2. per child of the plan (PS and dense before entry): write its model config, spawn it, wait for its
   port, then register its replicas (``stat`` follows GetModelStatus every ``update_model_status_interval``);
   an entry first waits until every PS task 0..num_ps-1 (and, with dense_alone, dense:0) has an
   AVAILABLE replica, at most ``max_waiting_sec`` (after that it starts anyway and gates requests itself).

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
from monolith_serving.agent.model_config_writer import write_model_config
from monolith_serving.agent.runtime import AgentRuntime
from monolith_serving.agent.supervisor import ChildSpec
from monolith_serving.core.agent_conf import AgentConfig
from monolith_serving.core.zk_paths import ServerType
from monolith_serving.discovery.metrics import DiscoveryMetrics
from monolith_serving.discovery.replica_updater import LocalReplica, ReplicaUpdater

__all__ = ["V1Agent"]

log = logging.getLogger(__name__)


class V1Agent:
    """``start()`` brings every child up and registered; ``stop()`` is idempotent."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        plan: V1Plan,
        runtime: AgentRuntime,
        discovery_metrics: DiscoveryMetrics | None = None,
    ) -> None:
        self._config = config
        self._plan = plan
        self._runtime = runtime
        self._discovery_metrics = discovery_metrics or DiscoveryMetrics()
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
        await self._runtime.supervisor.start(ChildSpec(name=spec.name, argv=tuple(spec.argv()), port=spec.grpc_port))
        await self._runtime.supervisor.wait_ready(spec.name, self._runtime.options.child_ready_timeout_s)
        log.info("child %s answers on port %d; registering %d replicas", spec.name, spec.grpc_port, len(spec.replicas))
        self._clients[spec.grpc_port] = LocalServerClient(f"127.0.0.1:{spec.grpc_port}")
        updater = ReplicaUpdater(
            discovery=self._runtime.discovery,
            replicas=local_replicas(self._config, spec, host=self._runtime.options.advertise_host),
            status_source=self._status,
            interval_s=self._config.update_model_status_interval,
            metrics=self._discovery_metrics,
        )
        await updater.start()
        self._updaters.append(updater)

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
