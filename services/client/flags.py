"""The client's flags: one parser holds tfs_client's flags and ours, both names of a flag being one flag.

An action ignores the flags it does not use, as tfs_client does. Defaults that depend on the spelling are None
here and resolved by ``settings.settings_from_args``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monolith_serving.client.flag_types import INT64_MAX, absl_bool, int_in_range, positive_seconds
from monolith_serving.client.inputs import MAX_ROWS
from monolith_serving.client.settings import DEFAULT_MODEL, DEFAULT_TARGET, INPUT_KIND_OF_TYPE
from monolith_serving.client.tfs_client_files import FILE_TYPES
from monolith_serving.core.cli_flags import add_flag
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE
from monolith_serving.core.tls_channel import add_tls_dial_flags

ACTIONS = ("predict", "status", "meta", "load", "profile")
# tfs_client's --cmd_type values (its flag is shared with Monolith's agent client); every one but status, meta,
# load and profile sends a Predict.
CMD_TYPES = ("get", "status", "meta", "load", "profile", "hb", "gr", "addr", "clean", "unload")
OUTPUTS = ("text", "json", "tfs_client")

_EPILOG = (
    "tfs_client's spelling (no action word; its defaults and output):\n"
    "  client --cmd_type=get --target=H:P --input_type=example_batch --input_file=F --has_sort_id\n"
    "  client --cmd_type=status|meta --target=H:P [--model_name=M]\n"
    "  client --cmd_type=load --target=H:P --input_file=models.config\n"
    "  client --cmd_type=profile --target=H:P[,H:P] --parallel_num=4 --profile_duration=60 --profile_data_dir=D\n"
    "Action spelling:\n"
    "  client predict --target H:P [--input_type instances|example_batch|examples] [--request_file F]\n"
    "  client status|meta --target H:P [--model M] [--version V]\n"
    "  client load --target H:P --config_file models.config\n"
    "  client profile --target H:P --workers 16 --duration_s 10 [--json]"
)


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("action", nargs="?", choices=ACTIONS, metavar="ACTION", help="|".join(ACTIONS))
    cmd_help = (
        f"tfs_client's spelling of the action: {', '.join(CMD_TYPES)} (every one but status, meta, load and profile "
        "is a predict)"
    )
    add_flag(parser, "--cmd_type", choices=CMD_TYPES, default=None, metavar="CMD", help=cmd_help)
    _add_call_flags(parser)
    _add_input_flags(parser)
    _add_other_action_flags(parser)
    _add_ignored_tfs_client_flags(parser)


def _add_absl_bool(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    """An absl boolean flag: ``--name``, ``--name=true|false`` (t/f/1/0) and ``--noname``."""
    dest = name[2:]
    add_flag(parser, name, nargs="?", const=True, default=False, type=absl_bool, metavar="BOOL", help=help_text)
    add_flag(parser, f"--no{dest}", dest=dest, action="store_false", help=argparse.SUPPRESS)


def _add_call_flags(parser: argparse.ArgumentParser) -> None:
    target_help = (
        "host:port[,host:port...]; profile spreads over all, the others call the first "
        f"(default: --conf's, else {DEFAULT_TARGET})"
    )
    add_flag(parser, "--target", default=None, help=target_help)
    conf_help = "agent.conf: the default target ($MY_HOST_IP:$PORT3) and model (entry, ps_$SHARD_ID or dense_0)"
    add_flag(parser, "--conf", type=Path, default=None, help=conf_help)
    model_help = f"model_spec.name (default: --conf's, else {DEFAULT_MODEL}; a --request_file's must match)"
    add_flag(parser, "--model", aliases=("--model_name",), default=None, help=model_help)
    signature_help = f"model_spec.signature_name (default {DEFAULT_SIGNATURE}; replaces a --request_file's)"
    add_flag(parser, "--signature_name", default=None, help=signature_help)
    version_help = "pin model_spec.version (replaces a --request_file's)"
    add_flag(parser, "--version", type=int_in_range(0, INT64_MAX), default=None, help=version_help)
    timeout_help = "per-call deadline (default 5; tfs_client's spelling: 30 for a Predict, none for status/meta/load)"
    add_flag(parser, "--timeout_s", type=positive_seconds, default=None, help=timeout_help)
    output_help = "text, json or tfs_client (protobuf text format) (default: text; tfs_client's spelling tfs_client)"
    add_flag(parser, "--output", choices=OUTPUTS, default=None, help=output_help)
    add_flag(parser, "--json", dest="output", action="store_const", const="json", help="same as --output json")
    add_tls_dial_flags(parser, "ssl", server="the target")


def _add_input_flags(parser: argparse.ArgumentParser) -> None:
    type_help = (
        "instances|instance, example_batch, examples, or tfs_client's example_batch_to_instance|dump|json|pbtext|"
        "binary (an ExampleBatch file sent as Instances) (default: dump with --input_file, else instances)"
    )
    types = tuple(INPUT_KIND_OF_TYPE)
    add_flag(
        parser, "--input_type", aliases=("--input_kind",), choices=types, default=None, metavar="TYPE", help=type_help
    )
    file_help = "tfs_client's data file: Instances (instance), an ExampleBatch (the others); load: the config"
    add_flag(parser, "--input_file", type=Path, default=None, help=file_help)
    add_flag(parser, "--file_type", choices=FILE_TYPES, default="pb", help="--input_file's ExampleBatch: pb or pbtxt")
    _add_absl_bool(parser, "--lagrangex_header", "data file records start with an 8-byte lagrangex header")
    _add_absl_bool(parser, "--has_sort_id", "data file records start with a sized sort id")
    _add_absl_bool(parser, "--kafka_dump", "data file records hold an 8-byte kafka dump header")
    _add_absl_bool(parser, "--kafka_dump_prefix", "data file records start with a kafka dump prefix")
    add_flag(parser, "--feature_list", default=None, help="accepted for tfs_client; unused (as in tfs_client)")
    batch_help = "examples per random request; Instances read from --input_file (default 4; tfs_client's spelling 8)"
    add_flag(parser, "--batch_size", type=int_in_range(1), default=None, help=batch_help)
    add_flag(parser, "--spec", type=Path, default=None, help="serving_spec.json, an entry version dir or an export")
    rows_help = "random fids use k < rows (export-demo's --rows)"
    add_flag(parser, "--rows", type=int_in_range(1, MAX_ROWS), default=1000, help=rows_help)
    add_flag(parser, "--seed", type=int_in_range(0), default=0, help="random seed")
    add_flag(parser, "--request_file", type=Path, default=None, help="send this PredictRequest (text or binary)")
    filter_help = "predict, profile: an output to ask for (repeatable; default all; replaces a --request_file's)"
    add_flag(parser, "--output_filter", action="append", default=None, metavar="NAME", help=filter_help)


def _add_other_action_flags(parser: argparse.ArgumentParser) -> None:
    field_help = "meta: a field to ask for (repeatable; default signature_def; tfs_client's spelling its three)"
    add_flag(parser, "--metadata_field", action="append", default=None, help=field_help)
    add_flag(parser, "--config_file", type=Path, default=None, help="load: text-format ModelServerConfig")
    workers_help = "profile: concurrent requests (default 16; tfs_client's spelling 1)"
    add_flag(parser, "--workers", aliases=("--parallel_num",), type=int_in_range(1), default=None, help=workers_help)
    duration_help = "profile: measured seconds (default 10; tfs_client's spelling 600)"
    add_flag(
        parser,
        "--duration_s",
        aliases=("--profile_duration",),
        type=positive_seconds,
        default=None,
        help=duration_help,
    )
    requests_help = "profile: distinct random requests to cycle through (default %(default)s)"
    add_flag(parser, "--num_requests", type=int_in_range(1), default=32, help=requests_help)
    data_help = "profile: send the ExampleBatch data files in this folder (at most 500) as example_batch"
    add_flag(parser, "--profile_data_dir", type=Path, default=None, help=data_help)


def _add_ignored_tfs_client_flags(parser: argparse.ArgumentParser) -> None:
    """What a tfs_client command line may carry beyond tfs_client's own flags, accepted and unused so the line
    runs unchanged: the registry flags tfs_client takes from Monolith's agent client (it never dials the registry
    for a call), and absl's logging flags of any absl program (``--log_level`` sets our logging)."""
    unused = "accepted for tfs_client; unused"
    add_flag(parser, "--zk_servers", default=None, help=f"{unused} (tfs_client reads it for its agent commands)")
    add_flag(parser, "--bzid", default=None, help=unused)
    for name in ("--logtostderr", "--alsologtostderr", "--showprefixforinfo"):
        _add_absl_bool(parser, name, f"absl's; {unused}")
    add_flag(parser, "--verbosity", aliases=("--v",), type=int, default=None, help=f"absl's; {unused}")
    add_flag(parser, "--log_dir", default=None, help=f"absl's; {unused}")
    add_flag(parser, "--stderrthreshold", default=None, help=f"absl's; {unused}")
