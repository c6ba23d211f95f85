"""The provisioned Grafana dashboard: layout, Grafana's schema (round trip through grafana-foundation-sdk, the
types Grafana generates from its dashboard schema), and every query evaluated by a real Prometheus that loads our
recording rules. Grafana itself is not installable here (no Debian package), so it is not started."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tools import DEPLOY, ensure_command, free_port, wait_until
from metric_names import raw_metrics, recorded_series, rule_file_rules

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "monolith-serving.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "monolith-serving.yml"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p["targets"]]


def test_layout_is_consistent(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    for panel in _panels(dashboard):
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_schema_round_trip_loses_nothing(dashboard: dict[str, Any]) -> None:
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    # Panel options, field configs and Prometheus queries are typed only when their plugins are registered.
    plugins.register_default_plugins()
    again = json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))
    lost: list[str] = []

    def compare(mine: Any, theirs: Any, path: str) -> None:
        if isinstance(mine, dict):
            for key, value in mine.items():
                if not isinstance(theirs, dict) or key not in theirs:
                    lost.append(f"{path}/{key}")
                else:
                    compare(value, theirs[key], f"{path}/{key}")
        elif isinstance(mine, list):
            if not isinstance(theirs, list) or len(mine) != len(theirs):
                lost.append(f"{path}[]")
            else:
                for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
                    compare(a, b, f"{path}[{i}]")
        elif mine != theirs:
            lost.append(f"{path} ({mine!r} became {theirs!r})")

    compare(dashboard, again, "")
    assert not lost, f"keys Grafana's dashboard schema does not know: {lost}"


def test_round_trip_check_catches_a_misspelled_key(dashboard: dict[str, Any]) -> None:
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()
    broken = json.loads(json.dumps(dashboard))
    target = _panels(broken)[0]["targets"][0]
    target["exp"] = target.pop("expr")
    again = json.loads(json.dumps(Dashboard.from_json(broken), cls=JSONEncoder))
    assert "exp" not in _panels(again)[0]["targets"][0]


def test_datasource_matches_provisioning(dashboard: dict[str, Any]) -> None:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    uid = sources[0]["uid"]
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"]), panel["title"]
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]


def test_queries_read_only_recorded_series(dashboard: dict[str, Any]) -> None:
    recorded = {rule["record"] for rule in rule_file_rules(DEPLOY / "recording_rules.yml")}
    used: set[str] = set()
    variable_queries = [v["query"]["query"] for v in dashboard["templating"]["list"]]
    for expr in [*_exprs(dashboard), *variable_queries]:
        assert not raw_metrics(expr), f"{expr}: read raw metrics through recording_rules.yml"
        assert recorded_series(expr) <= recorded, expr
        used |= recorded_series(expr)
    # The list: QPS, p50/p99 latency, error ratio, PS lookups and sync rate, replicas per shard,
    # serving version and its age; and the entries' own REST API.
    assert {
        "monolith:requests:rate1m",
        "monolith:latency_seconds:p50_5m",
        "monolith:latency_seconds:p99_5m",
        "monolith:errors:ratio_rate5m",
        "monolith:ps_lookups:rate1m",
        "monolith:ps_sync_updates:rate1m",
        "monolith:available_replicas",
        "monolith:serving_version",
        "monolith:serving_version_age_seconds",
        "monolith:entry_rest_requests:rate1m",
        "monolith:entry_rest_errors:ratio_rate5m",
        "monolith:entry_rest_rejected:rate1m",
    } <= used


# Which name a recorded series' `model` label carries, from the raw metrics its rule reads: the proxy labels
# requests with the model name clients send (e.g. `entry`); the replica and model managers use the agent.conf
# base_name (e.g. `demo`). A dashboard variable filled from one kind matches nothing of the other.
_MODEL_LABEL_KINDS = {"proxy_": "request", "monolith_replica_manager_": "base", "monolith_model_manager_": "base"}
_SELECTOR = re.compile(r"(monolith:[A-Za-z0-9_:]+)\{([^}]*)\}")
_MODEL_VARIABLE = re.compile(r'model=~"\$(\w+)"')


def _model_label_kinds() -> dict[str, str]:
    kinds: dict[str, str] = {}
    for rule in rule_file_rules(DEPLOY / "recording_rules.yml"):
        found = {
            kind for metric in raw_metrics(rule["expr"]) for prefix, kind in _MODEL_LABEL_KINDS.items()
            if metric.startswith(prefix)
        }  # fmt: skip
        assert len(found) <= 1, f"{rule['record']} mixes model label kinds {found}"
        if found:
            kinds[rule["record"]] = found.pop()
    return kinds


def _variable_filters(exprs: list[str]) -> list[tuple[str, str, str]]:
    """(expression, recorded series, variable) for every `model=~"$variable"` matcher."""
    return [
        (expr, series, variable)
        for expr in exprs
        for series, matchers in _SELECTOR.findall(expr)
        for variable in _MODEL_VARIABLE.findall(matchers)
    ]


def test_model_variables_match_the_series_they_filter(dashboard: dict[str, Any]) -> None:
    """A variable filled from proxy series filters only proxy series, one from the managers only theirs."""
    kinds = _model_label_kinds()
    assert kinds["monolith:requests:rate1m"] == "request" and kinds["monolith:available_replicas"] == "base"
    variable_kind: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        sources = recorded_series(variable["query"]["query"])
        assert len(sources) == 1, variable["name"]
        variable_kind[variable["name"]] = kinds[sources.pop()]
    assert set(variable_kind.values()) == {"request", "base"}
    filters = _variable_filters(_exprs(dashboard))
    for expr, series, variable in filters:
        assert series in kinds, f"{expr}: ${variable} filters {series}, whose model label is neither kind"
        assert variable_kind[variable] == kinds[series], f"{expr}: ${variable} cannot match {series}'s model label"
    filtered = {series for _, series, _ in filters}
    base_panels = {"monolith:available_replicas", "monolith:serving_version", "monolith:serving_version_age_seconds"}
    assert base_panels <= filtered


def test_variable_filters_are_found() -> None:
    assert _variable_filters(['monolith:serving_version{model=~"$model"}']) == [
        ('monolith:serving_version{model=~"$model"}', "monolith:serving_version", "model")
    ]


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus on loopback with our rule files (no targets: the queries only need to evaluate)."""
    binary = ensure_command("prometheus", debian_package="prometheus")
    work: Path = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"evaluation_interval": "1s"},
                "rule_files": [str(DEPLOY / "recording_rules.yml"), str(DEPLOY / "alerts.yml")],
            }
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(ready, timeout_s=60, what="Prometheus /-/ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _query(url: str, expr: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
            body: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as err:
        body = json.load(err)
    return body


def test_every_query_evaluates(dashboard: dict[str, Any], prometheus_url: str) -> None:
    variables = {"$model": ".*", "$base_name": ".*"}
    queries = [*_exprs(dashboard), *(v["query"]["query"] for v in dashboard["templating"]["list"])]
    for expr in queries:
        for name, value in variables.items():
            expr = expr.replace(name, value)
        if expr.startswith("label_values("):
            continue  # Grafana's function, not PromQL; its series is checked by the recorded-series test
        body = _query(prometheus_url, expr)
        assert body["status"] == "success", f"{expr}: {body.get('error')}"


def test_query_check_rejects_bad_promql(prometheus_url: str) -> None:
    assert _query(prometheus_url, "sum by (model) (rate(monolith:requests:rate1m))")["status"] == "error"
