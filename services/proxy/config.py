"""The proxy's configuration: frozen dataclasses built once from agent.conf plus flags in ``main()``.

Precedence: a flag given on the command line wins over the agent.conf key, which wins over the default.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from monolith_serving.core.admin_token import read_token_file
from monolith_serving.core.agent_conf import AgentConfig, DiscoveryKind, load_agent_config, resolve_environment
from monolith_serving.core.cli_flags import TFS_GRPC_PORT, grpc_socket_path_from_args
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.grpc_server import ChannelArguments
from monolith_serving.core.rest_flags import rest_config_from_args
from monolith_serving.core.rest_gateway import RestConfig
from monolith_serving.core.tls_channel import ChannelTls, tls_dial_from_args
from monolith_serving.core.tls_config import ServerTls, server_tls_from_flag
from monolith_serving.discovery.config import Backend, DiscoveryConfig
from monolith_serving.proxy.core import CoreConfig
from monolith_serving.proxy.endpoints import parse_targets
from monolith_serving.proxy.predict_coalesce import PredictCoalescing
from monolith_serving.proxy.router import OutlierPolicy


@dataclass(frozen=True, kw_only=True)
class StaticSourceConfig:
    targets: tuple[str, ...]
    models: tuple[str, ...] | None = None  # None: every model name goes to the targets


@dataclass(frozen=True, kw_only=True)
class DiscoverySourceConfig:
    discovery: DiscoveryConfig
    bzid: str
    base_name: str | None
    agent_version: int
    idc: str | None = None
    cluster: str | None = None
    sync_timeout_s: float = 10.0


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    host: str = "0.0.0.0"
    grpc_port: int = TFS_GRPC_PORT
    grpc_socket_path: Path | None = None  # --grpc_socket_path: gRPC on this UNIX socket too (REST stays on TCP)
    rest: RestConfig | None = None  # None: no REST API (TF Serving's --rest_api_port 0)
    metrics_port: int = 0  # 0: not served
    grpc_channel_arguments: ChannelArguments = ()  # --grpc_channel_arguments
    tls: ServerTls | None = None  # --ssl_config_file: the gRPC port serves TLS (REST stays plain HTTP)
    entry_tls: ChannelTls | None = None  # --entry_ssl_*: calls and probes to entries over TLS
    core: CoreConfig = field(default_factory=CoreConfig)
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)
    source: StaticSourceConfig | DiscoverySourceConfig
    drain_timeout_s: float = 30.0


_BACKENDS = {DiscoveryKind.ZK: Backend.ZOOKEEPER, DiscoveryKind.CONSUL: Backend.CONSUL}


def _source_config(args: argparse.Namespace, agent: AgentConfig | None) -> StaticSourceConfig | DiscoverySourceConfig:
    kind_text = args.discovery or (
        "static" if args.entry_targets else (agent.discovery.value if agent is not None else "static")
    )
    kind = DiscoveryKind(kind_text)
    if kind is DiscoveryKind.STATIC:
        if not args.entry_targets:
            raise InvalidArgumentError("static discovery needs --entry_targets host:port[,host:port...]")
        models = tuple(m for m in (args.entry_models or "").split(",") if m) or None
        return StaticSourceConfig(targets=parse_targets(args.entry_targets), models=models)
    bzid = args.bzid or (agent.bzid if agent else None)
    if not bzid:
        raise InvalidArgumentError(f"--discovery {kind.value} needs a bzid (--bzid or agent.conf)")
    base_name = args.base_name or (agent.base_name if agent else None)
    agent_version = args.agent_version or (agent.agent_version if agent else 1)
    if agent_version == 1 and not base_name:
        raise InvalidArgumentError("agent_version 1 needs a base_name (--base_name or agent.conf)")
    dc_aware = agent.dc_aware if agent else False
    common: dict[str, object] = {"session_timeout_s": args.session_timeout_s}
    if kind is DiscoveryKind.ZK:
        zk_servers = args.zk_servers or (agent.zk_servers if agent else None)
        if not zk_servers:
            raise InvalidArgumentError("--discovery zk needs --zk_servers (or zk_servers in agent.conf)")
        discovery = DiscoveryConfig(backend=_BACKENDS[kind], zk_servers=zk_servers, **common)  # type: ignore[arg-type]
    else:
        address = args.consul_address or (agent.consul_address if agent else "127.0.0.1:8500")
        discovery = DiscoveryConfig.consul_from_address(address, **common)
    return DiscoverySourceConfig(
        discovery=discovery,
        bzid=bzid,
        base_name=base_name,
        agent_version=agent_version,
        idc=agent.idc if agent and dc_aware else None,
        cluster=agent.cluster if agent and dc_aware else None,
    )


def _coalescing_config(args: argparse.Namespace) -> PredictCoalescing:
    if args.coalesce_max_rows < 1:
        raise InvalidArgumentError(f"--coalesce_max_rows must be at least 1, got {args.coalesce_max_rows}")
    return PredictCoalescing(enabled=args.coalesce_predicts, max_rows=args.coalesce_max_rows)


def _default_timeout_s(args: argparse.Namespace) -> float | None:
    timeout_ms = args.grpc_default_timeout_in_ms
    if timeout_ms < 0:
        raise InvalidArgumentError(f"--grpc_default_timeout_in_ms must be >= 0 (0: none), got {timeout_ms}")
    return timeout_ms / 1000.0 if timeout_ms else None


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ProxyConfig:
    """Parses everything once; ``env`` (os.environ in main) feeds agent.conf's environment rules."""
    agent = resolve_environment(load_agent_config(args.conf), env) if args.conf else None
    drain_timeout_s = float(args.drain_timeout_s)
    grpc_port = args.port if args.port is not None else TFS_GRPC_PORT
    rest = rest_config_from_args(
        args,
        host=args.host,
        server_name="proxy",
        drain_timeout_s=drain_timeout_s,
        other_ports={"--port": grpc_port, "--metrics_port": args.metrics_port},
    )
    token = args.admin_token or None
    if args.admin_token_file:
        token = read_token_file(args.admin_token_file)  # an unreadable or empty file is refused at start-up
    return ProxyConfig(
        host=args.host,
        grpc_port=grpc_port,
        grpc_socket_path=grpc_socket_path_from_args(args),
        rest=rest,
        metrics_port=args.metrics_port,
        grpc_channel_arguments=args.grpc_channel_arguments,
        tls=server_tls_from_flag(args.ssl_config_file),
        entry_tls=tls_dial_from_args(args, "entry_ssl"),
        core=CoreConfig(
            max_in_flight=args.max_in_flight,
            admin_token=token,
            default_timeout_s=_default_timeout_s(args),
            coalescing=_coalescing_config(args),
        ),
        outlier=OutlierPolicy(
            consecutive_failures=args.ejection_failures,
            cooldown_s=args.ejection_cooldown_s,
            max_cooldown_s=max(args.ejection_cooldown_s, args.max_ejection_cooldown_s),
        ),
        source=_source_config(args, agent),
        drain_timeout_s=drain_timeout_s,
    )
