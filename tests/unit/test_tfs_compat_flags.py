"""Our model servers take the command lines Monolith's agent gives tensorflow_model_server: the flags they honour
reach their config, the others are accepted (values checked) and named in one warning; a bad value is a usage
error (exit 2) naming the flag. Parsed here as ``monolith-serving <command>`` parses them (cli.py)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import tfs_command_lines as monolith

from monolith_serving.core.cli_flags import (
    TFS_COMPAT_FLAGS,
    add_common_flags,
    add_tfs_compat_flags,
    unused_tfs_flags,
    warn_unused_tfs_flags,
)
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.dense import main as dense_main
from monolith_serving.entry import main as entry_main
from monolith_serving.ps import main as ps_main
from monolith_serving.unified import main as unified_main

AGENT_ENV = {"PORT2": "9123"}  # Monolith's agent runs its children with PORT2 (its own port) in the environment
V1_UNUSED = (
    "--rest_api_port",
    "--platform_config_file",
    "--archon_port",
    "--archon_rpc_psm",
    "--archon_rpc_cluster",
)
V1_UNUSED_TAIL = ("--metrics_namespace_prefix", "--log_conf")


def parser_of(module: ModuleType) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"monolith-serving {module.__name__}")
    add_common_flags(parser)
    module.configure(parser)
    return parser


def parse(module: ModuleType, argv: list[str]) -> argparse.Namespace:
    return parser_of(module).parse_args(argv)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("export")
    write_demo(DemoOptions(out=base, num_ps=2, rows=10, dense_alone=True))
    return base


def config_file(tmp_path: Path, name: str, base_path: Path) -> Path:
    path = tmp_path / f"{name}.config"
    path.write_text(monolith.model_config(name, base_path))
    return path


PLATFORM = Path("/opt/tiger/monolith_serving/conf/platform_config_file.cfg")  # named, never read


@pytest.mark.parametrize("all_settings", [False, True])
def test_the_ps_takes_monoliths_v1_command_line(export: Path, tmp_path: Path, all_settings: bool) -> None:
    config = config_file(tmp_path, "ps_0", export / "ps_0")
    argv = monolith.v1_ps(config, PLATFORM, 8500, 8501, 8502) + list(monolith.ALL_SETTINGS if all_settings else ())
    args = parse(ps_main, argv)
    ps = ps_main.config_from_args(args, AGENT_ENV)
    assert (ps.port, ps.model_config_file, ps.file_system_poll_wait_s) == (8500, config, 0.0)
    assert ps.num_load_threads == (4 if all_settings else 1)
    assert ps.grpc_channel_arguments == ((("grpc.max_connection_age_ms", 2000),) if all_settings else ())
    assert unused_tfs_flags(args) == (
        "--rest_api_port",
        "--platform_config_file",
        *(monolith.ALL_SETTINGS_UNUSED if all_settings else ()),
        "--archon_port",
        "--archon_rpc_psm",
        "--archon_rpc_cluster",
        *V1_UNUSED_TAIL,
    )


def test_the_ps_honours_the_model_config_file_poll(export: Path, tmp_path: Path) -> None:
    config = config_file(tmp_path, "ps_0", export / "ps_0")
    argv = [*monolith.v1_ps(config, PLATFORM, 8500, 8501, 8502), "--model_config_file_poll_wait_seconds=30"]
    args = parse(ps_main, argv)
    assert ps_main.config_from_args(args, {}).model_config_file_poll_wait_s == 30.0
    assert "--model_config_file_poll_wait_seconds" not in unused_tfs_flags(args)


def test_the_dense_server_and_the_entry_honour_the_model_config_file_poll(export: Path, tmp_path: Path) -> None:
    dense_config = config_file(tmp_path, "dense_0", tmp_path)
    args = parse(
        dense_main,
        [*monolith.v1_dense(dense_config, PLATFORM, 8500, 8501, 8502), "--model_config_file_poll_wait_seconds=30"],
    )
    assert dense_main.config_from_args(args, {}).model_config_file_poll_wait_s == 30.0
    assert "--model_config_file_poll_wait_seconds" not in unused_tfs_flags(args)

    entry_config = config_file(tmp_path, "entry", export / "entry")
    argv = [*monolith.v1_entry(entry_config, PLATFORM, 8500, 8501, 8502), "--model_config_file_poll_wait_seconds=30"]
    args = parse(entry_main, argv)
    server = entry_main.server_config_from_args(args, AGENT_ENV)
    assert (server.model_config_file, server.model_config_file_poll_wait_s) == (entry_config, 30.0)
    assert "--model_config_file_poll_wait_seconds" not in unused_tfs_flags(args)


@pytest.mark.parametrize("all_settings", [False, True])
def test_the_entry_takes_monoliths_v1_command_line(export: Path, tmp_path: Path, all_settings: bool) -> None:
    config = config_file(tmp_path, "entry", export / "entry")
    argv = monolith.v1_entry(config, PLATFORM, 8500, 8501, 8502)
    if all_settings:  # a v1 entry also gets file_system_poll_wait_seconds when agent.conf changes it from 1
        argv += [*monolith.ALL_SETTINGS, "--file_system_poll_wait_seconds=5"]
    args = parse(entry_main, argv)
    entry = entry_main.server_config_from_args(args, AGENT_ENV)
    assert entry.port == 8500 and entry.agent_address == "localhost:9123" and entry.num_ps == 2
    assert entry.model is not None and entry.model.fetch_ps_timeout_ms == monolith.FETCH_PS_TIMEOUT_MS
    assert entry.fetch_ps_retry == monolith.FETCH_PS_RETRY
    assert entry.poll_interval_s == (5.0 if all_settings else 1.0)
    assert entry.grpc_channel_arguments == ((("grpc.max_connection_age_ms", 2000),) if all_settings else ())
    assert entry.rest is not None and entry.rest.port == 8501  # TF Serving's REST API, as Monolith's agent asks
    all_unused = list(monolith.ALL_SETTINGS_UNUSED) if all_settings else []
    if all_settings:  # the entry has no use for num_load_threads
        all_unused.insert(all_unused.index("--num_unload_threads"), "--num_load_threads")
    assert unused_tfs_flags(args) == (
        "--platform_config_file",
        *all_unused,
        "--archon_port",
        "--archon_rpc_psm",
        "--archon_rpc_cluster",
        "--archon_entry_to_ps_long_conn_num",
        "--archon_entry_to_ps_long_conn_enable",
        "--archon_async_dispatcher_threads",
        *V1_UNUSED_TAIL,
    )


@pytest.mark.parametrize("all_settings", [False, True])
def test_the_dense_server_takes_monoliths_v1_command_line(export: Path, tmp_path: Path, all_settings: bool) -> None:
    config = config_file(tmp_path, "dense_0", export / "dense_0")
    argv = monolith.v1_dense(config, PLATFORM, 8500, 8501, 8502) + list(monolith.ALL_SETTINGS if all_settings else ())
    args = parse(dense_main, argv)
    dense = dense_main.config_from_args(args, AGENT_ENV)
    assert (dense.port, dense.model_config_file, dense.num_load_threads) == (8500, config, 4 if all_settings else 1)
    assert unused_tfs_flags(args) == (
        "--rest_api_port",
        "--platform_config_file",
        *(monolith.ALL_SETTINGS_UNUSED if all_settings else ("--enable_batching",)),
        "--archon_port",
        "--archon_rpc_psm",
        "--archon_rpc_cluster",
        "--archon_entry_to_ps_rpc_timeout",  # the dense server calls no PS
        "--archon_entry_to_ps_rpc_retry",
        "--archon_entry_to_ps_long_conn_num",
        "--archon_async_dispatcher_threads",
        *V1_UNUSED_TAIL,
    )


@pytest.mark.parametrize("all_settings", [False, True])
def test_the_unified_server_takes_monoliths_v3_command_line(tmp_path: Path, all_settings: bool) -> None:
    config = tmp_path / "empty.config"
    config.write_text("model_config_list {}\n")
    argv = monolith.v3_unified(config, PLATFORM, 8500, 8501, 8502) + list(monolith.ALL_SETTINGS if all_settings else ())
    args = parse(unified_main, argv)
    unified = unified_main.config_from_args(args, AGENT_ENV)
    assert (unified.port, unified.model_config_file, unified.agent_address) == (8500, config, "localhost:9123")
    assert unified.fetch_ps_timeout_ms == monolith.FETCH_PS_TIMEOUT_MS
    assert unified.num_load_threads == (4 if all_settings else 1)
    assert unified.model_config_file_poll_wait_s == 60.0  # how Monolith's v3 agent changes the models
    assert unified.rest is not None and unified.rest.port == 8501
    assert unused_tfs_flags(args) == (
        "--platform_config_file",
        *(monolith.ALL_SETTINGS_UNUSED if all_settings else ()),
        "--archon_port",
        "--archon_rpc_psm",
        "--archon_rpc_cluster",
        "--metrics_namespace_prefix",
        "--log_conf",
        "--conf_file",
    )


SERVERS = [ps_main, dense_main, entry_main, unified_main]


@pytest.mark.parametrize("module", SERVERS, ids=lambda m: m.__name__.split(".")[-2])
@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--enable_batching"], "--enable_batching"),  # TF Serving's bare bool
        (["--enable_batching=TRUE"], "--enable_batching"),
        (["--enable-batching", "0"], "--enable_batching"),
        (["--flush_filesystem_caches=1", "--flush_filesystem_caches=false"], "--flush_filesystem_caches"),
        (["--archon_rpc_psm="], "--archon_rpc_psm"),
        (["--load_retry_interval_micros=-1"], "--load_retry_interval_micros"),
        (["--platform-config-file", "/x/platform.cfg"], "--platform_config_file"),
        (["--tensorflow_session_config_file=/x/session.cfg"], "--tensorflow_session_config_file"),
        (["--rest_api_num_threads=8", "--rest_api_timeout_in_ms=30000"], "--rest_api_num_threads"),
    ],
)
def test_value_forms_of_unused_flags(module: ModuleType, argv: list[str], flag: str) -> None:
    assert flag in unused_tfs_flags(parse(module, argv))


@pytest.mark.parametrize("module", SERVERS, ids=lambda m: m.__name__.split(".")[-2])
@pytest.mark.parametrize(
    ("arg", "flag", "message"),
    [
        ("--enable_batching=maybe", "--enable_batching", "not a boolean"),
        ("--grpc_max_threads=many", "--grpc_max_threads", "not an integer"),
        ("--per_process_gpu_memory_fraction=half", "--per_process_gpu_memory_fraction", "not a number"),
        ("--archon_port=70000", "--archon_port", "not a port number"),
        ("--rest_api_port=-1", "--rest_api_port", "not a port number"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_flag(
    module: ModuleType, arg: str, flag: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(module, [arg])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and message in error


@pytest.mark.parametrize("module", [ps_main, dense_main], ids=["ps", "dense"])
def test_ps_and_dense_refuse_an_ssl_config_file_saying_why(
    module: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entries dial them in plaintext: serving TLS would cut them off, serving plaintext would ignore the flag."""
    with pytest.raises(SystemExit) as exit_info:
        parse(module, ["--ssl_config_file=/etc/tls.cfg"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "argument --ssl_config_file/--ssl-config-file: TLS is not supported by this server" in error
    assert "entries dial PS and dense servers in plaintext" in error and "'/etc/tls.cfg'" in error
    assert "--ssl_config_file must be empty" in parser_of(module).format_help()
    assert "--ssl_config_file" in unused_tfs_flags(parse(module, ["--ssl_config_file="]))  # no TLS asked for
    # Blank is not empty: TF Serving takes it as a file name (entry, unified and proxy refuse it too).
    with pytest.raises(SystemExit) as exit_info:
        parse(module, ["--ssl_config_file= "])
    assert exit_info.value.code == 2 and "TLS is not supported by this server" in capsys.readouterr().err


@pytest.mark.parametrize("module", [entry_main, unified_main], ids=["entry", "unified"])
def test_entry_and_unified_take_an_ssl_config_file_themselves(module: ModuleType) -> None:
    """Declared by the server (read when its config is made), so neither refused nor named as unused."""
    args = parse(module, ["--ssl-config-file=/etc/tls.cfg"])
    assert args.ssl_config_file == "/etc/tls.cfg" and "--ssl_config_file" not in unused_tfs_flags(args)
    assert parse(module, ["--ssl_config_file="]).ssl_config_file == ""  # no TLS asked for, as Monolith passes it
    assert "--ssl_config_file must be empty" not in parser_of(module).format_help()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--monitoring_config_file=/x/monitoring.cfg"], "--monitoring_config_file"),
        (["--rest_api_enable_cors_support"], "--rest_api_enable_cors_support"),
    ],
)
def test_the_rest_ports_monitoring_and_cors_flags_are_the_rest_apis_business(argv: list[str], flag: str) -> None:
    """The servers with a REST API declare them (core.rest_flags); PS and dense servers have none to apply them to."""
    for module in (ps_main, dense_main):
        assert flag in unused_tfs_flags(parse(module, argv)), module.__name__
    for module in (entry_main, unified_main):
        assert unused_tfs_flags(parse(module, argv)) == (), module.__name__


@pytest.mark.parametrize("module", [entry_main, unified_main], ids=["entry", "unified"])
def test_a_bad_fetch_ps_value_under_monoliths_name_is_a_usage_error(
    module: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(module, ["--archon_entry_to_ps_rpc_timeout=soon"])
    assert exit_info.value.code == 2
    assert "argument --fetch_ps_timeout_ms" in capsys.readouterr().err


def _ps_load_threads(args: argparse.Namespace) -> int:
    return ps_main.config_from_args(args, {}).num_load_threads


def _dense_load_threads(args: argparse.Namespace) -> int:
    return dense_main.config_from_args(args, {}).num_load_threads


def _unified_load_threads(args: argparse.Namespace) -> int:
    return unified_main.config_from_args(args, {}).num_load_threads


@pytest.mark.parametrize(
    ("module", "load_threads"),
    [(ps_main, _ps_load_threads), (dense_main, _dense_load_threads), (unified_main, _unified_load_threads)],
    ids=["ps", "dense", "unified"],
)
def test_tf_servings_zero_load_threads_loads_one_version_at_a_time(
    export: Path, tmp_path: Path, module: ModuleType, load_threads: Callable[[argparse.Namespace], int]
) -> None:
    sub_model = {ps_main: "ps_0", dense_main: "dense_0", unified_main: "ps_0"}[module]
    source = ["--model_config_file", str(config_file(tmp_path, sub_model, export / sub_model))]
    extra = ["--agent_address", "localhost:1"] if module is unified_main else []
    assert load_threads(parse(module, [*source, *extra, "--num_load_threads=0"])) == 1
    assert load_threads(parse(module, [*source, *extra, "--num_load_threads=3"])) == 3


@pytest.mark.parametrize("seconds", ["0", "-1", "nan"])
def test_an_entry_poll_period_of_zero_or_less_keeps_the_control_loop_at_its_default(
    export: Path, tmp_path: Path, seconds: str
) -> None:
    """TF Serving's "scan once" would make the entry's control loop (PS status too) spin at 0 s."""
    config = config_file(tmp_path, "entry", export / "entry")
    args = parse(entry_main, [f"--model_config_file={config}", f"--file_system_poll_wait_seconds={seconds}"])
    assert entry_main.server_config_from_args(args, AGENT_ENV).poll_interval_s == entry_main.DEFAULT_CONTROL_PERIOD_S
    args = parse(entry_main, [f"--model_config_file={config}", "--file_system_poll_wait_seconds=0.5"])
    assert entry_main.server_config_from_args(args, AGENT_ENV).poll_interval_s == 0.5


def test_one_warning_names_every_unused_flag_given(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.tfs_compat")
    with caplog.at_level(logging.WARNING, logger="test.tfs_compat"):
        warn_unused_tfs_flags(parse(ps_main, ["--model_name", "ps_0", "--model_base_path", "/x"]), "PS", log)
        assert caplog.records == []
        argv = ["--archon_port=1", "--enable_batching=true", "--enable_batching=true", "--num_load_threads=2"]
        warn_unused_tfs_flags(parse(ps_main, argv), "PS", log)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().endswith(": --enable_batching --archon_port")


def test_every_server_lists_the_unused_flags_in_its_help() -> None:
    for module in SERVERS:
        text = parser_of(module).format_help()
        assert "--platform_config_file" in text and "--archon_rpc_psm" in text


def test_a_server_may_honour_only_flags_of_the_table() -> None:
    with pytest.raises(ValueError, match="port_of_the_moon"):
        add_tfs_compat_flags(argparse.ArgumentParser(), honoured=("port_of_the_moon",))
    assert "ssl_config_file" in TFS_COMPAT_FLAGS and "version" not in TFS_COMPAT_FLAGS


def _socket_path_config(module: ModuleType, export: Path, tmp_path: Path, argv: list[str]) -> Path | None:
    """The ``grpc_socket_path`` of ``module``'s config made from ``argv`` (plus what it needs to host something)."""
    sub_model = {ps_main: "ps_0", dense_main: "dense_0", entry_main: "entry", unified_main: "ps_0"}[module]
    source = ["--model_config_file", str(config_file(tmp_path, sub_model, export / sub_model))]
    args = parse(module, [*source, *argv])
    if module is entry_main:
        path: Path | None = entry_main.server_config_from_args(args, AGENT_ENV).grpc_socket_path
        return path
    config = module.config_from_args(args, AGENT_ENV)
    return config.grpc_socket_path  # type: ignore[no-any-return]


@pytest.mark.parametrize("module", SERVERS, ids=lambda m: m.__name__.split(".")[-2])
def test_every_model_server_takes_a_grpc_socket_path(export: Path, tmp_path: Path, module: ModuleType) -> None:
    """tensorflow_model_server's --grpc_socket_path: honoured (the server also listens there), empty is unset."""
    path = tmp_path / "grpc.sock"
    assert _socket_path_config(module, export, tmp_path, [f"--grpc_socket_path={path}"]) == path
    assert _socket_path_config(module, export, tmp_path, ["--grpc-socket-path", str(path)]) == path
    assert _socket_path_config(module, export, tmp_path, ["--grpc_socket_path="]) is None
    assert _socket_path_config(module, export, tmp_path, []) is None
    assert "--grpc_socket_path" not in unused_tfs_flags(parse(module, [f"--grpc_socket_path={path}"]))
    with pytest.raises(InvalidArgumentError, match="--grpc_socket_path .*: the directory .* does not exist"):
        _socket_path_config(module, export, tmp_path, [f"--grpc_socket_path={tmp_path / 'no' / 'grpc.sock'}"])
