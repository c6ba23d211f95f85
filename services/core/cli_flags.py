"""Flag helpers shared by every command.

Server flags use tensorflow_model_server's underscore spelling (``--model_config_file``); the dashed
spelling (``--model-config-file``) is accepted as an alias so both habits work.
"""

from __future__ import annotations

import argparse
from typing import Any


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


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Logging flags every command takes."""
    add_flag(parser, "--log_format", choices=("text", "json"), default="text", help="stderr log format")
    add_flag(parser, "--log_level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ...)")


def add_server_flags(parser: argparse.ArgumentParser, *, default_port: int | None = None) -> None:
    """Flags of every long-running server: its gRPC port and its Prometheus endpoint."""
    add_flag(
        parser,
        "--port",
        type=int,
        default=default_port,
        help="gRPC port (default: $PORT3 when set, else %(default)s)",
    )
    add_flag(
        parser,
        "--metrics_port",
        type=int,
        default=0,
        help="port of the Prometheus /metrics HTTP endpoint (0: not served)",
    )
