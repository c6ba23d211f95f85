"""``monolith-serving replica-manager``: cluster-wide replica view, AgentService for every model, probes."""

from __future__ import annotations

import argparse

from monolith_serving.core.agent_conf import env_port
from monolith_serving.core.cli_flags import add_flag, add_server_flags
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.grpc_server import serve_command
from monolith_serving.replica_manager.config import DEFAULT_PORT, ReplicaManagerConfig
from monolith_serving.replica_manager.flags import add_registry_flags, registry_settings
from monolith_serving.replica_manager.server import ReplicaManagerServer


def configure(parser: argparse.ArgumentParser) -> None:
    add_registry_flags(parser)
    add_server_flags(
        parser, port_help=f"gRPC port (default: agent.conf's agent_port, else $PORT2 when set, else {DEFAULT_PORT})"
    )
    add_flag(parser, "--host", default="0.0.0.0", help="address to bind (gRPC and /metrics)")
    add_flag(parser, "--probe_interval_s", type=float, default=2.0, help="probe every replica this often")
    add_flag(
        parser,
        "--probe_timeout_s",
        type=float,
        default=None,
        help="per-RPC probe timeout (default: min(1, interval))",
    )
    add_flag(parser, "--failures_to_evict", type=int, default=2, help="consecutive failed probes before eviction")
    add_flag(parser, "--resync_interval_s", type=float, default=30.0, help="full registry re-read period")


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> ReplicaManagerConfig:
    settings = registry_settings(args)
    port = args.port
    if port is None and settings.conf is not None and settings.conf.agent_port is not None:
        port = settings.conf.agent_port
    if port is None:
        from_environment = env_port(environ, "PORT2")
        port = DEFAULT_PORT if from_environment is None else from_environment
    timeout_s = args.probe_timeout_s if args.probe_timeout_s is not None else min(1.0, args.probe_interval_s)
    try:
        return ReplicaManagerConfig(
            discovery=settings.discovery,
            bzid=settings.bzid,
            port=port,
            host=args.host,
            metrics_port=args.metrics_port,
            grpc_channel_arguments=args.grpc_channel_arguments,
            probe_interval_s=args.probe_interval_s,
            probe_timeout_s=timeout_s,
            failures_to_evict=args.failures_to_evict,
            resync_interval_s=args.resync_interval_s,
        )
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    return serve_command(args, config_from_args, ReplicaManagerServer, "replica-manager")
