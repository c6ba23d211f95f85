"""``monolith-serving client`` given bad flags or files: a one-line error naming the flag or file, exit status 2,
never a traceback, and never a connection attempt (every check here runs before the client dials ``--target``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from client_cli import run_client

from monolith_serving.client.call_inputs import read_request_file
from monolith_serving.client.inputs import MAX_ROWS, random_examples
from monolith_serving.core.demo_export import DemoOptions, demo_spec
from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2

# Nothing is ever sent here: a usage error must be reported before the client connects.
UNUSED_TARGET = "127.0.0.1:1"
EXIT_USAGE = 2


def assert_usage_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == EXIT_USAGE, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["predict", "--rows", "0"], "--rows"),
        (["predict", "--rows", str(MAX_ROWS + 1)], "--rows"),
        (["predict", "--batch_size", "0"], "--batch_size"),
        (["predict", "--seed", "-1"], "--seed"),
        (["predict", "--version", str(2**63)], "--version"),
        (["predict", "--timeout_s", "inf"], "--timeout_s"),
        (["status", "--timeout_s", "0"], "--timeout_s"),
        (["profile", "--num_requests", "0"], "--num_requests"),
        (["profile", "--workers", "0"], "--workers"),
        (["profile", "--duration_s", "nan"], "--duration_s"),
        (["profile", "--duration_s", "-1"], "--duration_s"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_a_count_or_duration_out_of_range_is_refused_naming_the_flag(args: list[str], flag: str) -> None:
    done = run_client(*args, "--target", UNUSED_TARGET)
    assert_usage_error(done, f"argument {flag}", "must be")


def test_a_missing_request_file_is_named(tmp_path: Path) -> None:
    done = run_client("predict", "--target", UNUSED_TARGET, "--request_file", "nope.txt", cwd=tmp_path)
    assert_usage_error(done, "error: request file 'nope.txt': No such file or directory")


def test_a_typo_in_a_text_request_file_reports_the_text_error_with_its_position(tmp_path: Path) -> None:
    (tmp_path / "request.txt").write_text('model_spec { nme: "x" }\n')
    done = run_client("predict", "--target", UNUSED_TARGET, "--request_file", "request.txt", cwd=tmp_path)
    assert_usage_error(done, "request file 'request.txt'", "1:14", '"nme"')
    assert "Wire format" not in done.stderr


def test_a_file_that_is_neither_text_nor_a_request_is_named(tmp_path: Path) -> None:
    (tmp_path / "request.bin").write_bytes(b"\x00\xff\xfe\x01garbage")
    done = run_client("predict", "--target", UNUSED_TARGET, "--request_file", "request.bin", cwd=tmp_path)
    assert_usage_error(done, "request file 'request.bin'", "neither text format nor a binary PredictRequest")


@pytest.mark.parametrize("action", ["predict", "profile"])
def test_a_model_flag_naming_another_model_than_the_request_file_is_refused(tmp_path: Path, action: str) -> None:
    (tmp_path / "request.txt").write_text('model_spec { name: "other" }\n')
    args = ["--target", UNUSED_TARGET, "--request_file", "request.txt", "--model", "entry"]
    done = run_client(action, *args, cwd=tmp_path)
    assert_usage_error(done, "error: request file 'request.txt' is for model 'other' but --model is 'entry'")


def test_a_binary_spec_or_config_file_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\xfe\x00binary")
    done = run_client("predict", "--target", UNUSED_TARGET, "--spec", str(binary))
    assert_usage_error(done, f"error: {binary}: not a serving spec")
    done = run_client("load", "--target", UNUSED_TARGET, "--config_file", str(binary))
    assert_usage_error(done, f"model config file '{binary}'")


def test_a_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    done = run_client("load", "--target", UNUSED_TARGET, "--config_file", str(tmp_path / "nope.config"))
    assert_usage_error(done, "nope.config", "No such file or directory")


def _request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "entry"
    request.inputs["instances"].dtype = 7  # DT_STRING
    request.inputs["instances"].string_val.append(b"\x00\x01")
    return request


def test_request_files_in_text_and_binary_format_both_parse(tmp_path: Path) -> None:
    request = _request()
    binary = tmp_path / "request.bin"
    binary.write_bytes(request.SerializeToString())
    text = tmp_path / "request.txt"
    text.write_text(str(request))
    assert read_request_file(binary) == request
    assert read_request_file(text) == request


def test_request_file_errors_are_package_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        read_request_file(tmp_path / "nope")
    with pytest.raises(NotFoundError, match="Is a directory"):
        read_request_file(tmp_path)
    typo = tmp_path / "typo.txt"
    typo.write_text("inputs { key: 1 }")
    with pytest.raises(InvalidArgumentError, match=r"typo\.txt.*not a text-format PredictRequest: 1:"):
        read_request_file(typo)


def test_random_examples_refuse_rows_that_do_not_fit_the_fid_hash() -> None:
    spec = demo_spec(DemoOptions(out=Path(".")))
    rng = np.random.default_rng(0)
    for rows in (0, MAX_ROWS + 1):
        with pytest.raises(ValueError, match="rows must be from 1"):
            random_examples(spec, 1, rng, rows=rows)
    assert len(random_examples(spec, 2, rng, rows=MAX_ROWS)) == 2


def test_float_outputs_print_rounded_to_six_decimals() -> None:
    from monolith_serving.client.calls import _rounded

    scores = np.array([[0.516889], [0.549268]], dtype=np.float32)  # float32 cannot hold either exactly
    assert str(_rounded(scores)) == "[[0.516889], [0.549268]]"
    assert _rounded(np.array([3, 4], dtype=np.int64)) == [3, 4]
