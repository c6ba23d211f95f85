"""The model manager rolling out a new version over v3 unified containers that host several sub_graphs each.

Two ``deploy_type unified`` agents on a real ZooKeeper: container A's layout holds ``demo:ps_0`` and
``demo:entry``, container B's ``demo:ps_1`` and ``demo:entry``, so each container serves two sub_graphs of the
model behind one address. A real ``model-manager --agent_version 3`` finds them from the bindings and rolls out
version 2, written during a steady Predict load on A's entry. A unified container replaces its whole model set
on a reload (docs/unified.md), so a reload naming only the sub_graph being moved would unload the other one
there: the test checks zero failed and zero mixed responses, that no binding went away at any point (a ZooKeeper
watch sees every change), that neither container ever reloaded to fewer models, and that at the end each
container serves both its sub_graphs at version 2.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_procs import AgentProcess, children, wait_for
from kazoo.client import KazooClient
from kazoo.recipe.watchers import ChildrenWatch
from model_manager_load import SteadyLoad, export_version
from model_manager_procs import ManagerProcess
from procs import free_port
from zk_harness import ZooKeeperServer

from monolith_serving.agent.saved_model_decl import declaration_for
from monolith_serving.core.zk_paths import layout_item_path, saved_model_path
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

pytestmark = pytest.mark.integration

AVAILABLE = 30  # tensorflow.serving ModelVersionStatus.State.AVAILABLE
LAYOUTS = {"a": ("ps_0", "entry"), "b": ("ps_1", "entry")}


class BindingHistory:
    """Every child list of the model's binding folder, as ZooKeeper announces each change."""

    def __init__(self, zk: KazooClient, path: str) -> None:
        self._lock = threading.Lock()
        self._seen: list[list[str]] = []
        ChildrenWatch(zk, path, self._on_children)

    def _on_children(self, names: list[str]) -> None:
        with self._lock:
            self._seen.append(sorted(names))

    def snapshots(self) -> list[list[str]]:
        with self._lock:
            return list(self._seen)


def unified_agent(tmp_path: Path, zk_server: ZooKeeperServer, bzid: str, layout: str) -> AgentProcess:
    body = (
        f"deploy_type unified\nzk_servers {zk_server.hosts}\nbzid {bzid}\nlayout_pattern {layout}\n"
        "update_model_status_interval 0.2\nfetch_ps_timeout_ms 2000\n"
    )
    ports = {"PORT2": str(free_port()), "PORT3": str(free_port())}
    return AgentProcess(tmp_path, f"container_{layout}", body, ports, "--drain_s=0.5")


def available_versions(address: str, served_name: str) -> list[int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = served_name
    with grpc.insecure_channel(address) as channel:
        reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return sorted(int(s.version) for s in reply.model_version_status if int(s.state) == AVAILABLE)


def test_rollout_over_unified_containers_keeps_every_sub_graph_loaded(
    zk_server: ZooKeeperServer, zk: KazooClient, tmp_path: Path
) -> None:
    export = (tmp_path / "exported_models").resolve()
    export_version(export, 1)
    bzid = f"mmu{uuid.uuid4().hex[:8]}"
    # What `ctl decl` and the manager declare (same JSON, so the manager leaves the nodes alone) and what
    # `ctl pub` writes: one layout per container.
    for sub_graph in ("entry", "ps_0", "ps_1"):
        declaration = declaration_for(export, sub_graph).to_json()
        zk.create(saved_model_path(bzid, "demo", sub_graph), declaration, makepath=True)
    for layout, sub_graphs in LAYOUTS.items():
        for sub_graph in sub_graphs:
            zk.create(layout_item_path(bzid, layout, "demo", sub_graph), b"", makepath=True)

    agents = {layout: unified_agent(tmp_path, zk_server, bzid, layout) for layout in LAYOUTS}
    address = {layout: f"127.0.0.1:{agent.env['PORT3']}" for layout, agent in agents.items()}
    # Monolith's container names: ctx_cluster "{TCE_PSM};{idc};{cluster}" (none set here), ctx_id host_port.
    ctx = {layout: f"127.0.0.1_{agent.env['PORT3']}" for layout, agent in agents.items()}
    want = sorted(f"{s}:unknown;None;None:{ctx[layout]}" for layout, subs in LAYOUTS.items() for s in subs)
    bindings = f"/{bzid}/binding/demo"
    manager: ManagerProcess | None = None
    try:
        for agent in agents.values():
            agent.start()
        wait_for("both containers bound with both sub_graphs", lambda: children(zk, bindings) == want, 90)
        history = BindingHistory(zk, bindings)

        def rolled_out(s: dict[str, Any]) -> bool:
            # Fails at once (with the manager's status and log) when a sub_graph lost its binding.
            assert all(names == want for names in history.snapshots()), history.snapshots()
            replicas = s["replicas"]
            done = s["serving"] == 2 and s["rollout"]["phase"] == "idle" and len(replicas) == 4
            return done and all(r["available"] == [2] for r in replicas)

        manager = ManagerProcess(
            tmp_path / "manager.log", export, zk_server, bzid, rollout_timeout_s=60, extra_args=("--agent_version=3",)
        )
        manager.wait_status("version 1 adopted", lambda s: s["serving"] == 1 and len(s["replicas"]) == 4)

        # A unified entry answers only the v3 served name.
        with SteadyLoad(address["a"], export, model_name="demo:entry") as load:
            time.sleep(1.0)
            export_version(export, 2)
            status = manager.wait_status("version 2 rolled out on every replica", rolled_out, 60)
            time.sleep(1.0)
        result = load.result
        assert result.errors == [], result.errors[:5]
        assert result.mixed == [], result.mixed[:5]
        assert result.versions == {1, 2} and result.ok > 10, result
        assert status["rollout"]["last"]["outcome"] == "succeeded"

        # No sub_graph was unloaded along the way: every binding stayed, each container kept both models.
        assert history.snapshots() and all(names == want for names in history.snapshots()), history.snapshots()
        for layout, agent in agents.items():
            assert "unbound" not in agent.log(), agent.log()[-3000:]
            log = agent.tfs_log_path.read_text()
            hosting = re.findall(r"hosting (\d+) PS models, (\d+) dense models and entry (\S+)", log)
            # The first line is the container's empty start-up config; the agent's and the manager's follow.
            assert hosting[0] == ("0", "0", "(none)") and len(hosting) >= 3, hosting
            assert set(hosting[1:]) == {("1", "0", "demo:entry")}, hosting
            for sub_graph in LAYOUTS[layout]:
                assert available_versions(address[layout], f"demo:{sub_graph}") == [2], (layout, sub_graph)
    finally:
        if manager is not None:
            manager.stop()
        for agent in agents.values():
            agent.stop()
