"""The compose cluster for real: `docker-compose up` with images built from Debian packages, Predicts through the
published proxy port checked against an independent scorer, Prometheus scraping every target, and one PS replica
and one entry killed under steady load without a failed request; then `docker-compose down -v`.

The tests of this module share one cluster and run in file order (the failover test kills containers last).
Container logs are saved to build/compose-e2e/<project>.log before the cluster is removed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from deploy_tools import REPO, Images, ensure_command, free_port, run, wait_until

from monolith_serving.client.inputs import encode_example_batch, encode_instances, predict_request, random_examples
from monolith_serving.core.serving_spec import ServingSpec, load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

# The oracle of the entry tests: reads the export's files itself, shares no code with the servers.
sys.path.insert(0, str(REPO / "tests" / "integration"))
from entry_reference import ReferenceScorer

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

COMPOSE = REPO / "docker-compose.yml"
LOGS = REPO / "build" / "compose-e2e"
# Everything but Grafana (no Grafana package exists to build an image from) and Consul (same reason).
SERVICES = (
    "zookeeper", "export-demo", "model-manager", "ps-0-0", "ps-0-1", "ps-1-0", "ps-1-1", "entry-0", "entry-1",
    "replica-manager", "proxy", "prometheus",
)  # fmt: skip
ROWS = 1000  # export-demo's default --rows, used by docker-compose.yml


@dataclass
class ComposeCluster:
    docker_compose: str
    project: str
    env: dict[str, str]
    proxy_grpc: str
    proxy_rest: str
    prometheus: str
    export: Path
    spec: ServingSpec = field(init=False)

    def compose(self, *args: str, timeout_s: float = 600, check: bool = True) -> str:
        cmd = [self.docker_compose, "-f", str(COMPOSE), "-p", self.project, "--profile", "monitoring", *args]
        return run(cmd, env=self.env, timeout_s=timeout_s, check=check).stdout

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def state(self, service: str) -> dict[str, Any]:
        out = run(["docker", "inspect", "--format", "{{json .State}}", self.container(service)]).stdout
        state: dict[str, Any] = json.loads(out)
        return state

    def restarts(self, service: str) -> int:
        """How often Docker restarted the container (``restart: unless-stopped``): each one is a crash."""
        return int(run(["docker", "inspect", "--format", "{{.RestartCount}}", self.container(service)]).stdout)


def _health(state: dict[str, Any]) -> str:
    health = state.get("Health")
    return str(health["Status"]) if health else str(state["Status"])


def _health_report(state: dict[str, Any]) -> str:
    """What an assertion about a container's health shows: its status, restarts and its last failed checks' output
    (Docker keeps the last five checks), so a CI failure says why without the saved logs."""
    health = state.get("Health") or {}
    failed = [
        f"{check.get('Start', '?')} exit {check.get('ExitCode')}: {str(check.get('Output', '')).strip()[-400:]}"
        for check in health.get("Log") or []
        if check.get("ExitCode") != 0
    ]
    return (
        f"status {_health(state)}, exit code {state.get('ExitCode')}, "
        f"failing streak {health.get('FailingStreak', 0)}; failed checks: {failed or 'none'}"
    )


@pytest.fixture(scope="module")
def cluster(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeCluster]:
    docker_compose = ensure_command("docker-compose", debian_package="docker-compose")
    project = f"monolithe2e{os.getpid()}"
    ports = {name: free_port() for name in ("PROXY_GRPC_PORT", "PROXY_REST_PORT", "PROMETHEUS_PORT")}
    env = {
        "MONOLITH_IMAGE": images.monolith,
        "ZOOKEEPER_IMAGE": images.zookeeper,
        "PROMETHEUS_IMAGE": images.prometheus,
        **{name: str(port) for name, port in ports.items()},
    }
    running = ComposeCluster(
        docker_compose=docker_compose,
        project=project,
        env=env,
        proxy_grpc=f"127.0.0.1:{ports['PROXY_GRPC_PORT']}",
        proxy_rest=f"http://127.0.0.1:{ports['PROXY_REST_PORT']}",
        prometheus=f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}",
        export=tmp_path_factory.mktemp("compose-export") / "demo",
    )
    try:
        # `up -d` itself waits for the healthy/completed conditions of depends_on (the proxy's entries).
        running.compose("up", "-d", *SERVICES, timeout_s=900)
        _wait_healthy(running, [s for s in SERVICES if s != "export-demo"], timeout_s=300)
        # The exact files the cluster serves, for the reference scorer.
        run(["docker", "cp", f"{running.container('export-demo')}:/models/demo", str(running.export)])
        running.spec = load_serving_spec(running.export / "entry" / "1")
        yield running
    finally:
        LOGS.mkdir(parents=True, exist_ok=True)
        logs = running.compose("logs", "--no-color", "--tail=300", check=False, timeout_s=120)
        (LOGS / f"{project}.log").write_text(logs)
        running.compose("down", "-v", "--remove-orphans", check=False, timeout_s=300)


def _wait_healthy(cluster: ComposeCluster, services: list[str], *, timeout_s: float) -> None:
    """Waits until every one of ``services`` is healthy in one pass (each is looked at again in every pass, so one
    that flips back meanwhile is seen); the timeout names those that are not, with their checks."""
    deadline = time.monotonic() + timeout_s
    while True:
        pending = [service for service in services if _health(cluster.state(service)) != "healthy"]
        if not pending:
            return
        if time.monotonic() > deadline:
            reports = "; ".join(f"{service}: {_health_report(cluster.state(service))}" for service in pending)
            raise AssertionError(f"not healthy after {timeout_s:.0f} s: {reports}")
        time.sleep(2)


def _scores(response: predict_pb2.PredictResponse) -> np.ndarray:
    return from_tensor_proto(response.outputs["scores"], "scores")


def test_every_service_is_up(cluster: ComposeCluster) -> None:
    export = cluster.state("export-demo")
    assert export["Status"] == "exited" and export["ExitCode"] == 0
    long_running = [service for service in SERVICES if service != "export-demo"]
    # Healthy once is not enough: each must still be up, never restarted. A check starved of CPU by its dozen
    # neighbours on a small CI machine can fail a few times in a row and flip a container to "unhealthy" for a
    # moment; it must be healthy again within a minute, or it is really down (the timeout shows its checks).
    _wait_healthy(cluster, long_running, timeout_s=60)
    for service in long_running:
        state = cluster.state(service)
        assert state["Status"] == "running", f"{service}: {_health_report(state)}"
        assert cluster.restarts(service) == 0, f"{service} restarted: {_health_report(state)}"


def test_predicts_through_the_proxy_match_the_reference(cluster: ComposeCluster) -> None:
    reference = ReferenceScorer(cluster.export, 1)
    with grpc.insecure_channel(cluster.proxy_grpc) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for seed in range(4):
            examples = random_examples(cluster.spec, 8, np.random.default_rng(seed), rows=ROWS + 50)
            inputs = (
                {"instances": encode_instances(cluster.spec, examples)}
                if seed % 2 == 0
                else {"example_batch": [encode_example_batch(cluster.spec, examples)]}
            )
            response = stub.Predict(predict_request("entry", inputs), timeout=10)
            np.testing.assert_allclose(_scores(response), reference.scores(examples), rtol=1e-5, atol=1e-6)
            assert response.model_spec.version.value == 1


def test_rest_port_is_published(cluster: ComposeCluster) -> None:
    with urllib.request.urlopen(f"{cluster.proxy_rest}/v1/models/entry", timeout=10) as response:
        body = json.load(response)
    assert [s["state"] for s in body["model_version_status"]] == ["AVAILABLE"]


def test_prometheus_scrapes_every_target(cluster: ComposeCluster) -> None:
    def targets() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{cluster.prometheus}/api/v1/targets", timeout=10) as response:
            active: list[dict[str, Any]] = json.load(response)["data"]["activeTargets"]
        return active

    def all_up() -> bool:
        found = targets()
        return bool(found) and all(t["health"] == "up" for t in found)

    try:
        wait_until(all_up, timeout_s=90, interval_s=3, what="every Prometheus target up")
    except AssertionError:
        down = [
            f"{t['labels']['job']} {t['scrapeUrl']}: {t.get('lastError')}" for t in targets() if t["health"] != "up"
        ]
        raise AssertionError("Prometheus targets not up:\n  " + "\n  ".join(down)) from None
    jobs = {t["labels"]["job"] for t in targets()}
    assert jobs == {"prometheus", "ps", "entry", "agent", "proxy", "replica-manager", "model-manager"}


@dataclass
class Load:
    """Closed-loop Predicts from a few threads; counts outcomes (every failure is kept with its code)."""

    target: str
    requests: list[predict_pb2.PredictRequest]
    threads: int = 4
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self, index: int) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            n = index
            while not self.stop.is_set():
                try:
                    stub.Predict(self.requests[n % len(self.requests)], timeout=10)
                except grpc.RpcError as err:
                    code = err.code() if isinstance(err, grpc.Call) else None
                    with self.lock:
                        self.failures.append(f"{code}: {err.details() if isinstance(err, grpc.Call) else err}")
                else:
                    with self.lock:
                        self.ok += 1
                n += self.threads

    def count(self) -> int:
        with self.lock:
            return self.ok


def test_killing_a_ps_replica_and_an_entry_under_load_fails_no_request(cluster: ComposeCluster) -> None:
    rng = np.random.default_rng(99)
    requests = [
        predict_request("entry", {"instances": encode_instances(cluster.spec, random_examples(cluster.spec, 4, rng))})
        for _ in range(16)
    ]
    load = Load(cluster.proxy_grpc, requests)
    workers = [threading.Thread(target=load.worker, args=(i,), daemon=True) for i in range(load.threads)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: load.count() >= 50, timeout_s=60, what="steady load")
        cluster.compose("kill", "ps-0-0")
        killed_at = load.count()
        wait_until(lambda: load.count() >= killed_at + 200, timeout_s=120, what="load after the PS kill")
        cluster.compose("kill", "entry-0")
        killed_at = load.count()
        wait_until(lambda: load.count() >= killed_at + 200, timeout_s=120, what="load after the entry kill")
        time.sleep(3)
    finally:
        load.stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not load.failures, f"{len(load.failures)} failed of {load.ok + len(load.failures)}: {load.failures[:5]}"
    assert cluster.state("ps-0-0")["Running"] is False and cluster.state("entry-0")["Running"] is False
    # The survivors still answer correctly.
    reference = ReferenceScorer(cluster.export, 1)
    examples = random_examples(cluster.spec, 8, np.random.default_rng(7), rows=ROWS)
    with grpc.insecure_channel(cluster.proxy_grpc) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(
            predict_request("entry", {"instances": encode_instances(cluster.spec, examples)}), timeout=10
        )
    np.testing.assert_allclose(_scores(response), reference.scores(examples), rtol=1e-5, atol=1e-6)


OUR_SERVICES = (
    "model-manager", "ps-0-0", "ps-0-1", "ps-1-0", "ps-1-1", "entry-0", "entry-1", "replica-manager", "proxy",
)  # fmt: skip


def test_our_services_stop_on_sigterm_with_exit_code_0(cluster: ComposeCluster) -> None:
    # Runs last: it stops the cluster. `docker-compose stop` sends SIGTERM and, after the grace period, SIGKILL;
    # a server whose shutdown hangs would end with 137, the way Kubernetes would kill it at the end of its
    # terminationGracePeriodSeconds. (The previous test killed ps-0-0 and entry-0 on purpose.)
    running = [s for s in OUR_SERVICES if cluster.state(s)["Running"]]
    assert len(running) >= 7, running
    cluster.compose("stop", "-t", "20", *running, timeout_s=300)
    assert {s: cluster.state(s)["ExitCode"] for s in running} == dict.fromkeys(running, 0)
