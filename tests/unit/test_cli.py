from __future__ import annotations

import subprocess
import sys

import pytest

from monolith_serving.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command.name in out


def test_unknown_command_fails() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monolith_serving", "nope"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "unknown command 'nope'" in done.stderr


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_command_has_help(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monolith_serving", command, "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--log_format" in done.stdout
    assert "else None" not in done.stdout  # every default a help text names is a value


def test_the_main_grpc_port_is_the_flag_else_port3_else_8500() -> None:
    import argparse

    from monolith_serving.core.cli_flags import add_server_flags, main_grpc_port

    parser = argparse.ArgumentParser()
    add_server_flags(parser)
    assert main_grpc_port(parser.parse_args(["--port", "7000"]), {"PORT3": "9003"}) == 7000
    assert main_grpc_port(parser.parse_args([]), {"PORT3": "9003"}) == 9003
    assert main_grpc_port(parser.parse_args([]), {}) == 8500


def test_dashed_and_underscored_flags_are_the_same(tmp_path: object) -> None:
    import argparse

    from monolith_serving.core.cli_flags import add_flag

    parser = argparse.ArgumentParser()
    add_flag(parser, "--model_config_file")
    assert parser.parse_args(["--model-config-file", "a"]).model_config_file == "a"
    assert parser.parse_args(["--model_config_file", "b"]).model_config_file == "b"
