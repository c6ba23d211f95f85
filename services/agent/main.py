"""``monolith-serving agent --conf agent.conf``: the per-pod sidecar (v1 process supervision, v3 layouts).

Everything is decided once, here: the conf is parsed and resolved against the environment, the layout
filters are parsed, and one agent class is chosen by ``agent_version`` (1: :class:`V1Agent`, 3:
:class:`V3Agent`). A bad conf or filter is refused before anything starts, with one log line naming
the key; conf keys accepted but without effect (TF Serving settings our servers lack) are named in one
warning. Exit codes: 0 after SIGTERM/SIGINT, 1 when a child keeps failing or start-up fails, 2 for a bad
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from monolith_serving.agent.advertised_hosts import resolve_advertised_hosts
from monolith_serving.agent.config import (
    ServerKind,
    V1Plan,
    assign_free_ports,
    container_identity,
    layout_watch_path,
    unused_conf_keys,
    v1_plan,
    v3_server_spec,
)
from monolith_serving.agent.layout_filter import LayoutFilterError, LayoutFilterSet
from monolith_serving.agent.local_server import grpc_health_probe
from monolith_serving.agent.metrics import AgentMetrics
from monolith_serving.agent.registry_writes import WriteTrackingDiscovery
from monolith_serving.agent.runtime import AgentOptions, AgentRuntime
from monolith_serving.agent.supervisor import ChildSupervisor, RestartPolicy
from monolith_serving.agent.v1_agent import ReplicaIdentity, V1Agent
from monolith_serving.agent.v3_agent import V3Agent
from monolith_serving.core.agent_conf import (
    AgentConfig,
    ConfError,
    DiscoveryKind,
    load_agent_config,
    resolve_environment,
)
from monolith_serving.core.cli_flags import add_flag, flag_type, parse_port
from monolith_serving.core.grpc_server import run_async_main
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.core.zk_paths import UNSET_REPLICA_ID
from monolith_serving.discovery.addresses import host_address_family
from monolith_serving.discovery.agent_view import ResourceSampler, WatcherReplicaView
from monolith_serving.discovery.config import discovery_config_from_agent
from monolith_serving.discovery.factory import create_discovery
from monolith_serving.discovery.metrics import DiscoveryMetrics
from monolith_serving.discovery.replica_watcher import ReplicaWatcher

__all__ = ["configure", "prepare", "run"]

log = logging.getLogger(__name__)


class Agent(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """Everything decided before the event loop starts."""

    config: AgentConfig
    options: AgentOptions
    policy: RestartPolicy
    log_path: Path | None
    metrics_port: int
    plan: V1Plan | None  # v1
    filters: LayoutFilterSet | None  # v3


def configure(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--conf", required=True, help="agent.conf (Monolith syntax; see docs/agent_conf.md)")
    add_flag(parser, "--tfs_log", default=None, help="append children's stdout/stderr to this file (default: stdout)")
    add_flag(
        parser, "--metrics_port", type=flag_type(parse_port), default=0, help="Prometheus /metrics port (0: not served)"
    )
    add_flag(parser, "--work_dir", default=None, help="folder for children's model config files (default: a temp dir)")
    add_flag(parser, "--drain_s", type=float, default=2.0, help="wait after deregistering before stopping children")
    add_flag(parser, "--max_restarts", type=int, default=5, help="child restarts allowed per --restart_window_s")
    add_flag(parser, "--restart_window_s", type=float, default=300.0, help="window of --max_restarts")
    add_flag(parser, "--child_ready_timeout_s", type=float, default=120.0, help="wait for a child's port")
    add_flag(parser, "--connect_timeout_s", type=float, default=30.0, help="start-up wait for the registry")


def prepare(args: argparse.Namespace, environ: dict[str, str]) -> Prepared:
    """Parse and check everything; raises ConfError / LayoutFilterError naming the key or filter."""
    config = assign_free_ports(resolve_environment(load_agent_config(args.conf), environ))
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="monolith-agent-"))
    hosts = resolve_advertised_hosts(config.host_ip, config.host_ipv6)
    options = AgentOptions(
        work_dir=work_dir,
        hosts=hosts,
        connect_timeout_s=args.connect_timeout_s,
        child_ready_timeout_s=args.child_ready_timeout_s,
        drain_s=args.drain_s,
        replica_address_family=host_address_family(environ),
    )
    plan: V1Plan | None = None
    filters: LayoutFilterSet | None = None
    if config.agent_version == 3:
        filters = LayoutFilterSet.parse(
            config.layout_filters, shard_id=config.shard_id, shard_num=config.num_shard or 1
        )
        layout_watch_path(config)  # validates layout_pattern now
    elif config.agent_version == 1:
        plan = v1_plan(config, work_dir=work_dir)
        _warn_without_replica_id(config, plan)
    else:
        raise ConfError(f"{config.where('agent_version')}: key 'agent_version': only 1 and 3 are supported")
    unused = unused_conf_keys(config)
    if unused:
        log.warning(
            "%s: keys with no effect (our model servers are not tensorflow_model_server; see docs/agent_conf.md): %s",
            config.conf_path,
            ", ".join(unused),
        )
    return Prepared(
        config=config,
        options=options,
        policy=RestartPolicy(max_restarts=args.max_restarts, window_s=args.restart_window_s),
        log_path=Path(args.tfs_log) if args.tfs_log else None,
        metrics_port=args.metrics_port,
        plan=plan,
        filters=filters,
    )


def _warn_without_replica_id(config: AgentConfig, plan: V1Plan) -> None:
    """Without a replica id a v1 agent registers as Monolith's does: one with an entry takes a sequential node and
    adopts its number (unique), one without registers its PS / dense nodes as ``-1``. Two of the latter serving the
    same tasks write the same nodes and replace each other (the last writer wins), so routers see one of them at a
    time: say so where an operator looks first."""
    has_entry = any(spec.kind is ServerKind.ENTRY for spec in plan.servers)
    if config.discovery is DiscoveryKind.STATIC or config.replica_id != UNSET_REPLICA_ID or has_entry:
        return
    log.warning(
        "neither REPLICA_ID nor MY_POD_NAME is set: this agent registers its replicas as replica -1 of bzid %s (as "
        "Monolith's agent does); a second agent serving the same tasks without an id of its own would replace these "
        "nodes (set REPLICA_ID or MY_POD_NAME)",
        config.bzid,
    )


def _build(prepared: Prepared, metrics: AgentMetrics) -> tuple[Agent, ChildSupervisor]:
    config, options = prepared.config, prepared.options
    assert config.bzid is not None and config.agent_port is not None
    discovery_metrics = DiscoveryMetrics(metrics.registry)
    discovery = WriteTrackingDiscovery(create_discovery(discovery_config_from_agent(config)), metrics)
    identity = ReplicaIdentity(config.replica_id)  # a v1 agent without an id adopts its entry's number
    v3 = config.agent_version == 3
    watcher = ReplicaWatcher(
        discovery=discovery,
        bzid=config.bzid,
        base_name=None if v3 else config.base_name,
        agent_version=config.agent_version,
        metrics=discovery_metrics,
        address_family=options.replica_address_family,
    )
    view = WatcherReplicaView(
        watcher,
        agent_version=config.agent_version,
        base_name=None if v3 else config.base_name,
        idc=config.idc if config.dc_aware else None,
        cluster=config.cluster if config.dc_aware else None,
    )
    supervisor = ChildSupervisor(
        policy=prepared.policy, log_path=prepared.log_path, metrics=metrics, probe=grpc_health_probe
    )
    runtime = AgentRuntime(
        discovery=discovery,
        watcher=watcher,
        view=view,
        resource=ResourceSampler(
            address=f"{options.hosts.dial_host()}:{config.agent_port}",  # Monolith's: this agent's own address
            shard_id=config.shard_id,
            replica_id=identity.current,
        ),
        agent_port=config.agent_port,
        supervisor=supervisor,
        metrics=metrics,
        options=options,
    )
    if v3:
        assert prepared.filters is not None
        layout = layout_watch_path(config)
        agent: Agent = V3Agent(
            identity=container_identity(config, host=options.hosts.dial_host(), layout=layout),
            spec=v3_server_spec(config, work_dir=options.work_dir),
            filters=prepared.filters,
            runtime=runtime,
            status_interval_s=config.update_model_status_interval,
        )
    else:
        assert prepared.plan is not None
        agent = V1Agent(
            config=config,
            plan=prepared.plan,
            runtime=runtime,
            discovery_metrics=discovery_metrics,
            identity=identity,
        )
    return agent, supervisor


async def serve(prepared: Prepared, stop: asyncio.Event) -> int:
    """Start the agent, run until a signal or a child failure, then stop in order."""
    metrics = AgentMetrics()
    endpoint: MetricsEndpoint | None = None
    if prepared.metrics_port:
        endpoint = serve_metrics(prepared.metrics_port, metrics.registry)
    agent, supervisor = _build(prepared, metrics)
    code = 0
    starting = asyncio.create_task(agent.start(), name="agent-start")
    stopped = asyncio.create_task(stop.wait(), name="agent-signal")
    failed = asyncio.create_task(supervisor.failed.wait(), name="agent-child-failed")
    try:
        done, _ = await asyncio.wait({starting, stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done and starting.exception() is None:
            log.info("agent started (agent_version %d)", prepared.config.agent_version)
            done, _ = await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        elif starting in done:
            error = starting.exception()
            log.error("agent start-up failed: %s", getattr(error, "message", None) or repr(error))
            code = 1
        if failed in done:
            log.error("stopping the agent: %s", supervisor.failure_reason)
            code = 1
        elif stopped in done:
            log.info("signal received: deregistering and stopping")
    finally:
        for task in (starting, stopped, failed):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await agent.stop()
        if endpoint is not None:
            endpoint.stop()
    log.info("agent stopped (exit %d)", code)
    return code


def run(args: argparse.Namespace) -> int:
    try:
        prepared = prepare(args, dict(os.environ))
    except (ConfError, LayoutFilterError) as error:
        log.error("refusing to start: %s", error.message)
        return 2
    return run_async_main(lambda stop: serve(prepared, stop))
