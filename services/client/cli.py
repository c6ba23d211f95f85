"""``monolith-serving client predict|status|meta|load|profile`` — parity with Monolith's tfs_client.

- ``predict``: random examples that hit the model's tables (from ``--spec``, default the demo's spec), or
  a PredictRequest read from ``--request_file`` (text format if it parses, else binary); prints outputs. The
  file's ``model_spec.name`` is kept (``--model`` only fills a missing one, and an explicit ``--model`` naming
  another model is a usage error); ``--version`` replaces the file's version.
- ``status``: GetModelStatus; ``meta``: GetModelMetadata; ``load``: HandleReloadConfigRequest with a
  text-format ModelServerConfig file.
- ``profile``: ``--workers`` concurrent Predicts for ``--duration_s``; progress on stderr; count, mean,
  p50, p99 and QPS on stdout (``--json`` for one JSON object), printed in full even when requests failed.

Exit status: 0 on success; 1 when the server answered with an error or could not be reached (``error: CODE:
message`` on stderr), and for ``profile`` when any request failed; 2 for a usage error: a flag out of range
(argparse), a file named by a flag that cannot be read or parsed (``error: message`` naming the file) or a
``--model`` other than the request file's; 130 on Ctrl-C. Files are read before any connection is
made, so a usage error never waits for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from monolith_serving.client.flag_types import INT64_MAX, int_in_range, positive_seconds
from monolith_serving.client.inputs import INPUT_KINDS, MAX_ROWS, encode, predict_request, random_examples
from monolith_serving.client.profile import ProfileResult, run_profile
from monolith_serving.core.cli_flags import add_flag
from monolith_serving.core.demo_export import DemoOptions, demo_spec
from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError, NotFoundError
from monolith_serving.core.export_layout import list_versions, read_model_server_config
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.grpc_server import channel_options
from monolith_serving.core.serving_spec import (
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
PS_VERSIONS_KEY = "x-monolith-ps-versions"
DEFAULT_MODEL = "entry"
EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2  # what argparse exits with, so a bad file and a bad flag look the same to a script
EXIT_INTERRUPTED = 130  # the shell's 128 + SIGINT


def _model_flags(*, request_file: bool) -> argparse.ArgumentParser:
    """``--model`` and ``--version``; default None so that a request file can tell an explicit ``--model``."""
    flags = argparse.ArgumentParser(add_help=False)
    model_help = f"model_spec.name (default {DEFAULT_MODEL})"
    version_help = "pin model_spec.version"
    if request_file:
        model_help = f"model_spec.name (default: --request_file's, else {DEFAULT_MODEL}; must match the file's)"
        version_help += " (replaces --request_file's)"
    add_flag(flags, "--model", default=None, help=model_help)
    add_flag(flags, "--version", type=int_in_range(0, INT64_MAX), default=None, help=version_help)
    return flags


def configure(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_flag(common, "--target", default="localhost:8500", help="entry (or proxy) host:port (default %(default)s)")
    add_flag(common, "--timeout_s", type=positive_seconds, default=5.0, help="per-call deadline (default %(default)s)")
    add_flag(common, "--json", action="store_true", help="print one JSON object")
    inputs = argparse.ArgumentParser(add_help=False)
    add_flag(inputs, "--input_kind", choices=INPUT_KINDS, default="instances", help="request input kind")
    add_flag(inputs, "--batch_size", type=int_in_range(1), default=4, help="examples per request (default %(default)s)")
    add_flag(inputs, "--spec", type=Path, default=None, help="serving_spec.json, an entry version dir or an export")
    rows_help = "random fids use k < rows (export-demo's --rows)"
    add_flag(inputs, "--rows", type=int_in_range(1, MAX_ROWS), default=1000, help=rows_help)
    add_flag(inputs, "--seed", type=int_in_range(0), default=0, help="random seed")
    add_flag(inputs, "--request_file", type=Path, default=None, help="send this PredictRequest (text or binary)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="|".join(ACTIONS))
    model = _model_flags(request_file=False)
    file_model = _model_flags(request_file=True)
    sub.add_parser("predict", parents=[common, file_model, inputs], help="one Predict; prints the outputs")
    sub.add_parser("status", parents=[common, model], help="GetModelStatus")
    meta = sub.add_parser("meta", parents=[common, model], help="GetModelMetadata")
    add_flag(meta, "--metadata_field", action="append", default=None, help="default: signature_def")
    load = sub.add_parser("load", parents=[common, model], help="HandleReloadConfigRequest")
    add_flag(load, "--config_file", type=Path, required=True, help="text-format ModelServerConfig")
    profile_help = "load test; exit status 1 when any request failed"
    profile = sub.add_parser(
        "profile", parents=[common, file_model, inputs], help=profile_help, description=profile_help
    )
    add_flag(profile, "--workers", type=int_in_range(1), default=16, help="concurrent requests (default %(default)s)")
    add_flag(profile, "--duration_s", type=positive_seconds, default=10.0, help="measured time (default %(default)s)")
    requests_help = "distinct random requests to cycle through (default %(default)s)"
    add_flag(profile, "--num_requests", type=int_in_range(1), default=32, help=requests_help)


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


def file_request(path: Path, *, model: str | None, version: int | None) -> predict_pb2.PredictRequest:
    """The PredictRequest in ``path`` with the model flags applied.

    The file's ``model_spec.name`` is kept; ``model`` (None: not given) only fills a missing one, else
    DEFAULT_MODEL does. An explicit ``model`` that differs from the file's name is an InvalidArgumentError naming
    both, never a silent choice. ``version`` (None: not given) replaces the file's version or version_label."""
    request = read_request_file(path)
    spec = request.model_spec
    if not spec.name:
        spec.name = _model_or_default(model)
    elif model is not None and model != spec.name:
        raise InvalidArgumentError(
            f"request file {str(path)!r} is for model {spec.name!r} but --model is {model!r}; "
            "drop --model or make them agree"
        )
    if version is not None:
        spec.version.value = version
    return request


def build_requests(args: argparse.Namespace, count: int) -> list[predict_pb2.PredictRequest]:
    if args.request_file is not None:
        return [file_request(args.request_file, model=args.model, version=args.version)]
    spec = resolve_spec(args.spec)
    rng = np.random.default_rng(args.seed)
    requests = []
    model = _model_or_default(args.model)
    for _ in range(count):
        examples = random_examples(spec, args.batch_size, rng, rows=args.rows)
        requests.append(predict_request(model, encode(spec, args.input_kind, examples), version=args.version))
    return requests


def _model_or_default(model: str | None) -> str:
    return DEFAULT_MODEL if model is None else model


def _spec(args: argparse.Namespace, message: Any) -> None:
    message.model_spec.name = _model_or_default(args.model)
    if args.version is not None:
        message.model_spec.version.value = args.version


@dataclass(frozen=True)
class CallInputs:
    """What the flags' files describe, read before connecting: a failure here is the user's, not the server's."""

    requests: list[predict_pb2.PredictRequest] = field(default_factory=list)
    model_config: model_server_config_pb2.ModelServerConfig | None = None


def read_inputs(args: argparse.Namespace) -> CallInputs:
    """The requests (predict, profile) or the model config (load) of ``args.action``."""
    if args.action == "predict":
        return CallInputs(requests=build_requests(args, 1))
    if args.action == "profile":
        return CallInputs(requests=build_requests(args, args.num_requests))
    if args.action == "load":
        return CallInputs(model_config=_model_config(args.config_file))
    return CallInputs()


def _model_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    try:
        return read_model_server_config(path)
    except UnicodeDecodeError as error:
        raise InvalidArgumentError(f"model config file {str(path)!r}: not a text-format file") from error


def _bytes_as_text(value: Any) -> str:
    """``json.dumps`` fallback for DT_STRING outputs (bytes); anything else is a bug and stays a TypeError."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _print(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload, indent=2, default=_bytes_as_text) if args.json else text)


def _rounded(values: npt.NDArray[Any]) -> Any:
    """Floats to 6 decimals for reading; other dtypes (ints, bools, DT_STRING bytes) as they are."""
    # Rounded as float64: a float32 rounded to 6 decimals prints as 0.5168889760971069 once it is a Python float.
    shown = values.astype(np.float64).round(6) if np.issubdtype(values.dtype, np.floating) else values
    return shown.tolist()  # nested lists, or one value for a scalar output


async def _predict(args: argparse.Namespace, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
    (request,) = inputs.requests
    call = stub.Predict(request, timeout=args.timeout_s)
    response = await call
    trailing = await call.trailing_metadata()
    ps_versions = dict(trailing or ()).get(PS_VERSIONS_KEY, "")
    arrays = {name: from_tensor_proto(t, name) for name, t in response.outputs.items()}
    version = response.model_spec.version.value
    lines = [f"model {response.model_spec.name} version {version}" + (f" (PS {ps_versions})" if ps_versions else "")]
    for name, values in arrays.items():
        lines.append(f"{name}: {_rounded(values)}")
    outputs = {name: values.tolist() for name, values in arrays.items()}
    _print(args, {"version": version, "ps_versions": ps_versions, "outputs": outputs}, "\n".join(lines))


async def _status(args: argparse.Namespace, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
    request = get_model_status_pb2.GetModelStatusRequest()
    _spec(args, request)
    response = await stub.GetModelStatus(request, timeout=args.timeout_s)
    state = get_model_status_pb2.ModelVersionStatus.State
    lines = [
        f"version {s.version}: {state.Name(s.state)}"
        + (f" ({s.status.error_message})" if s.status.error_message else "")
        for s in response.model_version_status
    ]
    _print(args, json_format.MessageToDict(response), "\n".join(lines) or "no versions")


async def _meta(args: argparse.Namespace, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=args.metadata_field or ["signature_def"])
    _spec(args, request)
    response = await stub.GetModelMetadata(request, timeout=args.timeout_s)
    unpacked: dict[str, Any] = {}
    for name, packed in response.metadata.items():
        if packed.Is(get_model_metadata_pb2.SignatureDefMap.DESCRIPTOR):
            message: Any = get_model_metadata_pb2.SignatureDefMap()
            packed.Unpack(message)
            unpacked[name] = json_format.MessageToDict(message)
        else:
            unpacked[name] = json_format.MessageToDict(packed)
    payload = {"model_spec": json_format.MessageToDict(response.model_spec), "metadata": unpacked}
    print(json.dumps(payload, indent=2))


async def _load(args: argparse.Namespace, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
    request = model_management_pb2.ReloadConfigRequest(config=inputs.model_config)
    response = await stub.HandleReloadConfigRequest(request, timeout=args.timeout_s)
    _print(args, json_format.MessageToDict(response), f"reloaded: status code {response.status.error_code}")


def _profile_text(result: ProfileResult) -> str:
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


async def _profile(args: argparse.Namespace, inputs: CallInputs) -> int:
    """Prints the whole summary, then fails (exit status 1) when any request failed."""

    def progress(elapsed_s: float, count: int, errors: int) -> None:
        print(
            f"\r{elapsed_s:5.1f}s  {count} ok  {errors} errors  {count / max(elapsed_s, 1e-9):.0f} QPS",
            end="",
            file=sys.stderr,
        )

    result = await run_profile(
        target=args.target,
        requests=inputs.requests,
        workers=args.workers,
        duration_s=args.duration_s,
        timeout_s=args.timeout_s,
        progress=progress,
    )
    print(file=sys.stderr)
    _print(args, result.as_dict(), _profile_text(result))
    failure = profile_failure(result)
    return EXIT_OK if failure is None else _fail(failure, EXIT_SERVER_ERROR)


async def _main(args: argparse.Namespace, inputs: CallInputs) -> int:
    if args.action == "profile":
        return await _profile(args, inputs)
    async with grpc.aio.insecure_channel(args.target, options=channel_options()) as channel:
        handlers = {"predict": _predict, "status": _status, "meta": _meta, "load": _load}
        await handlers[args.action](args, channel, inputs)
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
        inputs = read_inputs(args)
    except MonolithServingError as error:
        return _fail(error.message, EXIT_USAGE)
    try:
        return asyncio.run(_main(args, inputs))
    except grpc.aio.AioRpcError as error:
        return _fail(f"{error.code().name}: {error.details()}", EXIT_SERVER_ERROR)
    except MonolithServingError as error:
        # Raised while talking to the server (unreachable target, an output the codec cannot decode).
        return _fail(f"{status_code_for(error).name}: {error.message}", EXIT_SERVER_ERROR)
