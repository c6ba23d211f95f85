"""``monolith-serving <command>``: the one console script of the distribution.

Each command lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``. Modules are
imported only for the command being run, so ``monolith-serving client ...`` does not pay for kazoo, and
a command's flags are defined next to its code.

The servers that stand in for tensorflow_model_server (``Command.tfs_command_line``) also take absl's
command-line syntax (``--flagfile``, ``-flag``, ``--noflag``; ``core.absl_argv``) and ``--version``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from monolith_serving.core.absl_argv import parse_absl_args
from monolith_serving.core.blas_threads import limit_blas_threads
from monolith_serving.core.cli_flags import add_common_flags, add_version_flag
from monolith_serving.core.logging_setup import configure_logging


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    summary: str
    # Takes command lines written for tensorflow_model_server: absl's syntax and --version.
    tfs_command_line: bool = False


COMMANDS: tuple[Command, ...] = (
    Command("export-demo", "monolith_serving.core.demo_export", "write a deterministic demo model export"),
    Command("health", "monolith_serving.client.health", "gRPC health check of a server; exit 0 when SERVING"),
    Command(
        "ssl-config",
        "monolith_serving.core.ssl_config_writer",
        "write the SSLConfig file of --ssl_config_file from PEM files",
    ),
    Command(
        "entry",
        "monolith_serving.entry.main",
        "entry model server: parse, PS fan-out, pool, dense",
        tfs_command_line=True,
    ),
    Command("demo", "monolith_serving.entry.standalone", "standalone cluster: PS shards + entry on loopback"),
    Command("client", "monolith_serving.client.cli", "client: predict|status|meta|load|profile"),
    Command(
        "ps",
        "monolith_serving.ps.main",
        "serve embedding tables of ps_<i> sub-models (lookup, sync)",
        tfs_command_line=True,
    ),
    Command(
        "unified",
        "monolith_serving.unified.main",
        "v3 container server: entry, ps_<i>, dense_<i> on one port",
        tfs_command_line=True,
    ),
    Command(
        "dense",
        "monolith_serving.dense.main",
        "serve the dense network of dense_0 (dense_alone models)",
        tfs_command_line=True,
    ),
    Command(
        "proxy",
        "monolith_serving.proxy.main",
        "TF Serving front door (gRPC + REST) routing to entry replicas",
        tfs_command_line=True,
    ),
    Command("agent", "monolith_serving.agent.main", "per-pod agent: launch, register and supervise model servers"),
    Command("ctl", "monolith_serving.agent.ctl", "v3 controller (Monolith's --cmd flags): decl|pub|unpub|bzid_info"),
    Command("replica-manager", "monolith_serving.replica_manager.main", "cluster replica view, AgentService, probes"),
    Command("replicas", "monolith_serving.replica_manager.listing", "table of registered replicas (state, version)"),
    Command("model-manager", "monolith_serving.model_manager.main", "new versions to replicas, PS-first rollout"),
)


_ABSL_SYNTAX = (
    "Also takes absl's syntax: -flag for --flag; a boolean bare (--flag, true) or as --noflag (false); "
    "--flagfile=FILE[,FILE...] for the flags in FILE, one --flag=value per line."
)


def _top_level_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {c.name:<16} {c.summary}" for c in COMMANDS)
    return argparse.ArgumentParser(
        prog="monolith-serving",
        description="Serving stack for Monolith-style recommendation models.",
        epilog=f"commands:\n{lines}\n\nRun 'monolith-serving <command> --help' for a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="monolith-serving <command> [flags]",
    )


def command_parser(command: Command) -> argparse.ArgumentParser:
    """The parser of ``monolith-serving <command>``: the logging flags, then the command's own (its ``configure``),
    then for a tensorflow_model_server stand-in ``--version`` and a note on absl's syntax."""
    parser = argparse.ArgumentParser(prog=f"monolith-serving {command.name}", description=command.summary)
    add_common_flags(parser)
    importlib.import_module(command.module).configure(parser)
    if command.tfs_command_line:
        add_version_flag(parser)
        parser.epilog = "\n\n".join(text for text in (parser.epilog, _ABSL_SYNTAX) if text)
    return parser


def parse_command_args(command: Command, parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed by ``parser`` (``command_parser(command)``) as ``main`` parses it: for a tensorflow_model_server
    stand-in, absl's syntax too."""
    return parse_absl_args(parser, argv) if command.tfs_command_line else parser.parse_args(list(argv))


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    # As PID 1 of a container, a process ignores SIGTERM it has no handler for; the imports below take seconds,
    # and a pod stopped meanwhile would wait out its whole grace period. Servers replace this handler once
    # their event loop runs (core.grpc_server.run_async_main).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args_in = list(sys.argv[1:] if argv is None else argv)
    by_name = {c.name: c for c in COMMANDS}
    if not args_in or args_in[0] not in by_name:
        parser = _top_level_parser()
        if args_in and args_in[0] not in ("-h", "--help"):
            parser.error(f"unknown command {args_in[0]!r}")
        parser.print_help()
        return 0 if args_in else 2
    command = by_name[args_in[0]]
    parser = command_parser(command)
    args = parse_command_args(command, parser, args_in[1:])
    configure_logging(args.log_format, args.log_level)
    if "blas_threads" in vars(args):  # a server (core.cli_flags.add_server_flags)
        try:
            limit_blas_threads(args.blas_threads)
        except ValueError as error:
            parser.error(str(error))
    return int(importlib.import_module(command.module).run(args))


if __name__ == "__main__":
    sys.exit(main())
