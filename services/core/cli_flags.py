"""Flag helpers shared by every command.

Server flags use tensorflow_model_server's underscore spelling (``--model_config_file``); the dashed
spelling (``--model-config-file``) is accepted as an alias so both habits work.

The model servers (entry, ps, dense, unified) also take the rest of the command line Monolith's agent gives
tensorflow_model_server (``TFS_COMPAT_FLAGS``): a flag a server has no use for is accepted, its value checked
(a bad one is a usage error, exit 2, naming the flag) and named in one warning at start (``warn_unused_tfs_flags``).

Boolean flags (``add_bool_flag``) take absl's forms: bare ``--flag`` is true, ``--flag=VALUE`` takes absl's
spellings (``parse_bool``), and ``--noflag``, rewritten by ``core.absl_argv``, is false.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from monolith_serving.core.agent_conf import env_port
from monolith_serving.core.conf_syntax import parse_bool
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.grpc_socket_path import SOCKET_PATH_FLAG, check_socket_path
from monolith_serving.core.logging_setup import parse_log_level

T = TypeVar("T")
MAX_PORT = 65535


def _spellings(name: str) -> list[str]:
    """``--name`` underscored, then its dashed twin when that differs."""
    if not name.startswith("--"):
        raise ValueError(f"flag {name!r} must start with --")
    bare = name[2:]
    spellings = [f"--{bare.replace('-', '_')}"]
    dashed = f"--{bare.replace('_', '-')}"
    if dashed not in spellings:
        spellings.append(dashed)
    return spellings


def read_flag_file(flag: str, path: Path) -> str:
    """The UTF-8 text of the file a flag names; InvalidArgumentError naming the flag and the file when it cannot be
    read (the servers turn that into exit 2)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"{flag} {path}: cannot read the file: {error}") from None


def add_flag(parser: argparse.ArgumentParser | Any, name: str, *, aliases: Collection[str] = (), **kwargs: Any) -> None:
    """Adds ``--name`` plus its dashed/underscored twin as one option (dest keeps underscores); each of
    ``aliases`` (another flag's name for the same setting) is taken in both spellings too."""
    spellings = [spelling for flag in (name, *aliases) for spelling in _spellings(flag)]
    kwargs.setdefault("dest", name[2:].replace("-", "_"))
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


def _absl_bool(text: str) -> bool:
    # absl strips blanks around a boolean's value.
    return parse_bool(text.strip())


class BoolFlagAction(argparse.Action):
    """A boolean flag as absl takes it: ``--flag`` alone is true; ``--flag=VALUE`` (or ``--flag VALUE``) takes
    true/t/yes/y/1 and false/f/no/n/0 in any case, absl's spellings; ``core.absl_argv`` turns ``--noflag`` into
    ``--flag=false``. A bad value is a usage error naming the flag."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        default: Any = None,
        required: bool = False,
        help: str | None = None,
    ) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs="?",
            const=True,
            default=default,
            type=flag_type(_absl_bool),
            required=required,
            help=help,
            metavar="BOOL",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)


def add_bool_flag(parser: argparse.ArgumentParser | Any, name: str, *, default: bool | None, help: str) -> None:
    """``add_flag`` of a boolean flag (``BoolFlagAction``)."""
    add_flag(parser, name, action=BoolFlagAction, default=default, help=help)


def distribution_version() -> str:
    """This distribution's version, from its installed metadata."""
    try:
        return metadata.version("monolith-serving")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``<prog> <version>`` (``monolith-serving entry 0.1.0``) and exit 0, as
    tensorflow_model_server's ``--version`` does with its own name; ours never claims to be TF Serving."""
    parser.add_argument(
        "--version",
        action="version",
        version=f"{parser.prog} {distribution_version()}",
        help="print the version of monolith-serving and exit",
    )


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


def add_grpc_socket_path_flag(parser: argparse.ArgumentParser) -> None:
    """tensorflow_model_server's ``--grpc_socket_path``, taken by the servers that speak TF Serving's API."""
    add_flag(
        parser,
        SOCKET_PATH_FLAG,
        default="",
        help="also serve gRPC on this UNIX domain socket, with the port's credentials (empty: the port only)",
    )


def grpc_socket_path_from_args(args: argparse.Namespace) -> Path | None:
    """``--grpc_socket_path``: None when empty (TF Serving's default); else the path, checked
    (``core.grpc_socket_path.check_socket_path``: InvalidArgumentError naming the flag)."""
    text: str = args.grpc_socket_path
    if not text:
        return None
    path = Path(text)
    check_socket_path(path)
    return path


def add_host_flag(parser: argparse.ArgumentParser) -> None:
    """``--host``: the address a model server binds, for gRPC and /metrics alike (default: every interface)."""
    add_flag(parser, "--host", default="0.0.0.0", help="address to bind (gRPC and /metrics)")


def add_model_source_flags(parser: argparse.ArgumentParser, *, sub_model: str) -> None:
    """tensorflow_model_server's flags for what a sub-model server hosts: a ModelServerConfig file, or one
    model by name and base path. ``sub_model`` names the kind in the help text (``ps_<i>``, ``dense_0``)."""
    add_host_flag(parser)
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
    add_flag(
        parser,
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read --model_config_file this often and apply it when it changed (0: never)",
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


def agent_address_from_environment(environ: Mapping[str, str]) -> str | None:
    """``localhost:$PORT2``, the agent of this pod (agent.conf's agent port), as Monolith's entry finds it; None when
    ``PORT2`` is unset or empty."""
    agent_port = env_port(environ, "PORT2")
    return None if agent_port is None else f"localhost:{agent_port}"


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


def load_threads_from_flag(value: int) -> int:
    """``--num_load_threads`` as a server takes it: TF Serving's 0 loads in its manager thread, one version at a
    time, which is our 1; anything else is kept (a negative count is refused by the server's config)."""
    return 1 if value == 0 else value


# -- the rest of tensorflow_model_server's command line ----------------------------------------------------------


class TfsValue(Enum):
    """What the value of a tensorflow_model_server flag must look like (its tensorflow::Flag type)."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    TEXT = "text"
    PORT = "port"
    TLS_CONFIG = "tls_config"


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


def _refuse_tls_config(text: str) -> str:
    """Empty (no TLS, what Monolith's agent passes unless told otherwise) is fine. A file is refused by the servers
    that do not declare the flag themselves (ps, dense): entries dial them in plaintext, so they serve plaintext
    only, and starting anyway would silently serve plaintext where TLS was asked for. Only the empty string is no
    TLS, as in TF Serving: a blank value names a file, so it is refused like one."""
    if text:
        raise ValueError(
            f"TLS is not supported by this server: entries dial PS and dense servers in plaintext, so they serve "
            f"plaintext gRPC only (TLS is for the servers clients reach: entry, unified, proxy); refusing to serve "
            f"plaintext where TLS was asked for ({text!r})"
        )
    return text


# A bool is a BoolFlagAction.
_VALUE_CHECKS: Mapping[TfsValue, Callable[[str], object]] = {
    TfsValue.INT: _parse_int,
    TfsValue.FLOAT: _parse_float,
    TfsValue.TEXT: str,
    TfsValue.PORT: parse_port,
    TfsValue.TLS_CONFIG: _refuse_tls_config,
}

# The command lines Monolith's agent builds for tensorflow_model_server carry, besides the ports, the model config
# file and the poll periods, every TfServingConfig setting that differs from its default, --platform_config_file
# always, and flags of the TF Serving build it launches (archon_*, metrics_namespace_prefix, log_conf, conf_file,
# allow_growth); tensorflow_model_server itself has a few more. A model server takes all of these; the ones it
# honours it declares itself (``honoured`` below), the others are checked and named in one warning.
# Deliberately absent, so still usage errors: --use_alts_credentials (ignoring it would leave clients unable to
# connect, or unauthenticated), --model_name and --model_base_path (a server either hosts that model or must
# refuse). --grpc_socket_path (add_grpc_socket_path_flag) and --version (add_version_flag) are flags of their own.
TFS_COMPAT_FLAGS: Mapping[str, TfsValue] = {
    # Passed by Monolith's agent.
    "rest_api_port": TfsValue.PORT,
    "model_config_file_poll_wait_seconds": TfsValue.FLOAT,
    "platform_config_file": TfsValue.TEXT,
    "enable_batching": TfsValue.BOOL,
    "allow_version_labels_for_unavailable_models": TfsValue.BOOL,
    "batching_parameters_file": TfsValue.TEXT,
    "num_load_threads": TfsValue.INT,
    "num_unload_threads": TfsValue.INT,
    "max_num_load_retries": TfsValue.INT,
    "load_retry_interval_micros": TfsValue.INT,
    "flush_filesystem_caches": TfsValue.BOOL,
    "tensorflow_session_parallelism": TfsValue.INT,
    "tensorflow_intra_op_parallelism": TfsValue.INT,
    "tensorflow_inter_op_parallelism": TfsValue.INT,
    "ssl_config_file": TfsValue.TLS_CONFIG,
    "per_process_gpu_memory_fraction": TfsValue.FLOAT,
    "allow_growth": TfsValue.BOOL,
    "saved_model_tags": TfsValue.TEXT,
    "grpc_max_threads": TfsValue.INT,
    "enable_model_warmup": TfsValue.BOOL,
    "remove_unused_fields_from_bundle_metagraph": TfsValue.BOOL,
    "enable_signature_method_name_check": TfsValue.BOOL,
    "xla_cpu_compilation_enabled": TfsValue.BOOL,
    "enable_profiler": TfsValue.BOOL,
    "archon_port": TfsValue.PORT,
    "archon_rpc_psm": TfsValue.TEXT,
    "archon_rpc_cluster": TfsValue.TEXT,
    "archon_entry_to_ps_rpc_timeout": TfsValue.INT,
    "archon_entry_to_ps_rpc_retry": TfsValue.INT,
    "archon_entry_to_ps_long_conn_num": TfsValue.INT,
    "archon_entry_to_ps_long_conn_enable": TfsValue.BOOL,
    "archon_async_dispatcher_threads": TfsValue.INT,
    "metrics_namespace_prefix": TfsValue.TEXT,
    "log_conf": TfsValue.TEXT,
    "conf_file": TfsValue.TEXT,
    # tensorflow_model_server's own, not passed by Monolith.
    "rest_api_num_threads": TfsValue.INT,
    "rest_api_timeout_in_ms": TfsValue.INT,
    "rest_api_enable_cors_support": TfsValue.BOOL,
    "enable_per_model_batching_parameters": TfsValue.BOOL,
    "tensorflow_session_config_file": TfsValue.TEXT,
    "num_request_iterations_for_warmup": TfsValue.INT,
    "monitoring_config_file": TfsValue.TEXT,
    "prefer_tflite_model": TfsValue.BOOL,
    "num_tflite_pools": TfsValue.INT,
    "num_tflite_interpreters_per_pool": TfsValue.INT,
    "xla_gpu_compilation_enabled": TfsValue.BOOL,
    "thread_pool_factory_config_file": TfsValue.TEXT,
    "mixed_precision": TfsValue.TEXT,
    "skip_initialize_tpu": TfsValue.BOOL,
    "enable_grpc_healthcheck_service": TfsValue.BOOL,
    "enable_serialization_as_tensor_content": TfsValue.BOOL,
}


def _unused_dest(name: str) -> str:
    # A namespace of their own: nothing reads them by the plain name a server would use for a flag it honours.
    return f"unused_tfs__{name}"


def add_tfs_compat_flags(parser: argparse.ArgumentParser, *, honoured: Collection[str] = ()) -> None:
    """Takes every ``TFS_COMPAT_FLAGS`` flag but the ``honoured`` ones (the server declares those itself): both
    spellings, ``--flag=value`` or ``--flag value``, a bool flag as ``BoolFlagAction`` takes it
    (``--enable_batching`` is true, as in TF Serving). A value is checked (a bad one is a usage error naming the
    flag), then unused; a flag not given leaves no attribute (``unused_tfs_flags``). Hidden from ``--help`` but for
    one paragraph naming them."""
    unknown = set(honoured) - set(TFS_COMPAT_FLAGS)
    if unknown:
        raise ValueError(f"not in TFS_COMPAT_FLAGS: {sorted(unknown)}")
    unused = [name for name in TFS_COMPAT_FLAGS if name not in honoured]
    tls_note = (
        " (--ssl_config_file must be empty: entries dial this server in plaintext)"
        if "ssl_config_file" in unused
        else ""
    )
    group = parser.add_argument_group(
        "tensorflow_model_server flags without effect here",
        f"Accepted so tensorflow_model_server command lines (Monolith's agent's) work unchanged; values are "
        f"checked{tls_note}, and the flags given are named in one warning at start: "
        + " ".join(f"--{name}" for name in unused),
    )
    for name in unused:
        kind = TFS_COMPAT_FLAGS[name]
        value: dict[str, Any] = (
            {"action": BoolFlagAction} if kind is TfsValue.BOOL else {"type": flag_type(_VALUE_CHECKS[kind])}
        )
        add_flag(
            group, f"--{name}", dest=_unused_dest(name), default=argparse.SUPPRESS, help=argparse.SUPPRESS, **value
        )


def unused_tfs_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The flags ``add_tfs_compat_flags`` took that the command line gave, in ``TFS_COMPAT_FLAGS`` order."""
    return tuple(f"--{name}" for name in TFS_COMPAT_FLAGS if hasattr(args, _unused_dest(name)))


def warn_unused_tfs_flags(args: argparse.Namespace, server: str, log: logging.Logger) -> None:
    """One warning naming every tensorflow_model_server flag given that this server does not use (none given: none)."""
    given = unused_tfs_flags(args)
    if given:
        log.warning("the %s takes but does not use these tensorflow_model_server flags: %s", server, " ".join(given))
