"""``client predict|profile --request_file``: the file's ``model_spec`` is what is sent, except that ``--model`` fills
a missing name and an explicit ``--version`` replaces the file's version; a ``--model`` naming another model than
the file is refused. Flags are parsed by the real parser, so its defaults (``--model`` unset) are what is tested."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from monolith_serving.client.call_inputs import build_requests
from monolith_serving.client.cli import configure
from monolith_serving.client.settings import DEFAULT_MODEL, settings_from_args
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def write_request(path: Path, *, name: str = "", version: int | None = None, label: str = "") -> Path:
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_default"
    if name:
        request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.inputs["instances"].dtype = 7  # DT_STRING
    request.inputs["instances"].string_val.append(b"\x00\x01")
    path.write_text(str(request))
    return path


def sent(*argv: str) -> predict_pb2.PredictRequest:
    """The one request ``argv`` sends (predict and profile build them alike)."""
    (request,) = build_requests(settings_from_args(parse(*argv), {}))
    return request


@pytest.mark.parametrize("action", ["predict", "profile"])
def test_the_file_model_name_and_version_are_sent_when_no_flag_is_given(tmp_path: Path, action: str) -> None:
    path = write_request(tmp_path / "r.txt", name="other", version=3)
    spec = sent(action, "--request_file", str(path)).model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("other", 3, "serving_default")


def test_model_fills_the_name_only_when_the_file_has_none(tmp_path: Path) -> None:
    path = write_request(tmp_path / "r.txt")
    assert sent("predict", "--request_file", str(path)).model_spec.name == DEFAULT_MODEL
    assert sent("predict", "--request_file", str(path), "--model", "mine").model_spec.name == "mine"


def test_model_naming_the_files_own_model_is_accepted(tmp_path: Path) -> None:
    path = write_request(tmp_path / "r.txt", name="other")
    assert sent("predict", "--request_file", str(path), "--model", "other").model_spec.name == "other"


@pytest.mark.parametrize("action", ["predict", "profile"])
def test_model_naming_another_model_than_the_file_is_refused_naming_both(tmp_path: Path, action: str) -> None:
    path = write_request(tmp_path / "r.txt", name="other")
    with pytest.raises(InvalidArgumentError, match=r"r\.txt.*'other'.*--model is 'entry'"):
        sent(action, "--request_file", str(path), "--model", "entry")


@pytest.mark.parametrize("action", ["predict", "profile"])
def test_an_explicit_version_replaces_the_files_version(tmp_path: Path, action: str) -> None:
    path = write_request(tmp_path / "r.txt", name="other", version=3)
    spec = sent(action, "--request_file", str(path), "--version", "7").model_spec
    assert (spec.name, spec.version.value) == ("other", 7)


def test_an_explicit_version_replaces_the_files_version_label(tmp_path: Path) -> None:
    path = write_request(tmp_path / "r.txt", name="other", label="stable")
    spec = sent("predict", "--request_file", str(path), "--version", "7").model_spec
    assert spec.WhichOneof("version_choice") == "version"
    assert spec.version.value == 7


def test_a_binary_request_file_keeps_its_model_spec_too(tmp_path: Path) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "other"
    request.model_spec.version.value = 3
    path = tmp_path / "r.bin"
    path.write_bytes(request.SerializeToString())
    spec = sent("predict", "--request_file", str(path)).model_spec
    assert (spec.name, spec.version.value) == ("other", 3)


def test_random_requests_use_model_else_the_default(tmp_path: Path) -> None:
    assert sent("predict").model_spec.name == DEFAULT_MODEL
    spec = sent("predict", "--model", "mine", "--version", "5").model_spec
    assert (spec.name, spec.version.value) == ("mine", 5)


def test_output_filter_is_sent_and_replaces_the_files(tmp_path: Path) -> None:
    assert list(sent("predict").output_filter) == []
    assert list(sent("predict", "--output_filter", "ctr", "--output_filter", "cvr").output_filter) == ["ctr", "cvr"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "entry"
    request.output_filter.append("scores")
    request.inputs["instances"].dtype = 7  # DT_STRING
    request.inputs["instances"].string_val.append(b"\x00\x01")
    path = tmp_path / "r.txt"
    path.write_text(str(request))
    assert list(sent("profile", "--request_file", str(path)).output_filter) == ["scores"]
    assert list(sent("profile", "--request_file", str(path), "--output_filter", "cvr").output_filter) == ["cvr"]
