"""``monolith-serving unified``: a v3 container's model server (entry, PS and dense sub_graphs on one port).

Started by the v3 agent with an empty model list; the agent then reloads it with what its layout assigns
(HandleReloadConfigRequest). Started by Monolith's v3 agent, it re-reads ``--model_config_file`` every
``--model_config_file_poll_wait_seconds`` instead, since that agent rewrites the file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from monolith_serving.core.cli_flags import (
    add_flag,
    add_grpc_socket_path_flag,
    add_server_flags,
    add_tfs_compat_flags,
    agent_address_from_environment,
    grpc_socket_path_from_args,
    load_threads_from_flag,
    main_grpc_port,
    warn_unused_tfs_flags,
)
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.grpc_server import serve_command
from monolith_serving.core.rest_flags import TFS_REST_FLAGS, add_rest_api_flags, rest_config_from_args
from monolith_serving.core.tls_config import add_ssl_config_flag, server_tls_from_flag
from monolith_serving.entry.main import (
    FETCH_PS_TFS_FLAGS,
    add_coalesce_flags,
    add_fetch_ps_flags,
    coalesce_config_from_args,
    request_coalescing_from_args,
)
from monolith_serving.ps.config import DEFAULT_MAX_FIDS_PER_REQUEST
from monolith_serving.unified.server import UnifiedConfig, UnifiedServer

logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    add_server_flags(parser)
    add_flag(parser, "--host", default="0.0.0.0", help="address to bind (gRPC, REST and /metrics)")
    add_grpc_socket_path_flag(parser)
    add_flag(parser, "--model_config_file", type=Path, default=None, help="text ModelServerConfig applied at start")
    add_flag(
        parser,
        "--agent_address",
        default=None,
        help="AgentService the entry asks for PS replicas (default localhost:$PORT2)",
    )
    add_flag(
        parser,
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="period of the version scans, the entry core's control loop and health (at least 0.2; 0 or less: 1)",
    )
    add_flag(
        parser,
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read --model_config_file this often and apply it when it changed (0: never; Monolith's v3 agent "
        "passes 60 and changes models by rewriting the file)",
    )
    add_fetch_ps_flags(parser)
    add_coalesce_flags(parser)
    add_flag(parser, "--max_batch_size", type=int, default=None, help="override the serving spec's max batch size")
    add_flag(
        parser,
        "--num_load_threads",
        type=int,
        default=1,
        help="versions loaded at once by the PS core, and by the dense core (memory!; 0 counts as 1)",
    )
    add_flag(
        parser,
        "--max_fids_per_request",
        type=int,
        default=DEFAULT_MAX_FIDS_PER_REQUEST,
        help="fids per request (PS and entry)",
    )
    add_flag(parser, "--grace_s", type=float, default=2.0, help="drain time on shutdown")
    add_rest_api_flags(parser)
    add_ssl_config_flag(parser)
    add_tfs_compat_flags(
        parser,
        honoured=(
            "num_load_threads",
            "model_config_file_poll_wait_seconds",
            "ssl_config_file",
            *FETCH_PS_TFS_FLAGS,
            *TFS_REST_FLAGS,
        ),
    )


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> UnifiedConfig:
    agent_address = args.agent_address
    if agent_address is None:
        agent_address = agent_address_from_environment(environ)
    if agent_address is None:
        raise InvalidArgumentError("give --agent_address (or set $PORT2): the entry finds PS replicas there")
    port = main_grpc_port(args, environ)
    rest = rest_config_from_args(
        args,
        host=args.host,
        server_name="unified server",
        drain_timeout_s=args.grace_s,
        other_ports={"--port": port, "--metrics_port": args.metrics_port},
    )
    return UnifiedConfig(
        port=port,
        agent_address=agent_address,
        host=args.host,
        grpc_socket_path=grpc_socket_path_from_args(args),
        metrics_port=args.metrics_port,
        rest=rest,
        grpc_channel_arguments=args.grpc_channel_arguments,
        tls=server_tls_from_flag(args.ssl_config_file),
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_s=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_s=args.file_system_poll_wait_seconds,
        fetch_ps_timeout_ms=args.fetch_ps_timeout_ms,
        fetch_ps_retry=args.fetch_ps_retry,
        coalesce=coalesce_config_from_args(args),
        coalesce_requests=request_coalescing_from_args(args),
        max_batch_size=args.max_batch_size,
        num_load_threads=load_threads_from_flag(args.num_load_threads),
        max_fids_per_request=args.max_fids_per_request,
        grace_s=args.grace_s,
    )


def run(args: argparse.Namespace) -> int:
    warn_unused_tfs_flags(args, "unified server", logger)
    return serve_command(args, config_from_args, UnifiedServer, "unified server")
