"""The model manager end to end with a dense_alone model: real ``ps``, ``dense`` and ``entry`` processes found in a
real ZooKeeper registry (v1 nodes, as agents write them, ``dense:0`` among them), a real ``model-manager``.

A new version rolls out under a steady Predict load: the dense server loads it beside the old one with the PS,
the entries switch, then the dense server and the PS drop the old one. No Predict fails or mixes versions, and the
new version's scores are the reference's.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from entry_reference import assert_predict_matches_reference
from kazoo.client import KazooClient
from model_manager_load import ROWS, SteadyLoad
from model_manager_procs import ManagerProcess
from procs import ServerProcess, free_port
from zk_harness import ZooKeeperServer

from monolith_serving.client.inputs import random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.discovery.replica_meta import ReplicaMeta

pytestmark = pytest.mark.integration

MODEL = "demo"
SUB_MODELS = ("ps_0", "ps_1", "dense_0", "entry")


def export_dense_version(base: Path, version: int) -> None:
    """Version ``version`` of the dense_alone demo, each sub-model folder renamed into place (complete at once)."""
    staging = base.parent / f"staging-{version}"
    write_demo(
        DemoOptions(
            out=staging, num_ps=2, rows=ROWS, version=version, seed=version, files_per_partition=1, dense_alone=True
        )
    )
    for sub_model in SUB_MODELS:
        (base / sub_model).mkdir(parents=True, exist_ok=True)
        (staging / sub_model / str(version)).rename(base / sub_model / str(version))
    shutil.rmtree(staging)


def model_config(path: Path, name: str, base_path: Path) -> Path:
    path.write_text(
        "model_config_list { config { "
        f'name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 1 } } } }\n"
    )
    return path


def test_a_dense_alone_model_rolls_out_with_its_dense_server_under_load(
    zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    export, logs = tmp_path / "exported_models", tmp_path / "logs"
    logs.mkdir()
    export_dense_version(export, 1)
    bzid = f"mmd{uuid.uuid4().hex[:8]}"
    servers: list[ServerProcess] = []
    manager: ManagerProcess | None = None
    kazoo = KazooClient(hosts=zk_server.hosts)
    kazoo.start(timeout=15)

    def serve(kind: str, name: str, *flags: str) -> ServerProcess:
        port = free_port()
        config = model_config(logs / f"{name}.conf", name, export / name)
        args = ["--host=127.0.0.1", f"--port={port}", f"--model_config_file={config}", *flags]
        server = ServerProcess(kind, args, port=port, log_path=logs / f"{name}.log").start()
        servers.append(server)
        return server

    try:
        poll = "--file_system_poll_wait_seconds=0.5"
        ps = [serve("ps", f"ps_{shard}", "--num_ps=2", poll) for shard in (0, 1)]
        dense = serve("dense", "dense_0", poll)
        entry = serve(
            "entry",
            "entry",
            *(f"--ps_targets={p.address}" for p in ps),
            f"--dense_targets={dense.address}",
            "--file_system_poll_wait_seconds=0.2",
            "--fetch_ps_timeout_ms=2000",
        )
        registered = [("ps", 0, "0", ps[0]), ("ps", 1, "0", ps[1]), ("dense", 0, "0", dense)]
        for server_type, task, replica, process in [*registered, ("entry", 0, f"{0:011d}", entry)]:
            meta = ReplicaMeta(
                address=process.address, stat=30, model_name=MODEL, server_type=server_type, task=task, replica=0
            )
            kazoo.create(
                f"/{bzid}/service/{MODEL}/{server_type}:{task}/{replica}", meta.to_json(), ephemeral=True, makepath=True
            )
        manager = ManagerProcess(logs / "manager.log", export, zk_server, bzid, rollout_timeout_s=60)
        manager.wait_status("version 1 served", lambda s: s["serving"] == 1 and s["rollout"]["phase"] == "idle", 90)
        with SteadyLoad(entry.address, export) as load:
            time.sleep(1.0)
            export_dense_version(export, 2)
            final = manager.wait_status(
                "version 2 rolled out everywhere",
                lambda s: (
                    s["serving"] == 2
                    and s["rollout"]["phase"] == "idle"
                    and all(r["available"] == [2] for r in s["replicas"])
                ),
                90,
            )
            time.sleep(1.0)
        result = load.result
        assert result.errors == [] and result.mixed == [], (result.errors[:5], result.mixed[:5])
        assert result.versions == {1, 2} and result.ok > 10
        assert final["rollout"]["last"]["outcome"] == "succeeded"
        assert final["serving_version"] == {"entry": 2, "ps_0": 2, "ps_1": 2, "dense_0": 2}
        spec = load_serving_spec(export / "entry" / "2")
        examples = random_examples(spec, 6, np.random.default_rng(7), rows=ROWS)
        assert_predict_matches_reference(entry.address, export, examples, version=2)
    finally:
        if manager is not None:
            manager.stop()
        kazoo.stop()
        kazoo.close()
        for server in reversed(servers):
            server.stop()
