"""v3 (unified) agents and the ctl CLI as real processes on real ZooKeeper."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from agent_procs import AgentProcess, children, wait_for
from entry_reference import assert_entry_predicts_reference
from kazoo.client import KazooClient
from procs import ServerProcess, free_port
from rest_calls import metric_value, rest_json
from zk_harness import ZooKeeperServer

from monolith_serving.client.inputs import predict_request
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2, agent_service_pb2_grpc
from monolith_serving.proto_gen.tensorflow_serving.apis import prediction_service_pb2_grpc

pytestmark = pytest.mark.integration

ROWS = 150
CLUSTER = "unknown;None;None"  # Monolith's ctx_cluster "{TCE_PSM};{idc};{cluster}" with none of them set


def ctl(zk_server: ZooKeeperServer, bzid: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "monolith_serving", "ctl", "--zk", zk_server.hosts, "--bzid", bzid, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_ctl_decl_pub_unpub_bzid_info_round_trip(zk_server: ZooKeeperServer, tmp_path: Path) -> None:
    export = tmp_path / "mdl"
    for sub_graph in ("entry", "ps_0", "ps_1"):
        (export / sub_graph / "1").mkdir(parents=True)
    declared = ctl(zk_server, "ctl1", "decl", "--export-base", str(export))
    assert declared.returncode == 0, declared.stderr
    assert json.loads(declared.stdout) == [f"/ctl1/saved_models/mdl/{s}" for s in ("entry", "ps_0", "ps_1")]
    again = ctl(zk_server, "ctl1", "decl", "--export-base", str(export))
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert ctl(zk_server, "ctl1", "decl", "--export-base", str(export), "--overwrite").returncode == 0
    published = ctl(zk_server, "ctl1", "pub", "--layout", "L", "--model", "mdl:ps_*")
    assert published.returncode == 0 and json.loads(published.stdout) == ["mdl:ps_0", "mdl:ps_1"]
    assert ctl(zk_server, "ctl1", "pub", "--layout", "L", "--model", "mdl:dense*").returncode == 1
    info = json.loads(ctl(zk_server, "ctl1", "bzid_info").stdout)  # REFERENCE section 7's spelling
    model = info["model_info"]["mdl"]
    assert json.loads(model["entry"]["deploy_config"]) == {
        "model_base_path": str(export / "entry"),
        "version_policy": "latest",
    }
    assert json.loads(model["ps_1"]["deploy_config"])["version_policy"] == "latest_once"
    assert model["sub_graphs_total"] == 3 and "sub_graphs_available" not in model
    assert info["layout_info"] == {"L": ["mdl:ps_0", "mdl:ps_1"]}
    assert info["container_info"] == {}
    removed = ctl(zk_server, "ctl1", "unpub", "--layout", "L", "--model", "mdl:ps_1")
    assert removed.returncode == 0 and json.loads(removed.stdout) == ["mdl:ps_1"]
    assert json.loads(ctl(zk_server, "ctl1", "bzid-info").stdout)["layout_info"] == {"L": ["mdl:ps_0"]}  # alias


def monolith_ctl(zk_server: ZooKeeperServer, bzid: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Monolith's agent_controller.py command line, with only the program name changed."""
    argv = [sys.executable, "-m", "monolith_serving", "ctl", f"--zk_servers={zk_server.hosts}", f"--bzid={bzid}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_ctl_takes_monolith_agent_controller_flags(zk_server: ZooKeeperServer, zk: KazooClient, tmp_path: Path) -> None:
    # Monolith's export layout: the base is called exported_models; the model name comes from the entry.
    export = tmp_path / "exported_models"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS))
    declared = monolith_ctl(zk_server, "mono", "--cmd", "decl", "--export_base", str(export))
    assert declared.returncode == 0, declared.stderr
    assert sorted(children(zk, "/mono/saved_models/demo")) == ["entry", "ps_0", "ps_1"]
    again = monolith_ctl(zk_server, "mono", "--cmd=decl", f"--export_base={export}", "--overwrite=0")
    assert again.returncode == 1 and "--overwrite" in again.stderr
    overwritten = monolith_ctl(zk_server, "mono", "--cmd=decl", f"--export_base={export}", "--overwrite=1")
    assert overwritten.returncode == 0, overwritten.stderr
    for layout, pattern in (("back", "demo:ps_*"), ("front", "demo:entry")):
        published = monolith_ctl(zk_server, "mono", "--cmd", "pub", "--layout", layout, "--model_name", pattern)
        assert published.returncode == 0, published.stderr
    assert children(zk, "/mono/layouts/back") == ["demo:ps_0", "demo:ps_1"]
    zk.create("/mono/container_service/c1:pod-a", b'{"grpc": "10.0.0.1:8500"}', makepath=True, ephemeral=True)
    zk.create("/mono/binding/demo/ps_1:c1:pod-a", b"", makepath=True, ephemeral=True)
    unpublished = monolith_ctl(zk_server, "mono", "--cmd", "unpub", "--layout", "back", "--model_name", "demo:ps_0")
    assert unpublished.returncode == 0, unpublished.stderr

    listed = monolith_ctl(zk_server, "mono")  # --cmd defaults to bzid_info
    assert listed.returncode == 0, listed.stderr
    decl = zk.get("/mono/saved_models/demo/ps_0")[0].decode()
    assert json.loads(decl)["model_base_path"] == str(export / "ps_0")
    assert json.loads(listed.stdout) == {
        "model_info": {
            "demo": {
                "sub_graphs_total": 3,
                "sub_graphs_available": 1,
                "entry": {"deploy_config": zk.get("/mono/saved_models/demo/entry")[0].decode()},
                "ps_0": {"deploy_config": decl},
                "ps_1": {"deploy_config": zk.get("/mono/saved_models/demo/ps_1")[0].decode(), "bindings": ["c1:pod-a"]},
            }
        },
        "container_info": {
            "c1": {"pod-a": {"service_info": '{"grpc": "10.0.0.1:8500"}', "saved_models": ["demo:ps_1"]}}
        },
        "layout_info": {"back": ["demo:ps_1"], "front": ["demo:entry"]},
    }
    missing = monolith_ctl(zk_server, "mono", "--cmd", "decl")
    assert missing.returncode == 2 and "--export_base" in missing.stderr


def heartbeat(agent_port: int) -> dict[str, list[str]]:
    with grpc.insecure_channel(f"127.0.0.1:{agent_port}") as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        reply = stub.HeartBeat(agent_service_pb2.HeartBeatRequest(server_type=agent_service_pb2.PS), timeout=10)
    return {k: sorted(v.address) for k, v in reply.addresses.items()}


def test_two_filtered_containers_split_a_model_and_an_entry_finds_all_shards(
    zk_server: ZooKeeperServer, zk: KazooClient, tmp_path: Path
) -> None:
    export = tmp_path / "demo"
    write_demo(DemoOptions(out=export, num_ps=4, rows=ROWS))
    assert ctl(zk_server, "uni", "decl", "--export-base", str(export)).returncode == 0
    assert ctl(zk_server, "uni", "pub", "--layout", "lay", "--model", "demo:ps_*").returncode == 0
    # An item nobody declared: containers skip it (and say so) instead of failing.
    zk.create("/uni/layouts/lay/ghost:ps_0", b"", makepath=True)

    agents, grpc_ports = [], []
    for parity in (0, 1):
        ports = {"PORT2": free_port(), "PORT3": free_port(), "PORT4": free_port()}
        grpc_ports.append(ports["PORT3"])
        body = (
            f"deploy_type unified\nzk_servers {zk_server.hosts}\nbzid uni\nlayout_pattern lay\n"
            f"layout_filters ps_{{i}}; i % 2 == {parity}\nupdate_model_status_interval 0.3\n"
        )
        agents.append(
            AgentProcess(tmp_path, f"c{parity}", body, {k: str(v) for k, v in ports.items()}, "--drain_s=0.5")
        )
    try:
        for agent in agents:
            agent.start()
        addr = [f"127.0.0.1:{port}" for port in grpc_ports]
        ctx = [f"127.0.0.1_{port}" for port in grpc_ports]  # no MY_POD_NAME: host_port, never a ':'
        want = {"demo": sorted(f"ps_{i}:{CLUSTER}:{ctx[i % 2]}" for i in range(4))}
        wait_for("4 bindings", lambda: {"demo": children(zk, "/uni/binding/demo")} == want, 90)
        assert children(zk, "/uni/binding/ghost") == []
        assert sorted(children(zk, "/uni/container_service")) == sorted(f"{CLUSTER}:{c}" for c in ctx)
        container = json.loads(zk.get(f"/uni/container_service/{CLUSTER}:{ctx[0]}")[0])
        assert container["grpc"] == addr[0] and container["agent"] == f"127.0.0.1:{agents[0].env['PORT2']}"
        # The registered HTTP address serves TF Serving's REST API, as in Monolith, and the server's metrics.
        http_port = int(agents[0].env["PORT4"])
        assert container["http"] == f"127.0.0.1:{http_port}"
        status, answer = rest_json(http_port, "GET", "/v1/models/nope")
        assert status == 404 and "nope" in answer["error"], answer
        assert metric_value(http_port, "unified_rest_requests_total", {"method": "GetModelStatus"}) == 1
        # Only the even container's filter accepts ps_0, so only it has something to skip.
        assert "ghost:ps_0 skipped: no saved_model declaration" in agents[0].log()
        assert "ghost:ps_0" not in agents[1].log()

        agent_port = int(agents[0].env["PORT2"])
        expected = {f"demo:ps_{i}": [addr[i % 2]] for i in range(4)}
        wait_for("HeartBeat lists all shards", lambda: heartbeat(agent_port) == expected, 30)

        entry_port = free_port()
        entry_args = [
            f"--port={entry_port}", "--model_name=demo:entry", f"--model_base_path={export / 'entry'}",
            f"--agent_address=127.0.0.1:{agent_port}", "--num_ps=4",
        ]  # fmt: skip
        with ServerProcess("entry", entry_args, port=entry_port, log_path=tmp_path / "entry.log") as entry:
            assert_entry_predicts_reference(
                entry.address, export, rows=ROWS, seed=5, batch=6, model_name="demo:entry", retry_unavailable_s=30
            )

        # Unpublishing a shard removes its binding (the model is unloaded from its container).
        assert ctl(zk_server, "uni", "unpub", "--layout", "lay", "--model", "demo:ps_3").returncode == 0
        want_after = {"demo": sorted(f"ps_{i}:{CLUSTER}:{ctx[i % 2]}" for i in range(3))}
        wait_for("ps_3 unbound", lambda: {"demo": children(zk, "/uni/binding/demo")} == want_after, 30)

        # SIGTERM: the container's nodes go away and the agent exits 0.
        agents[1].signal()
        assert agents[1].wait(30) == 0
        assert children(zk, "/uni/binding/demo") == [f"ps_0:{CLUSTER}:{ctx[0]}", f"ps_2:{CLUSTER}:{ctx[0]}"]
        assert children(zk, "/uni/container_service") == [f"{CLUSTER}:{ctx[0]}"]
    finally:
        for agent in agents:
            agent.stop()


def _unified_agent(
    tmp_path: Path, zk_server: ZooKeeperServer, name: str, layout: str, filters: str = ""
) -> AgentProcess:
    ports = {"PORT2": str(free_port()), "PORT3": str(free_port())}
    body = (
        f"deploy_type unified\nzk_servers {zk_server.hosts}\nbzid uni3\nlayout_pattern {layout}\n"
        f"{filters}update_model_status_interval 0.3\n"
    )
    return AgentProcess(tmp_path, name, body, ports, "--drain_s=0.5")


def test_a_unified_container_serves_the_entry_over_the_ps_of_two_others(
    zk_server: ZooKeeperServer, zk: KazooClient, tmp_path: Path
) -> None:
    export = tmp_path / "demo"
    write_demo(DemoOptions(out=export, num_ps=4, rows=ROWS))
    assert ctl(zk_server, "uni3", "decl", "--export-base", str(export)).returncode == 0
    assert ctl(zk_server, "uni3", "pub", "--layout", "back", "--model", "demo:*").returncode == 0
    assert ctl(zk_server, "uni3", "pub", "--layout", "front", "--model", "demo:entry").returncode == 0
    # The PS containers' layout lists the entry too; their filters keep only their shards.
    agents = [
        _unified_agent(tmp_path, zk_server, f"ps{p}", "back", f"layout_filters ps_{{i}}; i % 2 == {p}\n")
        for p in (0, 1)
    ]
    agents.append(_unified_agent(tmp_path, zk_server, "front", "front"))
    try:
        for agent in agents:
            agent.start()
        addr = [f"127.0.0.1:{agent.env['PORT3']}" for agent in agents]
        ctx = [f"127.0.0.1_{agent.env['PORT3']}" for agent in agents]
        want = sorted([*(f"ps_{i}:{CLUSTER}:{ctx[i % 2]}" for i in range(4)), f"entry:{CLUSTER}:{ctx[2]}"])
        wait_for("4 PS bindings and the entry's", lambda: children(zk, "/uni3/binding/demo") == want, 120)

        assert_entry_predicts_reference(
            addr[2], export, rows=ROWS, seed=7, batch=6, model_name="demo:entry", retry_unavailable_s=30
        )
        # The front container hosts no PS: it names the model it does not serve.
        with grpc.insecure_channel(addr[2]) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as missing:
                stub.Predict(predict_request("demo:ps_0", {}), timeout=10)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND

        info = json.loads(ctl(zk_server, "uni3", "bzid-info").stdout)
        containers = info["container_info"][CLUSTER]
        assert sorted(containers) == sorted(ctx)
        assert json.loads(containers[ctx[2]]["service_info"])["grpc"] == addr[2]
        assert containers[ctx[2]]["saved_models"] == ["demo:entry"]
        model = info["model_info"]["demo"]
        assert model["sub_graphs_available"] == 5
        bound = [f"{sg}:{where}" for sg in ("entry", *(f"ps_{i}" for i in range(4))) for where in model[sg]["bindings"]]
        assert sorted(bound) == want
        assert "skipped" not in agents[2].log()

        # Unpublishing the entry unloads it from the front container and removes its binding.
        assert ctl(zk_server, "uni3", "unpub", "--layout", "front", "--model", "demo:entry").returncode == 0
        wait_for("entry unbound", lambda: f"entry:{CLUSTER}:{ctx[2]}" not in children(zk, "/uni3/binding/demo"), 30)
    finally:
        for agent in agents:
            agent.stop()
