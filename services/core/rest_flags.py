"""The REST API's command-line flags, as tensorflow_model_server names them, for every server that serves it (the
proxy, the entry, the unified server): ``--rest_api_port`` (0: no REST API, TF Serving's default),
``--rest_api_timeout_in_ms``, ``--rest_api_enable_cors_support``, ``--monitoring_config_file`` (the server's metrics
on the REST port, ``core.monitoring_config``), and our bounds on bodies, ``--rest_api_max_body_bytes`` and
``--rest_api_body_budget_bytes``. The REST port binds the server's ``--host``, as its gRPC port does.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from monolith_serving.core.cli_flags import add_bool_flag, add_flag, flag_type, parse_port
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.monitoring_config import FLAG as MONITORING_FLAG
from monolith_serving.core.monitoring_config import prometheus_path_from_file
from monolith_serving.core.rest_gateway import RestConfig

# tensorflow_model_server's names of the flags above that it has too; a server taking its command line honours them.
TFS_REST_FLAGS = ("rest_api_port", "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "monitoring_config_file")
DEFAULT_TIMEOUT_MS = 30000  # tensorflow_model_server's --rest_api_timeout_in_ms


def add_rest_api_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(
        parser,
        "--rest_api_port",
        type=flag_type(parse_port),
        default=0,
        help="TF Serving REST API port, bound on --host (0: no REST API)",
    )
    add_flag(
        parser,
        "--rest_api_timeout_in_ms",
        type=int,
        default=DEFAULT_TIMEOUT_MS,
        help="deadline of a REST request, fixed when it arrives (default %(default)s)",
    )
    add_bool_flag(
        parser,
        "--rest_api_enable_cors_support",
        default=False,
        help="answer CORS preflights (OPTIONS) under /v1/ and add CORS headers to REST API answers (default false)",
    )
    add_flag(
        parser,
        MONITORING_FLAG,
        default="",
        help="text-format tensorflow.serving.MonitoringConfig: with prometheus_config { enable: true }, serve the "
        "/metrics registry on the REST port at its path (needs --rest_api_port; empty: none)",
    )
    add_flag(
        parser,
        "--rest_api_max_body_bytes",
        type=int,
        default=RestConfig.max_body_bytes,
        help="REST request bodies larger than this are refused (413) before they are read (default %(default)s)",
    )
    add_flag(
        parser,
        "--rest_api_body_budget_bytes",
        type=int,
        help="bytes of REST Predict bodies read and decoded at once; a body beyond it is refused (429) unread "
        f"(default {RestConfig.body_budget_bytes}, or --rest_api_max_body_bytes if larger)",
    )


def rest_config_from_args(
    args: argparse.Namespace,
    *,
    host: str,
    server_name: str,
    drain_timeout_s: float,
    other_ports: Mapping[str, int],
) -> RestConfig | None:
    """The REST API the flags ask for, None without ``--rest_api_port``. InvalidArgumentError naming the flag when a
    value cannot work, or when the port is one of ``other_ports`` (flag -> port the server binds besides)."""
    port = int(args.rest_api_port)
    monitoring_file: str = args.monitoring_config_file
    if not port:
        if monitoring_file:
            # tensorflow_model_server ignores the file then, unread: metrics asked for would silently be missing.
            raise InvalidArgumentError(
                f"{MONITORING_FLAG} {monitoring_file} configures the REST port, but --rest_api_port is 0 (no REST "
                f"API): give --rest_api_port, or leave {MONITORING_FLAG} out"
            )
        return None
    for flag, other in other_ports.items():
        if other == port:
            raise InvalidArgumentError(f"--rest_api_port {port} is also {flag}: give each its own port")
    timeout_ms = args.rest_api_timeout_in_ms
    if timeout_ms <= 0:
        raise InvalidArgumentError(f"--rest_api_timeout_in_ms must be > 0, got {timeout_ms}")
    max_body_bytes = args.rest_api_max_body_bytes
    if max_body_bytes < 1:
        raise InvalidArgumentError(f"--rest_api_max_body_bytes must be at least 1, got {max_body_bytes}")
    budget_bytes = args.rest_api_body_budget_bytes
    if budget_bytes is None:  # the default, raised only as far as one body of the largest size allowed
        budget_bytes = max(RestConfig.body_budget_bytes, max_body_bytes)
    elif budget_bytes < max_body_bytes:
        raise InvalidArgumentError(
            f"--rest_api_body_budget_bytes ({budget_bytes}) must be at least --rest_api_max_body_bytes "
            f"({max_body_bytes}): a body of the largest size allowed must fit"
        )
    return RestConfig(
        host=host,
        port=port,
        server_name=server_name,
        timeout_s=timeout_ms / 1000.0,
        max_body_bytes=max_body_bytes,
        body_budget_bytes=budget_bytes,
        drain_timeout_s=drain_timeout_s,
        cors=bool(args.rest_api_enable_cors_support),
        prometheus_path=prometheus_path_from_file(monitoring_file),
    )
