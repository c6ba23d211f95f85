"""The images built from Debian packages: base image usable as BASE_IMAGE, app image hardening and HEALTHCHECK,
ZooKeeper and Prometheus images serving."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator

import pytest
from deploy_tools import DEPLOY, Images, docker_json, free_port, run, wait_until

# Image builds on a fresh machine take minutes; they happen in the session fixture of the first test.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

# Started with `--entrypoint python3 -c`: a health server like every service's, SERVING or NOT_SERVING.
_HEALTH_SERVER = """
import sys, time
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
servicer = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
server.add_insecure_port("0.0.0.0:8500")
server.start()
S = health_pb2.HealthCheckResponse
status = S.SERVING if sys.argv[1] == "serving" else S.NOT_SERVING
servicer.set("", status)
time.sleep(600)
"""


@pytest.fixture
def container_names() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        run(["docker", "rm", "-f", name], check=False)


def _name(names: list[str], role: str) -> str:
    name = f"monolith-deploy-test-{role}-{os.getpid()}"
    run(["docker", "rm", "-f", name], check=False)
    names.append(name)
    return name


def test_base_image_is_a_usable_base(images: Images) -> None:
    done = run(
        [
            "docker", "run", "--rm", images.base_python, "sh", "-c",
            "python3 -c 'import sys, venv, ensurepip; print(sys.version_info[0], sys.version_info[1])'"
            " && python3 -m pip --version >/dev/null && python3 -m venv /tmp/v && /tmp/v/bin/python -c 'print(1)'",
        ]
    )  # fmt: skip
    major, minor, venv_ok = done.stdout.split()
    assert (int(major), int(minor)) >= (3, 11)
    assert venv_ok == "1"


def test_app_image_config(images: Images) -> None:
    config = json.loads(docker_json("image", "inspect", "--format", "{{json .Config}}", images.monolith))
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["monolith-serving"]
    assert "monolith-serving health --addr" in " ".join(config["Healthcheck"]["Test"])


def test_app_image_runs_cli_without_build_tools(images: Images) -> None:
    helped = run(["docker", "run", "--rm", images.monolith, "--help"])
    assert "health" in helped.stdout and "export-demo" in helped.stdout
    probe = run(
        [
            "docker", "run", "--rm", "--entrypoint", "sh", images.monolith, "-c",
            "id -u; for t in gcc cc g++ make; do command -v $t; done;"
            " ls /opt/monolith-serving/bin /opt/monolith-serving-app/bin",
        ]
    )  # fmt: skip
    lines = probe.stdout.split()
    assert lines[0] == "10001"
    assert not any(line.endswith(("/gcc", "/cc", "/g++", "/make")) for line in lines[1:])
    assert "pip" not in lines and "monolith-serving" in lines


# numba's cache counters of every compiled kernel of the kernel modules (the Dockerfile's list), after importing them.
_KERNEL_CACHE_STATS = """
import json, numba
from monolith_serving.entry import instance_wire, pool_kernels
from monolith_serving.ps import hash_kernels
dispatcher = numba.core.registry.CPUDispatcher
modules = (instance_wire, pool_kernels, hash_kernels)
kernels = [v for m in modules for v in vars(m).values() if isinstance(v, dispatcher)]
print(json.dumps({"hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
                  "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels)}))
"""


def test_app_image_loads_its_kernels_from_the_build_time_cache_on_a_read_only_root(images: Images) -> None:
    # As the Helm chart runs it: read-only root filesystem, an empty writable /tmp. The kernels compiled at build
    # time are copied into NUMBA_CACHE_DIR and loaded, none compiled again.
    done = run(
        [
            "docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "sh", images.monolith, "-c",
            f"python3 -c '{_KERNEL_CACHE_STATS}' && ls /tmp/numba-cache",
        ]
    )  # fmt: skip
    stats_line, *folders = done.stdout.splitlines()
    stats = json.loads(stats_line)
    assert stats["misses"] == 0 and stats["hits"] > 0, stats
    assert sorted(folder.split("_")[0] for folder in folders) == ["entry", "ps"]


@pytest.mark.parametrize(("mode", "expected"), [("serving", "healthy"), ("not-serving", "unhealthy")])
def test_app_image_healthcheck_uses_grpc_health(
    images: Images, container_names: list[str], mode: str, expected: str
) -> None:
    name = _name(container_names, f"health-{mode}")
    run(
        [
            "docker", "run", "-d", "--name", name, "--health-interval", "2s", "--health-retries", "2",
            "--health-start-period", "0s", "--entrypoint", "python3", images.monolith, "-c", _HEALTH_SERVER, mode,
        ]
    )  # fmt: skip

    def status() -> str:
        return docker_json("inspect", "--format", "{{.State.Health.Status}}", name)

    wait_until(lambda: status() in ("healthy", "unhealthy"), timeout_s=90, what=f"{name} health verdict")
    assert status() == expected


def test_zookeeper_image_answers_ruok(images: Images, container_names: list[str]) -> None:
    name = _name(container_names, "zk")
    run(["docker", "run", "-d", "--name", name, "-e", "ZOO_4LW_COMMANDS_WHITELIST=ruok,srvr", images.zookeeper])
    # The same probe docker-compose.yml uses as ZooKeeper's healthcheck.
    probe = [
        "docker",
        "exec",
        name,
        "bash",
        "-c",
        'exec 3<>/dev/tcp/127.0.0.1/2181; echo ruok >&3; read -t 3 r <&3; echo "$r"',
    ]

    def answered() -> bool:
        return run(probe, check=False).stdout.strip() == "imok"

    wait_until(answered, timeout_s=60, interval_s=1, what="ZooKeeper ruok")


def test_prometheus_image_loads_our_config_and_rules(images: Images, container_names: list[str]) -> None:
    name = _name(container_names, "prom")
    port = free_port()
    mounts = []
    for file in ("prometheus.yml", "recording_rules.yml", "alerts.yml"):
        mounts += ["-v", f"{DEPLOY / file}:/etc/prometheus/{file}:ro"]
    run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:9090", *mounts, images.prometheus])

    def rules() -> list[str] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=2) as response:
                body = json.load(response)
        except OSError:
            return None
        return [group["name"] for group in body["data"]["groups"]]

    wait_until(lambda: bool(rules()), timeout_s=60, what="Prometheus rules API")
    assert sorted(rules() or []) == ["monolith-serving.alerts", "monolith-serving.records"]
