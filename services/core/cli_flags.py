"""Flag helpers shared by every command.

Server flags use tensorflow_model_server's underscore spelling (``--model_config_file``); the dashed
spelling (``--model-config-file``) is accepted as an alias so both habits work.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from monolith_serving.core.agent_conf import env_port
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.logging_setup import parse_log_level

T = TypeVar("T")
MAX_PORT = 65535


def add_flag(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    """Adds ``--name`` plus its dashed/underscored twin as one option (dest keeps underscores)."""
    if not name.startswith("--"):
        raise ValueError(f"flag {name!r} must start with --")
    bare = name[2:]
    spellings = [f"--{bare.replace('-', '_')}"]
    dashed = f"--{bare.replace('_', '-')}"
    if dashed not in spellings:
        spellings.append(dashed)
    kwargs.setdefault("dest", bare.replace("-", "_"))
    parser.add_argument(*spellings, **kwargs)


def flag_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type``: its ValueError message becomes the usage error (exit 2) naming the flag;
    argparse would otherwise replace the message with ``invalid <function name> value``."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def parse_port(text: str) -> int:
    """A port number, 0..65535 (0: any free port, or "not served"); ValueError otherwise.

    gRPC and the kernel would silently take a larger or negative number modulo 65536."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"not a port number: {text!r}") from None
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"not a port number (0..{MAX_PORT}): {port}")
    return port


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Logging flags every command takes."""
    add_flag(parser, "--log_format", choices=("text", "json"), default="text", help="stderr log format")
    add_flag(
        parser,
        "--log_level",
        type=flag_type(parse_log_level),
        default="INFO",
        help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)",
    )


# tensorflow_model_server's gRPC port: the default of every server that answers TF Serving's API (ps, dense, entry,
# unified, proxy); for the servers an agent launches, agent.conf's $PORT3 comes first.
TFS_GRPC_PORT = 8500
_MAIN_PORT_HELP = f"gRPC port (default: $PORT3 when set, else {TFS_GRPC_PORT})"


def parse_grpc_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """tensorflow_model_server's ``--grpc_channel_arguments``: ``key=value`` pairs separated by commas; a value of
    digits (optionally signed) is an integer, anything else a string, as TF Serving passes them to gRPC."""
    pairs: list[tuple[str, int | str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        digits = value[1:] if value[:1] in "+-" else value
        pairs.append((key, int(value) if digits.isdigit() else value))
    return tuple(pairs)


def add_server_flags(
    parser: argparse.ArgumentParser, *, default_port: int | None = None, port_help: str = _MAIN_PORT_HELP
) -> None:
    """Flags of every long-running server: its gRPC port, its Prometheus endpoint, its BLAS threads.

    ``--port`` defaults to None, resolved by ``main_grpc_port`` (or the server's own rule, named in
    ``port_help``), unless ``default_port`` is given."""
    add_flag(parser, "--port", type=flag_type(parse_port), default=default_port, help=port_help)
    add_flag(
        parser,
        "--metrics_port",
        type=flag_type(parse_port),
        default=0,
        help="port of the Prometheus /metrics HTTP endpoint (0: not served)",
    )
    add_flag(
        parser,
        "--blas_threads",
        type=int,
        default=1,
        help="threads numpy's BLAS may use (0: the library's default, one per core; see core/blas_threads.py)",
    )
    add_flag(
        parser,
        "--grpc_channel_arguments",
        type=flag_type(parse_grpc_channel_arguments),
        default=(),
        help="gRPC server arguments, key=value[,key=value...] (e.g. grpc.max_receive_message_length=67108864)",
    )


def add_host_flag(parser: argparse.ArgumentParser) -> None:
    """``--host``: the address a model server binds, for gRPC and /metrics alike (default: every interface)."""
    add_flag(parser, "--host", default="0.0.0.0", help="address to bind (gRPC and /metrics)")


def add_unserved_rest_api_port(parser: argparse.ArgumentParser) -> None:
    """tensorflow_model_server's ``--rest_api_port``, taken (and checked) so its command lines work unchanged on
    servers that answer gRPC only."""
    add_flag(
        parser,
        "--rest_api_port",
        type=flag_type(parse_port),
        default=0,
        help="accepted for compatibility; REST is not served",
    )


def add_model_source_flags(parser: argparse.ArgumentParser, *, sub_model: str) -> None:
    """tensorflow_model_server's flags for what a sub-model server hosts: a ModelServerConfig file, or one
    model by name and base path. ``sub_model`` names the kind in the help text (``ps_<i>``, ``dense_0``)."""
    add_host_flag(parser)
    add_unserved_rest_api_port(parser)
    add_flag(
        parser, "--model_config_file", default=None, help=f"text-format ModelServerConfig of the hosted {sub_model}"
    )
    add_flag(
        parser,
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="look for new versions this often (0: only at start and on reload)",
    )
    add_flag(parser, "--model_name", default=None, help=f"single-model mode: the sub-model name ({sub_model})")
    add_flag(parser, "--model_base_path", default=None, help="single-model mode: the sub-model folder")
    add_flag(
        parser,
        "--model_version_policy",
        choices=[k.value for k in PolicyKind if k is not PolicyKind.SPECIFIC],
        default=PolicyKind.LATEST.value,
        help="single-model mode: version policy",
    )


@dataclass(frozen=True)
class SingleModel:
    name: str
    base_path: Path
    policy: VersionPolicy


def main_grpc_port(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``--port``, else ``$PORT3`` (agent.conf's main gRPC port; empty counts as unset), else 8500."""
    if args.port is not None:
        return int(args.port)
    from_environment = env_port(environ, "PORT3")
    return TFS_GRPC_PORT if from_environment is None else from_environment


def single_model_from_args(args: argparse.Namespace) -> SingleModel | None:
    """The ``--model_name``/``--model_base_path`` model, or None when ``--model_config_file`` is given."""
    if args.model_config_file is None:
        if not args.model_name or not args.model_base_path:
            raise InvalidArgumentError("give --model_config_file or both --model_name and --model_base_path")
        return SingleModel(
            args.model_name, Path(args.model_base_path), VersionPolicy(PolicyKind(args.model_version_policy))
        )
    if args.model_name or args.model_base_path:
        raise InvalidArgumentError("--model_name/--model_base_path and --model_config_file are exclusive")
    return None
