"""agent.conf keys our model servers have no use for: named in one start-up warning; the ones that map onto a
child's flag (num_load_threads, the poll periods) reach its command line instead. And update_model_status_interval,
which Monolith's agent does not let slow its ``stat`` updates."""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

import pytest

from monolith_serving.agent import main as agent_main
from monolith_serving.agent.config import (
    UNUSED_CONF_KEYS,
    ServerKind,
    ServerLaunchSpec,
    unused_conf_keys,
    v1_plan,
    v3_server_spec,
)
from monolith_serving.agent.v1_agent import stat_poll_interval
from monolith_serving.core.agent_conf import AgentConfig, ConfError, load_agent_config, resolve_environment
from monolith_serving.core.cli_flags import add_common_flags

ZK = "zk_servers 127.0.0.1:2181\nbzid b\nbase_name m\nbase_path /exp\n"
UNIFIED = "zk_servers 127.0.0.1:2181\nbzid b\ndeploy_type unified\nlayout_pattern l\n"
# Every port a mixed + dense_alone agent needs, so nothing is picked free.
PORTS = {"PORT2": "7002", "PORT3": "7003", "PORT4": "7004", "PORT5": "7005", "PORT8": "7008"}
CHILD_MODULES = {
    ServerKind.PS: "monolith_serving.ps.main",
    ServerKind.ENTRY: "monolith_serving.entry.main",
    ServerKind.DENSE: "monolith_serving.dense.main",
    ServerKind.UNIFIED: "monolith_serving.unified.main",
}
# A value other than the default for every key of UNUSED_CONF_KEYS.
UNUSED_VALUES = {
    "enable_batching": "true",
    "max_num_load_retries": "9",
    "load_retry_interval_micros": "-1",
    "num_unload_threads": "4",
    "enable_model_warmup": "false",
    "grpc_max_threads": "64",
    "fetch_ps_long_conn_num": "7",
    "fetch_ps_long_conn_enable": "false",
    "aio_thread_num": "3",
    "use_metrics": "false",
    "dense_service_num": "2",
}


def resolved(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> AgentConfig:
    path = tmp_path / "agent.conf"
    path.write_text(text)
    return resolve_environment(load_agent_config(path), PORTS if env is None else env)


def children(config: AgentConfig, work_dir: Path) -> tuple[ServerLaunchSpec, ...]:
    if config.agent_version == 3:
        return (v3_server_spec(config, work_dir=work_dir),)
    return v1_plan(config, work_dir=work_dir).servers


def flag(spec: ServerLaunchSpec, name: str) -> str | None:
    values = [arg.split("=", 1)[1] for arg in spec.argv() if arg.startswith(f"--{name}=")]
    assert len(values) <= 1, values
    return values[0] if values else None


def parse_child_argv(spec: ServerLaunchSpec) -> argparse.Namespace:
    """The child's own parser, as ``monolith-serving <kind>`` builds it: every flag the agent passes must exist."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_common_flags(parser)
    importlib.import_module(CHILD_MODULES[spec.kind]).configure(parser)
    assert spec.argv()[1:4] == ["-m", "monolith_serving", spec.kind.value]
    return parser.parse_args(spec.argv()[4:])


def test_unused_keys_set_in_the_conf_are_named_and_used_ones_are_not(tmp_path: Path) -> None:
    config = resolved(
        tmp_path,
        ZK + "deploy_type entry\n"
        "enable_batching true\n"
        "enable_model_warmup false\n"
        "load_retry_interval_micros 60 * 1000 * 1000\n"  # the default value, but set: still no effect
        "aio_thread_num none\n"  # none: left unset, so not named
        "batching_parameters_file /etc/tfs/batching.conf\n"
        "tensorflow_intra_op_parallelism 4\n"
        # used by some child
        "num_load_threads 2\n"
        "file_system_poll_wait_seconds 5\n"
        "file_system_poll_wait_seconds_ps 3\n"
        "fetch_ps_retry 3\n"
        "max_waiting_sec 60\n"
        "version_policy latest\n"
        "update_model_status_interval 2\n",
    )
    assert unused_conf_keys(config) == (
        "batching_parameters_file",
        "enable_batching",
        "enable_model_warmup",
        "load_retry_interval_micros",
        "tensorflow_intra_op_parallelism",
    )


def test_a_conf_without_unused_keys_names_none(tmp_path: Path) -> None:
    config = resolved(tmp_path, ZK + "server_type ps\nnum_load_threads 2\nfile_system_poll_wait_seconds_ps 1\n")
    assert unused_conf_keys(config) == ()
    assert unused_conf_keys(AgentConfig(deploy_type=config.deploy_type, enable_batching=True)) == ()  # no conf


def test_given_keys_are_the_keys_the_conf_gave_a_value(tmp_path: Path) -> None:
    config = resolved(
        tmp_path,
        ZK + "server_type ps\nlayout_filters none\nlayout_pattern none\nversion_data\n"
        "port 1\nplatform_config_file /p\n",
    )
    assert config.given_keys == {"zk_servers", "bzid", "base_name", "base_path", "deploy_type", "platform_config_file"}


@pytest.mark.parametrize(
    "text",
    [
        ZK + "deploy_type ps\nnum_ps 2\n",
        ZK + "deploy_type entry\n",
        ZK + "deploy_type dense\ndense_alone true\n",
        ZK + "stand_alone_serving true\nnum_ps 2\ndense_alone true\n",
        UNIFIED,
    ],
)
def test_unused_keys_change_no_command_line(tmp_path: Path, text: str) -> None:
    """What UNUSED_CONF_KEYS claims: whatever their values, every child's command line stays the same."""
    assert set(UNUSED_VALUES) == UNUSED_CONF_KEYS
    plain = children(resolved(tmp_path, text), tmp_path)
    extra = "".join(f"{key} {value}\n" for key, value in UNUSED_VALUES.items())
    extra += "batching_parameters_file /b\nmodel_config_file_poll_wait_seconds 5\n"
    config = resolved(tmp_path, text + extra)
    assert [s.argv() for s in children(config, tmp_path)] == [s.argv() for s in plain]
    assert unused_conf_keys(config) == tuple(
        sorted([*UNUSED_VALUES, "batching_parameters_file", "model_config_file_poll_wait_seconds"])
    )


@pytest.mark.parametrize(("value", "expected"), [(None, 1), (0, 1), (3, 3)])
def test_num_load_threads_reaches_ps_dense_and_unified(tmp_path: Path, value: int | None, expected: int) -> None:
    line = "" if value is None else f"num_load_threads {value}\n"
    mixed = resolved(tmp_path, ZK + "stand_alone_serving true\nnum_ps 2\ndense_alone true\n" + line)
    specs = {s.kind: s for s in children(mixed, tmp_path)}
    specs[ServerKind.UNIFIED] = children(resolved(tmp_path, UNIFIED + line), tmp_path)[0]
    for kind in (ServerKind.PS, ServerKind.DENSE, ServerKind.UNIFIED):
        assert flag(specs[kind], "num_load_threads") == str(expected), kind
        assert parse_child_argv(specs[kind]).num_load_threads == expected, kind
    assert flag(specs[ServerKind.ENTRY], "num_load_threads") is None  # the entry has no such flag
    parse_child_argv(specs[ServerKind.ENTRY])


@pytest.mark.parametrize(("value", "expected"), [(-1, 1), (0, 1), (1, 1), (5, 5)])
def test_poll_period_of_entry_dense_and_unified_is_at_least_one_second(
    tmp_path: Path, value: int, expected: int
) -> None:
    text = f"file_system_poll_wait_seconds {value}\nfile_system_poll_wait_seconds_ps {value}\n"
    mixed = resolved(tmp_path, ZK + "stand_alone_serving true\ndense_alone true\n" + text)
    specs = {s.kind: s for s in children(mixed, tmp_path)}
    specs[ServerKind.UNIFIED] = children(resolved(tmp_path, UNIFIED + text), tmp_path)[0]
    for kind in (ServerKind.ENTRY, ServerKind.DENSE, ServerKind.UNIFIED):
        assert parse_child_argv(specs[kind]).file_system_poll_wait_seconds == expected, kind
    # The PS gets file_system_poll_wait_seconds_ps as given (0 or less: scan at start and on reload only).
    assert parse_child_argv(specs[ServerKind.PS]).file_system_poll_wait_seconds == value


def run_prepare(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text(text)
    parser = argparse.ArgumentParser()
    agent_main.configure(parser)
    args = parser.parse_args(["--conf", str(conf), "--work_dir", str(tmp_path / "work")])
    agent_main.prepare(args, {**PORTS, **(env or {})})


@pytest.mark.parametrize(
    ("text", "env", "warned"),
    [
        (ZK + "deploy_type ps\n", {}, True),
        (ZK + "deploy_type dense\ndense_alone true\n", {}, True),
        (ZK + "deploy_type ps\n", {"REPLICA_ID": "3"}, False),
        (ZK + "deploy_type ps\n", {"MY_POD_NAME": "ps-7"}, False),
        # An entry takes a sequential node (a number of its own), and a mixed pod's PS nodes carry that number.
        (ZK + "deploy_type entry\n", {}, False),
        (ZK + "stand_alone_serving true\n", {}, False),
        ("bzid b\nbase_name m\nbase_path /exp\ndeploy_type ps\n", {}, False),  # static: no registry to share
    ],
    ids=["ps-no-id", "dense-no-id", "replica-id", "pod-name", "entry-sequential", "mixed-sequential", "static"],
)
def test_a_v1_agent_without_a_replica_id_warns_that_another_would_replace_its_nodes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, env: dict[str, str], warned: bool
) -> None:
    with caplog.at_level(logging.WARNING):
        run_prepare(tmp_path, text, env)
    messages = [r.getMessage() for r in caplog.records if r.name == agent_main.log.name]
    assert any("neither REPLICA_ID nor MY_POD_NAME" in m for m in messages) is warned, messages


def unused_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == agent_main.log.name and "no effect" in r.getMessage()]


@pytest.mark.parametrize("text", [ZK + "deploy_type ps\n", UNIFIED])
def test_the_agent_warns_once_at_start_naming_exactly_the_unused_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    with caplog.at_level(logging.WARNING):
        run_prepare(
            tmp_path,
            text + "grpc_max_threads 8\nmax_num_load_retries 2\nenable_model_warmup true\n"
            "flush_filesystem_caches true\nnum_load_threads 4\nfetch_ps_timeout_ms 300\nnum_unload_threads none\n",
        )
    (record,) = unused_warnings(caplog)
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert str(tmp_path / "agent.conf") in message
    named = message.rsplit(": ", 1)[1].split(", ")
    assert named == ["enable_model_warmup", "flush_filesystem_caches", "grpc_max_threads", "max_num_load_retries"]


def test_no_warning_when_every_key_set_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        run_prepare(tmp_path, ZK + "deploy_type entry\nnum_load_threads 2\nfile_system_poll_wait_seconds 0\n")
    assert unused_warnings(caplog) == []


def test_grpc_channel_arguments_reach_every_child_and_are_no_longer_called_unused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    value = "grpc.max_receive_message_length=67108864,grpc.primary_user_agent=x"
    line = f"grpc_channel_arguments {value}\n"
    mixed = resolved(tmp_path, ZK + "stand_alone_serving true\ndense_alone true\n" + line)
    unified = resolved(tmp_path, UNIFIED + line)
    specs = [*children(mixed, tmp_path), *children(unified, tmp_path)]
    assert {spec.kind for spec in specs} == set(CHILD_MODULES)
    for spec in specs:
        assert parse_child_argv(spec).grpc_channel_arguments == (
            ("grpc.max_receive_message_length", 67108864),
            ("grpc.primary_user_agent", "x"),
        ), spec.kind
    assert "grpc_channel_arguments" not in unused_conf_keys(mixed)


def test_a_bad_grpc_channel_arguments_value_is_refused_at_start_naming_the_key(tmp_path: Path) -> None:
    config = resolved(tmp_path, ZK + "deploy_type ps\ngrpc_channel_arguments novalue\n")
    with pytest.raises(ConfError, match="grpc_channel_arguments.*not key=value"):
        children(config, tmp_path)


@pytest.mark.parametrize(("interval", "expected_s"), [("10", 1.0), ("1", 1.0), ("0.3", 0.3)])
def test_the_v1_stat_poll_is_never_slower_than_monoliths_second(
    tmp_path: Path, interval: str, expected_s: float
) -> None:
    # Monolith's sample agent.conf sets 10: its own agent still rewrites stat every second.
    config = resolved(tmp_path, ZK + f"deploy_type ps\nupdate_model_status_interval {interval}\n")
    assert stat_poll_interval(config) == expected_s
