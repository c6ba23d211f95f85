"""``monolith-serving client``: Monolith's ``tfs_client``, in its own spelling and in ours (docs/client.md).

tfs_client's spelling works unchanged, flags, values, files and output::

    client --cmd_type=get|status|meta|load|profile [--conf agent.conf] [--target H:P[,H:P...]]
           [--model_name M] [--signature_name S] [--input_type T] [--input_file F] [--file_type pb|pbtxt]
           [--batch_size 8] [--lagrangex_header] [--has_sort_id] [--kafka_dump] [--kafka_dump_prefix]
           [--parallel_num 1] [--profile_duration 600] [--profile_data_dir DIR]

and so does this CLI's action spelling, whose first word is the action::

    client predict|status|meta|load|profile [--target H:P] [--model M] [--request_file F] [--spec S] ...

One parser holds every flag (both names of a flag are one flag) and an action ignores the flags it does not
use, as tfs_client does. Without an action word the call is tfs_client's: its defaults apply (``Defaults``:
batch size 8, one worker for 600 s, a 30 s deadline, metadata fields base_path/num_versions/signature_name)
and the response is printed as tfs_client prints it (protobuf text format; profile's ``[Profile] Count: ...``
line). A ``--cmd_type`` other than status, meta, load and profile (its default ``hb`` included) is a Predict, as
in tfs_client.

Exit status: 0 on success; 1 when the server answered with an error or could not be reached (``error: CODE:
message`` on stderr), and for ``profile`` when any request failed; 2 for a usage error: a flag out of range
(argparse), a file named by a flag that cannot be read or parsed (``error: message`` naming the file), flags
that contradict each other; 130 on Ctrl-C. Flags and files are read before any connection is made, so a
usage error never waits for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from monolith_serving.client.flag_types import INT64_MAX, absl_bool, int_in_range, positive_seconds
from monolith_serving.client.inputs import (
    DEFAULT_SIGNATURE,
    MAX_ROWS,
    encode,
    predict_request,
    random_examples,
)
from monolith_serving.client.profile import ProfileResult, run_profile
from monolith_serving.client.tfs_client_files import (
    FILE_TYPES,
    RecordHeader,
    example_batch_to_instances,
    profile_data_files,
    read_example_batch,
    read_instances,
)
from monolith_serving.core.agent_conf import DeployType, load_agent_config, resolve_environment
from monolith_serving.core.cli_flags import add_flag
from monolith_serving.core.demo_export import DemoOptions, demo_spec
from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError, NotFoundError
from monolith_serving.core.export_layout import list_versions, read_model_server_config
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.grpc_server import channel_options
from monolith_serving.core.serving_spec import (
    DENSE_SUB_MODEL,
    SPEC_FILE,
    ServingSpec,
    load_serving_spec,
    parse_serving_spec,
    read_spec_object,
)
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

ACTIONS = ("predict", "status", "meta", "load", "profile")
# tfs_client's --cmd_type values (its flag is shared with Monolith's agent client); every one but these four
# sends a Predict.
CMD_TYPES = ("get", "status", "meta", "load", "profile", "hb", "gr", "addr", "clean", "unload")
_NON_PREDICT_CMD_TYPES = frozenset({"status", "meta", "load", "profile"})
# --input_type: ours (instances, example_batch, examples) and tfs_client's values.
INSTANCES, EXAMPLE_BATCH, EXAMPLES, EXAMPLE_BATCH_TO_INSTANCE = (
    "instances",
    "example_batch",
    "examples",
    "example_batch_to_instance",
)
# tfs_client sends every input type it does not name (its default dump included) as example_batch_to_instance.
_INPUT_KIND_OF_TYPE: Mapping[str, str] = {
    INSTANCES: INSTANCES,
    "instance": INSTANCES,
    EXAMPLE_BATCH: EXAMPLE_BATCH,
    EXAMPLES: EXAMPLES,
    EXAMPLE_BATCH_TO_INSTANCE: EXAMPLE_BATCH_TO_INSTANCE,
    "dump": EXAMPLE_BATCH_TO_INSTANCE,
    "json": EXAMPLE_BATCH_TO_INSTANCE,
    "pbtext": EXAMPLE_BATCH_TO_INSTANCE,
    "binary": EXAMPLE_BATCH_TO_INSTANCE,
}
OUTPUTS = ("text", "json", "tfs_client")
PS_VERSIONS_KEY = "x-monolith-ps-versions"
DEFAULT_MODEL = "entry"
DEFAULT_TARGET = "localhost:8500"
EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2  # what argparse exits with, so a bad file and a bad flag look the same to a script
EXIT_INTERRUPTED = 130  # the shell's 128 + SIGINT


@dataclass(frozen=True)
class Defaults:
    """The defaults in which the two spellings differ."""

    batch_size: int
    workers: int
    duration_s: float
    timeout_s: float
    output: str
    metadata_fields: tuple[str, ...]


OUR_DEFAULTS = Defaults(
    batch_size=4, workers=16, duration_s=10.0, timeout_s=5.0, output="text", metadata_fields=("signature_def",)
)
# tfs_client: --batch_size 8, --parallel_num 1, --profile_duration 600, its Predict deadline of 30 s, print(response)
# and the metadata fields its meta asks for.
TFS_CLIENT_DEFAULTS = Defaults(
    batch_size=8,
    workers=1,
    duration_s=600.0,
    timeout_s=30.0,
    output="tfs_client",
    metadata_fields=("base_path", "num_versions", "signature_name"),
)


def _add_names(parser: argparse.ArgumentParser, names: tuple[str, ...], **kwargs: Any) -> None:
    """One option under several names, each also in its ``_``/``-`` twin; ``dest`` is the first name."""
    spellings: list[str] = []
    for name in names:
        bare = name.removeprefix("--")
        for spelling in (f"--{bare.replace('-', '_')}", f"--{bare.replace('_', '-')}"):
            if spelling not in spellings:
                spellings.append(spelling)
    kwargs.setdefault("dest", names[0].removeprefix("--").replace("-", "_"))
    parser.add_argument(*spellings, **kwargs)


def _add_absl_bool(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    """An absl boolean flag: ``--name``, ``--name=true|false`` (t/f/1/0) and ``--noname``."""
    dest = name[2:]
    add_flag(parser, name, nargs="?", const=True, default=False, type=absl_bool, metavar="BOOL", help=help_text)
    add_flag(parser, f"--no{dest}", dest=dest, action="store_false", help=argparse.SUPPRESS)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
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
    parser.add_argument("action", nargs="?", choices=ACTIONS, metavar="ACTION", help="|".join(ACTIONS))
    cmd_help = (
        f"tfs_client's spelling of the action: {', '.join(CMD_TYPES)} (every one but status, meta, load and profile "
        "is a predict)"
    )
    add_flag(parser, "--cmd_type", choices=CMD_TYPES, default=None, metavar="CMD", help=cmd_help)
    _configure_call(parser)
    _configure_inputs(parser)
    _configure_other_actions(parser)


def _configure_call(parser: argparse.ArgumentParser) -> None:
    target_help = (
        "host:port[,host:port...]; profile spreads over all, the others call the first "
        f"(default: --conf's, else {DEFAULT_TARGET})"
    )
    add_flag(parser, "--target", default=None, help=target_help)
    conf_help = "agent.conf: the default target ($MY_HOST_IP:$PORT3) and model (entry, ps_$SHARD_ID or dense_0)"
    add_flag(parser, "--conf", type=Path, default=None, help=conf_help)
    model_help = f"model_spec.name (default: --conf's, else {DEFAULT_MODEL}; a --request_file's must match)"
    _add_names(parser, ("--model", "--model_name"), default=None, help=model_help)
    signature_help = f"model_spec.signature_name (default {DEFAULT_SIGNATURE}; replaces a --request_file's)"
    add_flag(parser, "--signature_name", default=None, help=signature_help)
    version_help = "pin model_spec.version (replaces a --request_file's)"
    add_flag(parser, "--version", type=int_in_range(0, INT64_MAX), default=None, help=version_help)
    timeout_help = "per-call deadline (default 5; tfs_client's spelling 30)"
    add_flag(parser, "--timeout_s", type=positive_seconds, default=None, help=timeout_help)
    output_help = "text, json or tfs_client (protobuf text format) (default: text; tfs_client's spelling tfs_client)"
    add_flag(parser, "--output", choices=OUTPUTS, default=None, help=output_help)
    add_flag(parser, "--json", dest="output", action="store_const", const="json", help="same as --output json")


def _configure_inputs(parser: argparse.ArgumentParser) -> None:
    type_help = (
        "instances|instance, example_batch, examples, or tfs_client's example_batch_to_instance|dump|json|pbtext|"
        "binary (an ExampleBatch file sent as Instances) (default: dump with --input_file, else instances)"
    )
    kinds = tuple(_INPUT_KIND_OF_TYPE)
    _add_names(parser, ("--input_type", "--input_kind"), choices=kinds, default=None, metavar="TYPE", help=type_help)
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


def _configure_other_actions(parser: argparse.ArgumentParser) -> None:
    field_help = "meta: a field to ask for (repeatable; default signature_def; tfs_client's spelling its three)"
    add_flag(parser, "--metadata_field", action="append", default=None, help=field_help)
    add_flag(parser, "--config_file", type=Path, default=None, help="load: text-format ModelServerConfig")
    workers_help = "profile: concurrent requests (default 16; tfs_client's spelling 1)"
    _add_names(parser, ("--workers", "--parallel_num"), type=int_in_range(1), default=None, help=workers_help)
    duration_help = "profile: measured seconds (default 10; tfs_client's spelling 600)"
    _add_names(parser, ("--duration_s", "--profile_duration"), type=positive_seconds, default=None, help=duration_help)
    requests_help = "profile: distinct random requests to cycle through (default %(default)s)"
    add_flag(parser, "--num_requests", type=int_in_range(1), default=32, help=requests_help)
    data_help = "profile: send the ExampleBatch data files in this folder (at most 500) as example_batch"
    add_flag(parser, "--profile_data_dir", type=Path, default=None, help=data_help)


# --------------------------------------------------------------------------- flags -> settings


@dataclass(frozen=True)
class InputSettings:
    """What predict and profile send."""

    kind: str  # instances, example_batch, examples or example_batch_to_instance
    kind_flag: str | None  # --input_type as given, for messages
    input_file: Path | None
    request_file: Path | None
    file_type: str
    header: RecordHeader
    batch_size: int
    spec: Path | None
    rows: int
    seed: int
    num_requests: int
    profile_data_dir: Path | None


@dataclass(frozen=True)
class Settings:
    """Every flag resolved once: the spelling's defaults, --conf's target and model, aliases merged."""

    action: str
    tfs_client_spelling: bool
    targets: tuple[str, ...]
    model: str  # the model to call: --model, else --conf's, else entry
    model_given: bool  # --model was given: a request file's own model must then agree
    signature_name: str | None  # --signature_name; None: a request file keeps its own, others send the default
    version: int | None
    timeout_s: float
    output: str
    metadata_fields: tuple[str, ...]
    config_file: Path | None
    workers: int
    duration_s: float
    inputs: InputSettings


@dataclass(frozen=True)
class ConfDefaults:
    """What an agent.conf says about where its model server is."""

    model: str
    host: str | None
    port: int | None


def conf_defaults(path: Path, environ: Mapping[str, str]) -> ConfDefaults:
    """The model tfs_client would call for this agent.conf (entry; ps_<SHARD_ID> for a ps agent; dense_0, our
    dense server's model, for a dense agent) and its main gRPC port ($PORT3 or the conf's)."""
    config = resolve_environment(load_agent_config(path), environ)
    if config.deploy_type is DeployType.PS:
        model = f"ps_{config.shard_id}"
    elif config.deploy_type is DeployType.DENSE:
        model = DENSE_SUB_MODEL
    else:
        model = DEFAULT_MODEL
    return ConfDefaults(model=model, host=config.host_ip, port=config.tfs_grpc_port)


def _this_host() -> str:
    """tfs_client's fallback host: the address this machine's name resolves to."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError as error:
        raise InvalidArgumentError(
            f"cannot resolve this host's name ({error}); set MY_HOST_IP or give --target"
        ) from error


def _conf_target(path: Path, conf: ConfDefaults) -> str:
    if conf.port is None:
        raise InvalidArgumentError(f"--conf {str(path)!r} gives no gRPC port (PORT3 is unset); give --target")
    host = conf.host or _this_host()
    return f"[{host}]:{conf.port}" if ":" in host else f"{host}:{conf.port}"


def parse_targets(text: str) -> tuple[str, ...]:
    """``--target``'s comma-separated addresses."""
    targets = tuple(part.strip() for part in text.split(","))
    if not all(targets):
        raise InvalidArgumentError(f"--target {text!r} has an empty address")
    return targets


def _action(args: argparse.Namespace) -> str:
    if args.action is not None:
        if args.cmd_type is not None:
            raise InvalidArgumentError(f"give the action {args.action!r} or --cmd_type {args.cmd_type!r}, not both")
        return str(args.action)
    cmd_type = args.cmd_type or "hb"  # tfs_client's default, a Predict
    return cmd_type if cmd_type in _NON_PREDICT_CMD_TYPES else "predict"


def _input_settings(args: argparse.Namespace, defaults: Defaults) -> InputSettings:
    kind_flag = args.input_type
    if kind_flag is None:
        kind = EXAMPLE_BATCH_TO_INSTANCE if args.input_file is not None else INSTANCES
    else:
        kind = _INPUT_KIND_OF_TYPE[kind_flag]
    header = RecordHeader(
        lagrangex_header=args.lagrangex_header,
        kafka_dump_prefix=args.kafka_dump_prefix,
        has_sort_id=args.has_sort_id,
        kafka_dump=args.kafka_dump,
    )
    return InputSettings(
        kind=kind,
        kind_flag=kind_flag,
        input_file=args.input_file,
        request_file=args.request_file,
        file_type=args.file_type,
        header=header,
        batch_size=args.batch_size if args.batch_size is not None else defaults.batch_size,
        spec=args.spec,
        rows=args.rows,
        seed=args.seed,
        num_requests=args.num_requests,
        profile_data_dir=args.profile_data_dir,
    )


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Raises MonolithServingError (a usage error) for an unreadable --conf or contradicting flags."""
    action = _action(args)
    tfs_client_spelling = args.action is None
    defaults = TFS_CLIENT_DEFAULTS if tfs_client_spelling else OUR_DEFAULTS
    conf = conf_defaults(args.conf, environ) if args.conf is not None else None
    if args.target is not None:
        targets = parse_targets(args.target)
    elif conf is not None:
        targets = (_conf_target(args.conf, conf),)
    else:
        targets = (DEFAULT_TARGET,)
    default_model = conf.model if conf is not None else DEFAULT_MODEL
    model = args.model if args.model is not None else default_model
    return Settings(
        action=action,
        tfs_client_spelling=tfs_client_spelling,
        targets=targets,
        model=model,
        model_given=args.model is not None,
        signature_name=args.signature_name,
        version=args.version,
        timeout_s=args.timeout_s if args.timeout_s is not None else defaults.timeout_s,
        output=args.output if args.output is not None else defaults.output,
        metadata_fields=tuple(args.metadata_field) if args.metadata_field else defaults.metadata_fields,
        config_file=args.config_file,
        workers=args.workers if args.workers is not None else defaults.workers,
        duration_s=args.duration_s if args.duration_s is not None else defaults.duration_s,
        inputs=_input_settings(args, defaults),
    )


# --------------------------------------------------------------------------- request building


def resolve_spec(path: Path | None) -> ServingSpec:
    """A serving spec from a file, an entry version folder, an entry folder or an export base.

    Every failure (missing, unreadable, not a spec) is a MonolithServingError naming the path."""
    if path is None:
        return demo_spec(DemoOptions(out=Path(".")))
    try:
        return _spec_at(path)
    except UnicodeDecodeError as error:
        raise InvalidArgumentError(f"{path}: not a serving spec (not UTF-8 text)") from error
    except OSError as error:
        raise NotFoundError(f"cannot read the serving spec at {str(path)!r}: {error}") from error


def _spec_at(path: Path) -> ServingSpec:
    if path.is_file():
        return load_serving_spec(path.parent) if path.name == SPEC_FILE else _spec_file(path)
    if (path / SPEC_FILE).is_file():
        return load_serving_spec(path)
    entry_dir = path / "entry" if (path / "entry").is_dir() else path
    versions = list_versions(entry_dir)
    if not versions:
        raise MonolithServingError(f"no entry version under {path}")
    return load_serving_spec(entry_dir / str(versions[-1]))


def _spec_file(path: Path) -> ServingSpec:
    return parse_serving_spec(read_spec_object(path, f"no serving spec file {str(path)!r}"), str(path))


# Whitespace is the only control character a text-format file holds, while a binary PredictRequest always has
# others (a TensorProto starts with its dtype tag, 0x08; short lengths are bytes below 0x20).
_TEXT_CONTROLS = frozenset("\t\n\r\f\v")


def _as_text(data: bytes) -> str | None:
    """``data`` decoded when it looks like a text-format file, else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any((char < " " and char not in _TEXT_CONTROLS) or char == "\x7f" for char in text):
        return None
    return text


def read_request_file(path: Path) -> predict_pb2.PredictRequest:
    """A PredictRequest in text format, or binary when the file is not text; errors name the file.

    Text that fails to parse is reported as text, never retried as binary: the binary decoder keeps unknown
    fields, so it accepts some text (two spaces are a valid request) and a typo would hide behind a wire error
    or, worse, send another request."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise NotFoundError(f"request file {str(path)!r}: {error.strerror}") from error
    text = _as_text(data)
    if text is None:
        return _binary_request(data, path)
    try:
        return text_format.Parse(text, predict_pb2.PredictRequest())
    except text_format.ParseError as error:
        raise InvalidArgumentError(f"request file {str(path)!r}: not a text-format PredictRequest: {error}") from error


def _binary_request(data: bytes, path: Path) -> predict_pb2.PredictRequest:
    try:
        return predict_pb2.PredictRequest.FromString(data)
    except DecodeError as error:
        raise InvalidArgumentError(
            f"request file {str(path)!r}: neither text format nor a binary PredictRequest ({error})"
        ) from error


def file_request(path: Path, settings: Settings) -> predict_pb2.PredictRequest:
    """The PredictRequest in ``path`` with the model flags applied.

    The file's ``model_spec.name`` is kept; the settings' model only fills a missing one. An explicit
    ``--model`` that differs from the file's name is an InvalidArgumentError naming both, never a silent choice.
    ``--version`` replaces the file's version or version_label, ``--signature_name`` its signature."""
    request = read_request_file(path)
    spec = request.model_spec
    if not spec.name:
        spec.name = settings.model
    elif settings.model_given and settings.model != spec.name:
        raise InvalidArgumentError(
            f"request file {str(path)!r} is for model {spec.name!r} but --model is {settings.model!r}; "
            "drop --model or make them agree"
        )
    if settings.version is not None:
        spec.version.value = settings.version
    if settings.signature_name is not None:
        spec.signature_name = settings.signature_name
    return request


def _request(settings: Settings, inputs: dict[str, list[bytes]]) -> predict_pb2.PredictRequest:
    signature = settings.signature_name if settings.signature_name is not None else DEFAULT_SIGNATURE
    return predict_request(settings.model, inputs, version=settings.version, signature_name=signature)


def _data_file_inputs(path: Path, flags: InputSettings) -> dict[str, list[bytes]]:
    """tfs_client's ``--input_file`` request inputs for ``flags.kind``."""
    if flags.kind == INSTANCES:
        return {"instances": read_instances(path, flags.batch_size, flags.header)}
    if flags.kind == EXAMPLE_BATCH:
        # As tfs_client: an example_batch input file is always a binary data file (--file_type is not read).
        return {"example_batch": [read_example_batch(path, "pb", flags.header).SerializeToString()]}
    if flags.kind == EXAMPLE_BATCH_TO_INSTANCE:
        batch = read_example_batch(path, flags.file_type, flags.header)
        return {"instances": example_batch_to_instances(batch, path)}
    raise InvalidArgumentError(
        f"--input_type {flags.kind_flag} builds random tf.Examples and reads no --input_file; "
        "use --request_file to send stored ones"
    )


def _check_input_flags(flags: InputSettings) -> None:
    if flags.request_file is not None and flags.input_file is not None:
        raise InvalidArgumentError("give --request_file (a PredictRequest) or --input_file (a data file), not both")
    if flags.kind == EXAMPLE_BATCH_TO_INSTANCE and flags.input_file is None and flags.request_file is None:
        raise InvalidArgumentError(f"--input_type {flags.kind_flag} sends an ExampleBatch file: give --input_file")


def _profile_data_requests(settings: Settings) -> list[predict_pb2.PredictRequest]:
    """tfs_client's load-test data: every file of --profile_data_dir, an ExampleBatch sent as example_batch."""
    folder = settings.inputs.profile_data_dir
    assert folder is not None
    if settings.inputs.request_file is not None:
        raise InvalidArgumentError("give --request_file or --profile_data_dir, not both")
    requests = []
    for path in profile_data_files(folder):
        batch = read_example_batch(path, "pb", settings.inputs.header)
        requests.append(_request(settings, {"example_batch": [batch.SerializeToString()]}))
    if not requests:
        print(f"note: no files in --profile_data_dir {str(folder)!r}; sending the other inputs", file=sys.stderr)
    return requests


def build_requests(settings: Settings) -> list[predict_pb2.PredictRequest]:
    """What predict sends (one request) or profile cycles through."""
    flags = settings.inputs
    profiling = settings.action == "profile"
    if profiling and flags.profile_data_dir is not None:
        requests = _profile_data_requests(settings)
        if requests:
            return requests
    _check_input_flags(flags)
    if flags.request_file is not None:
        return [file_request(flags.request_file, settings)]
    if flags.input_file is not None:
        return [_request(settings, _data_file_inputs(flags.input_file, flags))]
    assert flags.kind != EXAMPLE_BATCH_TO_INSTANCE  # needs a file: _check_input_flags refused it
    spec = resolve_spec(flags.spec)
    rng = np.random.default_rng(flags.seed)
    requests = []
    for _ in range(flags.num_requests if profiling else 1):
        examples = random_examples(spec, flags.batch_size, rng, rows=flags.rows)
        requests.append(_request(settings, encode(spec, flags.kind, examples)))
    return requests


@dataclass(frozen=True)
class CallInputs:
    """What the flags' files describe, read before connecting: a failure here is the user's, not the server's."""

    requests: list[predict_pb2.PredictRequest] = field(default_factory=list)
    model_config: model_server_config_pb2.ModelServerConfig | None = None


def read_inputs(settings: Settings) -> CallInputs:
    """The requests (predict, profile) or the model config (load) of the action."""
    if settings.action in ("predict", "profile"):
        return CallInputs(requests=build_requests(settings))
    if settings.action == "load":
        return CallInputs(model_config=_model_config(_config_path(settings)))
    return CallInputs()


def _config_path(settings: Settings) -> Path:
    """--config_file, or tfs_client's --input_file."""
    given = settings.config_file
    data_file = settings.inputs.input_file
    if given is not None and data_file is not None and given != data_file:
        raise InvalidArgumentError("load: give --config_file or --input_file (tfs_client's name), not both")
    path = given or data_file
    if path is None:
        raise InvalidArgumentError(
            "load needs --config_file (tfs_client: --input_file), a text-format ModelServerConfig"
        )
    return path


def _model_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    try:
        return read_model_server_config(path)
    except UnicodeDecodeError as error:
        raise InvalidArgumentError(f"model config file {str(path)!r}: not a text-format file") from error


# --------------------------------------------------------------------------- calls and output


class ServerReportedError(MonolithServingError):
    """The RPC succeeded but its response carries an error status (ReloadConfigResponse.status)."""


def _bytes_as_text(value: Any) -> str:
    """``json.dumps`` fallback for DT_STRING outputs (bytes); anything else is a bug and stays a TypeError."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _print(settings: Settings, payload: dict[str, Any], text: str, response: Any) -> None:
    """``text`` (ours), ``payload`` as JSON, or ``response`` as tfs_client prints it (``print(response)``)."""
    if settings.output == "json":
        print(json.dumps(payload, indent=2, default=_bytes_as_text))
    elif settings.output == "tfs_client":
        print(text_format.MessageToString(response))
    else:
        print(text)


def _rounded(values: npt.NDArray[Any]) -> Any:
    """Floats to 6 decimals for reading; other dtypes (ints, bools, DT_STRING bytes) as they are."""
    # Rounded as float64: a float32 rounded to 6 decimals prints as 0.5168889760971069 once it is a Python float.
    shown = values.astype(np.float64).round(6) if np.issubdtype(values.dtype, np.floating) else values
    return shown.tolist()  # nested lists, or one value for a scalar output


def _model_spec(settings: Settings, message: Any) -> None:
    """Name, version and (as tfs_client sends it) signature of a status or metadata request."""
    message.model_spec.name = settings.model
    message.model_spec.signature_name = settings.signature_name or DEFAULT_SIGNATURE
    if settings.version is not None:
        message.model_spec.version.value = settings.version


async def _predict(settings: Settings, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
    (request,) = inputs.requests
    call = stub.Predict(request, timeout=settings.timeout_s)
    response = await call
    trailing = await call.trailing_metadata()
    ps_versions = dict(trailing or ()).get(PS_VERSIONS_KEY, "")
    arrays = {name: from_tensor_proto(t, name) for name, t in response.outputs.items()}
    version = response.model_spec.version.value
    lines = [f"model {response.model_spec.name} version {version}" + (f" (PS {ps_versions})" if ps_versions else "")]
    for name, values in arrays.items():
        lines.append(f"{name}: {_rounded(values)}")
    outputs = {name: values.tolist() for name, values in arrays.items()}
    payload = {"version": version, "ps_versions": ps_versions, "outputs": outputs}
    _print(settings, payload, "\n".join(lines), response)


async def _status(settings: Settings, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
    request = get_model_status_pb2.GetModelStatusRequest()
    _model_spec(settings, request)
    response = await stub.GetModelStatus(request, timeout=settings.timeout_s)
    state = get_model_status_pb2.ModelVersionStatus.State
    lines = [
        f"version {s.version}: {state.Name(s.state)}"
        + (f" ({s.status.error_message})" if s.status.error_message else "")
        for s in response.model_version_status
    ]
    _print(settings, json_format.MessageToDict(response), "\n".join(lines) or "no versions", response)


async def _meta(settings: Settings, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=settings.metadata_fields)
    _model_spec(settings, request)
    response = await stub.GetModelMetadata(request, timeout=settings.timeout_s)
    unpacked: dict[str, Any] = {}
    for name, packed in response.metadata.items():
        if packed.Is(get_model_metadata_pb2.SignatureDefMap.DESCRIPTOR):
            message: Any = get_model_metadata_pb2.SignatureDefMap()
            packed.Unpack(message)
            unpacked[name] = json_format.MessageToDict(message)
        else:
            unpacked[name] = json_format.MessageToDict(packed)
    payload = {"model_spec": json_format.MessageToDict(response.model_spec), "metadata": unpacked}
    # Ours prints the JSON in both the text and the json output.
    _print(settings, payload, json.dumps(payload, indent=2), response)


async def _load(settings: Settings, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
    request = model_management_pb2.ReloadConfigRequest(config=inputs.model_config)
    response = await stub.HandleReloadConfigRequest(request, timeout=settings.timeout_s)
    status = response.status
    if settings.output == "tfs_client":
        # tfs_client logs the config it sent, then " load done!".
        print(f"{text_format.MessageToString(request.config)} load done!")
    else:
        _print(settings, json_format.MessageToDict(response), f"reloaded: status code {status.error_code}", response)
    if status.error_code != 0:  # error.Code OK
        # TF Serving reports a refused config in the response as well as in the RPC status; trust either.
        raise ServerReportedError(f"{_code_name(status.error_code)}: {status.error_message}")


def _code_name(code: int) -> str:
    """``error.Code`` numbers are gRPC's status codes."""
    for status_code in grpc.StatusCode:
        if status_code.value[0] == code:
            return str(status_code.name)
    return f"error code {code}"


def _profile_text(settings: Settings, result: ProfileResult) -> str:
    if settings.output == "tfs_client":
        return (
            f"[Profile] Count: {result.count}, Avg Latency: {result.mean_ms}, P99 Latency: {result.p99_ms}, "
            f"QPS: {result.qps}"
        )
    return (
        f"count {result.count}  errors {result.errors}  mean {result.mean_ms:.3f} ms  p50 {result.p50_ms:.3f} ms  "
        f"p99 {result.p99_ms:.3f} ms  QPS {result.qps:.1f}"
        + (f"\nfirst error: {result.first_error}" if result.first_error else "")
    )


def profile_failure(result: ProfileResult) -> str | None:
    """The ``error:`` line of a load test in which any request failed; None when every request succeeded."""
    if not result.errors:
        return None
    return f"{result.first_error} ({result.errors} of {result.count + result.errors} requests failed)"


async def _profile(settings: Settings, inputs: CallInputs) -> int:
    """Prints the whole summary, then fails (exit status 1) when any request failed."""

    def progress(elapsed_s: float, count: int, errors: int) -> None:
        print(
            f"\r{elapsed_s:5.1f}s  {count} ok  {errors} errors  {count / max(elapsed_s, 1e-9):.0f} QPS",
            end="",
            file=sys.stderr,
        )

    result = await run_profile(
        targets=settings.targets,
        requests=inputs.requests,
        workers=settings.workers,
        duration_s=settings.duration_s,
        timeout_s=settings.timeout_s,
        progress=progress,
    )
    print(file=sys.stderr)
    if settings.output == "json":
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(_profile_text(settings, result))
    failure = profile_failure(result)
    return EXIT_OK if failure is None else _fail(failure, EXIT_SERVER_ERROR)


async def _main(settings: Settings, inputs: CallInputs) -> int:
    if settings.action == "profile":
        return await _profile(settings, inputs)
    # As tfs_client: one call goes to the first of several targets.
    async with grpc.aio.insecure_channel(settings.targets[0], options=channel_options()) as channel:
        handlers = {"predict": _predict, "status": _status, "meta": _meta, "load": _load}
        await handlers[settings.action](settings, channel, inputs)
    return EXIT_OK


def _fail(message: str, exit_status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return exit_status


def run(args: argparse.Namespace) -> int:
    try:
        return _read_then_call(args)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _read_then_call(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args, os.environ)
        inputs = read_inputs(settings)
    except MonolithServingError as error:
        return _fail(error.message, EXIT_USAGE)
    try:
        return asyncio.run(_main(settings, inputs))
    except grpc.aio.AioRpcError as error:
        return _fail(f"{error.code().name}: {error.details()}", EXIT_SERVER_ERROR)
    except ServerReportedError as error:
        return _fail(error.message, EXIT_SERVER_ERROR)
    except MonolithServingError as error:
        # Raised while talking to the server (unreachable target, an output the codec cannot decode).
        return _fail(f"{status_code_for(error).name}: {error.message}", EXIT_SERVER_ERROR)
