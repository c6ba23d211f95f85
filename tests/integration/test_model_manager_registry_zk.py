"""The model manager's registry writes on a real ZooKeeper: v3 declarations equal to ``ctl decl`` and not
rewritten when unchanged (a rewrite would make unified agents reload), and the rollout-state node."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from zk_harness import ZooKeeperServer

from monolith_serving.agent.ctl import Controller
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.discovery.config import Backend, DiscoveryConfig
from monolith_serving.discovery.factory import create_discovery
from monolith_serving.model_manager.registry_state import RegistryRecorder, RollbackPin, RolloutState
from monolith_serving.model_manager.rollout import ModelTarget

pytestmark = pytest.mark.integration


def test_declarations_and_rollout_state_on_zookeeper(zk_server: ZooKeeperServer, tmp_path: Path) -> None:
    base = tmp_path / "demo"
    write_demo(DemoOptions(out=base, num_ps=2, rows=10))
    ours, theirs = f"mm{uuid.uuid4().hex[:8]}", f"ctl{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        discovery = create_discovery(DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=zk_server.hosts))
        async with discovery:
            assert await discovery.wait_connected(30)
            await Controller(discovery, theirs).decl(base, model_name="demo")
            recorder = RegistryRecorder(discovery, ours, declare_saved_models=True)
            assert len(await recorder.declare(ModelTarget("demo", str(base), 2))) == 3
            assert await recorder.declare(ModelTarget("demo", str(base), 2)) == []
            state = RolloutState("demo", serving=3, failed={4: "fp"}, rollback_pin=RollbackPin(3, 5), updated_at=1.0)
            await recorder.save(state)
            assert await recorder.load("demo") == state
            assert await recorder.load("other") is None

    asyncio.run(scenario())
    zk = KazooClient(hosts=zk_server.hosts)
    zk.start(timeout=30)
    try:
        for sub_graph in ("entry", "ps_0", "ps_1"):
            mine, stat = zk.get(f"/{ours}/saved_models/demo/{sub_graph}")
            ctl, _ = zk.get(f"/{theirs}/saved_models/demo/{sub_graph}")
            assert mine == ctl
            assert stat.version == 0  # written once: the second declare() left the node alone
        data, _ = zk.get(f"/{ours}/model_manager/demo")
        assert json.loads(data)["failed"] == {"4": "fp"}
    finally:
        zk.stop()
        zk.close()
