"""v1 agents as real processes on real ZooKeeper, launching real ps / entry servers."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from agent_procs import AgentProcess, children, pid_alive, port_answers, replica_stats, v1_agent_conf, wait_for
from entry_reference import assert_entry_predicts_reference
from kazoo.client import KazooClient
from procs import free_port
from rest_calls import metric_value, rest_json
from zk_harness import ZooKeeperServer

from monolith_serving.core.demo_export import DemoOptions, write_demo

pytestmark = pytest.mark.integration

ROWS = 200
AVAILABLE = 30


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("agent-export")
    write_demo(DemoOptions(out=folder, num_ps=2, rows=ROWS))
    return folder


def assert_predicts(export: Path, port: int) -> None:
    """Predict matches the reference scorer; UNAVAILABLE is retried for 10 s (views settle)."""
    assert_entry_predicts_reference(f"127.0.0.1:{port}", export, rows=ROWS, seed=3, batch=8, retry_unavailable_s=10)


def test_mixed_agent_serves_restarts_and_deregisters_first(
    zk_server: ZooKeeperServer, zk: KazooClient, export: Path, tmp_path: Path
) -> None:
    ports = {"PORT2": free_port(), "PORT3": free_port(), "PORT4": free_port(), "PORT5": free_port()}
    metrics_port = free_port()
    agent = AgentProcess(
        tmp_path,
        "mixed",
        v1_agent_conf(zk_server, "mix", export, "stand_alone_serving true\n"),
        {k: str(v) for k, v in ports.items()},
        "--drain_s=1.5",
        f"--metrics_port={metrics_port}",
    ).start()
    root = "/mix/service/demo"
    try:
        want = {"ps:0/0": AVAILABLE, "ps:1/0": AVAILABLE, "entry:0/00000000000": AVAILABLE}
        wait_for("entry + 2 PS AVAILABLE", lambda: replica_stats(zk, root) == want, 90)
        assert_predicts(export, ports["PORT3"])

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()

        # The registration gauge follows the replica states on its own 1 s tick.
        wait_for("registration gauge ready", lambda: "agent_registration_ready 1.0" in scrape(), 10)
        metrics = scrape()
        assert 'agent_child_up{server="ps"} 1.0' in metrics

        # The entry serves TF Serving's REST API on PORT4, as Monolith's agent has it, and its metrics there too.
        status, answer = rest_json(ports["PORT4"], "GET", "/v1/models/entry")
        assert status == 200, answer
        assert [v["state"] for v in answer["model_version_status"]] == ["AVAILABLE"]
        ok = {"method": "GetModelStatus", "code": "OK"}
        assert metric_value(ports["PORT4"], "entry_rest_requests_total", ok) >= 1
        assert metric_value(ports["PORT4"], "entry_predict_requests_total", {"code": "OK"}) >= 1

        # A killed child is restarted; its replicas leave AVAILABLE while it is down and come back.
        ps_pid = agent.child_pid("ps")
        assert ps_pid is not None
        seen: set[int] = set()

        def ps0_back_after_drop() -> bool:
            stat = replica_stats(zk, root).get("ps:0/0")
            if stat is not None:
                seen.add(stat)
            return bool(seen - {AVAILABLE}) and stat == AVAILABLE and agent.child_pid("ps", 1) is not None

        os.kill(ps_pid, signal.SIGKILL)
        wait_for("ps:0 back to AVAILABLE after a restart", ps0_back_after_drop, 60, interval_s=0.05)
        assert "child ps (pid" in agent.log() and "restarting child ps" in agent.log()
        assert_predicts(export, ports["PORT3"])

        # SIGTERM: nodes vanish while the servers still answer; the servers stop afterwards.
        entry_pid, new_ps_pid = agent.child_pid("entry"), agent.child_pid("ps")
        assert entry_pid is not None and new_ps_pid is not None
        agent.signal(signal.SIGTERM)
        wait_for("nodes removed", lambda: not any(children(zk, f"{root}/{t}") for t in children(zk, root)), 20, 0.02)
        assert port_answers(ports["PORT3"]) and port_answers(ports["PORT5"])
        assert pid_alive(entry_pid) and pid_alive(new_ps_pid)
        assert agent.wait(30) == 0
        assert not pid_alive(entry_pid) and not pid_alive(new_ps_pid)
    finally:
        agent.stop()


def test_ctrl_c_reaches_the_agent_alone_so_it_deregisters_before_its_children_stop(
    zk_server: ZooKeeperServer, zk: KazooClient, export: Path, tmp_path: Path
) -> None:
    """A terminal sends Ctrl-C to the whole foreground process group. Children in the agent's group would stop at
    once, before the agent has removed their nodes: routers would send requests to servers already gone."""
    ports = {"PORT2": free_port(), "PORT3": free_port(), "PORT5": free_port()}
    agent = AgentProcess(
        tmp_path,
        "foreground",
        v1_agent_conf(zk_server, "fg", export, "stand_alone_serving true\n"),
        {k: str(v) for k, v in ports.items()},
        "--drain_s=3",
    ).start()
    root = "/fg/service/demo"
    try:
        want = {"ps:0/0": AVAILABLE, "ps:1/0": AVAILABLE, "entry:0/00000000000": AVAILABLE}
        wait_for("entry + 2 PS AVAILABLE", lambda: replica_stats(zk, root) == want, 90)
        entry_pid, ps_pid = agent.child_pid("entry"), agent.child_pid("ps")
        assert entry_pid is not None and ps_pid is not None
        agent.signal_group(signal.SIGINT)
        wait_for("nodes removed", lambda: not any(children(zk, f"{root}/{t}") for t in children(zk, root)), 20, 0.02)
        time.sleep(0.5)  # a child that got the Ctrl-C itself has stopped by now (they stop within ~0.3 s)
        assert port_answers(ports["PORT3"]) and port_answers(ports["PORT5"]), agent.log()[-3000:]
        assert pid_alive(entry_pid) and pid_alive(ps_pid)
        assert agent.wait(30) == 0
        assert not pid_alive(entry_pid) and not pid_alive(ps_pid)
    finally:
        agent.stop()


def test_entry_agent_waits_for_ps_agents(
    zk_server: ZooKeeperServer, zk: KazooClient, export: Path, tmp_path: Path
) -> None:
    root = "/order/service/demo"
    entry_ports = {"PORT2": str(free_port()), "PORT3": str(free_port())}
    entry = AgentProcess(
        tmp_path, "entry", v1_agent_conf(zk_server, "order", export, "deploy_type entry\n"), entry_ports
    )
    ps_agents = [
        AgentProcess(
            tmp_path,
            f"ps{shard}",
            v1_agent_conf(zk_server, "order", export, "deploy_type ps\nnum_shard 2\n"),
            {"PORT2": str(free_port()), "PORT3": str(free_port()), "SHARD_ID": str(shard), "REPLICA_ID": "7"},
        )
        for shard in (0, 1)
    ]
    try:
        entry.start()
        wait_for("entry agent waiting for PS", lambda: "entry waits until PS tasks 0..1" in entry.log(), 60)
        time.sleep(1.0)
        assert "child entry started" not in entry.log()
        assert replica_stats(zk, root) == {}
        for agent in ps_agents:
            agent.start()
        want = {"ps:0/7": AVAILABLE, "ps:1/7": AVAILABLE, "entry:0/00000000000": AVAILABLE}
        wait_for("all replicas AVAILABLE", lambda: replica_stats(zk, root) == want, 90)
        entry_created = zk.exists(f"{root}/entry:0/00000000000").ctime
        for task in ("ps:0/7", "ps:1/7"):
            # The entry registered after each PS replica was written AVAILABLE (its last data change).
            assert zk.exists(f"{root}/{task}").mtime <= entry_created
        assert_predicts(export, int(entry_ports["PORT3"]))
    finally:
        for agent in [entry, *ps_agents]:
            agent.stop()


def test_bad_conf_and_filter_refuse_to_start(tmp_path: Path) -> None:
    missing = AgentProcess(tmp_path, "missing", "base_path /x\nzk_servers 127.0.0.1:1\n", {}).start()
    assert missing.wait(60) == 2
    assert "refusing to start" in missing.log() and "'deploy_type'" in missing.log()
    bad_filter = AgentProcess(
        tmp_path,
        "filter",
        "deploy_type unified\nzk_servers 127.0.0.1:1\nbzid b\nlayout_pattern l\nlayout_filters ps_{i}; i %% 2\n",
        {},
    ).start()
    assert bad_filter.wait(60) == 2
    assert "refusing to start" in bad_filter.log() and "ps_{i}; i %% 2" in bad_filter.log()


def test_child_that_cannot_start_makes_the_agent_exit_nonzero(
    zk_server: ZooKeeperServer, export: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = AgentProcess(
            tmp_path,
            "taken",
            v1_agent_conf(zk_server, "taken", export, "deploy_type ps\n"),
            {"PORT2": str(free_port()), "PORT3": str(port)},
            "--max_restarts=1",
            "--child_ready_timeout_s=60",
        ).start()
        try:
            assert agent.wait(90) == 1
        finally:
            agent.stop()
    log = agent.log()
    assert "giving up" in log and "child ps" in log
    assert "registering" not in log  # the foreign listener on the port never counted as our child
