"""What a call sends, built from the flags and their files before any connection is made.

The requests of predict and profile (random, a stored PredictRequest, tfs_client's data files) and the model
config of load. A file that cannot be read or parsed is a MonolithServingError naming it: the user's error, never
the server's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from monolith_serving.client.inputs import encode, predict_request, random_examples
from monolith_serving.client.settings import InputKind, InputSettings, Settings
from monolith_serving.client.text_sniff import decoded_if_text
from monolith_serving.client.tfs_client_files import (
    example_batch_to_instances,
    profile_data_files,
    read_example_batch,
    read_instances,
)
from monolith_serving.core.demo_export import DemoOptions, demo_spec
from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError, NotFoundError
from monolith_serving.core.export_layout import list_versions, read_model_server_config
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE
from monolith_serving.core.serving_spec import (
    SPEC_FILE,
    ServingSpec,
    load_serving_spec,
    parse_serving_spec,
    read_spec_object,
)
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2


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


def read_request_file(path: Path) -> predict_pb2.PredictRequest:
    """A PredictRequest in text format, or binary when the file is not text; errors name the file.

    Text that fails to parse is reported as text, never retried as binary: the binary decoder keeps unknown
    fields, so it accepts some text (two spaces are a valid request) and a typo would hide behind a wire error
    or, worse, send another request."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise NotFoundError(f"request file {str(path)!r}: {error.strerror}") from error
    text = decoded_if_text(data)
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
    ``--version`` replaces the file's version or version_label, ``--signature_name`` its signature,
    ``--output_filter`` its output_filter."""
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
    if settings.output_filter is not None:
        del request.output_filter[:]
        request.output_filter.extend(settings.output_filter)
    return request


def _request(settings: Settings, inputs: dict[str, list[bytes]]) -> predict_pb2.PredictRequest:
    signature = settings.signature_name if settings.signature_name is not None else DEFAULT_SIGNATURE
    request = predict_request(settings.model, inputs, version=settings.version, signature_name=signature)
    request.output_filter.extend(settings.output_filter or ())
    return request


def _data_file_inputs(path: Path, flags: InputSettings) -> dict[str, list[bytes]]:
    """tfs_client's ``--input_file`` request inputs for ``flags.kind``."""
    if flags.kind is InputKind.INSTANCES:
        return {"instances": read_instances(path, flags.batch_size, flags.header)}
    if flags.kind is InputKind.EXAMPLE_BATCH:
        # As tfs_client: an example_batch input file is always a binary data file (--file_type is not read).
        return {"example_batch": [read_example_batch(path, "pb", flags.header).SerializeToString()]}
    if flags.kind is InputKind.EXAMPLE_BATCH_TO_INSTANCE:
        batch = read_example_batch(path, flags.file_type, flags.header)
        return {"instances": example_batch_to_instances(batch, path)}
    raise InvalidArgumentError(
        f"--input_type {flags.kind_flag} builds random tf.Examples and reads no --input_file; "
        "use --request_file to send stored ones"
    )


def _check_input_flags(flags: InputSettings) -> None:
    if flags.request_file is not None and flags.input_file is not None:
        raise InvalidArgumentError("give --request_file (a PredictRequest) or --input_file (a data file), not both")
    if flags.kind is InputKind.EXAMPLE_BATCH_TO_INSTANCE and flags.input_file is None and flags.request_file is None:
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
    assert flags.kind is not InputKind.EXAMPLE_BATCH_TO_INSTANCE  # needs a file: _check_input_flags refused it
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
        return CallInputs(model_config=read_model_config(_config_path(settings)))
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


def read_model_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    """load's text-format ModelServerConfig, as the servers read theirs; a binary file is a usage error."""
    try:
        return read_model_server_config(path)
    except UnicodeDecodeError as error:
        raise InvalidArgumentError(f"model config file {str(path)!r}: not a text-format file") from error
