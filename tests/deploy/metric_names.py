"""Which metric series the services declare and which ones the Prometheus rules and dashboards read.

Declared names are read from the source of ``services/*/metrics.py`` (the one module per service that declares
every metric), expanded the way prometheus_client exposes them (counters gain ``_total``, histograms
``_bucket``/``_sum``/``_count``).
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
RAW_PREFIXES = ("proxy_", "entry_", "monolith_", "agent_", "discovery_")
_TOKEN = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def declared_metrics(services: Path) -> dict[str, Path]:
    """Every exposed series name declared in ``services/*/metrics.py`` -> the declaring module."""
    found: dict[str, Path] = {}
    for module in sorted(services.glob("*/metrics.py")):
        for node in ast.walk(ast.parse(module.read_text(), filename=str(module))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if kind not in _SUFFIXES or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            base = first.value.removesuffix("_total") if kind.startswith("Counter") else first.value
            for suffix in _SUFFIXES[kind]:
                found[base + suffix] = module
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
