"""The client's flags resolved once into frozen ``Settings``: the spelling's defaults, ``--conf``'s target and model.

Without an action word the command line is tfs_client's and its defaults apply (``TFS_CLIENT_DEFAULTS``); with
one, ours (``OUR_DEFAULTS``). Nothing here touches the network; every error is a MonolithServingError, a usage
error of the command line.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from monolith_serving.client.tfs_client_files import RecordHeader
from monolith_serving.core.agent_conf import DeployType, load_agent_config, resolve_environment
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.serving_spec import DENSE_SUB_MODEL
from monolith_serving.core.tls_channel import ChannelTls, tls_dial_from_args

DEFAULT_MODEL = "entry"
DEFAULT_TARGET = "localhost:8500"
# tfs_client's --cmd_type values that are not a Predict; every other one (its default hb included) is.
NON_PREDICT_CMD_TYPES = frozenset({"status", "meta", "load", "profile"})


class InputKind(StrEnum):
    """What predict and profile send (``--input_type`` names one, in our words or tfs_client's)."""

    INSTANCES = "instances"
    EXAMPLE_BATCH = "example_batch"
    EXAMPLES = "examples"
    EXAMPLE_BATCH_TO_INSTANCE = "example_batch_to_instance"  # an ExampleBatch file sent as Instances


# --input_type's values: ours and tfs_client's. tfs_client sends every input type it does not name (its default
# dump included) as example_batch_to_instance.
INPUT_KIND_OF_TYPE: Mapping[str, InputKind] = {
    "instances": InputKind.INSTANCES,
    "instance": InputKind.INSTANCES,
    "example_batch": InputKind.EXAMPLE_BATCH,
    "examples": InputKind.EXAMPLES,
    "example_batch_to_instance": InputKind.EXAMPLE_BATCH_TO_INSTANCE,
    "dump": InputKind.EXAMPLE_BATCH_TO_INSTANCE,
    "json": InputKind.EXAMPLE_BATCH_TO_INSTANCE,
    "pbtext": InputKind.EXAMPLE_BATCH_TO_INSTANCE,
    "binary": InputKind.EXAMPLE_BATCH_TO_INSTANCE,
}


@dataclass(frozen=True)
class Defaults:
    """The defaults in which the two spellings differ."""

    batch_size: int
    workers: int
    duration_s: float
    timeout_s: float  # Predict's deadline
    non_predict_timeout_s: float | None  # status, meta and load's deadline; None: none
    output: str
    metadata_fields: tuple[str, ...]


OUR_DEFAULTS = Defaults(
    batch_size=4,
    workers=16,
    duration_s=10.0,
    timeout_s=5.0,
    non_predict_timeout_s=5.0,
    output="text",
    metadata_fields=("signature_def",),
)
# tfs_client: --batch_size 8, --parallel_num 1, --profile_duration 600, print(response) and the metadata fields its
# meta asks for. It gives Predict (get and each profile request) a 30 s deadline and status, meta and load none: a
# reload may take longer than any deadline we would pick, and the server finishes it anyway.
TFS_CLIENT_DEFAULTS = Defaults(
    batch_size=8,
    workers=1,
    duration_s=600.0,
    timeout_s=30.0,
    non_predict_timeout_s=None,
    output="tfs_client",
    metadata_fields=("base_path", "num_versions", "signature_name"),
)


@dataclass(frozen=True)
class InputSettings:
    """What predict and profile send."""

    kind: InputKind
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

    action: str  # predict, status, meta, load or profile
    targets: tuple[str, ...]
    tls: ChannelTls | None  # --ssl_*: dial the targets over TLS; None: plaintext
    model: str  # the model to call: --model, else --conf's, else entry
    model_given: bool  # --model was given: a request file's own model must then agree
    signature_name: str | None  # --signature_name; None: a request file keeps its own, others send the default
    output_filter: tuple[str, ...] | None  # --output_filter; None: a request file keeps its own, others ask for all
    version: int | None
    timeout_s: float  # Predict's deadline (predict, each profile request, profile's wait for a connection)
    non_predict_timeout_s: float | None  # status, meta and load's deadline; None: none
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
    return cmd_type if cmd_type in NON_PREDICT_CMD_TYPES else "predict"


def _input_settings(args: argparse.Namespace, defaults: Defaults) -> InputSettings:
    kind_flag = args.input_type
    if kind_flag is None:
        kind = InputKind.EXAMPLE_BATCH_TO_INSTANCE if args.input_file is not None else InputKind.INSTANCES
    else:
        kind = INPUT_KIND_OF_TYPE[kind_flag]
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
    defaults = TFS_CLIENT_DEFAULTS if args.action is None else OUR_DEFAULTS
    conf = conf_defaults(args.conf, environ) if args.conf is not None else None
    if args.target is not None:
        targets = parse_targets(args.target)
    elif conf is not None:
        targets = (_conf_target(args.conf, conf),)
    else:
        targets = (DEFAULT_TARGET,)
    default_model = conf.model if conf is not None else DEFAULT_MODEL
    model = args.model if args.model is not None else default_model
    given_timeout_s = args.timeout_s
    return Settings(
        action=action,
        targets=targets,
        tls=tls_dial_from_args(args, "ssl"),
        model=model,
        model_given=args.model is not None,
        signature_name=args.signature_name,
        output_filter=tuple(args.output_filter) if args.output_filter else None,
        version=args.version,
        timeout_s=given_timeout_s if given_timeout_s is not None else defaults.timeout_s,
        non_predict_timeout_s=given_timeout_s if given_timeout_s is not None else defaults.non_predict_timeout_s,
        output=args.output if args.output is not None else defaults.output,
        metadata_fields=tuple(args.metadata_field) if args.metadata_field else defaults.metadata_fields,
        config_file=args.config_file,
        workers=args.workers if args.workers is not None else defaults.workers,
        duration_s=args.duration_s if args.duration_s is not None else defaults.duration_s,
        inputs=_input_settings(args, defaults),
    )
