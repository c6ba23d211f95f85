"""absl's command-line syntax on the servers that stand in for tensorflow_model_server (core.absl_argv): flagfiles,
single-dash flags, ``--noflag`` and bare booleans, ``--version``; parsed with the real parsers as ``monolith-serving
<command>`` builds them (cli.command_parser). Anything the rewriting cannot take is a usage error (exit 2) naming
the flag or the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from monolith_serving.cli import COMMANDS, command_parser, main
from monolith_serving.core.absl_argv import AbslArgvError, OptionIndex, expand_argv, parse_absl_args
from monolith_serving.core.cli_flags import add_bool_flag, add_flag, distribution_version, unused_tfs_flags

TFS_STAND_INS = ("entry", "ps", "dense", "unified", "proxy")


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    return parse_absl_args(command_parser(next(c for c in COMMANDS if c.name == command)), argv)


def usage_error(command: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message of the usage error ``argv`` is (exit 2 asserted)."""
    with pytest.raises(SystemExit) as exit_info:
        parse(command, argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def flagfile(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def small_parser() -> argparse.ArgumentParser:
    """A parser with what the servers' parsers lack: a short option and a number that may be negative."""
    parser = argparse.ArgumentParser(prog="small")
    add_flag(parser, "--delta", type=int, default=0)
    add_flag(parser, "--name", default="")
    parser.add_argument("-n", "--count", type=int, default=1)
    add_bool_flag(parser, "--fast", default=False, help="x")
    return parser


# -- single dash -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["-port=8600"], ["-port", "8600"], ["--port=8600"], ["--port", "8600"]])
def test_a_long_flag_takes_one_dash_or_two(argv: list[str]) -> None:
    args = parse("ps", [*argv, "-model_config_file=/c", "-num_load_threads", "3"])
    assert (args.port, args.model_config_file, args.num_load_threads) == (8600, "/c", 3)


def test_one_dash_works_for_the_dashed_spelling_and_the_tf_serving_flags() -> None:
    args = parse("ps", ["-metrics-port=9100", "-rest_api_port=8501", "-enable_batching"])
    assert args.metrics_port == 9100
    assert unused_tfs_flags(args) == ("--rest_api_port", "--enable_batching")


def test_an_unknown_single_dash_flag_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unrecognized arguments: -no_such_flag=1" in usage_error("entry", ["-no_such_flag=1"], capsys)


def test_an_unknown_double_dash_flag_is_still_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--use_alts_credentials=true"]
    assert "unrecognized arguments: --use_alts_credentials=true" in usage_error("entry", argv, capsys)


@pytest.mark.parametrize(
    ("argv", "delta"),
    [(["--delta", "-1"], -1), (["-delta", "-7"], -7), (["--delta=-2"], -2), (["-delta=-3"], -3)],
)
def test_a_negative_number_given_as_a_value_is_kept(argv: list[str], delta: int) -> None:
    assert parse_absl_args(small_parser(), argv).delta == delta


def test_short_options_keep_working() -> None:
    args = parse_absl_args(small_parser(), ["-n", "4"])
    assert args.count == 4
    assert parse_absl_args(small_parser(), ["-count=5"]).count == 5


def test_a_value_that_starts_with_a_dash_is_taken_as_absl_takes_it() -> None:
    assert parse_absl_args(small_parser(), ["--name", "-odd"]).name == "-odd"


def test_a_value_missing_before_another_flag_is_still_reported(capsys: pytest.CaptureFixture[str]) -> None:
    # absl would take "--port=1" as --model_name's value; we leave the mistake to argparse, which names it.
    error = usage_error("entry", ["--model_name", "--port=1"], capsys)
    assert "argument --model_name" in error and "expected one argument" in error


# -- booleans ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        ([], True),
        (["--{flag}"], True),
        (["--no{flag}"], False),
        (["-no{flag}"], False),
        (["--{flag}=false"], False),
        (["--{flag}=No"], False),
        (["--{flag}=0"], False),
        (["--{flag}=f"], False),
        (["--{flag}", "n"], False),
        (["--no{flag}", "--{flag}=YES"], True),
        (["--{flag}=1", "--no{flag}"], False),
        (["--{dashed}=t"], True),
    ],
)
@pytest.mark.parametrize(
    ("command", "flag"),
    [("entry", "coalesce_requests"), ("unified", "coalesce_ps_lookups"), ("proxy", "coalesce_predicts")],
)
def test_a_boolean_takes_absls_forms(command: str, flag: str, argv: list[str], value: bool) -> None:
    args = parse(command, [arg.format(flag=flag, dashed=flag.replace("_", "-")) for arg in argv])
    assert getattr(args, flag) is value


def test_a_tf_serving_boolean_takes_absls_forms_too() -> None:
    assert unused_tfs_flags(parse("dense", ["--noenable_batching", "--xla_cpu_compilation_enabled=y"])) == (
        "--enable_batching",
        "--xla_cpu_compilation_enabled",
    )
    assert parse("dense", ["--noenable_batching"]).unused_tfs__enable_batching is False
    assert parse("dense", ["-enable_batching"]).unused_tfs__enable_batching is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--coalesce_requests=maybe"], "argument --coalesce_requests"),
        (["--coalesce_requests="], "argument --coalesce_requests"),
        (["--nocoalesce_requests=true"], "the negative form --nocoalesce_requests takes no value"),
        (["--noport"], "unrecognized arguments: --noport"),  # not a boolean: no negative form
        (["--enable_batching=maybe"], "argument --enable_batching"),
    ],
)
def test_a_bad_boolean_is_a_usage_error_naming_it(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in usage_error("entry", argv, capsys)


# -- flagfiles ---------------------------------------------------------------------------------------------------


def test_a_flagfile_takes_one_flag_per_line_and_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = flagfile(
        tmp_path / "ps.flags",
        "# tensorflow_model_server flags",
        "",
        "   --port=8600",
        "\t-num_load_threads=3",
        "  # an indented comment",
        "--noenable_batching",
        "--model_config_file=/models/ps_0.config   ",
    )
    args = parse("ps", [f"--flagfile={path}"])
    assert (args.port, args.num_load_threads, args.model_config_file) == (8600, 3, "/models/ps_0.config")
    assert args.unused_tfs__enable_batching is False


@pytest.mark.parametrize("spelling", ["--flagfile={}", "-flagfile={}", "--flagfile {}", "-flagfile {}"])
def test_flagfile_takes_every_spelling(tmp_path: Path, spelling: str) -> None:
    path = flagfile(tmp_path / "f", "--port=8601")
    assert parse("entry", spelling.format(path).split(" ")).port == 8601


def test_flags_on_the_command_line_and_in_files_are_taken_in_order(tmp_path: Path) -> None:
    path = flagfile(tmp_path / "f", "--port=2", "--ps_targets=b:1", "--nocoalesce_requests")
    args = parse("entry", ["--port", "1", "--ps_targets", "a:1", f"--flagfile={path}", "--ps_targets=c:1"])
    assert args.port == 2  # the file's, given later
    assert args.ps_targets == ["a:1", "b:1", "c:1"]
    assert args.coalesce_requests is False
    args = parse("entry", [f"--flagfile={path}", "--port=3", "--coalesce_requests"])
    assert (args.port, args.coalesce_requests) == (3, True)  # the command line's, given later


def test_a_flagfile_may_name_others_which_are_read_in_its_place(tmp_path: Path) -> None:
    inner = flagfile(tmp_path / "inner", "--port=2", "--metrics_port=9102")
    second = flagfile(tmp_path / "second", "--blas_threads=2")
    outer = flagfile(tmp_path / "outer", "--port=1", f"--flagfile={inner}", "--metrics_port=9101")
    args = parse("proxy", [f"--flagfile={outer},{second}"])
    assert (args.port, args.metrics_port, args.blas_threads) == (2, 9101, 2)


def test_a_relative_flagfile_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    flagfile(tmp_path / "conf" / "inner", "--port=7")
    flagfile(tmp_path / "conf" / "outer", "--flagfile=conf/inner")  # as absl: not relative to outer's folder
    monkeypatch.chdir(tmp_path)
    assert parse("dense", ["--flagfile=conf/outer"]).port == 7


def test_a_flagfile_cycle_is_refused_naming_the_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flagfile(tmp_path / "a", "--port=1", f"--flagfile={tmp_path / 'b'}")
    flagfile(tmp_path / "b", f"--flagfile={tmp_path / 'a'}")
    error = usage_error("ps", [f"--flagfile={tmp_path / 'a'}"], capsys)
    assert f"flagfile cycle: {tmp_path / 'a'} -> {tmp_path / 'b'} -> {tmp_path / 'a'}" in error
    assert f"flagfile '{tmp_path / 'b'}' line 1" in error


def test_a_flagfile_named_twice_without_a_cycle_is_read_twice(tmp_path: Path) -> None:
    path = flagfile(tmp_path / "targets", "--ps_targets=a:1")
    assert parse("entry", [f"--flagfile={path},{path}"]).ps_targets == ["a:1", "a:1"]


def test_a_missing_flagfile_is_a_usage_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.flags"
    error = usage_error("entry", ["--port=1", "--flagfile", str(missing)], capsys)
    assert f"cannot read flagfile '{missing}': No such file or directory" in error


def test_an_unreadable_flagfile_is_a_usage_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = usage_error("unified", [f"--flagfile={tmp_path}"], capsys)  # a folder
    assert f"cannot read flagfile '{tmp_path}'" in error


def test_a_missing_flagfile_named_by_a_flagfile_is_reported_where_it_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outer = flagfile(tmp_path / "outer", "# x", "--flagfile=/no/such/file")
    error = usage_error("entry", [f"--flagfile={outer}"], capsys)
    assert f"flagfile '{outer}' line 2: cannot read flagfile '/no/such/file'" in error


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("// a C++ comment", "not a flag: '// a C++ comment'"),  # absl skips # lines only
        ("8500", "not a flag: '8500'"),
        ("--", "not a flag: '--'"),
        ("--port 8500", "write one flag per line as --name=value"),
        ("--port", "--port needs a value on its line"),
        ("--flagfile", "--flagfile needs a file name"),
        ("--flagfile=a,,b", "an empty file name"),
    ],
)
def test_a_malformed_flagfile_line_is_a_usage_error_naming_file_and_line(
    tmp_path: Path, line: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = flagfile(tmp_path / "f", "# ok", "--metrics_port=1", line, "--grace_s=1")
    error = usage_error("entry", [f"--flagfile={path}"], capsys)
    assert f"flagfile '{path}' line 3: " in error and message in error


def test_an_unknown_flag_in_a_flagfile_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = flagfile(tmp_path / "f", "--port=1", "-use_alts_credentials")
    assert "unrecognized arguments: -use_alts_credentials" in usage_error("ps", [f"--flagfile={path}"], capsys)


def test_an_empty_flagfile_value_names_no_file() -> None:
    assert parse("ps", ["--flagfile=", "--port=5"]).port == 5


def test_expand_argv_rewrites_into_argparse_syntax(tmp_path: Path) -> None:
    path = flagfile(tmp_path / "f", "-fast", "--delta=-4")
    options = OptionIndex.from_parser(small_parser())
    argv = ["-delta", "-1", "--nofast", f"-flagfile={path}", "-n", "2", "positional", "--", "-delta"]
    assert expand_argv(argv, options) == [
        "--delta=-1",
        "--fast=false",
        "--fast",
        "--delta=-4",
        "-n",
        "2",
        "positional",
        "--",
        "-delta",  # after --, nothing is rewritten
    ]
    with pytest.raises(AbslArgvError, match="command line: --flagfile needs a file name"):
        expand_argv(["--flagfile"], options)


# -- which commands ----------------------------------------------------------------------------------------------


def test_the_tensorflow_model_server_stand_ins_are_the_model_servers_and_the_proxy() -> None:
    assert {c.name for c in COMMANDS if c.tfs_command_line} == set(TFS_STAND_INS)


@pytest.mark.parametrize("command", TFS_STAND_INS)
def test_version_prints_the_distribution_version_and_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "-version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"monolith-serving {command} {distribution_version()}\n"


def test_the_distribution_version_comes_from_the_package_metadata() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert f'\nversion = "{distribution_version()}"\n' in pyproject
