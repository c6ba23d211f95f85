"""docker-compose.yml without running it: valid for Debian's docker-compose 1.29 and the compose-spec schema, and
consistent with the Prometheus config, the agent.conf files it mounts and the parser that reads them."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tools import (
    DEPLOY,
    REPO,
    CommandFailed,
    ensure_command,
    ensure_python_tool,
    monolith_commands_in_shell,
    parse_command_line,
    run,
)

from monolith_serving.core.agent_conf import DeployType, load_agent_config, resolve_environment
from monolith_serving.proxy.main import configure as configure_proxy

COMPOSE = REPO / "docker-compose.yml"
IMAGE_VARIABLES = {
    "MONOLITH_IMAGE": "local/monolith:x",
    "ZOOKEEPER_IMAGE": "local/zookeeper:x",
    "PROMETHEUS_IMAGE": "local/prometheus:x",
    "GRAFANA_IMAGE": "local/grafana:x",
    "CONSUL_IMAGE": "local/consul:x",
}
MONOLITH_SERVICES = {
    "export-demo", "model-manager", "ps-0-0", "ps-0-1", "ps-1-0", "ps-1-1", "entry-0", "entry-1",
    "replica-manager", "proxy",
}  # fmt: skip


@pytest.fixture(scope="module")
def docker_compose() -> str:
    return ensure_command("docker-compose", debian_package="docker-compose")


def _config(docker_compose: str, env: dict[str, str] | None = None, *profiles: str) -> dict[str, Any]:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    done = run([docker_compose, "-f", COMPOSE, *flags, "config"], env=env)
    data: dict[str, Any] = yaml.safe_load(done.stdout)
    return data


def test_docker_compose_1_29_accepts_it(docker_compose: str) -> None:
    for env in ({}, {"MONOLITH_DISCOVERY": "consul"}, IMAGE_VARIABLES):
        done = run([docker_compose, "-f", COMPOSE, "config", "-q"], env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert not done.stderr.strip(), done.stderr  # no warnings (unset variables, ignored keys)


def test_compose_spec_schema_accepts_it() -> None:
    checker = ensure_python_tool("check-jsonschema", "check-jsonschema>=0.28")
    done = run([checker, "--builtin-schema", "vendor.compose-spec", COMPOSE], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_check_rejects_a_bad_key(tmp_path: Path) -> None:
    checker = ensure_python_tool("check-jsonschema", "check-jsonschema>=0.28")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:\n      test:", "    healthcheck:\n      tset:", 1))
    assert run([checker, "--builtin-schema", "vendor.compose-spec", broken], check=False).returncode != 0


def test_images_come_from_variables(docker_compose: str) -> None:
    services = _config(docker_compose, IMAGE_VARIABLES, "monitoring", "consul")["services"]
    for name in MONOLITH_SERVICES:
        assert services[name]["image"] == IMAGE_VARIABLES["MONOLITH_IMAGE"], name
    assert services["zookeeper"]["image"] == IMAGE_VARIABLES["ZOOKEEPER_IMAGE"]
    assert services["prometheus"]["image"] == IMAGE_VARIABLES["PROMETHEUS_IMAGE"]
    assert services["grafana"]["image"] == IMAGE_VARIABLES["GRAFANA_IMAGE"]
    assert services["consul"]["image"] == IMAGE_VARIABLES["CONSUL_IMAGE"]
    defaults = _config(docker_compose)["services"]
    assert defaults["zookeeper"]["image"] == "zookeeper:3.8"
    assert defaults["proxy"]["image"] == "monolith-serving:latest"


def test_topology_profiles_and_ports() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(raw) == MONOLITH_SERVICES | {"zookeeper", "prometheus", "grafana", "consul"}
    profiles = {name: tuple(service.get("profiles", ())) for name, service in raw.items()}
    assert profiles["prometheus"] == profiles["grafana"] == ("monitoring",)
    assert profiles["consul"] == ("consul",)
    assert all(not p for name, p in profiles.items() if name not in ("prometheus", "grafana", "consul"))
    assert raw["proxy"]["ports"] == ["${PROXY_GRPC_PORT:-8500}:8500", "${PROXY_REST_PORT:-8501}:8501"]


def test_every_long_running_service_has_a_healthcheck_and_start_order(docker_compose: str) -> None:
    services = _config(docker_compose, {}, "monitoring", "consul")["services"]
    for name, service in services.items():
        if name == "export-demo":
            assert service["restart"] == "no"
            continue
        assert service["healthcheck"]["test"], name
    for name in ("ps-0-0", "ps-0-1", "ps-1-0", "ps-1-1", "entry-0", "entry-1"):
        assert services[name]["depends_on"] == {
            "zookeeper": {"condition": "service_healthy"},
            "export-demo": {"condition": "service_completed_successfully"},
        }, name
    assert services["proxy"]["depends_on"] == {
        "entry-0": {"condition": "service_healthy"},
        "entry-1": {"condition": "service_healthy"},
    }
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def _monolith_command_lines(service: dict[str, Any]) -> list[list[str]]:
    """What a service of the monolith image runs through `monolith-serving`: its command (the image's entrypoint
    is `monolith-serving`) or the `monolith-serving ...` of a shell entrypoint, and its healthcheck's."""
    lines: list[list[str]] = []
    if "entrypoint" in service:
        for part in [*service["entrypoint"], *service.get("command", [])]:
            lines += monolith_commands_in_shell(part)
    elif "command" in service:
        lines.append(list(service["command"]))
    health = service.get("healthcheck", {}).get("test", [])
    if health[:1] == ["CMD-SHELL"]:
        lines += monolith_commands_in_shell(health[1])
    elif health[:2] == ["CMD", "monolith-serving"]:
        lines.append(health[2:])
    return lines


def test_every_command_line_parses_with_its_command(docker_compose: str) -> None:
    """Each `monolith-serving` command line of the file, parsed by that command's current parser: a renamed or
    removed flag would otherwise show only when the container exits 2 at start."""
    services = _config(docker_compose, IMAGE_VARIABLES, "monitoring", "consul")["services"]
    parsed = set()
    for name, service in services.items():
        if service["image"] != IMAGE_VARIABLES["MONOLITH_IMAGE"]:
            continue
        lines = _monolith_command_lines(service)
        assert lines, f"{name}: no monolith-serving command found"
        for argv in lines:
            parse_command_line(argv)
            parsed.add(argv[0])
    assert parsed == {"export-demo", "model-manager", "agent", "replica-manager", "proxy", "health"}


def test_command_lines_are_parsed_as_the_command_parses_them_at_start() -> None:
    """A model server or the proxy takes absl's syntax (`-flag`, `--noflag`, `--version`) as `monolith-serving`
    does at start; the other commands keep plain argparse, so there such a spelling stays an error."""
    args = parse_command_line(["proxy", "-port=8500", "--nocoalesce_predicts"])
    assert (args.port, args.coalesce_predicts) == (8500, False)
    with pytest.raises(CommandFailed, match="unrecognized arguments: -timeout_s=1"):
        parse_command_line(["health", "--addr=localhost:1", "-timeout_s=1"])


def test_the_image_healthcheck_parses_with_its_command() -> None:
    instructions = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    healthcheck = [line for line in instructions.splitlines() if line.startswith("HEALTHCHECK ")]
    assert len(healthcheck) == 1
    (argv,) = monolith_commands_in_shell(healthcheck[0].split(" CMD ", 1)[1])
    assert parse_command_line(argv).timeout_s > 0


def _duration_s(text: str) -> float:
    """A compose duration (``40s``, ``1m30s``, ``1h``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(number) * units[unit] for number, unit in parts)


def test_the_proxy_is_given_longer_to_stop_than_its_drain(docker_compose: str) -> None:
    # Past stop_grace_period Docker SIGKILLs the proxy: the drain (--drain_timeout_s, as the proxy parses its
    # command) must end before, with time left to close its channels and registry session.
    proxy = _config(docker_compose)["services"]["proxy"]
    parser = argparse.ArgumentParser()
    configure_proxy(parser)
    drain_timeout_s = parser.parse_args(proxy["command"][1:]).drain_timeout_s
    assert _duration_s(proxy["stop_grace_period"]) >= drain_timeout_s + 5


def _mounted(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (as `docker-compose config` resolves them)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts[volume["target"]] = Path(volume["source"])
            continue
        source, target = volume.split(":")[:2]
        if source.startswith("/"):
            mounts[target] = Path(source)
    return mounts


@pytest.mark.parametrize("discovery", ["zk", "consul"])
def test_agent_confs_are_read_by_the_real_parser(docker_compose: str, discovery: str, tmp_path: Path) -> None:
    services = _config(docker_compose, {"MONOLITH_DISCOVERY": discovery})["services"]
    tasks: dict[tuple[int, int], tuple[int, ...]] = {}
    for name, service in services.items():
        mounts = _mounted(service)
        confs = {target: source for target, source in mounts.items() if target.startswith("/etc/monolith/")}
        if not confs:
            continue
        for source in confs.values():
            assert source.is_file(), f"{name} mounts missing {source}"
        # Lay the files out as the container sees them; includes resolve next to agent.conf.
        root = tmp_path / name
        root.mkdir()
        for target, source in confs.items():
            shutil.copy(source, root / Path(target).name)
        conf_file = root / ("agent.conf" if (root / "agent.conf").exists() else "cluster.conf")
        config = load_agent_config(conf_file)
        assert config.discovery.value == discovery, name
        assert config.num_ps == 2 and config.base_path == "/models/demo", name
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        resolved = resolve_environment(config, env)
        if config.deploy_type is DeployType.PS:
            tasks[(resolved.shard_id, resolved.replica_id)] = resolved.ps_tasks()
            assert resolved.tfs_grpc_port == 8500 and resolved.agent_port == 8600, name
    # 2 shards x 2 replicas; each shard serves its own PS task.
    assert tasks == {(0, 0): (0,), (0, 1): (0,), (1, 0): (1,), (1, 1): (1,)}


def test_export_matches_the_agent_conf() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    script = raw["export-demo"]["command"][0]
    assert "--num-ps 2" in script and "/models/demo" in script
    common = (DEPLOY / "compose" / "common.conf").read_text()
    assert "num_ps 2" in common and "base_path /models/demo" in common


def test_prometheus_scrapes_every_long_running_monolith_service(docker_compose: str) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        if job["job_name"] != "prometheus"
        for static in job["static_configs"]
        for target in static["targets"]
    }
    hosts = {target.split(":")[0] for target in targets}
    assert hosts == MONOLITH_SERVICES - {"export-demo"}
    ps_shards = {
        target: static["labels"]["shard"]
        for job in config["scrape_configs"]
        if job["job_name"] == "ps"
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert all(target.startswith(f"ps-{shard}-") for target, shard in ps_shards.items())
    services = _config(docker_compose, {}, "monitoring")["services"]
    mounts = _mounted(services["prometheus"])
    for file in ("prometheus.yml", "recording_rules.yml", "alerts.yml"):
        assert mounts[f"/etc/prometheus/{file}"] == DEPLOY / file
    grafana = _mounted(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == DEPLOY / "grafana" / "dashboards"
