"""dense_alone in the v1 agent's plan: a dense child serving dense_0, registered as dense:0."""

from __future__ import annotations

from pathlib import Path

from monolith_serving.agent.config import ServerKind, assign_free_ports, local_replicas, v1_plan
from monolith_serving.agent.model_config_writer import write_model_config
from monolith_serving.core.agent_conf import AgentConfig, load_agent_config, resolve_environment
from monolith_serving.core.export_layout import read_model_server_config
from monolith_serving.core.zk_paths import ServerType

ZK = "zk_servers 127.0.0.1:2181\nbzid b\nbase_name m\nbase_path /exp\n"


def resolved(tmp_path: Path, text: str, env: dict[str, str]) -> AgentConfig:
    path = tmp_path / "agent.conf"
    path.write_text(text)
    return resolve_environment(load_agent_config(path), env)


def test_dense_agent_serves_dense_0_on_the_main_port(tmp_path: Path) -> None:
    env = {"PORT2": "7002", "PORT3": "7003", "PORT4": "7004", "REPLICA_ID": "5"}
    config = resolved(tmp_path, ZK + "deploy_type dense\ndense_alone true\n", env)
    plan = v1_plan(config, work_dir=tmp_path)
    (dense,) = plan.servers
    assert (dense.kind, dense.name, dense.grpc_port) == (ServerKind.DENSE, "dense", 7003)
    assert not plan.entry_waits_for_ps and not plan.entry_waits_for_dense
    assert dense.argv()[3] == "dense" and "--metrics_port=7004" in dense.argv()
    assert [(m.name, m.base_path) for m in dense.models] == [("dense_0", "/exp/dense_0")]
    (replica,) = local_replicas(config, dense, host="10.0.0.1")
    assert replica.path.server_type is ServerType.DENSE and replica.model_name == "dense_0"
    assert replica.path.path == "/b/service/m/dense:0/5"
    write_model_config(dense.model_config_path, dense.models)
    (model,) = read_model_server_config(dense.model_config_path).model_config_list.config
    assert (model.name, model.base_path) == ("dense_0", "/exp/dense_0")


def test_mixed_dense_alone_runs_ps_dense_entry_on_ports_5_8_3(tmp_path: Path) -> None:
    env = {"PORT2": "1", "PORT3": "3", "PORT5": "5", "PORT6": "6", "PORT8": "8", "PORT9": "9"}
    config = resolved(tmp_path, ZK + "stand_alone_serving true\ndense_alone true\nnum_ps 2\n", env)
    plan = v1_plan(config, work_dir=tmp_path)
    assert [(s.kind, s.grpc_port) for s in plan.servers] == [
        (ServerKind.PS, 5),
        (ServerKind.DENSE, 8),
        (ServerKind.ENTRY, 3),
    ]
    assert "--metrics_port=9" in plan.servers[1].argv()
    assert plan.entry_waits_for_ps and plan.entry_waits_for_dense


def test_entry_agent_with_dense_alone_waits_for_dense_and_plain_mixed_does_not(tmp_path: Path) -> None:
    env = {"PORT2": "1", "PORT3": "3"}
    entry = v1_plan(resolved(tmp_path, ZK + "deploy_type entry\ndense_alone true\n", env), work_dir=tmp_path)
    assert [s.kind for s in entry.servers] == [ServerKind.ENTRY] and entry.entry_waits_for_dense
    plain = v1_plan(resolved(tmp_path, ZK + "stand_alone_serving true\n", {**env, "PORT5": "5"}), work_dir=tmp_path)
    assert [s.kind for s in plain.servers] == [ServerKind.PS, ServerKind.ENTRY] and not plain.entry_waits_for_dense


def test_unset_dense_port_is_picked_in_mixed_dense_alone(tmp_path: Path) -> None:
    picks = iter([21, 22, 23, 24])
    config = assign_free_ports(
        resolved(tmp_path, ZK + "stand_alone_serving true\ndense_alone true\n", {"PORT3": "500"}), lambda: next(picks)
    )
    assert config.tfs_dense_ports is not None and config.tfs_ps_ports is not None
    assert sorted([config.agent_port, config.tfs_ps_ports.grpc, config.tfs_dense_ports.grpc]) == [21, 22, 23]
