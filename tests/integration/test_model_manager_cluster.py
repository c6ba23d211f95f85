"""The model manager end to end: real ``ps`` and ``entry`` processes, a real ZooKeeper registry, a real
``model-manager`` process.

Replicas are registered in ZooKeeper by the test (v1 ReplicaMeta nodes, as the agent writes them), and the
manager finds them there. The tests run in order on one cluster: a new version under a steady Predict load,
a version with a corrupt PS dump, a rollback, and the status command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from model_manager_load import ROWS, SteadyLoad, export_version
from procs import ServerProcess, free_port
from zk_harness import ZooKeeperServer

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.discovery.replica_meta import ReplicaMeta

pytestmark = pytest.mark.integration

MODEL = "demo"


def model_config(path: Path, name: str, base_path: Path, version: int) -> Path:
    path.write_text(
        "model_config_list { config { "
        f'name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" '
        f"model_version_policy {{ specific {{ versions: {version} }} }} }} }}\n"
    )
    return path


@dataclass
class Cluster:
    export: Path
    logs: Path
    zk: ZooKeeperServer
    bzid: str = field(default_factory=lambda: f"mm{uuid.uuid4().hex[:8]}")
    ps: list[ServerProcess] = field(default_factory=list)
    entry: ServerProcess | None = None
    manager: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    kazoo: KazooClient | None = None

    def start(self) -> None:
        for shard in range(2):
            port = free_port()
            config = model_config(self.logs / f"ps_{shard}.conf", f"ps_{shard}", self.export / f"ps_{shard}", 1)
            self.ps.append(
                ServerProcess(
                    "ps",
                    [
                        "--host=127.0.0.1",
                        f"--port={port}",
                        f"--model_config_file={config}",
                        "--num_ps=2",
                        "--file_system_poll_wait_seconds=0.5",
                    ],
                    port=port,
                    log_path=self.logs / f"ps_{shard}.log",
                ).start()
            )
        port = free_port()
        config = model_config(self.logs / "entry.conf", "entry", self.export / "entry", 1)
        self.entry = ServerProcess(
            "entry",
            [
                f"--port={port}",
                f"--model_config_file={config}",
                f"--ps_targets={self.ps[0].address}",
                f"--ps_targets={self.ps[1].address}",
                "--file_system_poll_wait_seconds=0.2",
                "--fetch_ps_timeout_ms=2000",
            ],
            port=port,
            log_path=self.logs / "entry.log",
        ).start()
        # What the agent does: one ephemeral ReplicaMeta node per server.
        self.kazoo = KazooClient(hosts=self.zk.hosts)
        self.kazoo.start(timeout=15)
        nodes = [("ps", shard, str(0), process) for shard, process in enumerate(self.ps)]
        nodes.append(("entry", 0, f"{0:011d}", self.entry))
        for server_type, task, replica, process in nodes:
            meta = ReplicaMeta(
                address=process.address, stat=30, model_name=MODEL, server_type=server_type, task=task, replica=0
            )
            path = f"/{self.bzid}/service/{MODEL}/{server_type}:{task}/{replica}"
            self.kazoo.create(path, meta.to_json(), ephemeral=True, makepath=True)
        self.start_manager()

    def start_manager(self) -> None:
        self.http_port = free_port()
        log = open(self.logs / "manager.log", "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.manager = subprocess.Popen(
            [
                sys.executable, "-m", "monolith_serving", "model-manager", "run",
                f"--model={MODEL}", f"--export_base={self.export}", f"--zk_servers={self.zk.hosts}",
                f"--bzid={self.bzid}", "--host=127.0.0.1", f"--metrics_port={self.http_port}",
                "--scan_interval_s=0.5", "--poll_interval_s=0.2", "--drain_s=0.5", "--rollout_timeout_s=60",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def manager_log(self) -> str:
        return (self.logs / "manager.log").read_text(errors="replace")[-4000:]

    def http(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return bytes(response.read())

    def status(self) -> dict[str, Any]:
        snapshot = json.loads(self.http("/status"))
        return dict(snapshot["models"].get(MODEL, {}))

    def wait_status(self, predicate: Any, timeout_s: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.manager is not None and self.manager.poll() is None, self.manager_log()
            try:
                last = self.status()
            except OSError:
                last = {}
            if last and predicate(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"status never matched; last {json.dumps(last, indent=1)}\n{self.manager_log()}")

    def stop(self) -> None:
        if self.manager is not None:
            self.manager.terminate()
            try:
                self.manager.wait(15)
            except subprocess.TimeoutExpired:
                self.manager.kill()
                self.manager.wait()
        if self.kazoo is not None:
            self.kazoo.stop()
            self.kazoo.close()
        if self.entry is not None:
            self.entry.stop()
        for process in self.ps:
            process.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, zk_server: ZooKeeperServer) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("model-manager")
    export = root / "exported_models"
    export_version(export, 1)
    logs = root / "logs"
    logs.mkdir()
    running = Cluster(export, logs, zk_server)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def predict_version(cluster: Cluster) -> int:
    assert cluster.entry is not None
    with SteadyLoad(cluster.entry.address, cluster.export) as load:
        deadline = time.monotonic() + 10
        while load.result.ok + len(load.result.errors) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not load.result.errors and not load.result.mixed, load.result
    assert len(load.result.versions) == 1, load.result
    return load.result.versions.pop()


def test_a_new_version_rolls_out_under_load_without_errors_or_mixed_versions(cluster: Cluster) -> None:
    cluster.wait_status(lambda s: s["serving"] == 1 and s["rollout"]["phase"] == "idle")
    assert cluster.entry is not None
    with SteadyLoad(cluster.entry.address, cluster.export) as load:
        time.sleep(1.0)
        export_version(cluster.export, 2)
        status = cluster.wait_status(
            lambda s: s["serving"] == 2 and s["rollout"]["phase"] == "idle" and s["serving_version"].get("ps_1") == 2
        )
        time.sleep(1.0)
    result = load.result
    assert result.errors == [], result.errors[:5]
    assert result.mixed == [], result.mixed[:5]
    assert result.versions == {1, 2} and result.ok > 20
    assert status["rollout"]["last"]["outcome"] == "succeeded"
    assert status["serving_version"] == {"entry": 2, "ps_0": 2, "ps_1": 2}  # PS cleaned up: only 2 loaded
    for replica in status["replicas"]:
        assert replica["available"] == [2], replica


def test_a_corrupt_ps_dump_aborts_the_rollout_and_the_old_version_keeps_serving(cluster: Cluster) -> None:
    staging = cluster.export.parent / "staging-3"
    write_demo(DemoOptions(out=staging, num_ps=2, rows=ROWS, version=3, seed=3, files_per_partition=1))
    for dump in (staging / "ps_1" / "3" / "assets").iterdir():
        dump.write_bytes(dump.read_bytes()[:37] + b"\xff" * 64)  # broken record framing and CRC
    for sub_model in ("ps_0", "ps_1", "entry"):
        (staging / sub_model / "3").rename(cluster.export / sub_model / "3")
    status = cluster.wait_status(lambda s: (s["rollout"]["last"] or {}).get("version") == 3)
    assert status["rollout"]["last"]["outcome"] == "failed"
    assert "ps_1" in status["rollout"]["last"]["reason"]
    assert status["serving"] == 2 and 3 in status["failed_versions"]
    assert predict_version(cluster) == 2
    metrics = cluster.http("/metrics").decode()
    assert f'monolith_model_manager_rollout_failures_total{{model="{MODEL}"}} 1.0' in metrics
    time.sleep(2.0)  # several scans later it is still not retried (its files did not change)
    assert cluster.status()["rollout"]["last"]["version"] == 3
    assert cluster.status()["serving_version"]["ps_0"] == 2


def test_rollback_goes_back_to_an_older_version_on_disk(cluster: Cluster) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "monolith_serving", "model-manager", "rollback", f"--model={MODEL}", "--to=1",
            f"--manager=127.0.0.1:{cluster.http_port}",
        ],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(result.stdout)
    assert record["outcome"] == "succeeded" and record["rollback"] and record["previous"] == 2
    assert predict_version(cluster) == 1
    status = cluster.wait_status(lambda s: s["serving_version"].get("ps_0") == 1)
    assert status["serving"] == 1 and status["hold_floor"] == 3
    time.sleep(1.5)  # pinned: version 2 is not rolled out again by itself
    assert cluster.status()["serving"] == 1


def test_status_command_prints_versions_replicas_and_rollout_state(cluster: Cluster) -> None:
    manager = f"--manager=127.0.0.1:{cluster.http_port}"
    base = [sys.executable, "-m", "monolith_serving", "model-manager", "status", manager]
    text = subprocess.run(base, capture_output=True, timeout=60, check=True).stdout.decode()
    assert f"model {MODEL}: serving 1" in text
    assert "ps_0" in text and "entry" in text and "last rollback: 2 -> 1 succeeded" in text
    as_json = json.loads(subprocess.run([*base, "--json"], capture_output=True, timeout=60, check=True).stdout)
    model = as_json["models"][MODEL]
    assert model["versions_present"] == [1, 2, 3] and model["failed_versions"] == [3]
    assert {r["sub_graph"] for r in model["replicas"]} == {"entry", "ps_0", "ps_1"}
    metrics = cluster.http("/metrics").decode()
    assert f'monolith_model_manager_serving_version{{model="{MODEL}",sub_graph="ps_1"}} 1.0' in metrics
    assert "monolith_model_manager_version_delay_seconds" in metrics


def test_a_restarted_manager_remembers_failed_versions_and_the_rollback_pin(cluster: Cluster) -> None:
    assert cluster.kazoo is not None and cluster.manager is not None
    data, _ = cluster.kazoo.get(f"/{cluster.bzid}/model_manager/{MODEL}")
    saved = json.loads(data)
    assert saved["serving"] == 1 and saved["phase"] == "idle" and saved["target"] is None
    assert list(saved["failed"]) == ["3"] and saved["rollback_pin"] == {"version": 1, "hold_floor": 3}
    assert saved["last_rollout"]["rollback"] and saved["updated_at"] > 0
    cluster.manager.kill()  # no goodbye: everything it knows must already be in ZooKeeper
    cluster.manager.wait(15)
    cluster.start_manager()
    status = cluster.wait_status(lambda s: s["serving"] == 1 and s["failed_versions"] == [3])
    assert status["hold_floor"] == 3
    time.sleep(2.0)  # several scans: neither the failed 3 nor the pinned-over 2 is rolled out
    status = cluster.status()
    assert status["serving"] == 1 and status["rollout"]["last"] is None and status["rollout"]["phase"] == "idle"
    assert predict_version(cluster) == 1
    assert "restored state" in (cluster.logs / "manager.log").read_text(errors="replace")
