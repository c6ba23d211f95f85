"""Port, environment-port and log-level flags: a bad value is a usage error (exit 2) naming the flag or variable,
never a traceback and never a port that gRPC silently wraps modulo 65536."""

from __future__ import annotations

import argparse
import logging

import pytest

from monolith_serving.core.agent_conf import env_port
from monolith_serving.core.cli_flags import (
    add_common_flags,
    add_server_flags,
    main_grpc_port,
    parse_grpc_channel_arguments,
)
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.logging_setup import configure_logging


def server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_common_flags(parser)
    add_server_flags(parser)
    return parser


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", "http"], "--port"),
        (["--metrics_port", "65536"], "--metrics_port"),
        (["--metrics-port", "-5"], "--metrics_port"),
    ],
)
def test_a_port_flag_outside_0_to_65535_is_a_usage_error(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        server_parser().parse_args(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error
    assert "not a port number" in error


@pytest.mark.parametrize("port", ["0", "1", "8500", "65535"])
def test_a_port_flag_in_range_is_taken(port: str) -> None:
    args = server_parser().parse_args(["--port", port, "--metrics_port", port])
    assert (args.port, args.metrics_port) == (int(port), int(port))


@pytest.mark.parametrize("value", ["65537", "-1", "abc", "85 00"])
def test_a_bad_port3_is_an_invalid_argument_naming_it(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match="PORT3"):
        main_grpc_port(server_parser().parse_args([]), {"PORT3": value})


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_port3_counts_as_unset(value: str) -> None:
    assert main_grpc_port(server_parser().parse_args([]), {"PORT3": value}) == 8500


def test_env_port_names_any_variable() -> None:
    assert env_port({"PORT2": " 9002 "}, "PORT2") == 9002
    assert env_port({}, "PORT2") is None
    with pytest.raises(InvalidArgumentError, match="PORT2"):
        env_port({"PORT2": "99999"}, "PORT2")


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        server_parser().parse_args(["--log_level", "bogus"])
    assert exit_info.value.code == 2
    assert "argument --log_level" in capsys.readouterr().err


def test_the_log_level_is_taken_in_any_case() -> None:
    assert server_parser().parse_args(["--log-level", "debug"]).log_level == "DEBUG"
    assert server_parser().parse_args([]).log_level == "INFO"


def test_configure_logging_rejects_an_unknown_level_by_name() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        with pytest.raises(ValueError, match="bogus"):
            configure_logging("text", "bogus")
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("grpc.max_receive_message_length=1024", (("grpc.max_receive_message_length", 1024),)),
        (" a=1 , b=text,c=-5,", (("a", 1), ("b", "text"), ("c", -5))),
        ("grpc.primary_user_agent=x=y", (("grpc.primary_user_agent", "x=y"),)),
        ("", ()),
    ],
)
def test_grpc_channel_arguments_are_tf_servings_key_value_list(text: str, expected: tuple[object, ...]) -> None:
    assert parse_grpc_channel_arguments(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=5", "a=1,oops"])
def test_a_grpc_channel_argument_without_key_and_value_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--grpc_channel_arguments"):
        parse_grpc_channel_arguments(text)
