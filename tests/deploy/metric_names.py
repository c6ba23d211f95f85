"""Which metric series the services declare and which ones the Prometheus rules and dashboards read.

Declared names are read from the source of ``services/*/metrics.py`` (the one module per service that declares
every metric), expanded the way prometheus_client exposes them (counters gain ``_total``, histograms
``_bucket``/``_sum``/``_count``). The REST API's counters (``core.model_server_rest.RestApiMetrics``) are named for
the server that builds them (``entry_rest_requests``): they are built, on a throwaway registry, for each server name
the services pass.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "CounterMetricFamily": ("_total",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count", "_created"),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Info": ("_info",),
    "Enum": ("",),
}
# Prefixes of the services' metric names; any token in a PromQL expression with one of them is a raw metric.
RAW_PREFIXES = ("proxy_", "entry_", "unified_", "monolith_", "agent_", "discovery_")
_REST_API_METRICS = "RestApiMetrics"
_REST_API_MODULE = Path("core", "model_server_rest.py")
# prometheus_client's family type -> the class whose suffixes it exposes.
_FAMILY_KINDS = {"counter": "Counter", "histogram": "Histogram", "summary": "Summary", "gauge": "Gauge", "info": "Info"}
_TOKEN = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def declared_metrics(services: Path) -> dict[str, Path]:
    """Every exposed series name declared in ``services/*/metrics.py``, and of the REST API's metrics of each
    server (:func:`rest_api_metrics`) -> the declaring module."""
    found = rest_api_metrics(services)
    for module in sorted(services.glob("*/metrics.py")):
        for node in ast.walk(ast.parse(module.read_text(), filename=str(module))):
            if not isinstance(node, ast.Call):
                continue
            kind = _called_name(node)
            if kind not in _SUFFIXES or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            base = first.value.removesuffix("_total") if kind.startswith("Counter") else first.value
            for suffix in _SUFFIXES[kind]:
                found[base + suffix] = module
    return found


def rest_api_server_names(services: Path) -> set[str]:
    """The server names ``RestApiMetrics(registry, "<server>")`` is given anywhere under ``services``."""
    names: set[str] = set()
    for module in sorted(services.rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(), filename=str(module))):
            if not isinstance(node, ast.Call):
                continue
            if _called_name(node) != _REST_API_METRICS:
                continue
            server = [k.value for k in node.keywords if k.arg == "server"] or node.args[1:2]
            if not (server and isinstance(server[0], ast.Constant) and isinstance(server[0].value, str)):
                # A computed name could be anything: the rules' names could not be checked against it.
                raise ValueError(f"{module}:{node.lineno}: {_REST_API_METRICS} without a literal server name")
            names.add(server[0].value)
    return names


def rest_api_metrics(services: Path) -> dict[str, Path]:
    """Every exposed series name of the REST API's metrics of each server named under ``services`` -> their
    module. The metrics are those of the installed package's ``RestApiMetrics``; ``services`` only names the
    servers."""
    from prometheus_client import CollectorRegistry

    from monolith_serving.core.model_server_rest import RestApiMetrics

    found: dict[str, Path] = {}
    for server in rest_api_server_names(services):
        registry = CollectorRegistry()
        RestApiMetrics(registry, server)
        for family in registry.collect():
            for suffix in _SUFFIXES[_FAMILY_KINDS[family.type]]:
                found[family.name + suffix] = services / _REST_API_MODULE
    return found


def expression_tokens(expr: str) -> set[str]:
    """Identifiers of a PromQL expression outside string literals (metric names, labels, functions)."""
    return set(_TOKEN.findall(_QUOTED.sub('""', expr)))


def raw_metrics(expr: str) -> set[str]:
    return {t for t in expression_tokens(expr) if t.startswith(RAW_PREFIXES)}


def recorded_series(expr: str) -> set[str]:
    return {t for t in expression_tokens(expr) if t.startswith("monolith:")}


def rule_file_rules(path: Path) -> list[dict[str, str]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]
