"""The model manager driving replicas started by real v1 agents on a real ZooKeeper.

Two ``deploy_type ps`` agents (``num_ps 2``, ``num_shard 2``: one PS task each) and one ``deploy_type entry``
agent serve the export base; their conf pins ``version_policy specific`` / ``version_data 1``, so every
child's config file names version 1. A real ``model-manager`` process finds the replicas in the agents'
registry nodes and rolls out version 2, written during a steady Predict load: zero failed and zero mixed
responses. Then the PS child of task 0 is killed with SIGKILL: its agent restarts it with the file config
(version 1 only), and the manager's reconcile loop brings it back to version 2; no response mixes
versions meanwhile (the entry pins its PS calls to its own version, so a lookup on the restarted child
fails rather than mixing).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from agent_procs import replica_stats, wait_for
from kazoo.client import KazooClient
from model_manager_load import SteadyLoad, export_version
from model_manager_procs import ManagerProcess, v1_cluster_agents
from zk_harness import ZooKeeperServer

pytestmark = pytest.mark.integration

AVAILABLE = 30


def ps_replicas(status: dict[str, Any], sub_graph: str) -> list[dict[str, Any]]:
    return [r for r in status["replicas"] if r["sub_graph"] == sub_graph]


def test_rollout_and_reconcile_of_agent_launched_replicas(
    zk_server: ZooKeeperServer, zk: KazooClient, tmp_path: Path
) -> None:
    export = tmp_path / "exported_models"
    export_version(export, 1)
    bzid = f"mma{uuid.uuid4().hex[:8]}"
    root = f"/{bzid}/service/demo"
    agents, entry_ports = v1_cluster_agents(tmp_path, zk_server, bzid, export)
    manager: ManagerProcess | None = None
    try:
        for agent in agents:
            agent.start()
        want = {"ps:0/0": AVAILABLE, "ps:1/0": AVAILABLE, "entry:0/00000000000": AVAILABLE}
        wait_for("agents' replicas AVAILABLE", lambda: replica_stats(zk, root) == want, 180)
        manager = ManagerProcess(tmp_path / "manager.log", export, zk_server, bzid, rollout_timeout_s=120)
        manager.wait_status("version 1 adopted", lambda s: s["serving"] == 1 and len(s["replicas"]) == 3)
        entry_address = f"127.0.0.1:{entry_ports['PORT3']}"

        # 1. A new version under load: zero failed, zero mixed responses.
        with SteadyLoad(entry_address, export) as load:
            time.sleep(1.0)
            export_version(export, 2)
            status = manager.wait_status(
                "version 2 rolled out and PS cleaned up",
                lambda s: s["serving"] == 2 and s["rollout"]["phase"] == "idle" and s["serving_version"]["ps_1"] == 2,
            )
            time.sleep(1.0)
        result = load.result
        assert result.errors == [], result.errors[:5]
        assert result.mixed == [], result.mixed[:5]
        assert result.versions == {1, 2} and result.ok > 10, result
        assert status["rollout"]["last"]["outcome"] == "succeeded"
        assert all(r["available"] == [2] for r in status["replicas"]), status["replicas"]

        # 2. The PS child of task 0 dies; its agent restarts it with the file config (version 1 only).
        ps_pid = agents[0].child_pid("ps")
        assert ps_pid is not None
        with SteadyLoad(entry_address, export) as load:
            time.sleep(0.5)
            os.kill(ps_pid, signal.SIGKILL)
            wait_for("ps child restarted by its agent", lambda: agents[0].child_pid("ps", 1) is not None, 120)
            manager.wait_status(
                "the restarted ps_0 back on version 2",
                lambda s: [r["available"] for r in ps_replicas(s, "ps_0")] == [[2]],
            )
            wait_for("Predict answers again", lambda: load.result.ok > 0 and _recent_ok(load), 60)
        assert load.result.mixed == [], load.result.mixed[:5]
        assert load.result.versions == {2}, load.result
        # The restarted child came up on its file config (version 1 again) and the manager re-sent version 2.
        ps_log = agents[0].tfs_log_path.read_text(errors="replace")
        assert ps_log.count("model ps_0 version 1: AVAILABLE") == 2, ps_log[-3000:]
        assert ps_log.rindex("model ps_0 version 2: AVAILABLE") > ps_log.rindex("model ps_0 version 1: AVAILABLE")
        assert manager.log().count("ps_0@127.0.0.1:") >= 4  # [1], [1, 2], [2], and [2] again after the restart
        # The file still says version 1, yet the manager's config stays in force (the file did not change).
        assert "versions: 1\n" in (tmp_path / "ps0.work" / "ps_model_config.pbtxt").read_text()
        time.sleep(3.0)
        status = manager.status()
        assert status["serving"] == 2 and status["serving_version"] == {"entry": 2, "ps_0": 2, "ps_1": 2}
        with SteadyLoad(entry_address, export) as load:
            wait_for("a few responses", lambda: load.result.ok + len(load.result.errors) >= 5, 30)
        assert load.result.errors == [] and load.result.mixed == [] and load.result.versions == {2}, load.result
    finally:
        if manager is not None:
            manager.stop()
        for agent in agents:
            agent.stop()


def _recent_ok(load: SteadyLoad) -> bool:
    """True once a response succeeded after the last error."""
    count = load.result.ok
    time.sleep(0.5)
    return load.result.ok > count
