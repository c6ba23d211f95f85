"""SIGTERM to a model manager whose rollout waits on a stalled PS: it exits within seconds, and the next one
finishes the rollout (the audit's repro, on real v1 agents and a real ZooKeeper).

Two ``deploy_type ps`` agents and one entry agent serve version 1. The PS child of task 0 is stopped with
SIGSTOP, version 2 is written, and the manager (``--rollout_timeout_s 600``) starts rolling it out: its PS phase
waits on the stalled child. SIGTERM used to be acted on only when the rollout ended (here: after the child was
resumed, or 600 s later), so Kubernetes and compose SIGKILLed the manager. Now it exits 0 within
``STOP_BOUND_S``, logging the interruption; the child is resumed and a new manager rolls version 2 out. No
Predict response mixes versions at any point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from agent_procs import replica_stats, wait_for
from kazoo.client import KazooClient
from model_manager_load import SteadyLoad, export_version
from model_manager_procs import ManagerProcess, v1_cluster_agents
from zk_harness import ZooKeeperServer

pytestmark = pytest.mark.integration

AVAILABLE = 30
STOP_BOUND_S = 10.0


def test_sigterm_during_a_stalled_rollout_exits_promptly_and_the_next_manager_finishes_it(
    zk_server: ZooKeeperServer, zk: KazooClient, tmp_path: Path
) -> None:
    export = tmp_path / "exported_models"
    export_version(export, 1)
    bzid = f"mms{uuid.uuid4().hex[:8]}"
    agents, entry_ports = v1_cluster_agents(tmp_path, zk_server, bzid, export)
    managers: list[ManagerProcess] = []
    stalled: int | None = None
    try:
        for agent in agents:
            agent.start()
        want = {"ps:0/0": AVAILABLE, "ps:1/0": AVAILABLE, "entry:0/00000000000": AVAILABLE}
        wait_for("agents' replicas AVAILABLE", lambda: replica_stats(zk, f"/{bzid}/service/demo") == want, 180)
        first = ManagerProcess(tmp_path / "manager1.log", export, zk_server, bzid, rollout_timeout_s=600)
        managers.append(first)
        first.wait_status("version 1 adopted", lambda s: s["serving"] == 1 and len(s["replicas"]) == 3)

        with SteadyLoad(f"127.0.0.1:{entry_ports['PORT3']}", export) as load:
            stalled = agents[0].child_pid("ps")
            assert stalled is not None
            os.kill(stalled, signal.SIGSTOP)
            export_version(export, 2)
            wait_for("the rollout to start", lambda: "rollout from version 1 to 2" in first.log(), 60)
            time.sleep(1.0)  # a few polls on the stalled PS
            first.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                code = first.process.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"the manager still runs {STOP_BOUND_S} s after SIGTERM:\n{first.log()[-4000:]}"
                ) from None
            log = first.log()
            assert code == 0, log[-4000:]
            assert time.monotonic() - started < STOP_BOUND_S
            assert "demo rollout to version 2 INTERRUPTED in phase ps_loading" in log, log[-4000:]
            assert "succeeded" not in log.split("rollout from version 1 to 2")[1]

            os.kill(stalled, signal.SIGCONT)
            stalled = None
            second = ManagerProcess(tmp_path / "manager2.log", export, zk_server, bzid, rollout_timeout_s=600)
            managers.append(second)
            status = second.wait_status(
                "version 2 rolled out by the next manager",
                lambda s: (
                    s["serving"] == 2
                    and s["rollout"]["phase"] == "idle"
                    and s["serving_version"] == {"entry": 2, "ps_0": 2, "ps_1": 2}
                ),
                timeout_s=180,
            )
            time.sleep(1.0)
        assert status["rollout"]["last"]["outcome"] == "succeeded"
        assert "the previous run stopped during a rollout to 2 (phase ps_loading)" in second.log()
        assert load.result.mixed == [], load.result.mixed[:5]
        assert 2 in load.result.versions, load.result
    finally:
        if stalled is not None:
            os.kill(stalled, signal.SIGCONT)
        for manager in managers:
            manager.kill()
        for agent in agents:
            agent.stop()
