"""A dense_alone model served unified: v3 agents (real processes, real ZooKeeper) host its ``dense_0`` sub_graph
as model ``demo:dense_0`` of their unified child, bind it once AVAILABLE, list it in HeartBeat, and the entry (in
another container) finds it there; the scores equal the numpy reference and those of separate entry + ps + dense
processes."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from agent_procs import AgentProcess, children, wait_for
from entry_reference import assert_predict_matches_reference
from kazoo.client import KazooClient
from procs import MODEL_SERVER_HEALTH_SERVICES, ServerProcess, free_port
from test_agent_v3_procs import CLUSTER, ctl
from zk_harness import ZooKeeperServer

from monolith_serving.client.health import check_health
from monolith_serving.client.inputs import LogicalExample, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2, agent_service_pb2_grpc
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
)

pytestmark = pytest.mark.integration

ROWS = 150
BZID = "unidense"
DENSE = agent_service_pb2.DENSE


def heartbeat(agent_port: int, server_type: int) -> dict[str, list[str]]:
    with grpc.insecure_channel(f"127.0.0.1:{agent_port}") as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        reply = stub.HeartBeat(agent_service_pb2.HeartBeatRequest(server_type=server_type), timeout=10)
    return {k: sorted(v.address) for k, v in reply.addresses.items()}


def model_states(address: str, name: str) -> list[tuple[int, int]] | None:
    """``[(version, state)]`` of a hosted model; None while the server does not host it (NOT_FOUND)."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with grpc.insecure_channel(address) as channel:
        try:
            reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
    return [(s.version, s.state) for s in reply.model_version_status]


def health(address: str) -> set[str]:
    """What a model server's health services say now ({"SERVING"} when all of them serve)."""
    return {check_health(address, service=s, timeout_s=5.0).status for s in MODEL_SERVER_HEALTH_SERVICES}


def predict_scores(address: str, export: Path, examples: list[LogicalExample], model_name: str) -> np.ndarray:
    """The scores of ``examples`` from ``model_name`` at ``address``, once they match the reference."""
    response, _ = assert_predict_matches_reference(
        address, export, examples, model_name=model_name, retry_unavailable_s=30
    )
    return from_tensor_proto(response.outputs["scores"], "scores")


def unified_agent(tmp_path: Path, zk_server: ZooKeeperServer, name: str, layout: str) -> AgentProcess:
    ports = {"PORT2": str(free_port()), "PORT3": str(free_port())}
    body = (
        f"deploy_type unified\nzk_servers {zk_server.hosts}\nbzid {BZID}\nlayout_pattern {layout}\n"
        "update_model_status_interval 0.3\nfile_system_poll_wait_seconds 1\n"
    )
    return AgentProcess(tmp_path, name, body, ports, "--drain_s=0.5")


def separate_processes_scores(export: Path, logs: Path, examples: list[LogicalExample]) -> np.ndarray:
    """The same export served by ``ps`` x2, ``dense`` and ``entry`` processes wired with static targets."""
    ps_ports, dense_port, entry_port = [free_port(), free_port()], free_port(), free_port()
    argv: dict[str, tuple[str, int, list[str]]] = {
        f"ps_{i}": ("ps", port, [f"--model_name=ps_{i}", f"--model_base_path={export / f'ps_{i}'}", "--num_ps=2"])
        for i, port in enumerate(ps_ports)
    }
    argv["dense"] = ("dense", dense_port, ["--model_name=dense_0", f"--model_base_path={export / 'dense_0'}"])
    ps_targets = ";".join(f"127.0.0.1:{port}" for port in ps_ports)
    targets = [f"--ps_targets={ps_targets}", f"--dense_targets=127.0.0.1:{dense_port}"]
    argv["entry"] = ("entry", entry_port, [f"--model_base_path={export / 'entry'}", *targets])
    processes = [
        ServerProcess(command, ["--host=127.0.0.1", f"--port={port}", *args], port=port, log_path=logs / f"{name}.log")
        for name, (command, port, args) in argv.items()
    ]
    try:
        for process in processes:
            process.start()  # in order: the entry is SERVING once its PS shards and dense_0 serve its version
        return predict_scores(processes[-1].address, export, examples, "entry")
    finally:
        for process in reversed(processes):
            process.stop()


def test_a_dense_alone_model_served_unified_scores_as_separate_entry_ps_and_dense(
    zk_server: ZooKeeperServer, zk: KazooClient, tmp_path: Path
) -> None:
    export, staging = tmp_path / "demo", tmp_path / "staging"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS, dense_alone=True))
    staging.mkdir()
    (export / "dense_0" / "1").rename(staging / "1")  # dense_0 is declared, its version comes later
    assert ctl(zk_server, BZID, "decl", "--export-base", str(export)).returncode == 0
    assert sorted(children(zk, f"/{BZID}/saved_models/demo")) == ["dense_0", "entry", "ps_0", "ps_1"]
    for layout, pattern in (("back", "demo:ps_*"), ("back", "demo:dense_0"), ("front", "demo:entry")):
        assert ctl(zk_server, BZID, "pub", "--layout", layout, "--model", pattern).returncode == 0
    agents = [unified_agent(tmp_path, zk_server, "back", "back"), unified_agent(tmp_path, zk_server, "front", "front")]
    binding_root = f"/{BZID}/binding/demo"
    try:
        for agent in agents:
            agent.start()
        back, front = (f"127.0.0.1:{agent.env['PORT3']}" for agent in agents)
        ctx = [f"127.0.0.1_{agent.env['PORT3']}" for agent in agents]
        ps_bound = [f"ps_{i}:{CLUSTER}:{ctx[0]}" for i in range(2)]
        wait_for("both PS shards bound", lambda: children(zk, binding_root) == ps_bound, 90)
        # Hosted (by the same reload as the PS shards) but with no version: not bound, and the back container's
        # health waits for it.
        wait_for("dense_0 hosted without a version", lambda: model_states(back, "demo:dense_0") == [], 30)
        wait_for("the back container NOT_SERVING", lambda: health(back) == {"NOT_SERVING"}, 10)
        assert children(zk, binding_root) == ps_bound

        (staging / "1").rename(export / "dense_0" / "1")
        want = sorted([*ps_bound, f"dense_0:{CLUSTER}:{ctx[0]}", f"entry:{CLUSTER}:{ctx[1]}"])
        wait_for("dense_0 and the entry bound", lambda: children(zk, binding_root) == want, 60)
        front_agent_port = int(agents[1].env["PORT2"])
        # The front agent sees the bindings through its own watch of the registry.
        dense_seen = {"demo:dense_0": [back]}
        wait_for("HeartBeat(DENSE) lists dense_0", lambda: heartbeat(front_agent_port, DENSE) == dense_seen, 30)
        assert heartbeat(front_agent_port, agent_service_pb2.PS) == {"demo:ps_0": [back], "demo:ps_1": [back]}
        info = json.loads(ctl(zk_server, BZID, "bzid-info").stdout)
        assert info["container_info"][CLUSTER][ctx[0]]["saved_models"] == ["demo:dense_0", "demo:ps_0", "demo:ps_1"]

        examples = random_examples(load_serving_spec(export / "entry" / "1"), 8, np.random.default_rng(13), rows=ROWS)
        unified_scores = predict_scores(front, export, examples, "demo:entry")
        # Health follows the models within a poll interval.
        wait_for("the back container SERVING", lambda: health(back) == {"SERVING"}, 10)
        wait_for("the front container SERVING", lambda: health(front) == {"SERVING"}, 10)

        # Unpublishing dense_0 unloads it from the back container and removes its binding.
        assert ctl(zk_server, BZID, "unpub", "--layout", "back", "--model", "demo:dense_0").returncode == 0
        wait_for("dense_0 unbound", lambda: f"dense_0:{CLUSTER}:{ctx[0]}" not in children(zk, binding_root), 30)
        wait_for("HeartBeat(DENSE) empty", lambda: heartbeat(front_agent_port, DENSE) == {}, 30)
    finally:
        for agent in agents:
            agent.stop()

    separate = separate_processes_scores(export, tmp_path / "separate", examples)
    np.testing.assert_array_equal(unified_scores, separate)
