"""``monolith-serving proxy``: the TF Serving front door (gRPC and REST) in front of the entry replicas.

Configuration: ``--conf agent.conf`` (bzid, base_name, zk_servers, discovery, dc_aware, agent_version)
with flags overriding. SIGTERM/SIGINT drain gracefully and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from monolith_serving.core.cli_flags import (
    TFS_GRPC_PORT,
    add_bool_flag,
    add_flag,
    add_grpc_socket_path_flag,
    add_server_flags,
)
from monolith_serving.core.errors import MonolithServingError
from monolith_serving.core.grpc_server import run_async_main
from monolith_serving.core.rest_flags import add_rest_api_flags
from monolith_serving.core.tls_channel import add_tls_dial_flags
from monolith_serving.core.tls_config import add_ssl_config_flag
from monolith_serving.proxy.config import ProxyConfig, config_from_args
from monolith_serving.proxy.predict_coalesce import PredictCoalescing
from monolith_serving.proxy.server import ProxyServer

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    add_server_flags(parser, default_port=TFS_GRPC_PORT, port_help="gRPC port (default %(default)s)")
    add_flag(parser, "--conf", help="agent.conf (bzid, base_name, zk_servers, discovery, dc_aware, agent_version)")
    add_flag(parser, "--host", default="0.0.0.0", help="address to bind (default %(default)s)")
    add_grpc_socket_path_flag(parser)
    add_rest_api_flags(parser)
    add_flag(
        parser,
        "--grpc_default_timeout_in_ms",
        type=int,
        default=30000,
        help="deadline of routed gRPC calls (Predict, GetModelMetadata, ...) whose client set none "
        "(0: none; default %(default)s)",
    )
    add_flag(parser, "--discovery", choices=("zk", "consul", "static"), help="backend (default: from agent.conf)")
    add_flag(parser, "--zk_servers", help="ZooKeeper hosts host:port[,host:port...]")
    add_flag(parser, "--consul_address", help="Consul HTTP address host:port")
    add_flag(parser, "--session_timeout_s", type=float, default=10.0, help="registry session timeout")
    add_flag(parser, "--bzid", help="business id (registry root); overrides agent.conf")
    add_flag(parser, "--base_name", help="model base name (v1 registry); overrides agent.conf")
    add_flag(parser, "--agent_version", type=int, choices=(1, 3), help="registry layout (default: agent.conf or 1)")
    add_flag(parser, "--entry_targets", help="static entry replicas host:port[,host:port...] (implies static)")
    add_flag(parser, "--entry_models", help="static: model names the targets serve (default: any name)")
    add_ssl_config_flag(parser)
    add_tls_dial_flags(parser, "entry_ssl", server="the entry replicas")
    add_flag(parser, "--max_in_flight", type=int, default=1024, help="beyond this, RESOURCE_EXHAUSTED at once")
    add_flag(parser, "--admin_token", help="allow HandleReloadConfigRequest to callers presenting this token")
    add_flag(parser, "--admin_token_file", help="read the admin token from this file (keeps it out of ps)")
    add_flag(parser, "--ejection_failures", type=int, default=3, help="consecutive failures that eject a replica")
    add_flag(parser, "--ejection_cooldown_s", type=float, default=5.0, help="first ejection cool-down")
    add_flag(parser, "--max_ejection_cooldown_s", type=float, default=60.0, help="cap of the doubling cool-down")
    add_bool_flag(
        parser,
        "--coalesce_predicts",
        default=True,
        help="send concurrent Predicts for one model as one upstream Predict while another is in flight (default true)",
    )
    add_flag(
        parser,
        "--coalesce_max_rows",
        type=int,
        default=PredictCoalescing.max_rows,
        help="examples in one coalesced upstream Predict at most (default %(default)s)",
    )
    add_flag(parser, "--drain_timeout_s", type=float, default=30.0, help="SIGTERM: wait this long for in-flight")


async def serve(config: ProxyConfig, stop: asyncio.Event) -> int:
    async with ProxyServer(config):
        await stop.wait()
        log.info("signal received; draining")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args, os.environ)
    except (MonolithServingError, ValueError, OSError) as error:
        log.error("bad proxy configuration: %s", error)
        return 2
    return run_async_main(lambda stop: serve(config, stop))
