"""Bad flags and environment of the dense and PS servers: one log line naming the problem and exit code 2, before
any port is bound; never a traceback and exit code 1."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.grpc_server import Lifecycle, serve_command
from monolith_serving.dense import main as dense_main
from monolith_serving.dense.config import DenseServerConfig
from monolith_serving.ps import main as ps_main
from monolith_serving.ps.config import PsConfig


def model_config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "models.config"
    path.write_text(f'model_config_list {{ config {{ name: "{name}" base_path: "{tmp_path}" }} }}\n')
    return path


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    module = dense_main if command == "dense" else ps_main
    parser = argparse.ArgumentParser()
    module.configure(parser)
    return parser.parse_args(argv)


def config_from_args(command: str) -> Callable[[argparse.Namespace, dict[str, str]], DenseServerConfig | PsConfig]:
    return dense_main.config_from_args if command == "dense" else ps_main.config_from_args


@pytest.mark.parametrize("command", ["dense", "ps"])
def test_a_missing_model_config_file_is_found_by_config_from_args(command: str, tmp_path: Path) -> None:
    args = parse(command, ["--model_config_file", str(tmp_path / "absent.config")])
    with pytest.raises(NotFoundError, match="absent.config"):
        config_from_args(command)(args, {})


@pytest.mark.parametrize(("command", "wrong_name"), [("dense", "ps_0"), ("ps", "dense_0")])
def test_a_model_of_the_wrong_kind_in_the_config_file_is_found_by_config_from_args(
    command: str, wrong_name: str, tmp_path: Path
) -> None:
    args = parse(command, ["--model_config_file", str(model_config(tmp_path, wrong_name))])
    with pytest.raises(InvalidArgumentError, match=wrong_name):
        config_from_args(command)(args, {})


@pytest.mark.parametrize(("command", "name"), [("dense", "dense_0"), ("ps", "ps_0")])
def test_a_good_config_file_is_kept_for_the_server(command: str, name: str, tmp_path: Path) -> None:
    path = model_config(tmp_path, name)
    config = config_from_args(command)(parse(command, ["--model_config_file", str(path)]), {})
    assert config.model_config_file == path


def test_serve_command_maps_a_missing_file_to_exit_code_2() -> None:
    def missing(args: argparse.Namespace, environ: dict[str, str]) -> object:
        raise NotFoundError("model config file 'x': No such file or directory")

    def never_built(config: object) -> Lifecycle:
        raise AssertionError("no server is built for a bad config")

    assert serve_command(argparse.Namespace(), missing, never_built, "test server") == 2


def run_server(command: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monolith_serving", command, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "argv", "env", "message"),
    [
        ("dense", ["--model_config_file", "{dir}/absent.config"], {}, "No such file"),
        ("dense", ["--model_config_file", "{ps_config}"], {}, "is not a dense sub-model"),
        ("ps", ["--model_config_file", "{dir}/absent.config"], {}, "No such file"),
        ("dense", ["--model_name", "dense_0", "--model_base_path", "{dir}"], {"PORT3": "abc"}, "PORT3"),
        ("ps", ["--model_name", "ps_0", "--model_base_path", "{dir}"], {"PORT3": "65537"}, "PORT3"),
        ("dense", ["--port", "70000", "--model_name", "dense_0", "--model_base_path", "{dir}"], {}, "--port"),
        ("ps", ["--log_level", "bogus", "--model_name", "ps_0", "--model_base_path", "{dir}"], {}, "--log_level"),
    ],
)
def test_a_bad_flag_or_variable_exits_2_with_one_message(
    command: str, argv: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    ps_config = model_config(tmp_path, "ps_0")
    done = run_server(command, [a.format(dir=tmp_path, ps_config=ps_config) for a in argv], env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "gRPC on port" not in done.stderr
