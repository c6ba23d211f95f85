"""The entry and unified children serve the TF Serving REST API on their HTTP port (PORT4), as Monolith's agent
starts tensorflow_model_server with ``--rest_api_port``, and their metrics at /metrics on the same port."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from monolith_serving.agent.config import (
    CHILD_METRICS_PATH,
    ServerKind,
    ServerLaunchSpec,
    unused_conf_keys,
    v1_plan,
    v3_server_spec,
)
from monolith_serving.agent.model_config_writer import write_child_files
from monolith_serving.core.agent_conf import AgentConfig, ConfError, load_agent_config, resolve_environment
from monolith_serving.core.cli_flags import add_common_flags
from monolith_serving.core.rest_flags import rest_config_from_args

ZK = "zk_servers 127.0.0.1:2181\nbzid b\nbase_name m\nbase_path /exp\n"
MIXED = ZK + "stand_alone_serving true\nnum_ps 2\n"
UNIFIED = "zk_servers 127.0.0.1:2181\nbzid b\ndeploy_type unified\nlayout_pattern l\n"
PORTS = {"PORT2": "7002", "PORT3": "7003", "PORT4": "7004", "PORT5": "7005", "PORT6": "7006"}


def resolved(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> AgentConfig:
    path = tmp_path / "agent.conf"
    path.write_text(text)
    return resolve_environment(load_agent_config(path), PORTS if env is None else env)


def flags(spec: ServerLaunchSpec, prefix: str) -> list[str]:
    return [arg for arg in spec.argv() if arg.startswith(prefix)]


def child_args(spec: ServerLaunchSpec) -> argparse.Namespace:
    """The argv parsed by the child's own parser (every flag passed must exist there)."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_common_flags(parser)
    importlib.import_module(f"monolith_serving.{spec.kind.value}.main").configure(parser)
    return parser.parse_args(spec.argv()[4:])


def served_rest(spec: ServerLaunchSpec) -> tuple[int, str | None, float]:
    """(port, metrics path, timeout s) of the REST API the child builds from its argv, files written first."""
    write_child_files(spec.files)
    rest = rest_config_from_args(
        child_args(spec), host="127.0.0.1", server_name=spec.name, drain_timeout_s=1.0, other_ports={}
    )
    assert rest is not None
    return rest.port, rest.prometheus_path, rest.timeout_s


def test_mixed_entry_serves_rest_and_metrics_on_port4_and_the_ps_metrics_on_port6(tmp_path: Path) -> None:
    ps, entry = v1_plan(resolved(tmp_path, MIXED), work_dir=tmp_path / "work").servers
    assert flags(entry, "--rest_api_port") == ["--rest_api_port=7004"]
    assert flags(entry, "--metrics_port") == []  # the REST port carries them: one port, two flags would be exit 2
    (file,) = entry.files
    assert file.path == tmp_path / "work" / "entry_monitoring_config.pbtxt"
    assert flags(entry, "--monitoring_config_file") == [f"--monitoring_config_file={file.path}"]
    assert served_rest(entry) == (7004, CHILD_METRICS_PATH, 30.0)
    # The PS serves no REST API: its metrics stay on its own HTTP port.
    assert flags(ps, "--metrics_port") == ["--metrics_port=7006"] and flags(ps, "--rest_api_port") == []
    assert ps.files == ()


def test_entry_agent_and_unified_container_alike(tmp_path: Path) -> None:
    (entry,) = v1_plan(resolved(tmp_path, ZK + "deploy_type entry\n"), work_dir=tmp_path).servers
    assert entry.kind is ServerKind.ENTRY
    assert served_rest(entry) == (7004, "/metrics", 30.0)
    unified = v3_server_spec(resolved(tmp_path, UNIFIED), work_dir=tmp_path)
    assert [f.path.name for f in unified.files] == ["unified_monitoring_config.pbtxt"]
    assert flags(unified, "--metrics_port") == []
    assert served_rest(unified) == (7004, "/metrics", 30.0)


def test_without_an_http_port_there_is_neither_rest_api_nor_metrics(tmp_path: Path) -> None:
    env = {"PORT2": "7002", "PORT3": "7003", "PORT5": "7005"}
    _, entry = v1_plan(resolved(tmp_path, MIXED, env), work_dir=tmp_path).servers
    unified = v3_server_spec(resolved(tmp_path, UNIFIED, env), work_dir=tmp_path)
    for spec in (entry, unified):
        assert flags(spec, "--rest_api_port") == flags(spec, "--monitoring_config_file") == []
        assert flags(spec, "--metrics_port") == [] and spec.files == ()
        assert (
            rest_config_from_args(child_args(spec), host="h", server_name="s", drain_timeout_s=1.0, other_ports={})
            is None
        )


def test_conf_rest_api_timeout_reaches_the_rest_children_only(tmp_path: Path) -> None:
    ps, entry = v1_plan(resolved(tmp_path, MIXED + "rest_api_timeout_in_ms 5 * 1000\n"), work_dir=tmp_path).servers
    assert flags(entry, "--rest_api_timeout_in_ms") == ["--rest_api_timeout_in_ms=5000"]
    assert served_rest(entry)[2] == 5.0
    assert flags(ps, "--rest_api_timeout_in_ms") == []
    unified = v3_server_spec(resolved(tmp_path, UNIFIED + "rest_api_timeout_in_ms 250\n"), work_dir=tmp_path)
    assert served_rest(unified)[2] == 0.25


@pytest.mark.parametrize(("value", "problem"), [("0", "must be > 0, got 0"), ("soon", "soon"), ("2.5", "2.5")])
def test_a_bad_rest_api_timeout_is_one_conf_error_naming_the_key(tmp_path: Path, value: str, problem: str) -> None:
    config = resolved(tmp_path, MIXED + f"rest_api_timeout_in_ms {value}\n")
    with pytest.raises(ConfError, match="rest_api_timeout_in_ms") as error:
        v1_plan(config, work_dir=tmp_path)
    assert problem in str(error.value) and "agent.conf:" in str(error.value)


def test_the_conf_monitoring_config_replaces_the_agents(tmp_path: Path) -> None:
    own = tmp_path / "monitoring.pbtxt"
    own.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    _, entry = v1_plan(resolved(tmp_path, MIXED + f"monitoring_config_file {own}\n"), work_dir=tmp_path).servers
    assert entry.files == ()
    assert flags(entry, "--monitoring_config_file") == [f"--monitoring_config_file={own}"]
    assert served_rest(entry)[1] == "/monitoring/prometheus/metrics"
    own.write_text("prometheus_config { enable: false }\n")  # the operator's choice: no metrics served
    _, entry = v1_plan(resolved(tmp_path, MIXED + f"monitoring_config_file {own}\n"), work_dir=tmp_path).servers
    assert served_rest(entry)[1] is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "cannot"),  # no such file
        ("prometheus_config { enabled: true }", "not a text-format tensorflow.serving.MonitoringConfig"),
        ('prometheus_config { enable: true path: "/v1/metrics" }', "REST API"),
    ],
)
def test_a_bad_monitoring_config_is_one_conf_error_naming_the_key(
    tmp_path: Path, text: str | None, problem: str
) -> None:
    own = tmp_path / "monitoring.pbtxt"
    if text is not None:
        own.write_text(text)
    config = resolved(tmp_path, MIXED + f"monitoring_config_file {own}\n")
    with pytest.raises(ConfError, match="monitoring_config_file") as error:
        v1_plan(config, work_dir=tmp_path)
    assert problem in str(error.value)


def test_rest_keys_are_not_named_unused(tmp_path: Path) -> None:
    own = tmp_path / "monitoring.pbtxt"
    own.write_text("prometheus_config { enable: true }\n")
    config = resolved(
        tmp_path, MIXED + f"monitoring_config_file {own}\nrest_api_timeout_in_ms 100\nrest_api_num_threads 4\n"
    )
    assert unused_conf_keys(config) == ("rest_api_num_threads",)


def test_child_files_are_rewritten_whole(tmp_path: Path) -> None:
    _, entry = v1_plan(resolved(tmp_path, MIXED), work_dir=tmp_path / "w").servers
    (file,) = entry.files
    file.path.parent.mkdir()
    file.path.write_text("stale text from an earlier agent, longer than the config the agent writes now\n" * 3)
    write_child_files(entry.files)
    assert file.path.read_text() == file.text
    assert [p.name for p in file.path.parent.iterdir()] == [file.path.name]  # no temp file left
