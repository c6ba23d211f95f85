"""agent.conf -> child launch specs, registry replicas, v3 identity, and the written model configs."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest

from monolith_serving.agent.advertised_hosts import IPV4_PLACEHOLDER, AdvertisedHosts, resolve_advertised_hosts
from monolith_serving.agent.config import (
    ServerKind,
    assign_free_ports,
    container_identity,
    layout_watch_path,
    local_replicas,
    model_version_policy,
    v1_plan,
    v3_server_spec,
)
from monolith_serving.agent.model_config_writer import write_model_config
from monolith_serving.core.agent_conf import AgentConfig, ConfError, load_agent_config, resolve_environment
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy, read_model_server_config
from monolith_serving.core.zk_paths import binding_name, container_service_name
from monolith_serving.discovery import ReplicaMeta
from monolith_serving.discovery.addresses import choose_address


def resolved(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> AgentConfig:
    path = tmp_path / "agent.conf"
    path.write_text(text)
    return resolve_environment(load_agent_config(path), env or {})


ZK = "zk_servers 127.0.0.1:2181\nbzid b\nbase_name m\nbase_path /exp\n"


def test_ps_agent_hosts_its_shard_tasks_on_one_process(tmp_path: Path) -> None:
    env = {"PORT2": "7002", "PORT3": "7003", "SHARD_ID": "1", "MONOLITH_HOST_SHARD_N": "3"}
    config = resolved(tmp_path, ZK + "deploy_type ps\nnum_ps 7\n", env)
    plan = v1_plan(config, work_dir=tmp_path)
    (ps,) = plan.servers
    assert ps.kind is ServerKind.PS and ps.grpc_port == 7003
    assert [m.name for m in ps.models] == ["ps_1", "ps_4"]
    assert [m.base_path for m in ps.models] == ["/exp/ps_1", "/exp/ps_4"]
    assert [(r.server_type.value, r.task) for r in ps.replicas] == [("ps", 1), ("ps", 4)]
    argv = ps.argv()
    assert argv[1:4] == ["-m", "monolith_serving", "ps"]
    assert "--port=7003" in argv and "--num_ps=7" in argv
    assert f"--model_config_file={tmp_path / 'ps_model_config.pbtxt'}" in argv
    assert not plan.entry_waits_for_ps


def test_mixed_agent_starts_ps_before_entry_and_entry_asks_this_agent(tmp_path: Path) -> None:
    env = {"PORT2": "7002", "PORT3": "7003", "PORT5": "7005"}
    config = resolved(tmp_path, ZK + "stand_alone_serving true\nnum_ps 2\nfetch_ps_retry 4\n", env)
    plan = v1_plan(config, work_dir=tmp_path)
    assert [s.kind for s in plan.servers] == [ServerKind.PS, ServerKind.ENTRY]
    ps, entry = plan.servers
    assert ps.grpc_port == 7005 and entry.grpc_port == 7003
    assert [m.name for m in ps.models] == ["ps_0", "ps_1"]
    assert [m.name for m in entry.models] == ["entry"]
    assert "--agent_address=127.0.0.1:7002" in entry.argv()
    assert "--fetch_ps_retry=4" in entry.argv()
    assert plan.entry_waits_for_ps


def test_children_serve_metrics_on_their_http_ports(tmp_path: Path) -> None:
    """The entry's are on its REST port (test_agent_child_rest_api.py)."""
    env = {"PORT2": "7002", "PORT3": "7003", "PORT4": "7004", "PORT5": "7005", "PORT6": "7006"}
    ps, entry = v1_plan(resolved(tmp_path, ZK + "stand_alone_serving true\nnum_ps 2\n", env), work_dir=tmp_path).servers
    assert "--metrics_port=7006" in ps.argv()
    assert "--rest_api_port=7004" in entry.argv()
    (alone,) = v1_plan(resolved(tmp_path, ZK + "deploy_type ps\n", env), work_dir=tmp_path).servers
    assert "--metrics_port=7004" in alone.argv()
    without = v1_plan(resolved(tmp_path, ZK + "deploy_type ps\n", {"PORT2": "1", "PORT3": "2"}), work_dir=tmp_path)
    assert not any(flag.startswith("--metrics_port") for flag in without.servers[0].argv())


def test_entry_replica_paths_and_addresses(tmp_path: Path) -> None:
    env = {"PORT2": "1", "PORT3": "8500", "REPLICA_ID": "42", "MY_HOST_IPV6": "::1", "PORT": "9000"}
    config = resolved(tmp_path, ZK + "deploy_type entry\n", env)
    (entry,) = v1_plan(config, work_dir=tmp_path).servers
    hosts = resolve_advertised_hosts(config.host_ip, config.host_ipv6, ipv4_of=lambda name: "10.0.0.5")
    (replica,) = local_replicas(config, entry, host=hosts.ipv4, host_ipv6=hosts.ipv6)
    assert replica.path.path == "/b/service/m/entry:0/00000000042"
    assert replica.address == "10.0.0.5:8500"
    assert replica.address_ipv6 == "[::1]:8500"
    assert replica.archon_address == "10.0.0.5:9000"
    assert replica.archon_address_ipv6 == "[::1]:9000"
    assert replica.model_name == "entry"


def _unresolvable(name: str) -> str:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_advertised_hosts_fall_back_as_monoliths_registration_does() -> None:
    # MY_HOST_IP / MY_HOST_IPV6 win; else the host name's addresses.
    assert resolve_advertised_hosts("10.1.1.1", "fd00::1", ipv4_of=_unresolvable, ipv6_of=_unresolvable) == (
        AdvertisedHosts("10.1.1.1", "fd00::1")
    )
    assert resolve_advertised_hosts(None, None, ipv4_of=lambda n: "10.0.0.7", ipv6_of=lambda n: "fd00::7") == (
        AdvertisedHosts("10.0.0.7", "fd00::7")
    )
    # An IPv6-only host: the placeholder readers skip (it was 127.0.0.1, which sent every reader to itself), and the
    # IPv6 address they dial instead.
    ipv6_only = resolve_advertised_hosts(None, None, ipv4_of=_unresolvable, ipv6_of=lambda n: "fd00::9")
    assert ipv6_only == AdvertisedHosts(IPV4_PLACEHOLDER, "fd00::9")
    registered = ReplicaMeta(address=f"{ipv6_only.ipv4}:8500", address_ipv6=f"[{ipv6_only.ipv6}]:8500", stat=30)
    assert choose_address(registered.address, registered.address_ipv6) == "[fd00::9]:8500"
    # Where a format has one address (v3 container_service, GetResource): the IPv6 one there, never 0.0.0.0.
    assert ipv6_only.dial_host() == "[fd00::9]"
    assert AdvertisedHosts("10.0.0.7", "fd00::7").dial_host() == "10.0.0.7"
    # An IPv4-only host writes no IPv6 address.
    assert resolve_advertised_hosts(None, None, ipv4_of=lambda n: "10.0.0.7", ipv6_of=_unresolvable).ipv6 is None


def test_mixed_pod_registers_monolith_archon_ports_per_child(tmp_path: Path) -> None:
    """Monolith's mixed pod: entry archon PORT, PS archon PORT7, dense archon PORT10 (utils.py AgentConfig)."""
    env = {"PORT": "9000", "PORT2": "1", "PORT3": "8500", "PORT5": "8501", "PORT7": "9007", "PORT8": "8502"}
    env["PORT10"] = "9010"
    config = resolved(tmp_path, ZK + "stand_alone_serving true\ndense_alone true\nnum_ps 2\n", env)
    archon = {
        r.path.server_type.value: r.archon_address
        for spec in v1_plan(config, work_dir=tmp_path).servers
        for r in local_replicas(config, spec, host="10.0.0.5")
    }
    assert archon == {"entry": "10.0.0.5:9000", "ps": "10.0.0.5:9007", "dense": "10.0.0.5:9010"}


@pytest.mark.parametrize(
    "text", [ZK + "deploy_type ps\n", ZK + "deploy_type entry\n", ZK + "stand_alone_serving true\ndense_alone true\n"]
)
def test_an_archon_address_is_written_also_without_archon_ports(tmp_path: Path, text: str) -> None:
    """Monolith always writes one (its readers take a null for an address); ours falls back to the gRPC port."""
    picks = iter(range(20000, 20100))
    config = assign_free_ports(resolved(tmp_path, text, {"MY_HOST_IPV6": "fd00::1"}), lambda: next(picks))
    for spec in v1_plan(config, work_dir=tmp_path).servers:
        for replica in local_replicas(config, spec, host="h", host_ipv6=config.host_ipv6):
            assert replica.archon_address == replica.address == f"h:{spec.grpc_port}"
            assert replica.archon_address_ipv6 == replica.address_ipv6 == f"[fd00::1]:{spec.grpc_port}"


def test_dc_aware_replica_paths(tmp_path: Path) -> None:
    env = {"PORT2": "1", "PORT3": "2", "TCE_INTERNAL_IDC": "LF", "TCE_CLUSTER": "Main"}
    config = resolved(tmp_path, ZK + "deploy_type ps\ndc_aware true\n", env)
    (ps,) = v1_plan(config, work_dir=tmp_path).servers
    (replica,) = local_replicas(config, ps, host="h")
    # No REPLICA_ID or MY_POD_NAME: the leaf is Monolith's "no id", -1 (it was 0 before).
    assert replica.path.path == "/b/service/m/lf:main/ps:0/-1"
    (explicit,) = local_replicas(config, ps, host="h", replica_id=12)
    assert explicit.path.path == "/b/service/m/lf:main/ps:0/12"


def test_unset_ports_are_filled_only_when_missing(tmp_path: Path) -> None:
    picks = iter([11, 12, 13])
    config = assign_free_ports(
        resolved(tmp_path, ZK + "stand_alone_serving true\n", {"PORT3": "500"}), lambda: next(picks)
    )
    assert config.tfs_grpc_port == 500
    assert config.tfs_ps_ports is not None
    assert sorted([config.agent_port, config.tfs_ps_ports.grpc]) == [11, 12]  # 13 never picked


def test_dense_without_dense_alone_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = resolved(tmp_path, ZK + "deploy_type dense\ndense_alone true\n", {"PORT2": "1", "PORT3": "2"})
    # load_agent_config refuses this combination already; the plan refuses it too for configs built in code.
    with pytest.raises(ConfError, match="'deploy_type'.*dense_alone"):
        v1_plan(dataclasses.replace(config, dense_alone=False), work_dir=tmp_path)


def test_version_policy_from_conf(tmp_path: Path) -> None:
    base = ZK + "deploy_type ps\n"
    assert model_version_policy(resolved(tmp_path, base)) == VersionPolicy(PolicyKind.LATEST, 1)
    config = resolved(tmp_path, base + "version_policy specific\nversion_data 17\n")
    assert model_version_policy(config) == VersionPolicy(PolicyKind.SPECIFIC, versions=(17,))
    config = resolved(tmp_path, base + "version_policy latest_once\nversion_data 2\n")
    assert model_version_policy(config) == VersionPolicy(PolicyKind.LATEST_ONCE, 2)


UNIFIED = "deploy_type unified\nzk_servers 127.0.0.1:2181\nbzid b\n"


def test_layout_pattern_name_or_path_with_shard_substitution(tmp_path: Path) -> None:
    env = {"SHARD_ID": "1", "MONOLITH_HOST_SHARD_N": "2"}
    assert (
        layout_watch_path(resolved(tmp_path, UNIFIED + "layout_pattern lay_${shard_id}\n", env)) == "/b/layouts/lay_1"
    )
    config = resolved(tmp_path, UNIFIED + "layout_pattern /b/layouts/of_${shard_num}/\n", env)
    assert layout_watch_path(config) == "/b/layouts/of_2"
    with pytest.raises(ConfError, match="layout_pattern"):
        layout_watch_path(resolved(tmp_path, UNIFIED + "layout_pattern a:b\n", env))


def test_container_identity(tmp_path: Path) -> None:
    env = {"PORT2": "7002", "PORT3": "7003", "TCE_CLUSTER": "C1", "SHARD_ID": "0"}
    config = resolved(tmp_path, UNIFIED + "layout_pattern l\n", env)
    ident = container_identity(config, host="10.1.1.1", layout="/b/layouts/l")
    assert (ident.ctx_cluster, ident.ctx_id) == ("unknown;None;c1", "10.1.1.1_7003")
    assert ident.info.grpc == "10.1.1.1:7003" and ident.info.agent == "10.1.1.1:7002"
    assert ident.info.archon == "10.1.1.1:7003"  # PORT unset: the gRPC port, never null
    assert (
        container_identity(
            resolved(tmp_path, UNIFIED + "layout_pattern l\n", {**env, "PORT": "7000"}), host="h", layout="/b/layouts/l"
        ).info.archon
        == "h:7000"
    )
    assert json.loads(ident.info.debug_info or "{}")["shard_id"] == 0
    named = container_identity(
        resolved(tmp_path, UNIFIED + "layout_pattern l\n", {**env, "MY_POD_NAME": "pod-7"}),
        host="h",
        layout="/b/layouts/l",
    )
    assert named.ctx_id == "pod-7"


def test_container_names_are_monolith_s(tmp_path: Path) -> None:
    """Monolith's AgentConfig.container_cluster "{TCE_PSM or 'unknown'};{idc};{cluster}" and container_id
    MY_POD_NAME: its agents and trainers split binding names with split(":")[:3], so ctx_id holds no ':'."""
    env = {
        "PORT2": "7002", "PORT3": "7003", "TCE_PSM": "data.ctr.serving", "TCE_INTERNAL_IDC": "LF",
        "TCE_LOGICAL_CLUSTER": "Canary", "TCE_CLUSTER": "default", "MY_POD_NAME": "ctr-uni-0",
    }  # fmt: skip
    config = resolved(tmp_path, UNIFIED + "layout_pattern l\n", env)
    ident = container_identity(config, host="10.1.1.1", layout="/b/layouts/l")
    assert (ident.ctx_cluster, ident.ctx_id) == ("data.ctr.serving;lf;canary", "ctr-uni-0")
    leaf = binding_name("ps_0", ident.ctx_cluster, ident.ctx_id)
    sub_graph, ctx_cluster, ctx_id = leaf.split(":")[:3]  # how Monolith's ZKBackend reads it
    assert (sub_graph, ctx_cluster, ctx_id) == ("ps_0", ident.ctx_cluster, ident.ctx_id)
    assert container_service_name(ctx_cluster, ctx_id) == "data.ctr.serving;lf;canary:ctr-uni-0"
    # Without a pod name: host and port, and no ':' even for an IPv6 host.
    ipv6 = container_identity(dataclasses.replace(config, pod_name=None), host="fd00::5", layout="/b/layouts/l")
    assert ipv6.ctx_id == "fd00__5_7003"
    assert len(binding_name("ps_0", ipv6.ctx_cluster, ipv6.ctx_id).split(":")) == 3
    spec = v3_server_spec(config, work_dir=tmp_path)
    assert spec.kind is ServerKind.UNIFIED and spec.models == () and spec.grpc_port == 7003
    assert spec.argv()[3] == "unified" and "--agent_address=127.0.0.1:7002" in spec.argv()


def test_written_model_config_reads_back(tmp_path: Path) -> None:
    config = resolved(
        tmp_path, ZK + "deploy_type ps\nnum_ps 2\nversion_policy latest_once\n", {"PORT2": "1", "PORT3": "2"}
    )
    (ps,) = v1_plan(config, work_dir=tmp_path / "w").servers
    write_model_config(ps.model_config_path, ps.models)
    parsed = read_model_server_config(ps.model_config_path)
    got = [
        (c.name, c.base_path, VersionPolicy.from_proto(c.model_version_policy)) for c in parsed.model_config_list.config
    ]
    assert got == [(m.name, m.base_path, m.policy) for m in ps.models]
    write_model_config(ps.model_config_path, ())
    assert list(read_model_server_config(ps.model_config_path).model_config_list.config) == []
    assert [p.name for p in ps.model_config_path.parent.iterdir()] == [ps.model_config_path.name]  # no temp left
