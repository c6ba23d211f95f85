"""The Helm chart: `helm lint --strict`, `helm template` over the value sets in helm/monolith-serving/ci/, Kubernetes
1.29 schema validation of the output, and what the manifests mean (shard ids from ordinals, agent.conf parsed by
the real parser, gRPC probes, PDB and ServiceMonitor selectors, NOTES). No cluster is available here."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tools import (
    CHART,
    DEPLOY,
    REPO,
    Helm,
    ensure_command,
    ensure_python_tool,
    helm_binary,
    helm_env,
    helm_template,
    parse_command_line,
    render_notes,
    run,
)

from monolith_serving.agent.config import model_version_policy
from monolith_serving.core.agent_conf import DeployType, VersionPolicy, load_agent_config, resolve_environment

DEPLOY_DOC = REPO / "docs" / "deploy.md"
VALUE_SETS = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
IMAGE_REPOSITORIES = ("monolith-serving", "registry.example/monolith-serving")
RULE_FILES = ("recording_rules.yml", "alerts.yml")  # deploy/<name> is copied to helm/monolith-serving/rules/<name>
# As long as Helm allows a release name to be (53 characters): object names derive from it.
LONGEST_RELEASE = "ranking-ctr-serving-production-europe-west4-blue-0012"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    yield helm_binary(), helm_env(tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def kubernetes_validate() -> str:
    return ensure_python_tool("kubernetes-validate", "kubernetes-validate>=1.29")


def _render(helm: Helm, values: str) -> list[dict[str, Any]]:
    done = helm_template(helm, "-f", str(CHART / "ci" / values))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {len(found)} found"
    return found[0]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def _values(name: str) -> dict[str, Any]:
    defaults: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    overrides = yaml.safe_load((CHART / "ci" / name).read_text()) or {}

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    return merge(defaults, overrides)


def _start_script_output(sts: dict[str, Any], ordinal: int, tmp_path: Path) -> list[str]:
    """`$SHARD_ID $REPLICA_ID <args>` as the PS StatefulSet's start script sets them for pod `ordinal`, run with
    a stand-in `monolith-serving` on PATH."""
    stand_in = tmp_path / "monolith-serving"
    if not stand_in.exists():
        stand_in.write_text('#!/bin/sh\necho "$SHARD_ID $REPLICA_ID $*"\n')
        stand_in.chmod(0o755)
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "MY_POD_NAME": f"{sts['metadata']['name']}-{ordinal}"}
    return run(["/bin/sh", "-c", container["args"][0]], env=env).stdout.split()


def test_value_sets_exist() -> None:
    assert {"default-values.yaml", "external-zk-values.yaml", "consul-values.yaml"} <= set(VALUE_SETS)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_lint_strict(helm: Helm, values: str) -> None:
    binary, env = helm
    done = run([binary, "lint", "--strict", CHART, "-f", CHART / "ci" / values], env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", VALUE_SETS)
def test_manifests_pass_kubernetes_schema(helm: Helm, kubernetes_validate: str, values: str, tmp_path: Path) -> None:
    done = helm_template(helm, "-f", str(CHART / "ci" / values))
    assert done.returncode == 0, done.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(done.stdout)
    checked = run([kubernetes_validate, "--strict", "-k", "1.29", rendered], check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Only CRDs (ServiceMonitor, PrometheusRule) may lack a schema; every built-in kind must have been checked.
    for line in (checked.stdout + checked.stderr).splitlines():
        assert not line.startswith("ERROR"), line
        if line.startswith("WARN"):
            assert "kind ServiceMonitor " in line or "kind PrometheusRule " in line, line


def test_schema_validation_catches_an_unknown_field(helm: Helm, kubernetes_validate: str, tmp_path: Path) -> None:
    done = helm_template(helm)
    broken = tmp_path / "broken.yaml"
    broken.write_text(done.stdout.replace("periodSeconds:", "periodSecondz:", 1))
    assert run([kubernetes_validate, "--strict", "-k", "1.29", broken], check=False).returncode != 0


@pytest.mark.parametrize("values", VALUE_SETS)
def test_ps_ordinals_cover_every_shard_and_replica(helm: Helm, values: str, tmp_path: Path) -> None:
    """Runs the StatefulSet's start script for every ordinal with a stand-in `monolith-serving` on PATH."""
    docs = _render(helm, values)
    sts = _one(docs, "StatefulSet", "-ps")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    v = _values(values)
    shards = v["ps"]["shards"] or v["model"]["numPs"]
    assert sts["spec"]["replicas"] == shards * v["ps"]["replicasPerShard"]
    seen = set()
    for ordinal in range(sts["spec"]["replicas"]):
        out = _start_script_output(sts, ordinal, tmp_path)
        shard, replica = int(out[0]), int(out[1])
        assert out[2:5] == ["agent", "--conf", "/etc/monolith/ps.conf"]
        assert out[5:7] == ["--metrics_port", str(v["ports"]["metrics"])]
        assert [arg.strip("'") for arg in out[7:]] == v["ps"]["extraArgs"]
        seen.add((shard, replica))
    assert seen == {(s, r) for s in range(shards) for r in range(v["ps"]["replicasPerShard"])}


@pytest.mark.parametrize("values", VALUE_SETS)
def test_names_fit_kubernetes_limits_under_the_longest_release_name(helm: Helm, values: str) -> None:
    """Every object name stays a DNS label (63 characters). A StatefulSet's stays within 52: its controller labels
    each pod `controller-revision-hash: <name>-<hash of up to 10 characters>`, a label value limited to 63
    characters, and a StatefulSet whose pods cannot be labelled gets none."""
    assert len(LONGEST_RELEASE) == 53
    done = helm_template(
        helm, "-f", str(CHART / "ci" / values), "--set", "monitoring.serviceMonitor.enabled=true",
        release=LONGEST_RELEASE,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
    stateful_sets = [d for d in docs if d["kind"] == "StatefulSet"]
    assert stateful_sets
    for sts in stateful_sets:
        name = sts["metadata"]["name"]
        assert len(f"{name}-{'h' * 10}") <= 63, f"{name}: {len(name)} characters, more than 52"
        assert sts["spec"]["serviceName"] in {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}, name


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_command_line_parses_with_its_command(helm: Helm, values: str, tmp_path: Path) -> None:
    """The args of every container of the monolith image (init containers too; the PS's as its start script
    execs them), parsed by the command's current parser: a renamed flag would otherwise show only as pods
    exiting 2."""
    docs = _render(helm, values)
    parsed = []
    for workload in _workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            if not container["image"].startswith(IMAGE_REPOSITORIES):
                continue
            if container.get("command") == ["/bin/sh", "-c"]:
                argv = _start_script_output(workload, 0, tmp_path)[2:]
            else:
                assert "command" not in container, container["name"]  # the image's entrypoint: monolith-serving
                argv = container["args"]
            parse_command_line(argv)
            parsed.append(argv[0])
    expected = {"agent", "proxy", "replica-manager"}
    expected |= {"export-demo"} if _values(values)["model"]["source"]["type"] == "demo" else set()
    expected |= {"model-manager"} if _values(values)["modelManager"]["enabled"] else set()
    assert set(parsed) == expected


@pytest.mark.parametrize("values", VALUE_SETS)
def test_agent_conf_is_read_by_the_real_parser(helm: Helm, values: str, tmp_path: Path) -> None:
    docs = _render(helm, values)
    data = _one(docs, "ConfigMap", "-config")["data"]
    sts = _one(docs, "StatefulSet", "-ps")
    pod_env = {e["name"]: e["value"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    v = _values(values)
    shards = v["ps"]["shards"] or v["model"]["numPs"]
    for name in ("ps.conf", "entry.conf", "cluster.conf"):
        (tmp_path / name).write_text(data[name])
    ps_conf = load_agent_config(tmp_path / "ps.conf")
    assert ps_conf.deploy_type is DeployType.PS
    assert ps_conf.num_ps == v["model"]["numPs"] and ps_conf.bzid == v["bzid"]
    assert ps_conf.discovery.value == {"zookeeper": "zk", "consul": "consul"}[v["discovery"]["backend"]]
    tasks: list[int] = []
    for shard in range(shards):
        resolved = resolve_environment(ps_conf, {**pod_env, "SHARD_ID": str(shard), "MY_POD_NAME": f"ps-{shard}"})
        assert resolved.tfs_grpc_port == v["ports"]["grpc"] and resolved.agent_port == v["ports"]["agent"]
        assert resolved.ps_tasks(), f"shard {shard} serves no PS task"
        tasks += resolved.ps_tasks()
    assert sorted(tasks) == list(range(v["model"]["numPs"]))
    assert load_agent_config(tmp_path / "entry.conf").deploy_type is DeployType.ENTRY
    assert load_agent_config(tmp_path / "cluster.conf").bzid == v["bzid"]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_probes_and_hardening(helm: Helm, values: str) -> None:
    docs = _render(helm, values)
    for workload in _workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["resources"]["limits"]["memory"], name
        main = pod["containers"][0]
        if not main["image"].startswith(IMAGE_REPOSITORIES) or name.endswith("-model-manager"):
            continue
        ports = {p["containerPort"] for p in main["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert main[probe]["grpc"]["port"] in ports, f"{name} {probe}"
        # Liveness runs only once the startup probe has passed: asked of the server that becomes ready (for a
        # model server: once its model is loaded), the startup budget bounds that load.
        assert main["startupProbe"]["grpc"]["port"] == main["readinessProbe"]["grpc"]["port"], name
    v = _values(values)
    for kind, suffix in (("StatefulSet", "-ps"), ("Deployment", "-entry")):
        pod = _one(docs, kind, suffix)["spec"]["template"]["spec"]["containers"][0]
        # The agent answers liveness; the model server it launches answers startup and readiness once its model
        # is loaded (the agent answers SERVING before it has launched anything).
        assert pod["livenessProbe"]["grpc"]["port"] == v["ports"]["agent"], suffix
        assert pod["readinessProbe"]["grpc"]["port"] == v["ports"]["grpc"], suffix
        assert pod["startupProbe"]["grpc"]["port"] == v["ports"]["grpc"], suffix
        budget_s = pod["startupProbe"]["periodSeconds"] * pod["startupProbe"]["failureThreshold"]
        assert budget_s == v["probes"]["startup"]["periodSeconds"] * v["probes"]["startup"]["failureThreshold"]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_selectors_match_pods(helm: Helm, values: str) -> None:
    docs = _render(helm, values)
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in _workloads(docs)]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}

    def selects_some_pod(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pod_labels)

    for doc in docs:
        if doc["kind"] == "PodDisruptionBudget":
            assert selects_some_pod(doc["spec"]["selector"]["matchLabels"]), doc["metadata"]["name"]
        if doc["kind"] == "Service":
            assert selects_some_pod(doc["spec"]["selector"]), doc["metadata"]["name"]
        if doc["kind"] == "ServiceMonitor":
            selector = doc["spec"]["selector"]["matchLabels"]
            matching = [s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()]
            assert matching, doc["metadata"]["name"]
            port_names = {p["name"] for s in matching for p in s["spec"]["ports"]}
            assert {e["port"] for e in doc["spec"]["endpoints"]} <= port_names, doc["metadata"]["name"]
    v = _values(values)
    pdbs = {d["metadata"]["name"].rsplit("-", 1)[-1] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert ("ps" in pdbs) == v["ps"]["pdb"]["enabled"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert bool(monitors) == v["monitoring"]["serviceMonitor"]["enabled"]


def _proxy_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = _one(docs, "Deployment", "-proxy")["spec"]["template"]["spec"]
    return pod


def _drain_timeout_s(container: dict[str, Any]) -> float:
    values = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--drain_timeout_s=")]
    assert len(values) == 1, container["args"]
    return float(values[0])


@pytest.mark.parametrize("values", VALUE_SETS)
def test_the_proxy_leaves_the_endpoints_before_sigterm_and_drains_within_its_grace(helm: Helm, values: str) -> None:
    pod = _proxy_pod(_render(helm, values))
    proxy = pod["containers"][0]
    v = _values(values)["proxy"]
    # Endpoints are updated while preStop sleeps; SIGTERM (closing the listener) comes after.
    assert proxy["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(v["preStopSleepSeconds"])]
    assert _drain_timeout_s(proxy) == v["drainTimeoutSeconds"]
    # The kubelet SIGKILLs at the grace period, counted from the start of preStop.
    assert pod["terminationGracePeriodSeconds"] >= v["preStopSleepSeconds"] + _drain_timeout_s(proxy) + 5


def test_the_proxy_grace_period_follows_its_values(helm: Helm) -> None:
    done = helm_template(helm, "--set", "proxy.preStopSleepSeconds=0", "--set", "proxy.drainTimeoutSeconds=12")
    assert done.returncode == 0, done.stderr
    pod = _proxy_pod([doc for doc in yaml.safe_load_all(done.stdout) if doc])
    assert pod["terminationGracePeriodSeconds"] == 17
    assert "lifecycle" not in pod["containers"][0]  # no sleep 0 hook
    assert _drain_timeout_s(pod["containers"][0]) == 12


def test_discovery_backends(helm: Helm) -> None:
    bundled = _render(helm, "default-values.yaml")
    assert any(d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-zookeeper") for d in bundled)
    assert "zk_servers rel-monolith-serving-zookeeper:2181" in _one(bundled, "ConfigMap", "-config")["data"]["ps.conf"]
    external = _render(helm, "external-zk-values.yaml")
    assert not any(d["metadata"]["name"].endswith("-zookeeper") for d in external)
    consul = _render(helm, "consul-values.yaml")
    conf = _one(consul, "ConfigMap", "-config")["data"]["ps.conf"]
    assert "discovery consul" in conf and "consul_address consul-server.consul:8500" in conf
    assert not any(d["metadata"]["name"].endswith("-zookeeper") for d in consul)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "discovery.backend=consul"], "discovery.consul.address is required"),
        (["--set", "discovery.zookeeper.bundled=false"], "discovery.zookeeper.servers is required"),
        (["--set", "ps.shards=3"], "cannot exceed model.numPs"),
        (["--set", "model.source.type=pvc"], "model.source.pvc.claimName is required"),
        (["--set", "discovery.backend=etcd"], "discovery.backend must be one of"),
        (["--set", "ps.replicasPerShard=0"], "ps.replicasPerShard"),
        (["--set", "unknownKey=1"], "unknownKey"),
        (["--set", "model.versionPolicy=specific"], "model.versionData is required when model.versionPolicy is"),
        (["--set", "model.versionData=3"], "model.versionData applies only to model.versionPolicy specific"),
        (["--set", "model.versionPolicy=specific", "--set", "model.versionData=-1"], "model.versionData"),
        (["--set", "monitoring.prometheusRule.enabled=yes"], "monitoring.prometheusRule.enabled"),
        (["--set", "proxy.extraArgs[0]=--drain_timeout_s=60"], "set proxy.drainTimeoutSeconds instead"),
        (["--set", "proxy.preStopSleepSeconds=-1"], "proxy.preStopSleepSeconds"),
        (["--set", "ports.metrics=8501"], "ports.http and ports.metrics are both 8501"),
        (["--set", "ports.agent=8500"], "ports.agent and ports.grpc are both 8500"),
    ],
)
def test_bad_values_are_refused(helm: Helm, flags: list[str], message: str) -> None:
    done = helm_template(helm, *flags)
    assert done.returncode != 0
    assert message in done.stderr


def test_notes_show_the_client_command(helm: Helm, tmp_path: Path) -> None:
    text = render_notes(helm, tmp_path)
    assert "client predict --target rel-monolith-serving-proxy:8500 --model entry" in text
    assert "port-forward service/rel-monolith-serving-proxy 8500:8500" in text
    assert "4 pods (2 shards x 2 replicas)" in text
    assert "builds requests for it by default" in text
    assert "--spec PATH" not in text


def test_notes_tell_how_to_predict_for_a_model_of_ones_own(helm: Helm, tmp_path: Path) -> None:
    """`client predict` draws requests from the demo's spec unless given another: the notes of a chart serving a
    model from a path say how, and do not call the model the demo."""
    text = render_notes(helm, tmp_path, "--set", "model.source.type=path", "--set", "model.source.path=/models/ctr")
    assert "--spec PATH" in text and "--request_file FILE" in text
    assert "demo model is exported" not in text


@pytest.mark.parametrize("values", VALUE_SETS)
def test_version_data_renders_only_with_specific(helm: Helm, values: str, tmp_path: Path) -> None:
    """`specific` serves model.versionData (agent.conf version_data); the other policies leave it unset."""
    plain = _one(_render(helm, values), "ConfigMap", "-config")["data"]
    assert all("version_data" not in conf for conf in plain.values())
    done = helm_template(helm, "-f", str(CHART / "ci" / values), "--set", "model.versionPolicy=specific",
                     "--set", "model.versionData=1700000000")  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = _one([d for d in yaml.safe_load_all(done.stdout) if d], "ConfigMap", "-config")["data"]
    for name in ("ps.conf", "entry.conf", "cluster.conf"):
        (tmp_path / name).write_text(data[name])
        conf = load_agent_config(tmp_path / name)
        assert conf.version_policy is VersionPolicy.SPECIFIC and conf.version_data == 1700000000, name
        assert model_version_policy(conf).versions == (1700000000,), name


@pytest.mark.parametrize("release", ["rel", LONGEST_RELEASE])
@pytest.mark.parametrize("values", VALUE_SETS)
def test_ps_service_monitor_labels_each_pod_with_its_shard(
    helm: Helm, values: str, release: str, tmp_path: Path
) -> None:
    """The recording rules group PS series by `shard`: the PS ServiceMonitor's relabelings, applied to each pod
    name the way Prometheus does (anchored regex, first-to-last), give the SHARD_ID its start script computes
    (also when the names are shortened to fit a long release name)."""
    done = helm_template(
        helm, "-f", str(CHART / "ci" / values), "--set", "monitoring.serviceMonitor.enabled=true", release=release
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    sts = _one(docs, "StatefulSet", "-ps")
    monitor = _one(docs, "ServiceMonitor", "-ps")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "agent-metrics"}
    for endpoint in monitor["spec"]["endpoints"]:
        for ordinal in range(sts["spec"]["replicas"]):
            labels = {"__meta_kubernetes_pod_name": f"{sts['metadata']['name']}-{ordinal}"}
            for rule in endpoint["relabelings"]:
                assert rule["action"] == "replace" and rule["sourceLabels"] == ["__meta_kubernetes_pod_name"]
                if re.fullmatch(rule["regex"], labels["__meta_kubernetes_pod_name"]):
                    assert rule["targetLabel"] not in labels, f"pod {ordinal}: two shard rules match"
                    labels[rule["targetLabel"]] = rule["replacement"]
            assert labels.get("shard") == _start_script_output(sts, ordinal, tmp_path)[0], f"pod {ordinal}"
        # A pod of another StatefulSet whose name extends this one's gets no shard.
        other = f"{sts['metadata']['name']}-x-0"
        assert not any(re.fullmatch(rule["regex"], other) for rule in endpoint["relabelings"])
    others = [d for d in docs if d["kind"] == "ServiceMonitor" and d is not monitor]
    assert others and all("relabelings" not in e for d in others for e in d["spec"]["endpoints"])


@pytest.mark.parametrize("name", RULE_FILES)
def test_chart_rule_files_are_copies_of_deploy(name: str) -> None:
    """Helm reads files inside the chart only, so the PrometheusRule loads copies of deploy/'s rule files."""
    copy = CHART / "rules" / name
    assert copy.read_bytes() == (DEPLOY / name).read_bytes(), f"{copy} differs from deploy/{name}: make chart-rules"


def test_prometheus_rule_carries_the_deploy_rules(helm: Helm, tmp_path: Path) -> None:
    assert not [d for d in _render(helm, "default-values.yaml") if d["kind"] == "PrometheusRule"]
    docs = _render(helm, "external-zk-values.yaml")
    assert _values("external-zk-values.yaml")["monitoring"]["prometheusRule"]["enabled"]
    rules = _one(docs, "PrometheusRule", "-rules")
    assert rules["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = rules["spec"]["groups"]
    expected = [g for name in RULE_FILES for g in yaml.safe_load((DEPLOY / name).read_text())["groups"]]
    services = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Service")
    services = [name for name in services if not name.endswith("-zookeeper")]
    target_down = [r for g in groups for r in g["rules"] if r.get("alert") == "MonolithTargetDown"]
    assert len(target_down) == 1
    # Narrowed to this release's Services (a shared Prometheus scrapes other applications too); the rest as in deploy/.
    scoped = re.fullmatch(r'up\{namespace="serving", service=~"([^"]+)"\} == 0', target_down[0]["expr"])
    assert scoped, target_down[0]["expr"]
    assert set(services) <= set(scoped.group(1).split("|"))
    for group in expected:
        for rule in group["rules"]:
            if rule.get("alert") == "MonolithTargetDown":
                rule["expr"] = target_down[0]["expr"]
    assert groups == expected
    promtool = ensure_command("promtool", debian_package="prometheus")
    rendered = tmp_path / "rules.yml"
    rendered.write_text(yaml.safe_dump({"groups": groups}))
    run([promtool, "check", "rules", rendered])
    # The narrowed MonolithTargetDown alerts on this release's targets only.
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": [rendered.name],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "30s",
            "input_series": [
                {"series": f'up{{job="ps",namespace="serving",service="{services[0]}",instance="a:8080"}}',
                 "values": "0x10"},
                {"series": 'up{job="db",namespace="serving",service="someone-else",instance="b:8080"}',
                 "values": "0x10"},
                {"series": f'up{{job="ps",namespace="other",service="{services[0]}",instance="c:8080"}}',
                 "values": "0x10"},
            ],
            "alert_rule_test": [{
                "eval_time": "4m",
                "alertname": "MonolithTargetDown",
                "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "job": "ps", "namespace": "serving",
                                   "service": services[0], "instance": "a:8080"},
                    "exp_annotations": {"summary": "ps target a:8080 is down",
                                        "description": "Prometheus cannot scrape this monolith-serving process."},
                }],
            }],
        }],
    }))  # fmt: skip
    done = run([promtool, "test", "rules", tmp_path / "test.yml"], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _value_paths(values: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf of values.yaml as its path (an empty map or list is a leaf)."""
    if isinstance(values, dict) and values:
        return [path for key, value in values.items() for path in _value_paths(value, (*prefix, key))]
    return [prefix]


def _documented_values() -> list[str]:
    """The names in the first column of docs/deploy.md's table of chart values (`a.b`, `a.*`, `*.b`)."""
    text = DEPLOY_DOC.read_text()
    lines = text[text.index("## Kubernetes") :].splitlines()
    start = lines.index("| value | meaning |")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = lines[start + 2 : end]  # after the header and its separator
    assert rows, "no table of values under '## Kubernetes' in docs/deploy.md"
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


def _covers(name: str, path: tuple[str, ...]) -> bool:
    """`name` documents `path` when it names the path or a map above it; `*` stands for one key."""
    parts = name.split(".")
    above = path[: len(parts)]
    return len(parts) == len(above) and all(fnmatch.fnmatchcase(k, p) for p, k in zip(parts, above, strict=True))


def test_every_value_is_documented_and_every_documented_value_exists() -> None:
    paths = _value_paths(yaml.safe_load((CHART / "values.yaml").read_text()))
    names = _documented_values()
    undocumented = [".".join(path) for path in paths if not any(_covers(name, path) for name in names)]
    assert not undocumented, f"values.yaml keys missing from docs/deploy.md's table: {undocumented}"
    unknown = [name for name in names if not any(_covers(name, path) for path in paths)]
    assert not unknown, f"docs/deploy.md documents values the chart does not have: {unknown}"


def test_value_coverage_rules() -> None:
    assert _covers("ps.pdb", ("ps", "pdb", "enabled")) and _covers("*.pdb", ("entry", "pdb", "maxUnavailable"))
    assert _covers("probes.*", ("probes", "startup", "periodSeconds")) and _covers("bzid", ("bzid",))
    assert not _covers("ps.pdb.enabled", ("ps", "pdb")) and not _covers("*.pdb", ("ps", "resources", "limits"))
    assert not _covers("model.name", ("model", "numPs"))


def test_ps_extra_args_reach_the_agent_whole(helm: Helm, tmp_path: Path) -> None:
    """`ps.extraArgs` go through the StatefulSet's shell script: each must arrive as one argument, unchanged, even
    with quotes, blanks or shell syntax in it."""
    extra = ["--log_level=INFO", "--tag=it's", 'a "b" c', "$(touch /tmp/x);`id`", "*"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"ps": {"extraArgs": extra}}))
    done = helm_template(helm, "-f", str(values))
    assert done.returncode == 0, done.stderr
    sts = _one([doc for doc in yaml.safe_load_all(done.stdout) if doc], "StatefulSet", "-ps")
    stand_in = tmp_path / "monolith-serving"
    stand_in.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    stand_in.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "MY_POD_NAME": f"{sts['metadata']['name']}-0"}
    script = sts["spec"]["template"]["spec"]["containers"][0]["args"][0]
    out = run(["/bin/sh", "-c", script], env=env, cwd=tmp_path).stdout.splitlines()
    assert out[-len(extra) :] == extra


def test_bundled_zookeeper_keeps_the_image_configuration(helm: Helm) -> None:
    """The zookeeper image holds its logback.xml in /conf, where the pod mounts a writable emptyDir: an init container
    of the same image copies the image's /conf into that volume first, or ZooKeeper logs at logback's DEBUG default."""
    sts = _one(_render(helm, "default-values.yaml"), "StatefulSet", "-zookeeper")
    spec = sts["spec"]["template"]["spec"]
    server = spec["containers"][0]
    conf_volume = next(m["name"] for m in server["volumeMounts"] if m["mountPath"] == "/conf")
    [seed] = spec["initContainers"]
    assert seed["image"] == server["image"]
    seed_path = next(m["mountPath"] for m in seed["volumeMounts"] if m["name"] == conf_volume)
    assert seed["command"][-1] == f"cp -a /conf/. {seed_path}/"
