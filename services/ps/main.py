"""``monolith-serving ps``: one parameter-server shard (flags follow tensorflow_model_server's names)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from monolith_serving.core.cli_flags import (
    add_flag,
    add_grpc_socket_path_flag,
    add_model_source_flags,
    add_server_flags,
    add_tfs_compat_flags,
    grpc_socket_path_from_args,
    load_threads_from_flag,
    main_grpc_port,
    single_model_from_args,
    warn_unused_tfs_flags,
)
from monolith_serving.core.export_layout import read_model_server_config
from monolith_serving.core.grpc_server import serve_command
from monolith_serving.ps.config import (
    DEFAULT_MAX_FIDS_PER_REQUEST,
    DEFAULT_MAX_PENDING_SYNC_BYTES,
    PsConfig,
    SubModelConfig,
    sub_models_from_proto,
)
from monolith_serving.ps.server import PsServer

logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    add_server_flags(parser)
    add_model_source_flags(parser, sub_model="ps_<i>")
    add_grpc_socket_path_flag(parser)
    add_flag(parser, "--num_ps", type=int, default=0, help="number of PS shards; fids must satisfy fid mod num_ps == i")
    add_flag(
        parser,
        "--max_fids_per_request",
        type=int,
        default=DEFAULT_MAX_FIDS_PER_REQUEST,
        help="larger requests get RESOURCE_EXHAUSTED",
    )
    add_flag(
        parser,
        "--max_pending_sync_bytes",
        type=int,
        default=DEFAULT_MAX_PENDING_SYNC_BYTES,
        help="parameter-sync bytes queued for a loading version; past it the queue is dropped and the new version "
        "starts from its export (default 1 GiB)",
    )
    add_flag(parser, "--num_load_threads", type=int, default=1, help="versions loaded at once (memory!; 0 counts as 1)")
    add_tfs_compat_flags(parser, honoured=("model_config_file_poll_wait_seconds", "num_load_threads"))


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> PsConfig:
    """The server's config; NotFoundError/InvalidArgumentError for bad flags, a missing or bad config file."""
    port = main_grpc_port(args, environ)
    single = single_model_from_args(args)
    models = () if single is None else (SubModelConfig(single.name, single.base_path, single.policy),)
    if single is None:
        # Checked here as well as read by PsServer.open (which polls it for changes): a missing file or a non-PS
        # model name is a bad flag (exit 2) found before any port is bound, as it is through --model_name.
        sub_models_from_proto(read_model_server_config(Path(args.model_config_file)))
    return PsConfig(
        port=port,
        host=args.host,
        grpc_socket_path=grpc_socket_path_from_args(args),
        metrics_port=args.metrics_port,
        model_config_file=Path(args.model_config_file) if args.model_config_file else None,
        model_config_file_poll_wait_s=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_s=args.file_system_poll_wait_seconds,
        models=models,
        num_ps=args.num_ps,
        max_fids_per_request=args.max_fids_per_request,
        max_pending_sync_bytes=args.max_pending_sync_bytes,
        grpc_channel_arguments=args.grpc_channel_arguments,
        num_load_threads=load_threads_from_flag(args.num_load_threads),
    )


def run(args: argparse.Namespace) -> int:
    warn_unused_tfs_flags(args, "PS", logger)
    return serve_command(args, config_from_args, PsServer, "PS")
