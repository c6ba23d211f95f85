"""deploy/prometheus.yml, recording rules and alerts: promtool checks, rule unit tests, and the metric names the
rules read against what the services declare."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploy_tools import DEPLOY, REPO, ensure_command, run
from metric_names import declared_metrics, raw_metrics, recorded_series, rest_api_server_names, rule_file_rules

RECORDING = DEPLOY / "recording_rules.yml"
ALERTS = DEPLOY / "alerts.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    return ensure_command("promtool", debian_package="prometheus")


def test_prometheus_config_is_valid(promtool: str) -> None:
    done = run([promtool, "check", "config", DEPLOY / "prometheus.yml"])
    # The rule files are found relative to the config: both are checked as part of it.
    assert "2 rule files found" in done.stdout


def test_rule_files_are_valid(promtool: str) -> None:
    run([promtool, "check", "rules", RECORDING, ALERTS])


def test_rule_unit_tests_pass(promtool: str) -> None:
    done = run([promtool, "test", "rules", DEPLOY / "alerts_test.yml"], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in rule_file_rules(ALERTS)}
    assert {
        "MonolithShardNoAvailableReplica",
        "MonolithHighErrorRatio",
        "MonolithHighP99Latency",
        "MonolithVersionDelay",
    } <= names


def test_every_alert_is_unit_tested() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert tested == {rule["alert"] for rule in rule_file_rules(ALERTS)}


def test_alerts_read_only_recorded_series() -> None:
    """Raw service metric names live in recording_rules.yml alone, so a rename touches one file."""
    recorded = {rule["record"] for rule in rule_file_rules(RECORDING)}
    for rule in rule_file_rules(ALERTS):
        assert not raw_metrics(rule["expr"]), f"{rule['alert']} reads raw metrics; record them first"
        assert recorded_series(rule["expr"]) <= recorded, rule["alert"]


def test_recording_rules_read_metrics_the_services_declare() -> None:
    declared = declared_metrics(REPO / "services")
    for rule in rule_file_rules(RECORDING):
        for metric in raw_metrics(rule["expr"]):
            assert metric in declared, f"{rule['record']} reads {metric}, which no service declares"


def test_declared_metric_reader_sees_counters_and_histograms(tmp_path: Path) -> None:
    service = tmp_path / "svc"
    service.mkdir()
    (service / "metrics.py").write_text(
        "from prometheus_client import Counter, Histogram\n"
        "a = Counter('x_requests', 'h', ['code'])\n"
        "b = Counter('x_done_total', 'h')\n"
        "c = Histogram('x_latency_seconds', 'h')\n"
    )
    declared = declared_metrics(tmp_path)
    assert {"x_requests_total", "x_done_total", "x_latency_seconds_bucket", "x_latency_seconds_count"} <= set(declared)
    assert "x_requests" not in declared


def test_declared_metrics_include_each_servers_rest_api() -> None:
    declared = declared_metrics(REPO / "services")
    rest = {
        f"{server}_rest_{name}_total" for server in ("entry", "unified") for name in ("requests", "rejected_requests")
    }
    assert rest <= set(declared)
    assert "proxy_rest_requests_total" not in declared  # the proxy counts REST in proxy_requests_total{protocol}


def test_rest_api_server_names_are_read_from_the_call_sites(tmp_path: Path) -> None:
    service = tmp_path / "svc"
    service.mkdir()
    (service / "main.py").write_text(
        "a = RestApiMetrics(registry, 'svc')\nb = model_server_rest.RestApiMetrics(registry, server='other')\n"
    )
    assert rest_api_server_names(tmp_path) == {"svc", "other"}
    assert "svc_rest_requests_total" in declared_metrics(tmp_path)
    (service / "later.py").write_text("c = RestApiMetrics(registry, name)\n")
    with pytest.raises(ValueError, match="later.py:1: RestApiMetrics without a literal server name"):
        rest_api_server_names(tmp_path)
